//! Settings from the environment, plus an optional `.env` file in the working directory.
//!
//! Real environment variables win over `.env`. The seed's variable names (`DATABASE_URL`,
//! `JWT_SECRET_KEY`, `OTP_LENGTH`, `OTP_EXPIRY_MINUTES`, `SEND_OTP_VIA_SMS`, `DEBUG`,
//! `LOG_LEVEL`, …) keep their meaning, so an existing `.env` drops in. Every bad value stops
//! start-up with a message that names the variable.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::auth::keys::{KeySet, SigningAlgorithm};
use crate::delivery::Channel;
use crate::ratelimit::{Cidr, QuotaPolicy, parse_country, parse_country_caps};

/// The JWT secret used when `JWT_SECRET_KEY` is unset. Fine on a laptop; production refuses it.
pub const DEV_JWT_SECRET: &str = "otpgate-development-secret-do-not-use-in-production";

/// The SQLite file used when `DATABASE_URL` is unset.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://otpgate.db?mode=rwc";

/// A configuration value that was missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {var}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn invalid(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// A secret value: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Twilio SMS (`SEND_OTP_VIA_SMS=true`).
#[derive(Debug, Clone)]
pub struct TwilioSettings {
    /// `TWILIO_ACCOUNT_SID`.
    pub account_sid: String,
    /// `TWILIO_AUTH_TOKEN`.
    pub auth_token: Secret,
    /// `TWILIO_PHONE_NUMBER`: the sender number (`From`).
    pub from: Option<String>,
    /// `TWILIO_MESSAGING_SERVICE_SID`: send through a messaging service instead of `From`.
    pub messaging_service_sid: Option<String>,
    /// `TWILIO_API_BASE`.
    pub api_base: String,
}

/// WhatsApp Cloud API.
#[derive(Debug, Clone)]
pub struct WhatsappSettings {
    /// `WHATSAPP_ACCESS_TOKEN`.
    pub access_token: Secret,
    /// `WHATSAPP_PHONE_NUMBER_ID`.
    pub phone_number_id: String,
    /// `WHATSAPP_OTP_TEMPLATE`: an approved authentication template; unset = text messages.
    pub template: Option<String>,
    /// `WHATSAPP_TEMPLATE_LANGUAGE`.
    pub template_language: String,
    /// `WHATSAPP_API_BASE`.
    pub api_base: String,
}

/// Telegram Bot API.
#[derive(Debug, Clone)]
pub struct TelegramSettings {
    /// `TELEGRAM_BOT_TOKEN`.
    pub bot_token: Secret,
    /// `TELEGRAM_API_BASE`.
    pub api_base: String,
}

/// How codes are delivered.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// SMS through Twilio; `None` = the `sms` channel writes to the log (development) or is
    /// off (production).
    pub twilio: Option<TwilioSettings>,
    /// WhatsApp, when configured.
    pub whatsapp: Option<WhatsappSettings>,
    /// Telegram, when configured.
    pub telegram: Option<TelegramSettings>,
    /// `DELIVERY_TIMEOUT_MS`: bound on one provider request.
    pub timeout: Duration,
    /// `OTP_CHANNEL_ORDER`: default channel first, then the fallbacks.
    pub channel_order: Vec<Channel>,
    /// `OTP_MESSAGE_TEMPLATE`: with `{code}`, `{minutes}`, `{app}`.
    pub message_template: String,
    /// `APP_NAME`: `{app}` in messages.
    pub app_name: String,
    /// `OTP_ANDROID_APP_HASH`: the 11-character SMS Retriever hash line.
    pub android_app_hash: Option<String>,
    /// `OTP_WEBOTP_DOMAIN`: adds the WebOTP line `@domain #code`.
    pub webotp_domain: Option<String>,
    /// Whether the development `log` channel may stand in for SMS (never in production).
    pub log_channel: bool,
}

/// The default `OTP_MESSAGE_TEMPLATE`.
pub const DEFAULT_MESSAGE_TEMPLATE: &str =
    "{code} is your {app} verification code. It expires in {minutes} minutes. Do not share it.";

/// `development` (friendly defaults) or `production` (refuses unsafe settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Local work: OTP exposure on by default, in-process store allowed.
    Development,
    /// Guards on: strong JWT secret, Redis, no OTP exposure, a real delivery channel.
    Production,
}

/// How otpgate reaches Redis (`REDIS_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// One Redis (`REDIS_URL` is one URL).
    Standalone,
    /// Redis Cluster (`REDIS_URL` lists seed nodes).
    Cluster,
    /// A primary found through Sentinel (`REDIS_URL` lists the sentinels).
    Sentinel,
}

impl RedisMode {
    /// The mode's name, as `REDIS_MODE` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Cluster => "cluster",
            Self::Sentinel => "sentinel",
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the development default).
    Pretty,
    /// One JSON object per line (the production default).
    Json,
}

/// Login by message: webhooks, login intents and the Telegram Login Widget.
#[derive(Debug, Clone)]
pub struct MessagingSettings {
    /// `WHATSAPP_VERIFY_TOKEN`: the token Meta echoes in the webhook handshake.
    pub whatsapp_verify_token: Option<Secret>,
    /// `WHATSAPP_WEBHOOK_SECRET` (the app secret): key of `X-Hub-Signature-256`.
    pub whatsapp_webhook_secret: Option<Secret>,
    /// `WHATSAPP_BUSINESS_NUMBER`: the number users message, digits with country code.
    pub whatsapp_business_number: Option<String>,
    /// `TELEGRAM_WEBHOOK_SECRET`: `secret_token` given to `setWebhook`.
    pub telegram_webhook_secret: Option<Secret>,
    /// `TELEGRAM_BOT_USERNAME`: the bot's username, for `t.me` links.
    pub telegram_bot_username: Option<String>,
    /// `INTENT_EXPIRY_SECONDS`: lifetime of a login intent.
    pub intent_ttl: Duration,
    /// `TELEGRAM_AUTH_MAX_AGE_SECONDS`: oldest Login Widget `auth_date` accepted.
    pub telegram_auth_max_age: Duration,
    /// `SUPPORT_CONTACT`: where users report a login that was not theirs.
    pub support_contact: Option<String>,
    /// `WHATSAPP_MAX_MESSAGE_AGE_SECONDS`: inbound messages older than this, by their own
    /// timestamp, are ignored (a captured webhook body cannot be replayed later).
    pub whatsapp_max_message_age: Duration,
}

