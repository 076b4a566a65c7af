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

pub mod admin;
pub mod captcha;
pub mod delivery;
pub mod env;
pub mod events;
pub mod integrity;
pub mod limits;
pub mod lint;
pub mod locales;
pub mod messaging;
pub mod otp;
pub mod server;
pub mod store;
pub mod tokens;

pub use admin::{AdminSettings, SessionIp};
pub use captcha::{CaptchaMode, CaptchaProvider, CaptchaSettings};
pub use delivery::{
    DeliverySettings, HttpSmsSettings, TelegramSettings, TwilioSettings, TwilioVerifySettings,
    WhatsappSettings,
};
pub use env::{ConfigError, ConfigErrors, SECRET_VARIABLES, env_lookup, parse_dotenv};
pub use events::{EventSettings, WebhookSettings};
pub use integrity::{AppAttestSettings, DeviceLevel, IntegritySettings};
pub use limits::LimitSettings;
pub use locales::{LocaleSettings, canonical_tag};
pub use messaging::MessagingSettings;
pub use otp::{OtpSettings, Pepper, TestNumbers};
pub use server::{ServerSettings, check_origin};
pub use store::{
    DEFAULT_DATABASE_URL, RedisMode, StoreSettings, database_shown, normalize_database_url,
};
pub use tokens::{DEV_JWT_SECRET, TokenSettings};

use env::{Vars, invalid, read_secret_files};

use crate::domain::secret::Secret;
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
    /// Admin API keys and session details.
    pub admin: AdminSettings,
    /// The audit log's retention and the event webhook.
    pub events: EventSettings,
    /// The captcha gate before a code is sent; `None` when `CAPTCHA_PROVIDER` is unset.
    pub captcha: Option<CaptchaSettings>,
    /// The Play Integrity gate for Android apps; `None` when `PLAY_INTEGRITY_PACKAGE` is unset.
    pub integrity: Option<IntegritySettings>,
    /// The App Attest gate for iOS apps; `None` when `APP_ATTEST_APP_ID` is unset.
    pub app_attest: Option<AppAttestSettings>,
}

