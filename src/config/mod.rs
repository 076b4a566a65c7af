//! Settings from the environment, plus an optional `.env` file in the working directory.
//!
//! Why this file is long: about half of it is the tests of the production guards, which look
//! across sections and so live with them here.
//!
//! Real environment variables win over `.env`. The seed's variable names (`DATABASE_URL`,
//! `JWT_SECRET_KEY`, `OTP_LENGTH`, `OTP_EXPIRY_MINUTES`, `SEND_OTP_VIA_SMS`, `DEBUG`,
//! `LOG_LEVEL`, …) keep their meaning, so an existing `.env` drops in. Every bad value stops
//! start-up with a message that names the variable.
//!
//! [`Settings`] is one section per concern, each read by its own file: [`server`], [`store`],
//! [`tokens`], [`otp`], [`limits`], [`delivery`], [`messaging`]; [`env`] reads the variables.
//! Each adapter and service takes its own section. The production guards, which look across
//! sections, are here.

pub mod delivery;
pub mod env;
pub mod limits;
pub mod messaging;
pub mod otp;
pub mod server;
pub mod store;
pub mod tokens;

pub use delivery::{
    DEFAULT_MESSAGE_TEMPLATE, DeliverySettings, TelegramSettings, TwilioSettings, WhatsappSettings,
};
pub use env::{ConfigError, SECRET_VARIABLES, env_lookup, parse_dotenv};
pub use limits::LimitSettings;
pub use messaging::MessagingSettings;
pub use otp::{OtpSettings, Pepper};
pub use server::{ServerSettings, check_origin};
pub use store::{DEFAULT_DATABASE_URL, RedisMode, StoreSettings, normalize_database_url};
pub use tokens::{DEV_JWT_SECRET, TokenSettings};

use env::{Vars, invalid, read_secret_files};

use crate::keys::SigningAlgorithm;

/// `development` (friendly defaults) or `production` (refuses unsafe settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Local work: OTP exposure on by default, in-process store allowed.
    Development,
    /// Guards on: strong JWT secret, Redis, no OTP exposure, a real delivery channel.
    Production,
}

/// Everything the service reads from its environment, one section per concern.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `ENVIRONMENT`: development or production.
    pub environment: Environment,
    /// Listening, connections, docs, metrics, logs.
    pub server: ServerSettings,
    /// The database and Redis.
    pub store: StoreSettings,
    /// Token signing, claims and lifetimes.
    pub tokens: TokenSettings,
    /// Codes and the numbers they go to.
    pub otp: OtpSettings,
    /// Quotas, the front door, client IPs, country lists.
    pub limits: LimitSettings,
    /// Providers, channel order and message text.
    pub delivery: DeliverySettings,
    /// Login by WhatsApp/Telegram message and the Telegram Login Widget.
    pub messaging: MessagingSettings,
}

