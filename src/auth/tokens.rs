//! JWT access and refresh tokens (HS256), with the claims every replica checks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Settings;
use crate::error::Error;

/// Allowed clock difference between replicas when checking `exp`.
const LEEWAY_SECONDS: u64 = 5;

/// What a token may be used for; an access token is never accepted as a refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Sent as `Authorization: Bearer` to call APIs.
    Access,
    /// Exchanged once for a new pair at `/api/auth/refresh-token`.
    Refresh,
}

/// The claims of both token kinds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The session (refresh-token family) id: logout and reuse detection revoke it.
    pub sid: String,
    /// This token's id.
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Issuer (`JWT_ISSUER`).
    pub iss: String,
    /// Audience (`JWT_AUDIENCE`).
    pub aud: String,
    /// Token kind.
    pub typ: TokenKind,
}

/// A freshly issued access + refresh token pair.
#[derive(Debug, Clone)]
pub struct TokenPair {
    /// The access token.
    pub access_token: String,
    /// The refresh token.
    pub refresh_token: String,
    /// Access token lifetime in seconds.
    pub expires_in: u64,
}

/// Signs and checks tokens with the configured key, algorithm, issuer and audience.
pub struct TokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    header: Header,
    validation: Validation,
    issuer: String,
    audience: String,
    access_ttl: Duration,
    refresh_ttl: Duration,
}

impl TokenService {
    /// A service for HS256 tokens keyed by `JWT_SECRET_KEY`.
    pub fn new(settings: &Settings) -> Self {
        let secret = settings.jwt_secret.expose().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[settings.jwt_issuer.as_str()]);
        validation.set_audience(&[settings.jwt_audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            header: Header::new(Algorithm::HS256),
            validation,
            issuer: settings.jwt_issuer.clone(),
            audience: settings.jwt_audience.clone(),
            access_ttl: settings.access_token_ttl,
            refresh_ttl: settings.refresh_token_ttl,
        }
    }

    /// Lifetime of refresh tokens, the longest any token lives.
    pub fn longest_lifetime(&self) -> Duration {
        self.refresh_ttl.max(self.access_ttl)
    }

    /// Issues an access and a refresh token for `user_id` in session `sid`.
    pub fn issue_pair(&self, user_id: Uuid, sid: &str) -> Result<TokenPair, Error> {
        let now = unix_now();
        Ok(TokenPair {
            access_token: self.sign(user_id, sid, TokenKind::Access, now, self.access_ttl)?,
            refresh_token: self.sign(user_id, sid, TokenKind::Refresh, now, self.refresh_ttl)?,
            expires_in: self.access_ttl.as_secs(),
        })
    }

    fn sign(
        &self,
        user_id: Uuid,
        sid: &str,
        typ: TokenKind,
        now: u64,
        ttl: Duration,
    ) -> Result<String, Error> {
        let claims = Claims {
            sub: user_id.to_string(),
            sid: sid.to_string(),
            jti: Uuid::new_v4().to_string(),
            iat: now,
            exp: now + ttl.as_secs(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            typ,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("signing a token failed: {e}")))
    }

    /// Checks signature, algorithm, `exp`, `iss`, `aud` and the token kind.
    pub fn decode(&self, token: &str, expected: TokenKind) -> Result<Claims, Error> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| Error::InvalidToken)?;
        if data.claims.typ != expected {
            return Err(Error::InvalidToken);
        }
        Ok(data.claims)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn service(pairs: &[(&str, &str)]) -> TokenService {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TokenService::new(&Settings::from_lookup(|k| map.get(k).cloned()).unwrap())
    }

    #[test]
    fn round_trip_and_kinds() {
        let tokens = service(&[]);
        let user = Uuid::now_v7();
        let pair = tokens.issue_pair(user, "s1").unwrap();
        let access = tokens
            .decode(&pair.access_token, TokenKind::Access)
            .unwrap();
        assert_eq!(access.sub, user.to_string());
        assert_eq!(access.sid, "s1");
        assert!(
            tokens
                .decode(&pair.access_token, TokenKind::Refresh)
                .is_err()
        );
        assert!(
            tokens
                .decode(&pair.refresh_token, TokenKind::Access)
                .is_err()
        );
        assert!(
            tokens
                .decode(&pair.refresh_token, TokenKind::Refresh)
                .is_ok()
        );
    }

    #[test]
    fn foreign_tokens_are_refused() {
        let tokens = service(&[]);
        let pair = tokens.issue_pair(Uuid::now_v7(), "s").unwrap();
        // Another secret, issuer or audience.
        for other in [
            service(&[("JWT_SECRET_KEY", "another-secret-another-secret-xx")]),
            service(&[("JWT_ISSUER", "someone-else")]),
            service(&[("JWT_AUDIENCE", "another-app")]),
        ] {
            assert!(other.decode(&pair.access_token, TokenKind::Access).is_err());
        }
        // alg: none with the same claims.
        let payload = pair.access_token.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(tokens.decode(&none, TokenKind::Access).is_err());
        assert!(tokens.decode("not-a-token", TokenKind::Access).is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let tokens = service(&[]);
        let old = unix_now() - 3600;
        let token = tokens
            .sign(
                Uuid::now_v7(),
                "s",
                TokenKind::Access,
                old,
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(tokens.decode(&token, TokenKind::Access).is_err());
    }
}