impl Settings {
    /// Reads the process environment, then `.env` in the working directory for what is unset.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        Self::from_lookup(env_lookup())
    }

    /// Builds settings from any key lookup (tests pass a map). Every problem is reported at
    /// once: a malformed value, a section's inconsistent combination, each production guard.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let mut file_errors = Vec::new();
        let from_files = read_secret_files(&lookup, &mut file_errors);
        let lookup = |name: &str| lookup(name).or_else(|| from_files.get(name).cloned());
        let env = Vars::new(&lookup);
        for err in file_errors {
            env.report(err);
        }
        let environment = match env
            .get("ENVIRONMENT")
            .as_deref()
            .map(str::to_ascii_lowercase)
        {
            None => Environment::Development,
            Some(v) if v == "development" || v == "dev" => Environment::Development,
            Some(v) if v == "production" || v == "prod" => Environment::Production,
            Some(v) => {
                env.report(invalid(
                    "ENVIRONMENT",
                    format!("expected development or production, got {v:?}"),
                ));
                Environment::Development
            }
        };
        let production = environment == Environment::Production;
        // Each section is read even when an earlier one failed, so its problems are reported too.
        let tokens = env.section(TokenSettings::from_env(&env));
        let placeholder = Secret::new(DEV_JWT_SECRET);
        let jwt_secret = tokens.as_ref().map_or(&placeholder, |t| &t.jwt_secret);
        let otp = env.section(OtpSettings::from_env(&env, production, jwt_secret));
        let limits = env.section(LimitSettings::from_env(&env));
        let server = env.section(ServerSettings::from_env(&env, production));
        let store = env.section(StoreSettings::from_env(&env));
        let delivery = env.section(DeliverySettings::from_env(&env, production));
        let messaging = env.section(MessagingSettings::from_env(&env));
        let admin = env.section(AdminSettings::from_env(&env));
        let events = env.section(EventSettings::from_env(&env));
        let captcha = env.section(CaptchaSettings::from_env(&env));
        let integrity = env.section(IntegritySettings::from_env(&env));
        let app_attest = env.section(AppAttestSettings::from_env(&env));
        let (
            Some(tokens),
            Some(otp),
            Some(limits),
            Some(server),
            Some(store),
            Some(delivery),
            Some(messaging),
            Some(admin),
            Some(events),
            Some(captcha),
            Some(integrity),
            Some(app_attest),
        ) = (
            tokens, otp, limits, server, store, delivery, messaging, admin, events, captcha,
            integrity, app_attest,
        )
        else {
            env.finish()?;
            unreachable!("a section that failed reported why");
        };
        let settings = Settings {
            environment,
            server,
            store,
            tokens,
            otp,
            limits,
            delivery,
            messaging,
            admin,
            events,
            captcha,
            integrity,
            app_attest,
        };
        for err in settings.production_problems() {
            env.report(err);
        }
        env.finish()?;
        Ok(settings)
    }

    /// The production guards: no weak or example secret or pepper, no in-process store, no
    /// SQLite, no code exposure, no log-only delivery, no quota switched off, no open
    /// `/metrics`. Every problem, not only the first.
    fn production_problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        if self.environment != Environment::Production {
            return problems;
        }
        let mut refuse = |var: &'static str, message: &str| problems.push(invalid(var, message));
        let tokens = &self.tokens;
        if tokens.jwt_algorithm != SigningAlgorithm::Hs256 && tokens.jwt_private_key.is_none() {
            refuse(
                "JWT_PRIVATE_KEY_FILE",
                "production needs a private key for ES256/EdDSA (otpgate keygen makes one)",
            );
        }
        // The code pepper keys the HMAC of every stored code: a weak one lets whoever reads
        // Redis brute-force the codes. It is OTP_PEPPER, or derived from JWT_SECRET_KEY.
        match &self.otp.pepper {
            Pepper::Set(pepper) if pepper.expose().len() < 32 => refuse(
                "OTP_PEPPER",
                "production needs at least 32 bytes (for example `openssl rand -hex 32`)",
            ),
            Pepper::Set(_) if tokens.jwt_algorithm != SigningAlgorithm::Hs256 => {}
            _ => {
                // HS256 signs with JWT_SECRET_KEY; without OTP_PEPPER the pepper comes from it.
                let secret = tokens.jwt_secret.expose();
                if secret == DEV_JWT_SECRET {
                    refuse(
                        "JWT_SECRET_KEY",
                        "production needs its own secret (at least 32 bytes); the development \
                         default is refused",
                    );
                } else if secret.len() < 32 {
                    refuse("JWT_SECRET_KEY", "production needs at least 32 bytes");
                }
            }
        }
        for (var, value) in self.secrets() {
            if is_example_secret(value) {
                refuse(
                    var,
                    "this is the placeholder from otpgate's examples, which anyone can read: \
                     set your own (for example `openssl rand -hex 32`)",
                );
            }
        }
        if let Some(c) = &self.captcha
            && !c.verify_url.starts_with("https://")
        {
            refuse(
                "CAPTCHA_VERIFY_URL",
                "production sends the captcha secret only over https://",
            );
        }
        if let Some(a) = &self.app_attest
            && a.root_replaced
        {
            refuse(
                "APP_ATTEST_ROOT_CA_FILE",
                "production trusts only Apple's App Attestation Root CA (another root is for tests)",
            );
        }
        if let Some(i) = &self.integrity {
            if !i.api_url.starts_with("https://") {
                refuse(
                    "PLAY_INTEGRITY_API_URL",
                    "production sends access tokens only over https://",
                );
            }
            if !i.account.token_uri.starts_with("https://") {
                refuse(
                    "PLAY_INTEGRITY_CREDENTIALS",
                    "production signs in to Google only over https:// (token_uri)",
                );
            }
        }
        let server = &self.server;
        if server.cors_origins.iter().any(|o| o == "*") {
            refuse(
                "CORS_ORIGINS",
                "`*` is refused in production: list the origins",
            );
        }
        if self.store.embedded() {
            refuse(
                "REDIS_URL",
                "production needs Redis: the in-process store is not shared between replicas",
            );
        }
        if self.store.database_url.expose().starts_with("sqlite:") {
            refuse(
                "DATABASE_URL",
                "production needs PostgreSQL (postgres://user:password@host:5432/db) or MySQL/\
                 MariaDB (mysql://user:password@host:3306/db): SQLite is one file on one \
                 machine, not shared between replicas",
            );
        }
        if self.otp.expose {
            refuse("EXPOSE_OTP", "must be false in production");
        }
        let limits = &self.limits;
        let q = &limits.quotas;
        if !q.enabled {
            refuse("RATE_LIMIT_ENABLED", "must be true in production");
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
                refuse(
                    var,
                    "0 switches this limit off, which production refuses: set a number of at \
                     least 1",
                );
            }
        }
        if server
            .metrics_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < 16)
        {
            refuse(
                "METRICS_TOKEN",
                "production needs at least 16 characters (for example `openssl rand -hex 16`)",
            );
        }
        if server.metrics_port.is_none() && server.metrics_token.is_none() {
            refuse(
                "METRICS_PORT",
                "production serves /metrics only on its own port (METRICS_PORT) or behind a \
                 token (METRICS_TOKEN); set one of them",
            );
        }
        let d = &self.delivery;
        if d.twilio.is_none()
            && d.http_sms.is_none()
            && d.whatsapp.is_none()
            && d.telegram.is_none()
        {
            refuse(
                "SEND_OTP_VIA_SMS",
                "production needs a real delivery channel (SEND_OTP_VIA_SMS=true with Twilio, \
                 SMS_PROVIDER=http, WhatsApp or Telegram); the development `log` channel is \
                 refused",
            );
        }
        if d.twilio
            .as_ref()
            .and_then(|t| t.status_callback.as_ref())
            .is_some_and(|url| !url.starts_with("https://"))
        {
            refuse(
                "PUBLIC_BASE_URL",
                "production takes delivery receipts (with the users' numbers) over https:// only",
            );
        }
        if d.http_sms
            .as_ref()
            .is_some_and(|h| !h.url.starts_with("https://"))
        {
            refuse(
                "SMS_HTTP_URL",
                "production sends codes to the SMS gateway over https:// only",
            );
        }
        problems
    }

    /// The secrets that are set, by variable (for the example-secret guard).
    fn secrets(&self) -> Vec<(&'static str, &str)> {
        let mut found = vec![("JWT_SECRET_KEY", self.tokens.jwt_secret.expose())];
        if let Pepper::Set(p) = &self.otp.pepper {
            found.push(("OTP_PEPPER", p.expose()));
        }
        if let Some(t) = &self.server.metrics_token {
            found.push(("METRICS_TOKEN", t.expose()));
        }
        if let Some(t) = &self.delivery.twilio {
            found.push(("TWILIO_AUTH_TOKEN", t.auth_token.expose()));
        }
        if let Some(h) = &self.delivery.http_sms {
            found.push(("SMS_HTTP_SECRET", h.secret.expose()));
        }
        if let Some(w) = &self.delivery.whatsapp {
            found.push(("WHATSAPP_ACCESS_TOKEN", w.access_token.expose()));
        }
        let m = &self.messaging;
        for (var, secret) in [
            ("WHATSAPP_VERIFY_TOKEN", &m.whatsapp_verify_token),
            ("WHATSAPP_WEBHOOK_SECRET", &m.whatsapp_webhook_secret),
            ("TELEGRAM_WEBHOOK_SECRET", &m.telegram_webhook_secret),
        ] {
            if let Some(s) = secret {
                found.push((var, s.expose()));
            }
        }
        if let Some(w) = &self.events.webhook {
            found.push(("EVENT_WEBHOOK_SECRET", w.secret.expose()));
        }
        if let Some(c) = &self.captcha {
            found.push(("CAPTCHA_SECRET", c.secret.expose()));
        }
        if let Some(password) = url_password(self.store.database_url.expose()) {
            found.push(("DATABASE_URL", password));
        }
        found
    }
}

