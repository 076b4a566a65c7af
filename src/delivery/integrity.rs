//! Google Play Integrity: an app's integrity token decoded by Google's
//! `POST https://playintegrity.googleapis.com/v1/{packageName}:decodeIntegrityToken`, with an
//! OAuth 2.0 access token of the service account (a JWT signed with its key, exchanged at its
//! `token_uri`, scope `https://www.googleapis.com/auth/playintegrity`; kept until shortly before
//! it expires). What the verdict means is the login domain's business.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::IntegritySettings;

/// The OAuth scope of the Play Integrity API.
pub const SCOPE: &str = "https://www.googleapis.com/auth/playintegrity";

/// Why no verdict came back.
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    /// Google could not decode the token (400 `INVALID_ARGUMENT`): forged, truncated, for
    /// another app, or not a token at all.
    #[error("the integrity token is not valid")]
    Invalid,
    /// No answer: a timeout, a connection failure, a 5xx, an unreadable body; or Google
    /// refused us (`refused`: 401, 403, 429, our credentials or quota, which must never let a
    /// login through). The text has no secret and no URL.
    #[error("Play Integrity unavailable: {reason}")]
    Outage {
        /// What went wrong.
        reason: String,
        /// Google refused to answer us.
        refused: bool,
    },
}

impl IntegrityError {
    fn down(reason: impl Into<String>) -> Self {
        IntegrityError::Outage {
            reason: reason.into(),
            refused: false,
        }
    }
}

#[derive(Deserialize)]
struct AccessToken {
    access_token: String,
    #[serde(default = "an_hour")]
    expires_in: u64,
}

fn an_hour() -> u64 {
    3600
}

/// Decodes integrity tokens for one app.
pub struct PlayIntegrity {
    client: reqwest::Client,
    decode_url: String,
    email: String,
    key_id: Option<String>,
    token_uri: String,
    key: EncodingKey,
    /// The access token and when to fetch a new one; or when the last fetch failed.
    access: tokio::sync::Mutex<Access>,
}

/// The service account's access token, as kept.
#[derive(Default)]
struct Access {
    token: Option<(String, Instant)>,
    /// A failed fetch (and whether Google refused us): calls within [`RETRY_FETCH_AFTER`] of
    /// it fail the same way at once instead of each waiting for the token endpoint in turn.
    failed: Option<(Instant, bool)>,
}

/// How long a failed access-token fetch is remembered.
const RETRY_FETCH_AFTER: Duration = Duration::from_secs(2);

impl PlayIntegrity {
    /// A client bounded by `PLAY_INTEGRITY_TIMEOUT_MS`, without redirects.
    pub fn from_settings(settings: &IntegritySettings) -> Result<Self, String> {
        let client = super::outbound_client(settings.timeout, "Play Integrity")?;
        let key = EncodingKey::from_rsa_pem(settings.account.private_key.expose().as_bytes())
            .map_err(|_| {
                "PLAY_INTEGRITY_CREDENTIALS: the private key is not RSA PEM".to_string()
            })?;
        Ok(Self {
            client,
            decode_url: format!(
                "{}/v1/{}:decodeIntegrityToken",
                settings.api_url, settings.package
            ),
            email: settings.account.client_email.clone(),
            key_id: settings.account.private_key_id.clone(),
            token_uri: settings.account.token_uri.clone(),
            key,
            access: tokio::sync::Mutex::new(Access::default()),
        })
    }

    /// The verdict in `token` (`tokenPayloadExternal`), as Google decoded it.
    pub async fn decode(&self, token: &str) -> Result<Value, IntegrityError> {
        let access = self.access_token().await?;
        let resp = self
            .client
            .post(&self.decode_url)
            .bearer_auth(&access)
            .json(&json!({ "integrity_token": token }))
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        if status.as_u16() == 401 {
            // The access token was revoked or expired early: the next call fetches another
            // (unless one was fetched meanwhile).
            let mut kept = self.access.lock().await;
            if kept.token.as_ref().is_some_and(|(t, _)| *t == access) {
                kept.token = None;
            }
        }
        if status.as_u16() == 400 {
            return Err(IntegrityError::Invalid);
        }
        if status.as_u16() == 429 {
            return Err(IntegrityError::Outage {
                reason: "decodeIntegrityToken: HTTP 429 (the app's daily quota?)".into(),
                refused: true,
            });
        }
        if !status.is_success() {
            return Err(IntegrityError::Outage {
                reason: format!("decodeIntegrityToken: HTTP {}", status.as_u16()),
                refused: status.is_client_error(),
            });
        }
        let body: Value = resp
            .json()
            .await
            .map_err(|e| IntegrityError::down(format!("unreadable answer: {}", e.without_url())))?;
        match body.get("tokenPayloadExternal") {
            Some(payload) if payload.is_object() => Ok(payload.clone()),
            _ => Err(IntegrityError::down("answer without tokenPayloadExternal")),
        }
    }

    /// The service account's access token: the one kept, or a new one.
    async fn access_token(&self) -> Result<String, IntegrityError> {
        let mut kept = self.access.lock().await;
        if let Some((token, renew_at)) = kept.token.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        if let Some((at, refused)) = kept.failed
            && at.elapsed() < RETRY_FETCH_AFTER
        {
            return Err(IntegrityError::Outage {
                reason: "the token endpoint failed moments ago".into(),
                refused,
            });
        }
        let fetched = self.fetch_access_token().await;
        match &fetched {
            Ok((token, renew_at)) => {
                kept.token = Some((token.clone(), *renew_at));
                kept.failed = None;
            }
            Err(IntegrityError::Outage { refused, .. }) => {
                kept.failed = Some((Instant::now(), *refused));
            }
            Err(IntegrityError::Invalid) => kept.failed = Some((Instant::now(), false)),
        }
        fetched.map(|(token, _)| token)
    }

    /// Signs in as the service account: a new access token and when to renew it.
    async fn fetch_access_token(&self) -> Result<(String, Instant), IntegrityError> {
        let now = chrono::Utc::now().timestamp();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.key_id.clone();
        let claims = json!({
            "iss": self.email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| IntegrityError::down(format!("signing the token request: {e}")))?;
        let resp = self
            .client
            .post(&self.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(IntegrityError::Outage {
                reason: format!("token endpoint: HTTP {}", status.as_u16()),
                refused: status.is_client_error(),
            });
        }
        let token: AccessToken = resp.json().await.map_err(|e| {
            IntegrityError::down(format!("unreadable token answer: {}", e.without_url()))
        })?;
        // Renewed a minute early (at most halfway through a short lifetime), and at least
        // hourly whatever the answer said.
        let life = Duration::from_secs(token.expires_in.min(3600));
        let renew_at = Instant::now() + life.saturating_sub(Duration::from_secs(60)).max(life / 2);
        Ok((token.access_token, renew_at))
    }
}

fn transport(e: reqwest::Error) -> IntegrityError {
    let e = e.without_url();
    IntegrityError::down(if e.is_timeout() {
        "timed out".into()
    } else {
        e.to_string()
    })
}