/// Everything the service reads from its environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HOST`: address to listen on.
    pub host: String,
    /// `PORT`: port to listen on (0 picks a free one).
    pub port: u16,
    /// `ENVIRONMENT`: development or production.
    pub environment: Environment,
    /// `DATABASE_URL`: `postgres://…` or `sqlite://…`.
    pub database_url: Secret,
    /// `DATABASE_MAX_CONNECTIONS`: pool size (SQLite always uses 1).
    pub database_max_connections: u32,
    /// `REDIS_URL`: shared store; unset means the in-process store. One URL in standalone
    /// mode, a comma-separated list of seed nodes (cluster) or sentinels (sentinel).
    pub redis_url: Option<Secret>,
    /// `REDIS_MODE`: standalone, cluster or sentinel.
    pub redis_mode: RedisMode,
    /// The URLs of `REDIS_URL`, checked.
    pub redis_nodes: Vec<Secret>,
    /// `REDIS_SENTINEL_MASTER`: the primary's name in sentinel mode.
    pub redis_sentinel_master: Option<String>,
    /// `REDIS_KEY_PREFIX`: prefix of every Redis key, to share one Redis between deployments.
    pub redis_key_prefix: String,
    /// `REDIS_CONNECTIONS`: multiplexed connections per replica (`REDIS_POOL_SIZE` is read too).
    pub redis_pool_size: usize,
    /// `REDIS_TIMEOUT_MS`: upper bound on one store operation.
    pub redis_timeout: Duration,
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
    /// `REFRESH_REUSE_GRACE_SECONDS`: a spent refresh token still rotates this long after use.
    pub refresh_reuse_grace: Duration,
    /// `OTP_LENGTH`: digits per code, 4 to 10.
    pub otp_length: u32,
    /// `OTP_EXPIRY_MINUTES`: code lifetime, at most 10 minutes.
    pub otp_ttl: Duration,
    /// `OTP_MAX_ATTEMPTS`: wrong tries before a code is burned.
    pub otp_max_attempts: u32,
    /// `OTP_RESEND_SECONDS`: cooldown between two codes for one phone.
    pub otp_resend: Duration,
    /// `OTP_PEPPER`: HMAC key for stored code hashes; derived from the JWT secret when unset.
    pub otp_pepper: Option<Secret>,
    /// `EXPOSE_OTP`: return the code in the login response (development and tests only).
    pub expose_otp: bool,
    /// `DEFAULT_REGION`: ISO 3166 region for national-format numbers; unset = E.164 only.
    pub default_region: Option<phonenumber::country::Id>,
    /// `SEND_OTP_VIA_SMS`: the seed's switch; false keeps codes on the `log` channel.
    pub send_otp_via_sms: bool,
    /// Providers, channel order and message text.
    pub delivery: DeliverySettings,
    /// `RUN_MIGRATIONS`: migrate the database at start-up.
    pub run_migrations: bool,
    /// `LOG_LEVEL`: a level or a tracing filter directive.
    pub log_level: String,
    /// `LOG_FORMAT`: `pretty` or `json`.
    pub log_format: LogFormat,
    /// `DEBUG`: the seed's switch; makes `debug` the default log level.
    pub debug: bool,
    /// `SHUTDOWN_GRACE_SECONDS`: time in-flight requests get after SIGTERM.
    pub shutdown_grace: Duration,
    /// `RATE_LIMIT_FRONTDOOR_PER_SECOND`: requests per second per client IP on `/api/*`, per
    /// replica (0 = off).
    pub frontdoor_per_second: u32,
    /// `RATE_LIMIT_FRONTDOOR_BURST`: burst of the front door.
    pub frontdoor_burst: u32,
    /// Cluster-wide quotas (`RATE_LIMIT_*`, `DAILY_SEND_CAP`, `COUNTRY_DAILY_CAPS`).
    pub quotas: QuotaPolicy,
    /// `TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// `OTP_ALLOWED_COUNTRIES`: when not empty, codes go only to these countries.
    pub allowed_countries: Vec<String>,
    /// `OTP_BLOCKED_COUNTRIES`: codes never go to these countries.
    pub blocked_countries: Vec<String>,
    /// `CORS_ORIGINS`: browser origins allowed to call the API (`*` only in development).
    pub cors_origins: Vec<String>,
    /// `BODY_LIMIT_BYTES`: largest request body (413 beyond).
    pub body_limit_bytes: usize,
    /// `HTTP_IDLE_TIMEOUT_SECONDS`: connections without traffic for this long are closed.
    pub http_idle_timeout: Duration,
    /// `METRICS_PORT`: serve `/metrics` on this port (same host) instead of the main one.
    pub metrics_port: Option<u16>,
    /// Login by WhatsApp/Telegram message and the Telegram Login Widget.
    pub messaging: MessagingSettings,
    /// `METRICS_TOKEN`: when set, `/metrics` wants `Authorization: Bearer <token>`.
    pub metrics_token: Option<Secret>,
    /// `DOCS_ENABLED`: serve `/docs`, `/redoc` and `/openapi.json` (default: on in
    /// development, off in production).
    pub docs_enabled: bool,
    /// `RATE_LIMIT_IPV6_PREFIX`: bits of an IPv6 address that count as one client (default 64).
    pub ipv6_prefix: u8,
    /// `HTTP_HEADER_TIMEOUT_SECONDS`: time a client has to send a complete request head, from
    /// accept or from the first byte after the previous response.
    pub http_header_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS`: open connections per replica; more are closed at accept.
    pub http_max_connections: usize,
    /// `HTTP_MAX_CONNECTIONS_PER_IP`: open connections per client address (trusted proxies
    /// are exempt; 0 = no per-address cap).
    pub http_max_connections_per_ip: usize,
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
        let debug = env.bool("DEBUG", false)?;

        let otp_length: u32 = env.ranged("OTP_LENGTH", 6, 4..=10)?;
        let otp_minutes: u64 = env.ranged("OTP_EXPIRY_MINUTES", 5, 1..=10)?;
        let otp_max_attempts: u32 = env.ranged("OTP_MAX_ATTEMPTS", 5, 1..=20)?;
        let access_minutes: u64 = env.parse("ACCESS_TOKEN_EXPIRE_MINUTES", 30)?;
        if access_minutes == 0 {
            return Err(invalid("ACCESS_TOKEN_EXPIRE_MINUTES", "must be at least 1"));
        }
        let refresh_days: u64 = env.parse("REFRESH_TOKEN_EXPIRE_DAYS", 7)?;
        if refresh_days == 0 {
            return Err(invalid("REFRESH_TOKEN_EXPIRE_DAYS", "must be at least 1"));
        }
        let redis_timeout_ms: u64 = env.parse("REDIS_TIMEOUT_MS", 1000)?;
        if redis_timeout_ms == 0 {
            return Err(invalid("REDIS_TIMEOUT_MS", "must be at least 1"));
        }

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

        let log_format = match env
            .get("LOG_FORMAT")
            .as_deref()
            .map(str::to_ascii_lowercase)
        {
            None if production => LogFormat::Json,
            None => LogFormat::Pretty,
            Some(v) if v == "json" => LogFormat::Json,
            Some(v) if v == "pretty" || v == "text" => LogFormat::Pretty,
            Some(v) => {
                return Err(invalid(
                    "LOG_FORMAT",
                    format!("expected json or pretty, got {v:?}"),
                ));
            }
        };

        let rate_limit_enabled = env.bool("RATE_LIMIT_ENABLED", true)?;
        let verify_failures: u32 =
            env.parse("RATE_LIMIT_VERIFY_FAILURES_PER_PHONE_PER_HOUR", 20)?;
        if !(1..=100).contains(&verify_failures) {
            return Err(invalid(
                "RATE_LIMIT_VERIFY_FAILURES_PER_PHONE_PER_HOUR",
                "must be between 1 and 100 (NIST SP 800-63B caps failed attempts at 100)",
            ));
        }
        let quotas = QuotaPolicy {
            enabled: rate_limit_enabled,
            phone_per_hour: env.parse("RATE_LIMIT_PHONE_PER_HOUR", 5)?,
            ip_per_hour: env.parse("RATE_LIMIT_IP_PER_HOUR", 30)?,
            prefix_per_hour: env.parse("RATE_LIMIT_PREFIX_PER_HOUR", 50)?,
            verify_ip_per_hour: env.parse("RATE_LIMIT_VERIFY_IP_PER_HOUR", 60)?,
            verify_failures_per_phone_per_hour: verify_failures,
            intent_ip_per_hour: env.parse("RATE_LIMIT_INTENT_IP_PER_HOUR", 30)?,
            intent_global_per_minute: env.parse("RATE_LIMIT_INTENT_GLOBAL_PER_MINUTE", 3000)?,
            daily_send_cap: env.parse("DAILY_SEND_CAP", 0)?,
            country_daily_caps: match env.get("COUNTRY_DAILY_CAPS") {
                None => Vec::new(),
                Some(text) => {
                    parse_country_caps(&text).map_err(|e| invalid("COUNTRY_DAILY_CAPS", e))?
                }
            },
        };
        let trusted_proxies = env
            .list("TRUSTED_PROXIES")
            .iter()
            .map(|c| c.parse::<Cidr>().map_err(|e| invalid("TRUSTED_PROXIES", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let countries = |var: &'static str| {
            env.list(var)
                .iter()
                .map(|c| parse_country(c).map_err(|e| invalid(var, e)))
                .collect::<Result<Vec<_>, _>>()
        };
        let allowed_countries = countries("OTP_ALLOWED_COUNTRIES")?;
        let blocked_countries = countries("OTP_BLOCKED_COUNTRIES")?;

        let jwt_algorithm = match env.get("JWT_ALGORITHM") {
            None => SigningAlgorithm::Hs256,
            Some(name) => SigningAlgorithm::parse(&name).ok_or_else(|| {
                invalid(
                    "JWT_ALGORITHM",
                    format!("expected HS256, ES256 or EdDSA, got {name:?}"),
                )
            })?,
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

        let ipv6_prefix: u8 = env.ranged("RATE_LIMIT_IPV6_PREFIX", 64, 32..=128)?;
        let header_timeout: u64 = env.ranged("HTTP_HEADER_TIMEOUT_SECONDS", 10, 1..=300)?;
        let cors_origins = env.list("CORS_ORIGINS");
        for origin in &cors_origins {
            check_origin(origin).map_err(|e| invalid("CORS_ORIGINS", e))?;
        }

        let (redis_mode, redis_nodes, redis_sentinel_master) = redis_settings(&env)?;

        let send_otp_via_sms = env.bool("SEND_OTP_VIA_SMS", false)?;
        let delivery = delivery_settings(&env, send_otp_via_sms, production)?;

        let settings = Settings {
            host: env.get("HOST").unwrap_or_else(|| "0.0.0.0".into()),
            port: env.parse("PORT", 8000)?,
            environment,
            database_url: env
                .get("DATABASE_URL")
                .map(|url| Secret::new(normalize_database_url(&url)))
                .unwrap_or_else(|| Secret::new(DEFAULT_DATABASE_URL)),
            database_max_connections: env.parse("DATABASE_MAX_CONNECTIONS", 10)?,
            redis_url: env.get("REDIS_URL").map(Secret::new),
            redis_mode,
            redis_nodes,
            redis_sentinel_master,
            redis_key_prefix: env
                .get("REDIS_KEY_PREFIX")
                .unwrap_or_else(|| "otpgate:".into()),
            redis_pool_size: match env.get("REDIS_CONNECTIONS") {
                Some(_) => env.parse("REDIS_CONNECTIONS", 2)?,
                None => env.parse("REDIS_POOL_SIZE", 2)?,
            },
            redis_timeout: Duration::from_millis(redis_timeout_ms),
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
            otp_length,
            otp_ttl: Duration::from_secs(otp_minutes * 60),
            otp_max_attempts,
            otp_resend: Duration::from_secs(env.parse("OTP_RESEND_SECONDS", 60)?),
            otp_pepper: env.get("OTP_PEPPER").map(Secret::new),
            expose_otp: env.bool("EXPOSE_OTP", !production)?,
            default_region,
            send_otp_via_sms,
            delivery,
            run_migrations: env.bool("RUN_MIGRATIONS", true)?,
            log_level: env
                .get("LOG_LEVEL")
                .unwrap_or_else(|| if debug { "debug" } else { "info" }.into())
                .to_ascii_lowercase(),
            log_format,
            debug,
            shutdown_grace: Duration::from_secs(env.parse("SHUTDOWN_GRACE_SECONDS", 20)?),
            frontdoor_per_second: if rate_limit_enabled {
                env.parse("RATE_LIMIT_FRONTDOOR_PER_SECOND", 50)?
            } else {
                0
            },
            frontdoor_burst: env.parse("RATE_LIMIT_FRONTDOOR_BURST", 100)?,
            quotas,
            trusted_proxies,
            allowed_countries,
            blocked_countries,
            metrics_port: match env.get("METRICS_PORT") {
                None => None,
                Some(_) => Some(env.parse("METRICS_PORT", 0)?),
            },
            metrics_token: env.get("METRICS_TOKEN").map(Secret::new),
            docs_enabled: env.bool("DOCS_ENABLED", !production)?,
            ipv6_prefix,
            http_header_timeout: Duration::from_secs(header_timeout),
            http_max_connections: env.ranged("HTTP_MAX_CONNECTIONS", 20_000, 1..=10_000_000)?,
            http_max_connections_per_ip: env.parse("HTTP_MAX_CONNECTIONS_PER_IP", 512)?,
            cors_origins,
            body_limit_bytes: env.parse("BODY_LIMIT_BYTES", 64 * 1024)?,
            http_idle_timeout: Duration::from_secs(env.parse("HTTP_IDLE_TIMEOUT_SECONDS", 30)?),
            messaging: messaging_settings(&env)?,
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
        if self.jwt_algorithm != SigningAlgorithm::Hs256 && self.jwt_private_key.is_none() {
            return Err(invalid(
                "JWT_PRIVATE_KEY_FILE",
                "production needs a private key for ES256/EdDSA (otpgate keygen makes one)",
            ));
        }
        // The code pepper keys the HMAC of every stored code: a weak one lets whoever reads
        // Redis brute-force the codes. It is OTP_PEPPER, or derived from JWT_SECRET_KEY.
        match &self.otp_pepper {
            Some(pepper) if pepper.expose().len() < 32 => {
                return Err(invalid(
                    "OTP_PEPPER",
                    "production needs at least 32 bytes (for example `openssl rand -hex 32`)",
                ));
            }
            Some(_) if self.jwt_algorithm != SigningAlgorithm::Hs256 => {}
            _ => {
                // HS256 signs with JWT_SECRET_KEY; without OTP_PEPPER the pepper comes from it.
                let secret = self.jwt_secret.expose();
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
        if self.cors_origins.iter().any(|o| o == "*") {
            return Err(invalid(
                "CORS_ORIGINS",
                "`*` is refused in production: list the origins",
            ));
        }
        if self.redis_url.is_none() {
            return Err(invalid(
                "REDIS_URL",
                "production needs Redis: the in-process store is not shared between replicas",
            ));
        }
        if self.expose_otp {
            return Err(invalid("EXPOSE_OTP", "must be false in production"));
        }
        if !self.quotas.enabled {
            return Err(invalid("RATE_LIMIT_ENABLED", "must be true in production"));
        }
        let q = &self.quotas;
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
            ("RATE_LIMIT_FRONTDOOR_PER_SECOND", self.frontdoor_per_second),
        ] {
            if value == 0 {
                return Err(invalid(
                    var,
                    "0 switches this limit off, which production refuses: set a number of at \
                     least 1",
                ));
            }
        }
        if self
            .metrics_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < 16)
        {
            return Err(invalid(
                "METRICS_TOKEN",
                "production needs at least 16 characters (for example `openssl rand -hex 16`)",
            ));
        }
        if self.metrics_port.is_none() && self.metrics_token.is_none() {
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

    /// Whether the in-process store is in use (no `REDIS_URL`).
    pub fn embedded_store(&self) -> bool {
        self.redis_url.is_none()
    }
}

/// `REDIS_MODE`, the URLs of `REDIS_URL` and `REDIS_SENTINEL_MASTER`, checked together.
fn redis_settings(env: &Vars<'_>) -> Result<(RedisMode, Vec<Secret>, Option<String>), ConfigError> {
    let mode = match env
        .get("REDIS_MODE")
        .map(|m| m.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("standalone") => RedisMode::Standalone,
        Some("cluster") => RedisMode::Cluster,
        Some("sentinel") => RedisMode::Sentinel,
        Some(other) => {
            return Err(invalid(
                "REDIS_MODE",
                format!("expected standalone, cluster or sentinel, got {other:?}"),
            ));
        }
    };
    if let Some(prefix) = env.get("REDIS_KEY_PREFIX")
        && prefix.contains(['{', '}'])
    {
        return Err(invalid(
            "REDIS_KEY_PREFIX",
            "must not contain { or }: otpgate places hash tags in its keys itself",
        ));
    }
    let urls = env.list("REDIS_URL");
    if urls.is_empty() {
        if mode != RedisMode::Standalone {
            return Err(invalid(
                "REDIS_URL",
                format!("REDIS_MODE={} needs REDIS_URL", mode.name()),
            ));
        }
        return Ok((mode, Vec::new(), None));
    }
    if mode == RedisMode::Standalone && urls.len() > 1 {
        return Err(invalid(
            "REDIS_URL",
            "standalone mode takes one URL; for a list of nodes set REDIS_MODE=cluster \
             (seed nodes) or REDIS_MODE=sentinel (sentinels)",
        ));
    }
    for url in &urls {
        let shown = redact_credentials(url);
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(|_| {
            invalid(
                "REDIS_URL",
                format!("{shown:?} is not a Redis URL (redis://[user:password@]host:port[/db])"),
            )
        })?;
        if !matches!(
            info.addr(),
            redis::ConnectionAddr::Tcp(..) | redis::ConnectionAddr::TcpTls { .. }
        ) && mode != RedisMode::Standalone
        {
            return Err(invalid(
                "REDIS_URL",
                format!("{shown:?}: cluster and sentinel nodes need host:port addresses"),
            ));
        }
    }
    let master = env
        .get("REDIS_SENTINEL_MASTER")
        .map(|m| m.trim().to_string());
    match (mode, &master) {
        (RedisMode::Sentinel, None) => {
            return Err(invalid(
                "REDIS_SENTINEL_MASTER",
                "REDIS_MODE=sentinel needs the primary's name (as in `sentinel monitor NAME …`)",
            ));
        }
        (RedisMode::Standalone | RedisMode::Cluster, Some(_)) => {
            return Err(invalid(
                "REDIS_SENTINEL_MASTER",
                "only used with REDIS_MODE=sentinel",
            ));
        }
        _ => {}
    }
    Ok((mode, urls.into_iter().map(Secret::new).collect(), master))
}

fn required(env: &Vars<'_>, var: &'static str, because: &str) -> Result<String, ConfigError> {
    env.get(var)
        .ok_or_else(|| invalid(var, format!("required {because}")))
}

fn messaging_settings(env: &Vars<'_>) -> Result<MessagingSettings, ConfigError> {
    let whatsapp_business_number = match env.get("WHATSAPP_BUSINESS_NUMBER") {
        None => None,
        Some(number) => {
            let digits: String = number
                .chars()
                .filter(|c| !matches!(c, '+' | ' ' | '-' | '(' | ')'))
                .collect();
            if !(6..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(
                    "WHATSAPP_BUSINESS_NUMBER",
                    "expected the number in international form, e.g. +15550001234",
                ));
            }
            Some(digits)
        }
    };
    let telegram_bot_username = match env.get("TELEGRAM_BOT_USERNAME") {
        None => None,
        Some(name) => {
            let name = name.trim().trim_start_matches('@').to_string();
            if !(5..=32).contains(&name.len())
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(invalid(
                    "TELEGRAM_BOT_USERNAME",
                    "expected a bot username (5-32 letters, digits or _)",
                ));
            }
            Some(name)
        }
    };
    let telegram_webhook_secret = env.get("TELEGRAM_WEBHOOK_SECRET");
    // Telegram allows 1-256 characters A-Z, a-z, 0-9, _ and - in `secret_token`.
    if let Some(secret) = &telegram_webhook_secret
        && (secret.is_empty()
            || secret.len() > 256
            || !secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        return Err(invalid(
            "TELEGRAM_WEBHOOK_SECRET",
            "Telegram accepts 1-256 characters of A-Z, a-z, 0-9, _ and -",
        ));
    }
    let intent_seconds: u64 = env.ranged("INTENT_EXPIRY_SECONDS", 300, 1..=3600)?;
    let max_age: u64 = env.ranged("TELEGRAM_AUTH_MAX_AGE_SECONDS", 300, 10..=86_400)?;
    let max_message_age: u64 = env.ranged("WHATSAPP_MAX_MESSAGE_AGE_SECONDS", 600, 10..=86_400)?;
    Ok(MessagingSettings {
        whatsapp_verify_token: env.get("WHATSAPP_VERIFY_TOKEN").map(Secret::new),
        whatsapp_webhook_secret: env.get("WHATSAPP_WEBHOOK_SECRET").map(Secret::new),
        whatsapp_business_number,
        telegram_webhook_secret: telegram_webhook_secret.map(Secret::new),
        telegram_bot_username,
        intent_ttl: Duration::from_secs(intent_seconds),
        telegram_auth_max_age: Duration::from_secs(max_age),
        support_contact: env.get("SUPPORT_CONTACT"),
        whatsapp_max_message_age: Duration::from_secs(max_message_age),
    })
}

fn delivery_settings(
    env: &Vars<'_>,
    send_otp_via_sms: bool,
    production: bool,
) -> Result<DeliverySettings, ConfigError> {
    let twilio = if send_otp_via_sms {
        let because = "when SEND_OTP_VIA_SMS=true";
        let from = env.get("TWILIO_PHONE_NUMBER");
        let messaging_service_sid = env.get("TWILIO_MESSAGING_SERVICE_SID");
        if from.is_none() && messaging_service_sid.is_none() {
            return Err(invalid(
                "TWILIO_PHONE_NUMBER",
                "SEND_OTP_VIA_SMS=true needs TWILIO_PHONE_NUMBER or TWILIO_MESSAGING_SERVICE_SID",
            ));
        }
        Some(TwilioSettings {
            account_sid: required(env, "TWILIO_ACCOUNT_SID", because)?,
            auth_token: Secret::new(required(env, "TWILIO_AUTH_TOKEN", because)?),
            from,
            messaging_service_sid,
            api_base: base_url(env, "TWILIO_API_BASE", "https://api.twilio.com")?,
        })
    } else {
        None
    };
    let whatsapp = match (
        env.get("WHATSAPP_ACCESS_TOKEN"),
        env.get("WHATSAPP_PHONE_NUMBER_ID"),
    ) {
        (None, None) => None,
        (Some(token), Some(id)) => Some(WhatsappSettings {
            access_token: Secret::new(token),
            phone_number_id: id,
            template: env.get("WHATSAPP_OTP_TEMPLATE"),
            template_language: env
                .get("WHATSAPP_TEMPLATE_LANGUAGE")
                .unwrap_or_else(|| "en_US".into()),
            api_base: base_url(env, "WHATSAPP_API_BASE", "https://graph.facebook.com/v21.0")?,
        }),
        (Some(_), None) => {
            return Err(invalid(
                "WHATSAPP_PHONE_NUMBER_ID",
                "required with WHATSAPP_ACCESS_TOKEN",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "WHATSAPP_ACCESS_TOKEN",
                "required with WHATSAPP_PHONE_NUMBER_ID",
            ));
        }
    };
    let telegram = match env.get("TELEGRAM_BOT_TOKEN") {
        None => None,
        Some(token) => Some(TelegramSettings {
            bot_token: Secret::new(token),
            api_base: base_url(env, "TELEGRAM_API_BASE", "https://api.telegram.org")?,
        }),
    };
    let channel_order = match env.get("OTP_CHANNEL_ORDER") {
        None => vec![Channel::Sms],
        Some(_) => env
            .list("OTP_CHANNEL_ORDER")
            .iter()
            .map(|name| match name.to_ascii_lowercase().as_str() {
                "sms" => Ok(Channel::Sms),
                "whatsapp" => Ok(Channel::Whatsapp),
                "telegram" => Ok(Channel::Telegram),
                other => Err(invalid(
                    "OTP_CHANNEL_ORDER",
                    format!("{other:?} is not one of sms, whatsapp, telegram"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let message_template = env
        .get("OTP_MESSAGE_TEMPLATE")
        .unwrap_or_else(|| DEFAULT_MESSAGE_TEMPLATE.into());
    if !message_template.contains("{code}") {
        return Err(invalid("OTP_MESSAGE_TEMPLATE", "must contain {code}"));
    }
    let android_app_hash = env
        .get("OTP_ANDROID_APP_HASH")
        .map(|h| h.trim().to_string());
    if let Some(hash) = &android_app_hash
        && (hash.len() != 11
            || !hash
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'))
    {
        return Err(invalid(
            "OTP_ANDROID_APP_HASH",
            "must be the 11-character app hash",
        ));
    }
    let webotp_domain = env.get("OTP_WEBOTP_DOMAIN").map(|d| d.trim().to_string());
    if let Some(domain) = &webotp_domain
        && !domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
    {
        return Err(invalid(
            "OTP_WEBOTP_DOMAIN",
            "must be a host name such as example.com",
        ));
    }
    let timeout_ms: u64 = env.parse("DELIVERY_TIMEOUT_MS", 5000)?;
    if timeout_ms == 0 {
        return Err(invalid("DELIVERY_TIMEOUT_MS", "must be at least 1"));
    }
    Ok(DeliverySettings {
        twilio,
        whatsapp,
        telegram,
        timeout: Duration::from_millis(timeout_ms),
        channel_order,
        message_template,
        app_name: env.get("APP_NAME").unwrap_or_else(|| "otpgate".into()),
        android_app_hash,
        webotp_domain,
        log_channel: !production && !send_otp_via_sms,
    })
}

/// A `CORS_ORIGINS` entry: `*`, or `scheme://host[:port]` as browsers send it in `Origin`
/// (no path, no trailing slash, no user info).
pub fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let bad = |why: &str| {
        Err(format!(
            "{origin:?} is not an origin ({why}); expected `*` or scheme://host[:port], \
             e.g. https://app.example.com"
        ))
    };
    let Some((scheme, rest)) = origin.split_once("://") else {
        return bad("no scheme");
    };
    if scheme.is_empty()
        || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return bad("bad scheme");
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, tail)) if addr.parse::<std::net::Ipv6Addr>().is_ok() => (addr, tail),
            _ => return bad("bad IPv6 address"),
        }
    } else {
        match rest.split_once(':') {
            Some((host, _)) => (host, &rest[host.len()..]),
            None => (rest, ""),
        }
    };
    let host_ok = rest.starts_with('[')
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
    if !host_ok {
        return bad("bad host; no path or trailing slash");
    }
    if !port.is_empty() {
        let digits = port.strip_prefix(':').unwrap_or("x");
        if digits.is_empty() || digits.len() > 5 || digits.parse::<u16>().is_err() {
            return bad("bad port");
        }
    }
    Ok(())
}

