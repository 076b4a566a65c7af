//! Tokens: the signing algorithm and keys, the claims every replica checks, lifetimes, and the
//! refresh reuse grace.

use std::time::Duration;

use super::env::{ConfigError, Vars, invalid};
use crate::domain::secret::Secret;
use crate::keys::{KeySet, SigningAlgorithm};

/// The JWT secret used when `JWT_SECRET_KEY` is unset. Fine on a laptop; production refuses it.
pub const DEV_JWT_SECRET: &str = "otpgate-development-secret-do-not-use-in-production";

/// Signing, claims and lifetimes of access and refresh tokens.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `JWT_SECRET_KEY`: HMAC key of HS256 tokens.
    pub jwt_secret: Secret,
    /// `JWT_ALGORITHM`: `HS256`, `ES256` or `EdDSA`.
    pub jwt_algorithm: SigningAlgorithm,
    /// The PEM read from `JWT_PRIVATE_KEY_FILE` (ES256/EdDSA).
    pub jwt_private_key: Option<Secret>,
    /// The PEMs read from `JWT_PREVIOUS_PUBLIC_KEY_FILES`: still verify, never sign.
    pub jwt_previous_public_keys: Vec<String>,
    /// `JWT_LEEWAY_SECONDS`: clock skew allowed on `exp` and `nbf`.
    pub jwt_leeway_seconds: u64,
    /// `JWT_ISSUER`: the `iss` claim.
    pub jwt_issuer: String,
    /// `JWT_AUDIENCE`: the `aud` claim.
    pub jwt_audience: String,
    /// `ACCESS_TOKEN_EXPIRE_MINUTES`: access token lifetime.
    pub access_token_ttl: Duration,
    /// `REFRESH_TOKEN_EXPIRE_DAYS`: refresh token lifetime.
    pub refresh_token_ttl: Duration,
    /// `REFRESH_REUSE_GRACE_SECONDS`: a spent refresh token presented again this soon gets the
    /// same successor.
    pub refresh_reuse_grace: Duration,
}

impl TokenSettings {
    pub(crate) fn from_env(env: &Vars<'_>) -> Result<Self, ConfigError> {
        let access_minutes: u64 = env.ranged("ACCESS_TOKEN_EXPIRE_MINUTES", 30, 1..=10_080)?;
        let refresh_days: u64 = env.ranged("REFRESH_TOKEN_EXPIRE_DAYS", 7, 1..=3650)?;
        let jwt_algorithm = match env.get("JWT_ALGORITHM") {
            None => SigningAlgorithm::Hs256,
            Some(name) => SigningAlgorithm::parse(&name).unwrap_or_else(|| {
                env.report(invalid(
                    "JWT_ALGORITHM",
                    format!("expected HS256, ES256 or EdDSA, got {name:?}"),
                ));
                SigningAlgorithm::Hs256
            }),
        };
        let read = |var: &'static str, path: &str| {
            std::fs::read_to_string(path.trim())
                .map_err(|e| invalid(var, format!("cannot read {path:?}: {e}")))
        };
        let jwt_private_key = match env.get("JWT_PRIVATE_KEY_FILE") {
            Some(path) => Some(read("JWT_PRIVATE_KEY_FILE", &path)?),
            None => None,
        };
        let jwt_previous_public_keys = env
            .list("JWT_PREVIOUS_PUBLIC_KEY_FILES")
            .iter()
            .map(|path| read("JWT_PREVIOUS_PUBLIC_KEY_FILES", path))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(pem) = &jwt_private_key {
            if jwt_algorithm == SigningAlgorithm::Hs256 {
                return Err(invalid(
                    "JWT_ALGORITHM",
                    "set ES256 or EdDSA to use JWT_PRIVATE_KEY_FILE",
                ));
            }
            KeySet::asymmetric(jwt_algorithm, pem, &[])
                .map_err(|e| invalid("JWT_PRIVATE_KEY_FILE", e))?;
            KeySet::asymmetric(jwt_algorithm, pem, &jwt_previous_public_keys)
                .map_err(|e| invalid("JWT_PREVIOUS_PUBLIC_KEY_FILES", e))?;
        }
        Ok(Self {
            jwt_secret: Secret::new(
                env.get("JWT_SECRET_KEY")
                    .unwrap_or_else(|| DEV_JWT_SECRET.into()),
            ),
            jwt_algorithm,
            jwt_private_key: jwt_private_key.map(Secret::new),
            jwt_previous_public_keys,
            jwt_leeway_seconds: env.parse("JWT_LEEWAY_SECONDS", 5)?,
            jwt_issuer: env.get("JWT_ISSUER").unwrap_or_else(|| "otpgate".into()),
            jwt_audience: env.get("JWT_AUDIENCE").unwrap_or_else(|| "otpgate".into()),
            access_token_ttl: Duration::from_secs(access_minutes * 60),
            refresh_token_ttl: Duration::from_secs(refresh_days * 86_400),
            refresh_reuse_grace: Duration::from_secs(env.parse("REFRESH_REUSE_GRACE_SECONDS", 10)?),
        })
    }

    /// The longest any token lives (how long revocations are kept).
    pub fn longest_lifetime(&self) -> Duration {
        self.refresh_token_ttl.max(self.access_token_ttl)
    }
}
