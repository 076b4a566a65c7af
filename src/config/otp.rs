//! One-time codes: length, lifetime, attempts, resend cooldown, the pepper that keys their
//! hashes, and which phone numbers are accepted.

use std::time::Duration;

use super::env::{ConfigError, Vars, invalid};
use crate::domain::secret::Secret;

/// The HMAC key of stored code hashes.
#[derive(Debug, Clone)]
pub enum Pepper {
    /// `OTP_PEPPER`.
    Set(Secret),
    /// Derived from `JWT_SECRET_KEY` (HMAC-SHA256 of a fixed label), when `OTP_PEPPER` is unset.
    FromJwtSecret(Secret),
}

/// Codes and the numbers they go to.
#[derive(Debug, Clone)]
pub struct OtpSettings {
    /// `OTP_LENGTH`: digits per code, 4 to 10.
    pub length: u32,
    /// `OTP_EXPIRY_MINUTES`: code lifetime, at most 10 minutes.
    pub ttl: Duration,
    /// `OTP_MAX_ATTEMPTS`: wrong tries before a code is burned.
    pub max_attempts: u32,
    /// `OTP_RESEND_SECONDS`: cooldown between two codes for one phone.
    pub resend: Duration,
    /// `OTP_PEPPER`, or where it comes from.
    pub pepper: Pepper,
    /// `EXPOSE_OTP`: return the code in the login response (development and tests only).
    pub expose: bool,
    /// `DEFAULT_REGION`: ISO 3166 region for national-format numbers; unset = E.164 only.
    pub default_region: Option<phonenumber::country::Id>,
}

impl OtpSettings {
    pub(crate) fn from_env(
        env: &Vars<'_>,
        production: bool,
        jwt_secret: &Secret,
    ) -> Result<Self, ConfigError> {
        let length: u32 = env.ranged("OTP_LENGTH", 6, 4..=10)?;
        let minutes: u64 = env.ranged("OTP_EXPIRY_MINUTES", 5, 1..=10)?;
        let max_attempts: u32 = env.ranged("OTP_MAX_ATTEMPTS", 5, 1..=20)?;
        let default_region = match env.get("DEFAULT_REGION") {
            None => None,
            Some(code) => Some(
                code.trim()
                    .to_ascii_uppercase()
                    .parse::<phonenumber::country::Id>()
                    .map_err(|_| {
                        invalid(
                            "DEFAULT_REGION",
                            format!("{code:?} is not an ISO 3166 region"),
                        )
                    })?,
            ),
        };
        Ok(Self {
            length,
            ttl: Duration::from_secs(minutes * 60),
            max_attempts,
            resend: Duration::from_secs(env.parse("OTP_RESEND_SECONDS", 60)?),
            pepper: match env.get("OTP_PEPPER") {
                Some(pepper) => Pepper::Set(Secret::new(pepper)),
                None => Pepper::FromJwtSecret(jwt_secret.clone()),
            },
            expose: env.bool("EXPOSE_OTP", !production)?,
            default_region,
        })
    }
}