/// A provider base URL: `http(s)://…` without a trailing slash.
fn base_url(env: &Vars<'_>, var: &'static str, default: &str) -> Result<String, ConfigError> {
    let url = env.get(var).unwrap_or_else(|| default.into());
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(invalid(
            var,
            "must start with https:// (or http:// for a local stand-in)",
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Typed access to a lookup function, with errors that name the variable.
struct Vars<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    /// The value, with empty strings treated as unset (as `.env` templates leave them).
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.trim().is_empty())
    }

    fn parse<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e| invalid(name, format!("{raw:?} is not valid: {e}"))),
        }
    }

    /// A number within `range` (inclusive), else an error naming the variable and the range.
    fn ranged<T>(
        &self,
        name: &'static str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + fmt::Display,
        T::Err: fmt::Display,
    {
        let value = self.parse(name, default)?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(invalid(
                name,
                format!("must be between {} and {}", range.start(), range.end()),
            ))
        }
    }

    /// A comma-separated list; unset means empty.
    fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn bool(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) => match v.as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(invalid(name, format!("expected true or false, got {v:?}"))),
            },
        }
    }
}

/// The process environment, then `.env` in the working directory for what is unset.
pub fn env_lookup() -> impl Fn(&str) -> Option<String> {
    let dotenv = std::fs::read_to_string(".env")
        .map(|text| parse_dotenv(&text))
        .unwrap_or_default();
    move |name| {
        std::env::var(name)
            .ok()
            .or_else(|| dotenv.get(name).cloned())
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

/// Variables that may also come from a file named by `NAME_FILE` (Kubernetes secrets mounted as
/// files). A set `NAME` wins over `NAME_FILE`.
pub const SECRET_VARIABLES: &[&str] = &[
    "JWT_SECRET_KEY",
    "OTP_PEPPER",
    "DATABASE_URL",
    "REDIS_URL",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_VERIFY_TOKEN",
    "WHATSAPP_WEBHOOK_SECRET",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_WEBHOOK_SECRET",
    "METRICS_TOKEN",
];

fn read_secret_files(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<HashMap<String, String>, ConfigError> {
    let mut found = HashMap::new();
    for name in SECRET_VARIABLES {
        if lookup(name).is_some_and(|v| !v.trim().is_empty()) {
            continue;
        }
        let file_var = format!("{name}_FILE");
        if let Some(path) = lookup(&file_var).filter(|p| !p.trim().is_empty()) {
            let value = std::fs::read_to_string(path.trim()).map_err(|e| ConfigError {
                var: name,
                message: format!("{file_var}: cannot read {path:?}: {e}"),
            })?;
            found.insert(
                name.to_string(),
                value.trim_end_matches(['\r', '\n']).to_string(),
            );
        }
    }
    Ok(found)
}

/// Hides the passwords of URLs in `text` (`postgres://u:secret@db/x` → `postgres://u:***@db/x`),
/// for anything that may be printed: start-up errors, driver errors, log lines. A URL's user
/// info ends at the last `@` before the host's `/`, `?` or `#`.
pub fn redact_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The user info may hold any character but these (a password may contain `/`): the
        // URL's span ends at the first of them, and its user info at the last `@` in the span
        // unless a query or fragment starts before it.
        let span = after
            .find(|c: char| matches!(c, '\'' | '"' | ',' | '>') || c.is_whitespace())
            .unwrap_or(after.len());
        let end = match after[..span].rfind('@') {
            Some(at) if !after[..at].contains(['?', '#']) => after[at..span]
                .find(['/', '?', '#'])
                .map_or(span, |i| at + i),
            _ => after[..span].find(['/', '?', '#']).unwrap_or(span),
        };
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _password)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    // `scheme://token@host`: the whole user info may be the secret.
                    None if !userinfo.is_empty() => out.push_str("***"),
                    None => {}
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Accepts SQLAlchemy-style URLs from the seed (`postgresql+asyncpg://`, `sqlite+aiosqlite:///x.db`)
/// and gives SQLite files `mode=rwc` so they are created on first start.
pub fn normalize_database_url(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = match url.split_once("://") {
        Some(parts) => parts,
        None => return url.to_string(),
    };
    let (base, had_driver) = match scheme.split_once('+') {
        Some((base, _driver)) => (base, true),
        None => (scheme, false),
    };
    let base = if base == "postgresql" {
        "postgres"
    } else {
        base
    };
    if base != "sqlite" {
        return format!("{base}://{rest}");
    }
    // SQLAlchemy's `sqlite:///relative.db` has one slash more than sqlx's `sqlite://relative.db`.
    let path = if had_driver {
        rest.strip_prefix('/').unwrap_or(rest)
    } else {
        rest
    };
    if path.contains('?') || path.starts_with(":memory:") {
        format!("sqlite://{path}")
    } else {
        format!("sqlite://{path}?mode=rwc")
    }
}

/// Parses `.env` text: `KEY=value` lines, `#` comments, optional `export`, optional quotes.
pub fn parse_dotenv(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (key, value) = line.split_once('=')?;
            let value = value.trim();
            let value = match (value.chars().next(), value.chars().last()) {
                (Some(q @ ('"' | '\'')), Some(end)) if value.len() >= 2 && end == q => {
                    &value[1..value.len() - 1]
                }
                // An unquoted value may carry a trailing ` # comment`.
                _ => value.split(" #").next().unwrap_or(value).trim_end(),
            };
            Some((key.trim().to_string(), value.to_string()))
        })
        .collect()
}