/// Secrets printed in otpgate's own examples (`k8s/secret.example.yaml`,
/// `docker-compose.yml`, the README, the load kit): public, so production refuses them. A test
/// reads those files and fails when one of their secrets is missing here.
pub const EXAMPLE_SECRETS: &[&str] = &[
    "replace-with-at-least-32-random-bytes-0000",
    "change-me-to-32-random-bytes-before-any-real-use",
    "change-me",
    "replace-me",
    "otpgate",
    "secret",
    "password",
    "pass",
    "loadtest-secret-loadtest-secret-loadtest",
    // The Standard Webhooks specification's test secret (its signature test vector), lowercased.
    "whsec_mfkq9r8gkyqrtwjupd8ilpzio2lalasw",
    // The SMS gateway secret of otpgate's own tests (tests/api/standin.rs), lowercased.
    "whsec_b3rwz2f0zs10zxn0lxntcy1nyxrld2f5lwtles0zmmi=",
    // The captcha providers' published test secrets (every token passes), lowercased:
    // Turnstile's always-pass and always-fail keys, hCaptcha's, reCAPTCHA's.
    "1x0000000000000000000000000000000aa",
    "2x0000000000000000000000000000000aa",
    "0x0000000000000000000000000000000000000000",
    "6leixactaaaaagg-vfi1tnrwxmznfuojj4wifjwe",
];

