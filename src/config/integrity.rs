//! The device gates: for Android apps, Google Play Integrity verdicts, decoded by Google's
//! `decodeIntegrityToken` with a service account of the app's Google Cloud project; for iOS
//! apps, Apple App Attest keys and assertions, verified locally.

use std::time::Duration;

use serde::Deserialize;

use super::captcha::CaptchaMode;
use super::env::{ConfigError, Vars, base_url, invalid, required};
use crate::domain::secret::Secret;

/// The weakest device verdict that passes (`PLAY_INTEGRITY_DEVICE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeviceLevel {
    /// `MEETS_BASIC_INTEGRITY` (rooted or uncertified devices pass too).
    Basic,
    /// `MEETS_DEVICE_INTEGRITY`: a genuine, Play-certified Android device.
    Device,
    /// `MEETS_STRONG_INTEGRITY`: hardware-backed proof and a recent security update.
    Strong,
}

impl DeviceLevel {
    /// The verdict labels that meet this level.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            DeviceLevel::Basic => &[
                "MEETS_BASIC_INTEGRITY",
                "MEETS_DEVICE_INTEGRITY",
                "MEETS_STRONG_INTEGRITY",
            ],
            DeviceLevel::Device => &["MEETS_DEVICE_INTEGRITY", "MEETS_STRONG_INTEGRITY"],
            DeviceLevel::Strong => &["MEETS_STRONG_INTEGRITY"],
        }
    }
}

/// The service account the verdicts are decoded with (its JSON key file, as Google Cloud
/// gives it; only these fields are read).
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    /// `client_email`: the account, the JWT's issuer.
    pub client_email: String,
    /// `private_key`: PKCS#8 PEM (RSA).
    #[serde(deserialize_with = "secret_text")]
    pub private_key: Secret,
    /// `private_key_id`: the JWT's `kid`.
    #[serde(default)]
    pub private_key_id: Option<String>,
    /// `token_uri`: where the access token comes from.
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

fn secret_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    String::deserialize(d).map(Secret::new)
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

/// The Play Integrity gate, when `PLAY_INTEGRITY_PACKAGE` is set.
#[derive(Debug, Clone)]
pub struct IntegritySettings {
    /// `PLAY_INTEGRITY_PACKAGE`: the Android app's package name (`com.acme.app`).
    pub package: String,
    /// `PLAY_INTEGRITY_MODE` (default `enforce`).
    pub mode: CaptchaMode,
    /// `PLAY_INTEGRITY_CREDENTIALS`: the service account's JSON key.
    pub account: ServiceAccount,
    /// `PLAY_INTEGRITY_API_URL` (default `https://playintegrity.googleapis.com`).
    pub api_url: String,
    /// `PLAY_INTEGRITY_DEVICE` (default `device`).
    pub device: DeviceLevel,
    /// `PLAY_INTEGRITY_REQUIRE_PLAY_RECOGNIZED` (default true): the app must be the one Play
    /// distributes (`PLAY_RECOGNIZED`), not a re-signed or side-loaded build.
    pub require_play_recognized: bool,
    /// `PLAY_INTEGRITY_MAX_AGE_SECONDS` (default 300): how old a verdict may be.
    pub max_age: Duration,
    /// `PLAY_INTEGRITY_TIMEOUT_MS` (default 3000): bound on one call to Google.
    pub timeout: Duration,
    /// `PLAY_INTEGRITY_FAIL_OPEN` (default false): whether an outage of Google's API lets
    /// logins through.
    pub fail_open: bool,
}