/// Settings from `KEY=value` pairs alone (unit tests of every module).
#[cfg(test)]
pub(crate) fn settings_from(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::from_lookup(|k| map.get(k).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::settings_from as settings;

    #[test]
    fn defaults_need_nothing() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.port, 8000);
        assert_eq!(s.host, "0.0.0.0");
        assert_eq!(s.database_url.expose(), DEFAULT_DATABASE_URL);
        assert!(s.embedded_store());
        assert!(s.expose_otp);
        assert_eq!(s.otp_length, 6);
        assert_eq!(s.otp_ttl, Duration::from_secs(300));
        assert!(s.quotas.enabled);
        assert_eq!((s.quotas.phone_per_hour, s.quotas.ip_per_hour), (5, 30));
        assert_eq!(s.frontdoor_per_second, 50);
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
        assert_eq!(s.jwt_secret.expose(), "from-a-file-from-a-file-from-a-file");
        // The variable itself wins over its file.
        let s = settings(&[
            ("JWT_SECRET_KEY_FILE", path.as_str()),
            ("JWT_SECRET_KEY", "direct"),
        ])
        .unwrap();
        assert_eq!(s.jwt_secret.expose(), "direct");
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
        assert_eq!(s.trusted_proxies.len(), 2);
        assert_eq!(s.allowed_countries, vec!["IN", "US"]);
        assert_eq!(s.quotas.country_daily_caps.len(), 2);
        assert!(
            !settings(&[("RATE_LIMIT_ENABLED", "false")])
                .unwrap()
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
        assert!(!settings(&base).unwrap().expose_otp);
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
            crate::auth::keys::generate_pem(SigningAlgorithm::Es256).unwrap(),
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
        assert!(!ok.docs_enabled, "docs are off in production by default");
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
        assert_eq!(dev.quotas.ip_per_hour, 0);
        assert!(dev.docs_enabled);
    }

    #[test]
    fn cors_origins_are_validated_at_load() {
        for good in [
            "*",
            "https://app.example.com",
            "http://localhost:3000",
            "https://[::1]:8443",
            "capacitor://localhost",
        ] {
            assert!(
                settings(&[("CORS_ORIGINS", good)]).is_ok(),
                "{good} should be accepted"
            );
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://",
            "https://host:99999",
            "https://ho st",
            "https://user@host",
            "https://host:",
            "ht tp://host",
        ] {
            let err = settings(&[("CORS_ORIGINS", bad)]).unwrap_err();
            assert_eq!(err.var, "CORS_ORIGINS", "{bad}");
        }
    }

    #[test]
    fn redis_modes_are_checked() {
        let var = |pairs: &[(&str, &str)]| settings(pairs).unwrap_err().var;
        let s = settings(&[("REDIS_URL", "redis://:pw@127.0.0.1:6379/2")]).unwrap();
        assert_eq!(s.redis_mode, RedisMode::Standalone);
        assert_eq!(s.redis_nodes.len(), 1);
        let nodes = "redis://10.0.0.1:6379, redis://10.0.0.2:6379";
        assert_eq!(var(&[("REDIS_URL", nodes)]), "REDIS_URL");
        let c = settings(&[("REDIS_MODE", "cluster"), ("REDIS_URL", nodes)]).unwrap();
        assert_eq!((c.redis_mode, c.redis_nodes.len()), (RedisMode::Cluster, 2));
        assert_eq!(
            var(&[("REDIS_MODE", "sentinel"), ("REDIS_URL", nodes)]),
            "REDIS_SENTINEL_MASTER"
        );
        let s = settings(&[
            ("REDIS_MODE", "Sentinel"),
            ("REDIS_URL", nodes),
            ("REDIS_SENTINEL_MASTER", "mymaster"),
        ])
        .unwrap();
        assert_eq!(s.redis_sentinel_master.as_deref(), Some("mymaster"));
        assert_eq!(var(&[("REDIS_MODE", "sharded")]), "REDIS_MODE");
        assert_eq!(var(&[("REDIS_MODE", "cluster")]), "REDIS_URL");
        let bad = settings(&[
            ("REDIS_MODE", "cluster"),
            ("REDIS_URL", "redis://:secretpw@10.0.0.1:6379,http//nope"),
        ])
        .unwrap_err();
        assert_eq!(bad.var, "REDIS_URL");
        assert!(!bad.message.contains("secretpw"), "{}", bad.message);
        assert_eq!(
            var(&[
                ("REDIS_URL", "redis://127.0.0.1"),
                ("REDIS_SENTINEL_MASTER", "m")
            ]),
            "REDIS_SENTINEL_MASTER"
        );
        assert_eq!(var(&[("REDIS_KEY_PREFIX", "app{1}:")]), "REDIS_KEY_PREFIX");
    }

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact_credentials(
                "Connection Error: The connection string 'postgress://u:SuperSecret123@db/x' has no supporting driver"
            ),
            "Connection Error: The connection string 'postgress://u:***@db/x' has no supporting driver"
        );
        assert_eq!(
            redact_credentials("redis://:pw@a:6379,redis://user:p%40ss@b:6380/0"),
            "redis://:***@a:6379,redis://user:***@b:6380/0"
        );
        assert_eq!(
            redact_credentials("rediss://token@cache.example.com"),
            "rediss://***@cache.example.com"
        );
        assert_eq!(
            redact_credentials("sqlite://otpgate.db?mode=rwc and https://h/p?a=b@c"),
            "sqlite://otpgate.db?mode=rwc and https://h/p?a=b@c"
        );
        assert_eq!(redact_credentials("no urls here"), "no urls here");
        assert_eq!(
            redact_credentials("redis://:ab/cd+ef@h:6379/0 next"),
            "redis://:***@h:6379/0 next"
        );
    }

    #[test]
    fn seed_database_urls_are_accepted() {
        assert_eq!(
            normalize_database_url("postgresql+asyncpg://u:p@db:5432/app"),
            "postgres://u:p@db:5432/app"
        );
        assert_eq!(
            normalize_database_url("postgresql://h/app"),
            "postgres://h/app"
        );
        assert_eq!(
            normalize_database_url("sqlite+aiosqlite:///./app.db"),
            "sqlite://./app.db?mode=rwc"
        );
        assert_eq!(
            normalize_database_url("sqlite://data/app.db"),
            "sqlite://data/app.db?mode=rwc"
        );
        assert_eq!(normalize_database_url("sqlite::memory:"), "sqlite::memory:");
    }

    #[test]
    fn dotenv_lines() {
        let env = parse_dotenv(
            "# comment\nexport A=1\nB = \"two words\"\nC='x#y'\nD=plain # trailing\n\nbroken\n",
        );
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "two words");
        assert_eq!(env["C"], "x#y");
        assert_eq!(env["D"], "plain");
        assert!(!env.contains_key("broken"));
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