impl Settings {
    /// Reads the process environment, then `.env` in the working directory for what is unset.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(env_lookup())
    }

    /// Builds settings from any key lookup (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let from_files = read_secret_files(&lookup)?;
        let lookup = |name: &str| lookup(name).or_else(|| from_files.get(name).cloned());
        let env = Vars(&lookup);
        let environment = match env
            .get("ENVIRONMENT")
            .as_deref()
            .map(str::to_ascii_lowercase)
        {
            None => Environment::Development,
            Some(v) if v == "development" || v == "dev" => Environment::Development,
            Some(v) if v == "production" || v == "prod" => Environment::Production,
            Some(v) => {
                return Err(invalid(
                    "ENVIRONMENT",
                    format!("expected development or production, got {v:?}"),
                ));
            }
        };
        let production = environment == Environment::Production;
        let tokens = TokenSettings::from_env(&env)?;
        let settings = Settings {
            environment,
            otp: OtpSettings::from_env(&env, production, &tokens.jwt_secret)?,
            limits: LimitSettings::from_env(&env)?,
            server: ServerSettings::from_env(&env, production)?,
            store: StoreSettings::from_env(&env)?,
            delivery: DeliverySettings::from_env(&env, production)?,
            messaging: MessagingSettings::from_env(&env)?,
            tokens,
        };
        settings.check_production()?;
        Ok(settings)
    }

    /// The production guards: no weak secret or pepper, no in-process store, no code exposure,
    /// no log-only delivery, no quota switched off, no open `/metrics`.
    fn check_production(&self) -> Result<(), ConfigError> {
        if self.environment != Environment::Production {
            return Ok(());
        }
        let tokens = &self.tokens;
        if tokens.jwt_algorithm != SigningAlgorithm::Hs256 && tokens.jwt_private_key.is_none() {
            return Err(invalid(
                "JWT_PRIVATE_KEY_FILE",
                "production needs a private key for ES256/EdDSA (otpgate keygen makes one)",
            ));
        }
        // The code pepper keys the HMAC of every stored code: a weak one lets whoever reads
        // Redis brute-force the codes. It is OTP_PEPPER, or derived from JWT_SECRET_KEY.
        match &self.otp.pepper {
            Pepper::Set(pepper) if pepper.expose().len() < 32 => {
                return Err(invalid(
                    "OTP_PEPPER",
                    "production needs at least 32 bytes (for example `openssl rand -hex 32`)",
                ));
            }
            Pepper::Set(_) if tokens.jwt_algorithm != SigningAlgorithm::Hs256 => {}
            _ => {
                // HS256 signs with JWT_SECRET_KEY; without OTP_PEPPER the pepper comes from it.
                let secret = tokens.jwt_secret.expose();
                if secret == DEV_JWT_SECRET {
                    return Err(invalid(
                        "JWT_SECRET_KEY",
                        "production needs its own secret (at least 32 bytes); the development \
                         default is refused",
                    ));
                }
                if secret.len() < 32 {
                    return Err(invalid(
                        "JWT_SECRET_KEY",
                        "production needs at least 32 bytes",
                    ));
                }
            }
        }
        let server = &self.server;
        if server.cors_origins.iter().any(|o| o == "*") {
            return Err(invalid(
                "CORS_ORIGINS",
                "`*` is refused in production: list the origins",
            ));
        }
        if self.store.embedded() {
            return Err(invalid(
                "REDIS_URL",
                "production needs Redis: the in-process store is not shared between replicas",
            ));
        }
        if self.otp.expose {
            return Err(invalid("EXPOSE_OTP", "must be false in production"));
        }
        let limits = &self.limits;
        let q = &limits.quotas;
        if !q.enabled {
            return Err(invalid("RATE_LIMIT_ENABLED", "must be true in production"));
        }
        for (var, value) in [
            ("RATE_LIMIT_PHONE_PER_HOUR", q.phone_per_hour),
            ("RATE_LIMIT_IP_PER_HOUR", q.ip_per_hour),
            ("RATE_LIMIT_PREFIX_PER_HOUR", q.prefix_per_hour),
            ("RATE_LIMIT_VERIFY_IP_PER_HOUR", q.verify_ip_per_hour),
            ("RATE_LIMIT_INTENT_IP_PER_HOUR", q.intent_ip_per_hour),
            (
                "RATE_LIMIT_INTENT_GLOBAL_PER_MINUTE",
                q.intent_global_per_minute,
            ),
            (
                "RATE_LIMIT_FRONTDOOR_PER_SECOND",
                limits.frontdoor_per_second,
            ),
        ] {
            if value == 0 {
                return Err(invalid(
                    var,
                    "0 switches this limit off, which production refuses: set a number of at \
                     least 1",
                ));
            }
        }
        if server
            .metrics_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < 16)
        {
            return Err(invalid(
                "METRICS_TOKEN",
                "production needs at least 16 characters (for example `openssl rand -hex 16`)",
            ));
        }
        if server.metrics_port.is_none() && server.metrics_token.is_none() {
            return Err(invalid(
                "METRICS_PORT",
                "production serves /metrics only on its own port (METRICS_PORT) or behind a \
                 token (METRICS_TOKEN); set one of them",
            ));
        }
        let d = &self.delivery;
        if d.twilio.is_none() && d.whatsapp.is_none() && d.telegram.is_none() {
            return Err(invalid(
                "SEND_OTP_VIA_SMS",
                "production needs a real delivery channel (SEND_OTP_VIA_SMS=true with Twilio, \
                 WhatsApp or Telegram); the development `log` channel is refused",
            ));
        }
        Ok(())
    }
}