impl IntegritySettings {
    /// `None` when `PLAY_INTEGRITY_PACKAGE` is unset (the gate is off).
    pub(crate) fn from_env(env: &Vars<'_>) -> Result<Option<Self>, ConfigError> {
        let Some(package) = env
            .get("PLAY_INTEGRITY_PACKAGE")
            .map(|p| p.trim().to_string())
        else {
            return Ok(None);
        };
        if !package.contains('.')
            || !package
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
        {
            return Err(invalid(
                "PLAY_INTEGRITY_PACKAGE",
                format!("{package:?} is not an Android package name (com.acme.app)"),
            ));
        }
        let mode = super::captcha::gate_mode(env, "PLAY_INTEGRITY_MODE");
        let device = match env
            .get("PLAY_INTEGRITY_DEVICE")
            .map(|m| m.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("device") => DeviceLevel::Device,
            Some("basic") => DeviceLevel::Basic,
            Some("strong") => DeviceLevel::Strong,
            Some(other) => {
                return Err(invalid(
                    "PLAY_INTEGRITY_DEVICE",
                    format!("expected basic, device or strong, got {other:?}"),
                ));
            }
        };
        let api_url = base_url(
            env,
            "PLAY_INTEGRITY_API_URL",
            "https://playintegrity.googleapis.com",
        )?;
        let require_play_recognized = env.bool("PLAY_INTEGRITY_REQUIRE_PLAY_RECOGNIZED", true)?;
        let max_age = env.ranged("PLAY_INTEGRITY_MAX_AGE_SECONDS", 300u64, 10..=3600)?;
        let timeout = env.ranged("PLAY_INTEGRITY_TIMEOUT_MS", 3_000u64, 50..=60_000)?;
        let fail_open = env.bool("PLAY_INTEGRITY_FAIL_OPEN", false)?;
        let credentials = required(
            env,
            "PLAY_INTEGRITY_CREDENTIALS",
            "with PLAY_INTEGRITY_PACKAGE (the service account's JSON key)",
        )?;
        if credentials.is_empty() {
            // Reported as missing already.
            return Ok(None);
        }
        let account: ServiceAccount = serde_json::from_str(&credentials).map_err(|e| {
            invalid(
                "PLAY_INTEGRITY_CREDENTIALS",
                format!(
                    "is not a service account JSON key with client_email and private_key \
                     (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        if jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.expose().as_bytes()).is_err()
        {
            return Err(invalid(
                "PLAY_INTEGRITY_CREDENTIALS",
                "its private_key is not an RSA private key in PEM",
            ));
        }
        if !(account.token_uri.starts_with("https://") || account.token_uri.starts_with("http://"))
        {
            return Err(invalid(
                "PLAY_INTEGRITY_CREDENTIALS",
                "its token_uri is not an http(s) URL",
            ));
        }
        Ok(Some(Self {
            package,
            mode,
            account,
            api_url,
            device,
            require_play_recognized,
            max_age: Duration::from_secs(max_age),
            timeout: Duration::from_millis(timeout),
            fail_open,
        }))
    }
}

/// The App Attest gate for iOS apps, when `APP_ATTEST_APP_ID` is set.
#[derive(Debug, Clone)]
pub struct AppAttestSettings {
    /// `APP_ATTEST_APP_ID`: the app ids (`TEAMID.bundle.id`, comma-separated) keys may be
    /// attested for.
    pub app_ids: Vec<String>,
    /// `APP_ATTEST_MODE` (default `enforce`).
    pub mode: CaptchaMode,
    /// `APP_ATTEST_ENVIRONMENT` (default `production`): `development` also accepts keys of
    /// builds signed for development (run from Xcode).
    pub allow_development: bool,
    /// `APP_ATTEST_ROOT_CA_FILE`: the root certificate (PEM) chains must end at; Apple's App
    /// Attestation Root CA when unset.
    pub root_pem: String,
    /// Whether `APP_ATTEST_ROOT_CA_FILE` replaced Apple's root (refused in production).
    pub root_replaced: bool,
}

impl AppAttestSettings {
    /// `None` when `APP_ATTEST_APP_ID` is unset (the gate is off).
    pub(crate) fn from_env(env: &Vars<'_>) -> Result<Option<Self>, ConfigError> {
        let Some(ids) = env.get("APP_ATTEST_APP_ID") else {
            return Ok(None);
        };
        let app_ids: Vec<String> = ids
            .split(',')
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .collect();
        if app_ids.is_empty() {
            return Ok(None);
        }
        for id in &app_ids {
            let valid = id.split_once('.').is_some_and(|(team, bundle)| {
                team.len() == 10
                    && team
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                    && !bundle.is_empty()
                    && bundle
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            });
            if !valid {
                return Err(invalid(
                    "APP_ATTEST_APP_ID",
                    format!(
                        "{id:?} is not an app id: the team id, a dot, the bundle id (ABCDE12345.com.acme.app)"
                    ),
                ));
            }
        }
        let mode = super::captcha::gate_mode(env, "APP_ATTEST_MODE");
        let allow_development = match env
            .get("APP_ATTEST_ENVIRONMENT")
            .map(|m| m.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("production") => false,
            Some("development") => true,
            Some(other) => {
                return Err(invalid(
                    "APP_ATTEST_ENVIRONMENT",
                    format!("expected production or development, got {other:?}"),
                ));
            }
        };
        let root_file = env.get("APP_ATTEST_ROOT_CA_FILE");
        let root_replaced = root_file.is_some();
        let root_pem = match root_file {
            None => crate::domain::app_attest::APPLE_ROOT_PEM.to_string(),
            Some(path) => std::fs::read_to_string(path.trim())
                .map_err(|e| invalid("APP_ATTEST_ROOT_CA_FILE", format!("cannot be read: {e}")))?,
        };
        crate::domain::app_attest::Verifier::new(&root_pem, &app_ids, allow_development)
            .map_err(|e| invalid("APP_ATTEST_ROOT_CA_FILE", e))?;
        Ok(Some(Self {
            app_ids,
            mode,
            allow_development,
            root_pem,
            root_replaced,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings_from as settings;

    fn account(key: &str) -> String {
        serde_json::json!({
            "client_email": "otpgate@acme.iam.gserviceaccount.com",
            "private_key": key,
            "token_uri": "https://oauth2.googleapis.com/token",
        })
        .to_string()
    }

    #[test]
    fn a_package_needs_working_credentials() {
        assert!(settings(&[]).unwrap().integrity.is_none());
        let var = |pairs: &[(&str, &str)]| settings(pairs).unwrap_err().first().var;
        let package = ("PLAY_INTEGRITY_PACKAGE", "com.acme.app");
        assert_eq!(var(&[package]), "PLAY_INTEGRITY_CREDENTIALS");
        assert_eq!(
            var(&[package, ("PLAY_INTEGRITY_CREDENTIALS", "{not json")]),
            "PLAY_INTEGRITY_CREDENTIALS"
        );
        let bad_key = account("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        let err = settings(&[package, ("PLAY_INTEGRITY_CREDENTIALS", &bad_key)]).unwrap_err();
        assert_eq!(err.first().var, "PLAY_INTEGRITY_CREDENTIALS");
        assert!(!err.to_string().contains("AAAA"), "the key is not quoted");
        assert_eq!(
            var(&[("PLAY_INTEGRITY_PACKAGE", "acme")]),
            "PLAY_INTEGRITY_PACKAGE"
        );
        let key = include_str!("../../tests/api/fixtures/play-integrity-test-key.pem");
        let good = account(key);
        let creds = ("PLAY_INTEGRITY_CREDENTIALS", good.as_str());
        let i = settings(&[package, creds]).unwrap().integrity.unwrap();
        assert_eq!(
            (i.mode, i.device),
            (CaptchaMode::Enforce, DeviceLevel::Device)
        );
        assert_eq!(i.api_url, "https://playintegrity.googleapis.com");
        assert!(i.require_play_recognized && !i.fail_open);
        assert!(!format!("{i:?}").contains("PRIVATE KEY"));
        assert_eq!(
            var(&[package, creds, ("PLAY_INTEGRITY_MODE", "strict")]),
            "PLAY_INTEGRITY_MODE"
        );
        assert_eq!(
            var(&[package, creds, ("PLAY_INTEGRITY_DEVICE", "meets")]),
            "PLAY_INTEGRITY_DEVICE"
        );
        // Production: https only.
        let plain = ("PLAY_INTEGRITY_API_URL", "http://playintegrity.internal");
        let err = settings(&[("ENVIRONMENT", "production"), package, creds, plain]).unwrap_err();
        assert!(err.names("PLAY_INTEGRITY_API_URL"), "{err}");
    }

    #[test]
    fn app_attest_needs_app_ids_and_a_root() {
        assert!(settings(&[]).unwrap().app_attest.is_none());
        let var = |pairs: &[(&str, &str)]| settings(pairs).unwrap_err().first().var;
        let a = settings(&[(
            "APP_ATTEST_APP_ID",
            "ABCDE12345.com.acme.app, ABCDE12345.com.acme.clip",
        )])
        .unwrap()
        .app_attest
        .unwrap();
        assert_eq!(
            a.app_ids,
            ["ABCDE12345.com.acme.app", "ABCDE12345.com.acme.clip"]
        );
        assert_eq!((a.mode, a.allow_development), (CaptchaMode::Enforce, false));
        assert!(a.root_pem.contains("MIICITCCAaegAwIBAgIQC"));
        for bad in [
            "com.acme.app",
            "abcde12345.com.acme.app",
            "ABCDE12345.",
            "ABCDE12345.com/acme",
        ] {
            assert_eq!(
                var(&[("APP_ATTEST_APP_ID", bad)]),
                "APP_ATTEST_APP_ID",
                "{bad}"
            );
        }
        let id = ("APP_ATTEST_APP_ID", "ABCDE12345.com.acme.app");
        assert_eq!(
            var(&[id, ("APP_ATTEST_ENVIRONMENT", "sandbox")]),
            "APP_ATTEST_ENVIRONMENT"
        );
        assert_eq!(
            var(&[id, ("APP_ATTEST_ROOT_CA_FILE", "/nonexistent/root.pem")]),
            "APP_ATTEST_ROOT_CA_FILE"
        );
        let dir = std::env::temp_dir().join(format!("otpgate-aa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert_eq!(
            var(&[id, ("APP_ATTEST_ROOT_CA_FILE", junk.to_str().unwrap())]),
            "APP_ATTEST_ROOT_CA_FILE"
        );
        // Production trusts Apple's built-in root only: no file, not even a copy of it.
        let pem = dir.join("root.pem");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&pem, crate::domain::app_attest::APPLE_ROOT_PEM).unwrap();
        let root = ("APP_ATTEST_ROOT_CA_FILE", pem.to_str().unwrap());
        assert!(settings(&[id, root]).is_ok());
        let err = settings(&[("ENVIRONMENT", "production"), id, root]).unwrap_err();
        assert!(err.names("APP_ATTEST_ROOT_CA_FILE"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
