//! The operator side: admin API keys and what a session records about its device.

use sha2::{Digest, Sha256};

use super::env::{ConfigError, Vars, invalid};

/// The shortest admin key accepted: 128 bits of randomness written as hex or base64.
pub const ADMIN_KEY_MIN_LEN: usize = 24;

/// How much of the client's address a session keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionIp {
    /// The network only: IPv4 /24, IPv6 /48 (the default).
    Truncated,
    /// The whole address.
    Full,
    /// Nothing.
    Off,
}

/// `ADMIN_API_KEYS` and session details.
#[derive(Clone)]
pub struct AdminSettings {
    /// SHA-256 of each key of `ADMIN_API_KEYS` (the keys themselves are not kept); empty: the
    /// admin API is off (404).
    pub key_hashes: Vec<[u8; 32]>,
    /// `SESSION_IP`: `truncated`, `full` or `off`.
    pub session_ip: SessionIp,
    /// `REAUTH_MAX_AGE_SECONDS`: how recent a session's login must be to change the account's
    /// number or delete it.
    pub reauth_max_age: std::time::Duration,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("keys", &self.key_hashes.len())
            .field("session_ip", &self.session_ip)
            .field("reauth_max_age", &self.reauth_max_age)
            .finish()
    }
}

/// SHA-256 of an admin key, as [`AdminSettings::key_hashes`] holds it.
pub fn admin_key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl AdminSettings {
    pub(crate) fn from_env(env: &Vars<'_>) -> Result<Self, ConfigError> {
        let keys = env.list("ADMIN_API_KEYS");
        if keys.iter().any(|k| k.len() < ADMIN_KEY_MIN_LEN) {
            return Err(invalid(
                "ADMIN_API_KEYS",
                format!(
                    "each key needs at least {ADMIN_KEY_MIN_LEN} characters \
                     (for example `openssl rand -hex 32`)"
                ),
            ));
        }
        if keys.iter().any(|k| super::is_example_secret(k)) {
            // Anyone can read the examples: such a key would open the admin API to anyone.
            return Err(invalid(
                "ADMIN_API_KEYS",
                "a key is a placeholder from otpgate's examples: set your own \
                 (for example `openssl rand -hex 32`)",
            ));
        }
        let session_ip = match env.get("SESSION_IP").map(|v| v.trim().to_ascii_lowercase()) {
            None => SessionIp::Truncated,
            Some(v) if v == "truncated" => SessionIp::Truncated,
            Some(v) if v == "full" => SessionIp::Full,
            Some(v) if v == "off" => SessionIp::Off,
            Some(v) => {
                return Err(invalid(
                    "SESSION_IP",
                    format!("expected truncated, full or off, got {v:?}"),
                ));
            }
        };
        let reauth: u64 = env.ranged("REAUTH_MAX_AGE_SECONDS", 300, 1..=86_400)?;
        Ok(Self {
            reauth_max_age: std::time::Duration::from_secs(reauth),
            key_hashes: keys.iter().map(|k| admin_key_hash(k)).collect(),
            session_ip,
        })
    }
}