/// What `otpgate migrate` needs: only the database URL (a migration job carries no JWT or
/// provider secrets, so the production guards of [`Settings`] do not apply).
pub fn database_url(lookup: impl Fn(&str) -> Option<String>) -> String {
    lookup("DATABASE_URL")
        .filter(|v| !v.trim().is_empty())
        .map(|url| normalize_database_url(&url))
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.into())
}

/// What `otpgate healthcheck` needs: the host and port the server listens on.
pub fn listen_address(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(String, u16), ConfigError> {
    let env = Vars(&lookup);
    Ok((
        env.get("HOST").unwrap_or_else(|| "0.0.0.0".into()),
        env.parse("PORT", 8000)?,
    ))
}

/// Settings from `KEY=value` pairs alone (unit tests of every module).
#[cfg(test)]
pub(crate) fn settings_from(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::from_lookup(|k| map.get(k).cloned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::channel::Channel;

    use super::settings_from as settings;

    #[test]
    fn defaults_need_nothing() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.server.port, 8000);
        assert_eq!(s.server.host, "0.0.0.0");
        assert_eq!(s.store.database_url.expose(), DEFAULT_DATABASE_URL);
        assert!(s.store.embedded());
        assert!(s.otp.expose);
        assert_eq!(s.otp.length, 6);
        assert_eq!(s.otp.ttl, Duration::from_secs(300));
        assert!(s.limits.quotas.enabled);
        assert_eq!(
            (s.limits.quotas.phone_per_hour, s.limits.quotas.ip_per_hour),
            (5, 30)
        );
        assert_eq!(s.limits.frontdoor_per_second, 50);
    }

    #[test]
    fn delivery_settings_are_checked() {
        let var = |pairs: &[(&str, &str)]| settings(pairs).unwrap_err().var;
        assert_eq!(var(&[("SEND_OTP_VIA_SMS", "true")]), "TWILIO_PHONE_NUMBER");
        assert_eq!(
            var(&[
                ("SEND_OTP_VIA_SMS", "true"),
                ("TWILIO_PHONE_NUMBER", "+15005550006")
            ]),
            "TWILIO_ACCOUNT_SID"
        );
        assert_eq!(
            var(&[("WHATSAPP_ACCESS_TOKEN", "t")]),
            "WHATSAPP_PHONE_NUMBER_ID"
        );
        assert_eq!(
            var(&[("OTP_CHANNEL_ORDER", "sms,pigeon")]),
            "OTP_CHANNEL_ORDER"
        );
        assert_eq!(
            var(&[("OTP_ANDROID_APP_HASH", "short")]),
            "OTP_ANDROID_APP_HASH"
        );
        assert_eq!(
            var(&[("OTP_MESSAGE_TEMPLATE", "no code here")]),
            "OTP_MESSAGE_TEMPLATE"
        );
        let twilio = [
            ("SEND_OTP_VIA_SMS", "true"),
            ("TWILIO_PHONE_NUMBER", "+15005550006"),
            ("TWILIO_ACCOUNT_SID", "AC1"),
            ("TWILIO_AUTH_TOKEN", "x"),
        ];
        assert!(settings(&twilio).unwrap().delivery.twilio.is_some());
        let mut bad_base = twilio.to_vec();
        bad_base.push(("TWILIO_API_BASE", "ftp://x"));
        assert_eq!(var(&bad_base), "TWILIO_API_BASE");
        let dev = settings(&[]).unwrap();
        assert!(dev.delivery.log_channel && dev.delivery.twilio.is_none());
        assert_eq!(dev.delivery.channel_order, vec![Channel::Sms]);
        // Production with WhatsApp only: fine, and no log channel.
        let prod = settings(&[
            ("ENVIRONMENT", "production"),
            ("JWT_SECRET_KEY", "0123456789abcdef0123456789abcdef"),
            ("REDIS_URL", "redis://127.0.0.1"),
            ("WHATSAPP_ACCESS_TOKEN", "t"),
            ("WHATSAPP_PHONE_NUMBER_ID", "1"),
            ("METRICS_PORT", "9090"),
        ])
        .unwrap();
        assert!(!prod.delivery.log_channel);
        assert!(
            !format!("{prod:?}").contains("\"t\""),
            "tokens stay out of Debug output"
        );
    }

    #[test]
    fn secrets_come_from_files_too() {
        let dir = std::env::temp_dir().join(format!("otpgate-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("jwt");
        std::fs::write(&file, "from-a-file-from-a-file-from-a-file\n").unwrap();
        let path = file.to_string_lossy().to_string();
        let s = settings(&[("JWT_SECRET_KEY_FILE", path.as_str())]).unwrap();
        assert_eq!(
            s.tokens.jwt_secret.expose(),
            "from-a-file-from-a-file-from-a-file"
        );
        // The variable itself wins over its file.
        let s = settings(&[
            ("JWT_SECRET_KEY_FILE", path.as_str()),
            ("JWT_SECRET_KEY", "direct"),
        ])
        .unwrap();
        assert_eq!(s.tokens.jwt_secret.expose(), "direct");
        let err = settings(&[("REDIS_URL_FILE", "/nonexistent/otpgate")]).unwrap_err();
        assert_eq!(err.var, "REDIS_URL");
        assert!(err.message.contains("REDIS_URL_FILE"));
    }

    #[test]
    fn signing_keys_are_checked() {
        let var = |pairs: &[(&str, &str)]| settings(pairs).unwrap_err().var;
        assert_eq!(var(&[("JWT_ALGORITHM", "RS256")]), "JWT_ALGORITHM");
        assert_eq!(
            var(&[
                ("JWT_ALGORITHM", "ES256"),
                ("JWT_PRIVATE_KEY_FILE", "/nonexistent")
            ]),
            "JWT_PRIVATE_KEY_FILE"
        );
        let prod = [
            ("ENVIRONMENT", "production"),
            ("JWT_ALGORITHM", "ES256"),
            ("JWT_SECRET_KEY", "0123456789abcdef0123456789abcdef"),
            ("REDIS_URL", "redis://127.0.0.1"),
            ("TELEGRAM_BOT_TOKEN", "1:x"),
        ];
        assert_eq!(
            var(&prod),
            "JWT_PRIVATE_KEY_FILE",
            "production needs the key file"
        );
        assert_eq!(
            var(&[
                ("ENVIRONMENT", "production"),
                ("CORS_ORIGINS", "*"),
                ("JWT_SECRET_KEY", "0123456789abcdef0123456789abcdef"),
                ("REDIS_URL", "redis://x"),
                ("TELEGRAM_BOT_TOKEN", "1:x")
            ]),
            "CORS_ORIGINS"
        );
    }

    #[test]
    fn lists_parse() {
        let s = settings(&[
            ("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1"),
            ("OTP_ALLOWED_COUNTRIES", "in,US"),
            ("COUNTRY_DAILY_CAPS", "IN=50000,GB=2000"),
        ])
        .unwrap();
        assert_eq!(s.limits.trusted_proxies.len(), 2);
        assert_eq!(s.limits.allowed_countries, vec!["IN", "US"]);
        assert_eq!(s.limits.quotas.country_daily_caps.len(), 2);
        assert!(
            !settings(&[("RATE_LIMIT_ENABLED", "false")])
                .unwrap()
                .limits
                .quotas
                .enabled
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        assert_eq!(settings(&[("PORT", "eighty")]).unwrap_err().var, "PORT");
        assert_eq!(
            settings(&[("OTP_LENGTH", "3")]).unwrap_err().var,
            "OTP_LENGTH"
        );
        assert_eq!(
            settings(&[("OTP_EXPIRY_MINUTES", "11")]).unwrap_err().var,
            "OTP_EXPIRY_MINUTES"
        );
        assert_eq!(settings(&[("DEBUG", "maybe")]).unwrap_err().var, "DEBUG");
        assert_eq!(
            settings(&[("DEFAULT_REGION", "XX")]).unwrap_err().var,
            "DEFAULT_REGION"
        );
    }

    #[test]
    fn production_guards() {
        let strong = "0123456789abcdef0123456789abcdef";
        let base = [
            ("ENVIRONMENT", "production"),
            ("JWT_SECRET_KEY", strong),
            ("REDIS_URL", "redis://127.0.0.1"),
            ("SEND_OTP_VIA_SMS", "true"),
            ("TWILIO_ACCOUNT_SID", "AC123"),
            ("TWILIO_AUTH_TOKEN", "token"),
            ("TWILIO_PHONE_NUMBER", "+15005550006"),
            ("METRICS_PORT", "9090"),
        ];
        assert!(settings(&base).is_ok());
        assert!(!settings(&base).unwrap().otp.expose);
        let with = |k: &'static str, v: &'static str| {
            let mut pairs: Vec<_> = base.iter().copied().filter(|(key, _)| *key != k).collect();
            pairs.push((k, v));
            settings(&pairs)
        };
        assert_eq!(
            with("JWT_SECRET_KEY", DEV_JWT_SECRET).unwrap_err().var,
            "JWT_SECRET_KEY"
        );
        assert_eq!(
            with("JWT_SECRET_KEY", "short").unwrap_err().var,
            "JWT_SECRET_KEY"
        );
        assert_eq!(with("REDIS_URL", "").unwrap_err().var, "REDIS_URL");
        assert_eq!(with("EXPOSE_OTP", "true").unwrap_err().var, "EXPOSE_OTP");
        assert_eq!(
            with("SEND_OTP_VIA_SMS", "false").unwrap_err().var,
            "SEND_OTP_VIA_SMS"
        );
        let no_secret: Vec<_> = base
            .iter()
            .copied()
            .filter(|(k, _)| *k != "JWT_SECRET_KEY")
            .collect();
        assert_eq!(settings(&no_secret).unwrap_err().var, "JWT_SECRET_KEY");
    }

    #[test]
    fn production_refuses_a_weak_pepper_whatever_the_algorithm() {
        let strong = "0123456789abcdef0123456789abcdef";
        let dir = std::env::temp_dir().join(format!("otpgate-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("es256.pem");
        std::fs::write(
            &key,
            crate::keys::generate_pem(SigningAlgorithm::Es256).unwrap(),
        )
        .unwrap();
        let key = key.display().to_string();
        let production = |extra: &[(&'static str, &str)]| {
            let mut pairs: Vec<(&str, &str)> = vec![
                ("ENVIRONMENT", "production"),
                ("REDIS_URL", "redis://127.0.0.1"),
                ("SEND_OTP_VIA_SMS", "true"),
                ("TWILIO_ACCOUNT_SID", "AC123"),
                ("TWILIO_AUTH_TOKEN", "token"),
                ("TWILIO_PHONE_NUMBER", "+15005550006"),
                ("METRICS_PORT", "9090"),
            ];
            pairs.extend_from_slice(extra);
            settings(&pairs)
        };
        // HS256: a short pepper is refused even with a strong signing secret.
        assert_eq!(
            production(&[("JWT_SECRET_KEY", strong), ("OTP_PEPPER", "x")])
                .unwrap_err()
                .var,
            "OTP_PEPPER"
        );
        assert!(production(&[("JWT_SECRET_KEY", strong), ("OTP_PEPPER", strong)]).is_ok());
        // ES256: the same.
        let es = [
            ("JWT_ALGORITHM", "ES256"),
            ("JWT_PRIVATE_KEY_FILE", key.as_str()),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = es.to_vec();
            pairs.extend_from_slice(extra);
            production(&pairs)
        };
        assert_eq!(with(&[("OTP_PEPPER", "x")]).unwrap_err().var, "OTP_PEPPER");
        assert_eq!(
            with(&[("OTP_PEPPER", "x"), ("JWT_SECRET_KEY", strong)])
                .unwrap_err()
                .var,
            "OTP_PEPPER"
        );
        assert!(with(&[("OTP_PEPPER", strong)]).is_ok());
        // No pepper: it is derived from JWT_SECRET_KEY, which must then be strong.
        assert_eq!(with(&[]).unwrap_err().var, "JWT_SECRET_KEY");
        assert_eq!(
            with(&[("JWT_SECRET_KEY", "short")]).unwrap_err().var,
            "JWT_SECRET_KEY"
        );
        assert!(with(&[("JWT_SECRET_KEY", strong)]).is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn production_refuses_switched_off_limits_and_open_metrics() {
        let strong = "0123456789abcdef0123456789abcdef";
        let base = vec![
            ("ENVIRONMENT", "production"),
            ("JWT_SECRET_KEY", strong),
            ("REDIS_URL", "redis://127.0.0.1"),
            ("SEND_OTP_VIA_SMS", "true"),
            ("TWILIO_ACCOUNT_SID", "AC123"),
            ("TWILIO_AUTH_TOKEN", "token"),
            ("TWILIO_PHONE_NUMBER", "+15005550006"),
            ("METRICS_PORT", "9090"),
        ];
        let ok = settings(&base).unwrap();
        assert!(
            !ok.server.docs_enabled,
            "docs are off in production by default"
        );
        for var in [
            "RATE_LIMIT_PHONE_PER_HOUR",
            "RATE_LIMIT_IP_PER_HOUR",
            "RATE_LIMIT_PREFIX_PER_HOUR",
            "RATE_LIMIT_VERIFY_IP_PER_HOUR",
            "RATE_LIMIT_INTENT_IP_PER_HOUR",
            "RATE_LIMIT_INTENT_GLOBAL_PER_MINUTE",
            "RATE_LIMIT_FRONTDOOR_PER_SECOND",
        ] {
            let mut pairs = base.clone();
            pairs.push((var, "0"));
            assert_eq!(settings(&pairs).unwrap_err().var, var);
        }
        let open: Vec<_> = base
            .iter()
            .copied()
            .filter(|(k, _)| *k != "METRICS_PORT")
            .collect();
        assert_eq!(settings(&open).unwrap_err().var, "METRICS_PORT");
        let mut with_token = open.clone();
        with_token.push(("METRICS_TOKEN", "scrape-me"));
        assert_eq!(settings(&with_token).unwrap_err().var, "METRICS_TOKEN");
        with_token.pop();
        with_token.push(("METRICS_TOKEN", "0123456789abcdef-scrape"));
        assert!(settings(&with_token).is_ok());
        // Development keeps 0 = off, and the docs.
        let dev = settings(&[("RATE_LIMIT_IP_PER_HOUR", "0")]).unwrap();
        assert_eq!(dev.limits.quotas.ip_per_hour, 0);
        assert!(dev.server.docs_enabled);
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let s = settings(&[
            ("JWT_SECRET_KEY", "hunter2-hunter2"),
            ("DATABASE_URL", "postgres://u:dbhunter2@db/x"),
            ("REDIS_URL", "redis://:redishunter2@cache:6379"),
        ])
        .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
