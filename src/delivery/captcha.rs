//! The captcha provider's siteverify endpoint (Cloudflare Turnstile, hCaptcha, Google
//! reCAPTCHA all take the same request): an outbound client like the senders. What a verdict
//! means (mode, score, fail-open) is the login domain's business ([`crate::config`] holds the
//! settings).

use std::net::IpAddr;

use serde::Deserialize;

use crate::config::CaptchaSettings;
use crate::domain::secret::Secret;

/// The provider's answer, as all three document it.
#[derive(Debug, Clone, Deserialize)]
pub struct Siteverify {
    /// Whether the token is valid (false also for a replayed or expired one).
    pub success: bool,
    /// Why not: `invalid-input-response`, `timeout-or-duplicate`, …
    #[serde(rename = "error-codes", default)]
    pub error_codes: Vec<String>,
    /// reCAPTCHA v3 (0.0 bot – 1.0 human); hCaptcha Enterprise's is a risk score instead.
    #[serde(default)]
    pub score: Option<f64>,
    /// The site the token was solved on.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The action the widget named.
    #[serde(default)]
    pub action: Option<String>,
    /// reCAPTCHA on Android: the app the token was solved in (instead of `hostname`).
    #[serde(default)]
    pub apk_package_name: Option<String>,
}

/// The verifier did not give a verdict: a timeout, a connection failure, a non-2xx answer or a
/// body that is not a siteverify answer. The text carries no secret and no URL.
#[derive(Debug, thiserror::Error)]
#[error("captcha verifier unavailable: {reason}")]
pub struct CaptchaOutage {
    /// What went wrong.
    pub reason: String,
    /// The provider refused to answer us (4xx, 429 among them: our secret throttled or
    /// refused): never a reason to let logins through, as an attacker can cause it.
    pub refused: bool,
}

impl CaptchaOutage {
    fn down(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            refused: false,
        }
    }
}

/// Posts tokens to the siteverify URL.
pub struct CaptchaVerifier {
    client: reqwest::Client,
    url: String,
    secret: Secret,
}

impl CaptchaVerifier {
    /// A client bounded by `CAPTCHA_TIMEOUT_MS`, without redirects.
    pub fn from_settings(settings: &CaptchaSettings) -> Result<Self, String> {
        let client = super::outbound_client(settings.timeout, "captcha")?;
        Ok(Self {
            client,
            url: settings.verify_url.clone(),
            secret: settings.secret.clone(),
        })
    }

    /// Checks `token` (one request, no retry: the token is single-use, and the client is
    /// waiting). `remoteip` is sent when known.
    pub async fn verify(
        &self,
        token: &str,
        remoteip: Option<IpAddr>,
    ) -> Result<Siteverify, CaptchaOutage> {
        let ip = remoteip.map(|ip| ip.to_string());
        let mut form: Vec<(&str, &str)> =
            vec![("secret", self.secret.expose()), ("response", token)];
        if let Some(ip) = &ip {
            form.push(("remoteip", ip));
        }
        let resp = self
            .client
            .post(&self.url)
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                let e = e.without_url();
                CaptchaOutage::down(if e.is_timeout() {
                    "timed out".into()
                } else {
                    e.to_string()
                })
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(CaptchaOutage {
                reason: format!("HTTP {}", status.as_u16()),
                refused: status.is_client_error(),
            });
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| CaptchaOutage::down(e.without_url().to_string()))?;
        serde_json::from_slice(&body)
            .map_err(|e| CaptchaOutage::down(format!("unreadable answer: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_as_the_providers_document_them() {
        let ok: Siteverify = serde_json::from_str(
            r#"{"success":true,"challenge_ts":"2026-01-01T00:00:00Z","hostname":"example.com","error-codes":[],"action":"login","cdata":""}"#,
        )
        .unwrap();
        assert!(ok.success && ok.score.is_none());
        assert_eq!(ok.hostname.as_deref(), Some("example.com"));
        let v3: Siteverify =
            serde_json::from_str(r#"{"success":true,"score":0.3,"action":"login"}"#).unwrap();
        assert_eq!(v3.score, Some(0.3));
        let no: Siteverify =
            serde_json::from_str(r#"{"success":false,"error-codes":["timeout-or-duplicate"]}"#)
                .unwrap();
        assert_eq!(no.error_codes, ["timeout-or-duplicate"]);
        assert!(serde_json::from_str::<Siteverify>(r#"{"ok":true}"#).is_err());
    }
}
