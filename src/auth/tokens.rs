//! JWT access and refresh tokens, signed with the configured key ([`super::keys`]), with the
//! claims every replica checks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::TokenSettings;
use crate::error::Error;
use crate::keys::{KeySet, SigningAlgorithm, generate_pem};

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
    /// Not before (Unix seconds).
    pub nbf: u64,
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
    /// When the access token expires (Unix seconds).
    pub expires_at: u64,
}

/// Signs and checks tokens with the configured keys, algorithm, issuer and audience.
pub struct TokenService {
    keys: KeySet,
    header: Header,
    validation: Validation,
    issuer: String,
    audience: String,
    access_ttl: Duration,
    refresh_ttl: Duration,
}

impl TokenService {
    /// A service for the configured algorithm. ES256/EdDSA without `JWT_PRIVATE_KEY_FILE`
    /// (development only; production refuses it) get a key generated for this process.
    pub fn new(settings: &TokenSettings) -> Result<Self, String> {
        let algorithm = settings.jwt_algorithm;
        let keys = match (algorithm, &settings.jwt_private_key) {
            (SigningAlgorithm::Hs256, _) => KeySet::hmac(settings.jwt_secret.expose().as_bytes()),
            (_, Some(pem)) => {
                KeySet::asymmetric(algorithm, pem.expose(), &settings.jwt_previous_public_keys)?
            }
            (_, None) => {
                tracing::warn!(
                    algorithm = algorithm.name(),
                    "JWT_PRIVATE_KEY_FILE is unset: signing with a key generated for this process \
                     (tokens die with it; development only)"
                );
                KeySet::asymmetric(
                    algorithm,
                    &generate_pem(algorithm)?,
                    &settings.jwt_previous_public_keys,
                )?
            }
        };
        let mut header = Header::new(algorithm.jose());
        header.kid = keys.kid.clone();
        let mut validation = Validation::new(algorithm.jose());
        validation.algorithms = vec![algorithm.jose()];
        validation.leeway = settings.jwt_leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[settings.jwt_issuer.as_str()]);
        validation.set_audience(&[settings.jwt_audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        Ok(Self {
            keys,
            header,
            validation,
            issuer: settings.jwt_issuer.clone(),
            audience: settings.jwt_audience.clone(),
            access_ttl: settings.access_token_ttl,
            refresh_ttl: settings.refresh_token_ttl,
        })
    }

    /// The public keys as a JWKS document (empty for HS256).
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.jwks()
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
            expires_at: now + self.access_ttl.as_secs(),
        })
    }

    /// The pair that replaces refresh token `previous_jti` of session `sid`, spent at
    /// `spent_at` (Unix seconds): a fresh access token, and a refresh token whose id and dates
    /// derive from the spent one. Concurrent refreshes of one token within the grace window
    /// thus all receive the same successor (one chain per session), and the successor's own
    /// spent marker sees every later use of it.
    pub fn issue_successor(
        &self,
        user_id: Uuid,
        sid: &str,
        previous_jti: &str,
        spent_at: u64,
    ) -> Result<TokenPair, Error> {
        let jti = successor_jti(sid, previous_jti);
        let now = unix_now();
        Ok(TokenPair {
            access_token: self.sign(user_id, sid, TokenKind::Access, now, self.access_ttl)?,
            refresh_token: self.sign_with_id(
                user_id,
                sid,
                TokenKind::Refresh,
                spent_at,
                self.refresh_ttl,
                jti,
            )?,
            expires_in: self.access_ttl.as_secs(),
            expires_at: now + self.access_ttl.as_secs(),
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
        self.sign_with_id(
            user_id,
            sid,
            typ,
            now,
            ttl,
            crate::domain::ids::random_uuid().to_string(),
        )
    }

    fn sign_with_id(
        &self,
        user_id: Uuid,
        sid: &str,
        typ: TokenKind,
        now: u64,
        ttl: Duration,
        jti: String,
    ) -> Result<String, Error> {
        let claims = Claims {
            sub: user_id.to_string(),
            sid: sid.to_string(),
            jti,
            iat: now,
            nbf: now,
            exp: now + ttl.as_secs(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            typ,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.keys.encoding)
            .map_err(|e| Error::Internal(format!("signing a token failed: {e}")))
    }

    /// Checks algorithm (only the configured one), key (`kid`), signature, `exp`, `nbf`,
    /// `iss`, `aud` and the token kind.
    pub fn decode(&self, token: &str, expected: TokenKind) -> Result<Claims, Error> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Error::InvalidToken)?;
        if header.alg != self.keys.algorithm.jose() {
            return Err(Error::InvalidToken);
        }
        let key = self
            .keys
            .key_for(header.kid.as_deref())
            .ok_or(Error::InvalidToken)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|_| Error::InvalidToken)?;
        if data.claims.typ != expected {
            return Err(Error::InvalidToken);
        }
        Ok(data.claims)
    }
}

/// The id of the refresh token that succeeds `jti` in session `sid`: a hash of both, so every
/// replica derives the same one (it is no secret: the token's signature is what counts).
fn successor_jti(sid: &str, jti: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"otpgate refresh successor\0")
        .chain_update(sid.as_bytes())
        .chain_update(b"\0")
        .chain_update(jti.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
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

    fn service(pairs: &[(&str, &str)]) -> TokenService {
        TokenService::new(&crate::config::settings_from(pairs).unwrap().tokens).unwrap()
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
    fn successors_are_derived_from_the_spent_token() {
        let tokens = service(&[]);
        let user = Uuid::now_v7();
        let a = tokens
            .issue_successor(user, "s1", "jti-1", 1_700_000_000)
            .unwrap();
        let b = tokens
            .issue_successor(user, "s1", "jti-1", 1_700_000_000)
            .unwrap();
        // HS256 signs deterministically: the very same refresh token.
        assert_eq!(a.refresh_token, b.refresh_token);
        let other = tokens
            .issue_successor(user, "s1", "jti-2", 1_700_000_000)
            .unwrap();
        assert_ne!(a.refresh_token, other.refresh_token);
        assert_ne!(successor_jti("s1", "jti-1"), successor_jti("s2", "jti-1"));
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