/// Whether `value` is one of [`EXAMPLE_SECRETS`] (or an obvious placeholder).
pub fn is_example_secret(value: &str) -> bool {
    let lower = value.trim().to_ascii_lowercase();
    EXAMPLE_SECRETS.contains(&lower.as_str())
        || lower.starts_with("change-me")
        || lower.starts_with("changeme")
        || lower.starts_with("replace-with")
        || lower.starts_with("replace-me")
}

/// The password of a `scheme://user:password@host/…` URL.
fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split('/').next()?.rsplit_once('@')?.0;
    userinfo
        .split_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty())
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
) -> Result<(String, u16), ConfigErrors> {
    let env = Vars::new(&lookup);
    let address = (
        env.get("HOST").unwrap_or_else(|| "0.0.0.0".into()),
        env.parse("PORT", 8000)?,
    );
    env.finish()?;
    Ok(address)
}

/// Settings from `KEY=value` pairs alone (unit tests of every module).
#[cfg(test)]
pub(crate) fn settings_from(pairs: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
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
        let var = |pairs: &[(&str, &str)]| settings(pairs).unwrap_err().first().var;
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
        assert_eq!(var(&[("SMS_PROVIDER", "pigeon")]), "SMS_PROVIDER");
        assert_eq!(var(&[("SMS_PROVIDER", "http")]), "SMS_HTTP_URL");
        let gateway = [
            ("SMS_PROVIDER", "http"),
            ("SMS_HTTP_URL", "https://sms.example/otp"),
        ];
        assert_eq!(var(&gateway), "SMS_HTTP_SECRET");
        let mut bad = gateway.to_vec();
        bad.push(("SMS_HTTP_SECRET", "not-whsec"));
        assert_eq!(var(&bad), "SMS_HTTP_SECRET");
        let mut ok = gateway.to_vec();
        ok.push((
            "SMS_HTTP_SECRET",
            "whsec_b3RwZ2F0ZS10ZXN0LXNtcy1nYXRld2F5LWtleS0zMmI=",
        ));
        let s = settings(&ok).unwrap();
        assert!(s.delivery.http_sms.is_some() && s.delivery.twilio.is_none());
        assert!(
            !s.delivery.log_channel,
            "a real SMS provider replaces the log channel"
        );
        assert!(
            !format!("{s:?}").contains("b3RwZ2F0"),
            "the secret stays out of Debug"
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
        // Twilio Verify: a service SID of the documented shape, and the account's credentials.
        let verify = [
            ("SMS_PROVIDER", "twilio_verify"),
            ("TWILIO_ACCOUNT_SID", "AC1"),
            ("TWILIO_AUTH_TOKEN", "x"),
        ];
        assert_eq!(var(&verify), "TWILIO_VERIFY_SERVICE_SID");
        let mut bad_sid = verify.to_vec();
        bad_sid.push((
            "TWILIO_VERIFY_SERVICE_SID",
            "MG0123456789abcdef0123456789abcdef",
        ));
        assert_eq!(var(&bad_sid), "TWILIO_VERIFY_SERVICE_SID");
        let mut ok = verify.to_vec();
        ok.push((
            "TWILIO_VERIFY_SERVICE_SID",
            "VA0123456789abcdef0123456789abcdef",
        ));
        let s = settings(&ok).unwrap();
        assert!(s.delivery.twilio_verify.is_some() && s.delivery.twilio.is_none());
        assert!(!s.delivery.log_channel);
        assert_eq!(
            var(&[
                ("SMS_PROVIDER", "twilio_verify"),
                (
                    "TWILIO_VERIFY_SERVICE_SID",
                    "VA0123456789abcdef0123456789abcdef"
                )
            ]),
            "TWILIO_ACCOUNT_SID"
        );
        assert_eq!(var(&[("OTP_ROUTING", "cheapest")]), "OTP_ROUTING");
        assert_eq!(
            var(&[("OTP_ROUTING_EXPLORE_PERCENT", "90")]),
            "OTP_ROUTING_EXPLORE_PERCENT"
        );
        let dev = settings(&[]).unwrap();
        assert!(dev.delivery.log_channel && dev.delivery.twilio.is_none());
        assert_eq!(dev.delivery.channel_order, vec![Channel::Sms]);
        // Production with WhatsApp only: fine, and no log channel.
        let prod = settings(&[
            ("ENVIRONMENT", "production"),
            (
                "DATABASE_URL",
                "postgres://otpgate:db-password-0123@db:5432/otpgate",
            ),
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
        let err = err.first();
        assert_eq!(err.var, "REDIS_URL");
        assert!(err.message.contains("REDIS_URL_FILE"));
    }

    #[test]
    fn signing_keys_are_checked() {
        let var = |pairs: &[(&str, &str)]| settings(pairs).unwrap_err().first().var;
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
            (
                "DATABASE_URL",
                "postgres://otpgate:db-password-0123@db:5432/otpgate",
            ),
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
                (
                    "DATABASE_URL",
                    "postgres://otpgate:db-password-0123@db:5432/otpgate"
                ),
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
        for (var, value) in [
            ("PORT", "eighty"),
            ("OTP_LENGTH", "3"),
            ("OTP_EXPIRY_MINUTES", "11"),
            ("DEBUG", "maybe"),
            ("DEFAULT_REGION", "XX"),
        ] {
            assert_eq!(settings(&[(var, value)]).unwrap_err().first().var, var);
        }
    }

    #[test]
    fn production_guards() {
        let base = PRODUCTION.to_vec();
        assert!(settings(&base).is_ok());
        assert!(!settings(&base).unwrap().otp.expose);
        let with = |k: &'static str, v: &'static str| {
            let mut pairs: Vec<_> = base.iter().copied().filter(|(key, _)| *key != k).collect();
            pairs.push((k, v));
            settings(&pairs)
        };
        assert_eq!(
            with("JWT_SECRET_KEY", DEV_JWT_SECRET)
                .unwrap_err()
                .first()
                .var,
            "JWT_SECRET_KEY"
        );
        assert_eq!(
            with("JWT_SECRET_KEY", "short").unwrap_err().first().var,
            "JWT_SECRET_KEY"
        );
        assert_eq!(with("REDIS_URL", "").unwrap_err().first().var, "REDIS_URL");
        assert_eq!(
            with("EXPOSE_OTP", "true").unwrap_err().first().var,
            "EXPOSE_OTP"
        );
        assert_eq!(
            with("SEND_OTP_VIA_SMS", "false").unwrap_err().first().var,
            "SEND_OTP_VIA_SMS"
        );
        let no_secret: Vec<_> = base
            .iter()
            .copied()
            .filter(|(k, _)| *k != "JWT_SECRET_KEY")
            .collect();
        assert_eq!(
            settings(&no_secret).unwrap_err().first().var,
            "JWT_SECRET_KEY"
        );
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
            // Without JWT_SECRET_KEY: each case says whether it has one.
            let mut pairs: Vec<(&str, &str)> = PRODUCTION
                .iter()
                .copied()
                .filter(|(k, _)| *k != "JWT_SECRET_KEY")
                .collect();
            pairs.extend_from_slice(extra);
            settings(&pairs)
        };
        // HS256: a short pepper is refused even with a strong signing secret.
        assert_eq!(
            production(&[("JWT_SECRET_KEY", strong), ("OTP_PEPPER", "x")])
                .unwrap_err()
                .first()
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
        assert_eq!(
            with(&[("OTP_PEPPER", "x")]).unwrap_err().first().var,
            "OTP_PEPPER"
        );
        assert_eq!(
            with(&[("OTP_PEPPER", "x"), ("JWT_SECRET_KEY", strong)])
                .unwrap_err()
                .first()
                .var,
            "OTP_PEPPER"
        );
        assert!(with(&[("OTP_PEPPER", strong)]).is_ok());
        // No pepper: it is derived from JWT_SECRET_KEY, which must then be strong.
        assert_eq!(with(&[]).unwrap_err().first().var, "JWT_SECRET_KEY");
        assert_eq!(
            with(&[("JWT_SECRET_KEY", "short")])
                .unwrap_err()
                .first()
                .var,
            "JWT_SECRET_KEY"
        );
        assert!(with(&[("JWT_SECRET_KEY", strong)]).is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn production_refuses_switched_off_limits_and_open_metrics() {
        let base = PRODUCTION.to_vec();
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
            assert_eq!(settings(&pairs).unwrap_err().first().var, var);
        }
        let open: Vec<_> = base
            .iter()
            .copied()
            .filter(|(k, _)| *k != "METRICS_PORT")
            .collect();
        assert_eq!(settings(&open).unwrap_err().first().var, "METRICS_PORT");
        let mut with_token = open.clone();
        with_token.push(("METRICS_TOKEN", "scrape-me"));
        assert_eq!(
            settings(&with_token).unwrap_err().first().var,
            "METRICS_TOKEN"
        );
        with_token.pop();
        with_token.push(("METRICS_TOKEN", "0123456789abcdef-scrape"));
        assert!(settings(&with_token).is_ok());
        // Development keeps 0 = off, and the docs.
        let dev = settings(&[("RATE_LIMIT_IP_PER_HOUR", "0")]).unwrap();
        assert_eq!(dev.limits.quotas.ip_per_hour, 0);
        assert!(dev.server.docs_enabled);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errors = settings(&[
            ("PORT", "eighty"),
            ("OTP_LENGTH", "3"),
            ("DEBUG", "maybe"),
            ("REDIS_MODE", "clustr"),
            ("OTP_MESSAGE_TEMPLATE", "no code here"),
            ("DATABASE_URL", "mongodb://u:hunter2@h/x"),
        ])
        .unwrap_err();
        let vars: Vec<_> = errors.0.iter().map(|e| e.var).collect();
        for var in [
            "PORT",
            "OTP_LENGTH",
            "DEBUG",
            "REDIS_MODE",
            "OTP_MESSAGE_TEMPLATE",
            "DATABASE_URL",
        ] {
            assert!(errors.names(var), "{var} missing from {vars:?}");
        }
        assert_eq!(vars.len(), 6, "{vars:?}");
        let shown = errors.to_string();
        assert!(shown.starts_with("6 configuration errors:"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        // A malformed URL may hold a password anywhere: it is never echoed.
        for (var, value) in [
            ("DATABASE_URL", "otpgate:hunter2@db:5432/otpgate"),
            ("DATABASE_URL", "host=db password=hunter2"),
            ("REDIS_URL", ":hunter2@cache:6379"),
        ] {
            let err = settings(&[(var, value)]).unwrap_err();
            assert_eq!(err.first().var, var);
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        // A provider left half-configured does not hide the production guards.
        let errors = settings(&[
            ("ENVIRONMENT", "production"),
            ("SEND_OTP_VIA_SMS", "true"),
            ("TWILIO_PHONE_NUMBER", "+15005550006"),
            ("JWT_SECRET_KEY", "change-me"),
            ("EXPOSE_OTP", "true"),
            ("WHATSAPP_ACCESS_TOKEN", "t"),
            ("REDIS_MODE", "clustr"),
            ("LOG_FORMAT", "xml"),
        ])
        .unwrap_err();
        for var in [
            "TWILIO_ACCOUNT_SID",
            "TWILIO_AUTH_TOKEN",
            "WHATSAPP_PHONE_NUMBER_ID",
            "REDIS_MODE",
            "LOG_FORMAT",
            "JWT_SECRET_KEY",
            "EXPOSE_OTP",
            "REDIS_URL",
            "DATABASE_URL",
            "METRICS_PORT",
        ] {
            assert!(errors.names(var), "{var} missing from {errors}");
        }
        // Production: every guard that fails is named, not only the first.
        let errors = settings(&[
            ("ENVIRONMENT", "production"),
            ("EXPOSE_OTP", "true"),
            ("RATE_LIMIT_ENABLED", "false"),
        ])
        .unwrap_err();
        for var in [
            "JWT_SECRET_KEY",
            "REDIS_URL",
            "DATABASE_URL",
            "EXPOSE_OTP",
            "RATE_LIMIT_ENABLED",
            "METRICS_PORT",
            "SEND_OTP_VIA_SMS",
        ] {
            assert!(errors.names(var), "{var} missing from {errors}");
        }
    }

    /// A production configuration that passes every guard.
    const PRODUCTION: &[(&str, &str)] = &[
        ("ENVIRONMENT", "production"),
        (
            "DATABASE_URL",
            "postgres://otpgate:db-password-0123@db:5432/otpgate",
        ),
        ("JWT_SECRET_KEY", "0123456789abcdef0123456789abcdef"),
        ("REDIS_URL", "redis://127.0.0.1"),
        ("SEND_OTP_VIA_SMS", "true"),
        ("TWILIO_ACCOUNT_SID", "AC123"),
        ("TWILIO_AUTH_TOKEN", "token"),
        ("TWILIO_PHONE_NUMBER", "+15005550006"),
        ("METRICS_PORT", "9090"),
    ];

    fn production_with(extra: &[(&'static str, &'static str)]) -> Result<Settings, ConfigErrors> {
        let mut pairs = PRODUCTION.to_vec();
        pairs.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        pairs.extend_from_slice(extra);
        settings(&pairs)
    }

    #[test]
    fn production_accepts_the_teams_own_sms_gateway_over_https() {
        let gateway = [
            ("SEND_OTP_VIA_SMS", "false"),
            ("SMS_PROVIDER", "http"),
            ("SMS_HTTP_URL", "https://sms.acme.example/otp"),
            (
                "SMS_HTTP_SECRET",
                "whsec_cHJvZHVjdGlvbi1nYXRld2F5LWtleS0wMTIzNDU2Nzg5",
            ),
        ];
        let s = production_with(&gateway).expect("the gateway is a real channel");
        assert!(s.delivery.http_sms.is_some() && s.delivery.twilio.is_none());
        let mut plain = gateway.to_vec();
        plain[2] = ("SMS_HTTP_URL", "http://sms.acme.example/otp");
        let err = production_with(&plain).unwrap_err();
        assert!(err.names("SMS_HTTP_URL"), "{err}");
    }

    #[test]
    fn public_base_url_is_the_url_twilio_signs() {
        let callback = |pairs: &[(&'static str, &'static str)]| {
            production_with(pairs).map(|s| s.delivery.twilio.and_then(|t| t.status_callback))
        };
        assert_eq!(callback(&[]).unwrap(), None);
        for (given, expected) in [
            (
                "https://auth.acme.example/",
                "https://auth.acme.example/api/twilio/status",
            ),
            (
                "https://auth.acme.example:443",
                "https://auth.acme.example/api/twilio/status",
            ),
            (
                "https://acme.example:8443/auth",
                "https://acme.example:8443/auth/api/twilio/status",
            ),
        ] {
            assert_eq!(
                callback(&[("PUBLIC_BASE_URL", given)]).unwrap().as_deref(),
                Some(expected),
                "{given}"
            );
        }
        for bad in [
            "auth.acme.example",
            "https://a b.example",
            "https://x.example/?q=1",
            "http://auth.acme.example",
        ] {
            let err = callback(&[("PUBLIC_BASE_URL", bad)]).unwrap_err();
            assert!(err.names("PUBLIC_BASE_URL"), "{bad}: {err}");
        }
    }

    #[test]
    fn production_refuses_sqlite_and_switched_off_limits() {
        assert!(production_with(&[]).is_ok());
        for sqlite in ["sqlite://otpgate.db?mode=rwc", "sqlite+aiosqlite:///x.db"] {
            let err = production_with(&[("DATABASE_URL", sqlite)]).unwrap_err();
            assert_eq!(err.first().var, "DATABASE_URL");
        }
        let err = production_with(&[("RATE_LIMIT_ENABLED", "false")]).unwrap_err();
        assert_eq!(err.first().var, "RATE_LIMIT_ENABLED");
        // Development keeps SQLite and allows the switch.
        assert!(settings(&[("RATE_LIMIT_ENABLED", "false")]).is_ok());
    }

    #[test]
    fn production_accepts_mysql_and_mariadb() {
        for url in [
            "mysql://otpgate:db-password-0123@db:3306/otpgate",
            "mariadb://otpgate:db-password-0123@db/otpgate",
            "mysql+aiomysql://otpgate:db-password-0123@db/otpgate",
        ] {
            let s = production_with(&[("DATABASE_URL", url)]).unwrap();
            assert!(
                s.store.database_url.expose().starts_with("mysql://"),
                "{url}"
            );
        }
    }

    #[test]
    fn production_refuses_the_examples_secrets() {
        for (var, value) in [
            (
                "JWT_SECRET_KEY",
                "replace-with-at-least-32-random-bytes-0000",
            ),
            (
                "JWT_SECRET_KEY",
                "change-me-to-32-random-bytes-before-any-real-use",
            ),
            ("TWILIO_AUTH_TOKEN", "replace-me"),
            ("METRICS_TOKEN", "change-me-change-me-change-me"),
            (
                "DATABASE_URL",
                "postgres://otpgate:change-me@postgres.otpgate.svc:5432/otpgate",
            ),
            (
                "DATABASE_URL",
                "postgres://otpgate:otpgate@postgres:5432/otpgate",
            ),
            (
                "DATABASE_URL",
                "mysql://otpgate:otpgate@mariadb:3306/otpgate",
            ),
        ] {
            let err = production_with(&[(var, value)]).unwrap_err();
            assert!(err.names(var), "{var}={value}: {err}");
            assert!(err.to_string().contains("placeholder"), "{err}");
        }
    }

    #[test]
    fn production_refuses_captcha_test_secrets_and_plain_http() {
        let provider = ("CAPTCHA_PROVIDER", "turnstile");
        let own = ("CAPTCHA_SECRET", "0x4AAAAAAA-our-own-secret-of-some-length");
        assert!(production_with(&[provider, own]).is_ok());
        let err = production_with(&[
            provider,
            ("CAPTCHA_SECRET", "1x0000000000000000000000000000000AA"),
        ])
        .unwrap_err();
        assert!(err.names("CAPTCHA_SECRET"), "{err}");
        let plain = ("CAPTCHA_VERIFY_URL", "http://captcha.internal/siteverify");
        let err = production_with(&[provider, own, plain]).unwrap_err();
        assert!(err.names("CAPTCHA_VERIFY_URL"), "{err}");
        // Development may use a local stand-in over http.
        assert!(settings(&[provider, own, plain]).is_ok());
    }

    #[test]
    fn published_webhook_and_admin_secrets_are_refused() {
        // The Standard Webhooks specification's own test secret: fine in a test, not in
        // production.
        let spec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let url = ("EVENT_WEBHOOK_URL", "https://hooks.example.com/otpgate");
        assert!(settings(&[url, ("EVENT_WEBHOOK_SECRET", spec)]).is_ok());
        let err = production_with(&[url, ("EVENT_WEBHOOK_SECRET", spec)]).unwrap_err();
        assert!(err.names("EVENT_WEBHOOK_SECRET"), "{err}");
        assert!(err.to_string().contains("placeholder"), "{err}");
        let own = "whsec_c2VjcmV0LW9mLW91ci1vd24tMzItYnl0ZXMtbG9uZw==";
        assert!(production_with(&[url, ("EVENT_WEBHOOK_SECRET", own)]).is_ok());
        // An admin key copied from the examples opens the admin API to anyone: never accepted.
        for key in [
            "replace-with-at-least-32-random-bytes-0000",
            "change-me-change-me-change-me",
        ] {
            let err = settings(&[("ADMIN_API_KEYS", key)]).unwrap_err();
            assert!(err.names("ADMIN_API_KEYS"), "{err}");
            assert!(
                !err.to_string().contains(key),
                "the key is not echoed: {err}"
            );
        }
        assert!(settings(&[("ADMIN_API_KEYS", "0123456789abcdef0123456789abcdef")]).is_ok());
    }

    /// Every secret printed in the repository's examples is refused in production: the files
    /// are read here, so a new example secret fails this test until it is listed.
    #[test]
    fn example_files_hold_only_refused_secrets() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut checked = 0;
        for file in [
            "k8s/secret.example.yaml",
            "docker-compose.yml",
            "README.md",
            "loadtest/cluster.sh",
            "scripts/quickstart.sh",
            ".env.example",
        ] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            for line in text.lines() {
                for var in [
                    "JWT_SECRET_KEY",
                    "OTP_PEPPER",
                    "METRICS_TOKEN",
                    "TWILIO_AUTH_TOKEN",
                ] {
                    let Some(rest) = line
                        .split_once(&format!("{var}:"))
                        .or_else(|| line.split_once(&format!("{var}=")))
                    else {
                        continue;
                    };
                    let value = rest.1.trim().trim_matches(['"', '\'', '`', '\\', ' ']);
                    let value = value.split_whitespace().next().unwrap_or("");
                    if value.is_empty()
                        || value == "…"
                        || value.starts_with('$')
                        || value.starts_with('<')
                        || value.starts_with('|')
                    {
                        continue;
                    }
                    assert!(
                        is_example_secret(value),
                        "{file}: {var}={value} is not refused in production"
                    );
                    checked += 1;
                }
                if let Some(password) = line
                    .split_whitespace()
                    .find(|w| {
                        ["postgres://", "mysql://", "mariadb://"]
                            .iter()
                            .any(|s| w.contains(s))
                    })
                    .and_then(|w| url_password(w.trim_matches(['"', '\''])))
                    .filter(|p| !p.starts_with('$') && *p != "…")
                {
                    assert!(
                        is_example_secret(password),
                        "{file}: database password {password:?} is not refused"
                    );
                    checked += 1;
                }
            }
        }
        assert!(
            checked >= 4,
            "the example files were not read ({checked} secrets)"
        );
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
