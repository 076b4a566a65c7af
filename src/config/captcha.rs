//! The human gate before a code is sent: a captcha token from the client, checked with the
//! provider's siteverify endpoint (Cloudflare Turnstile, hCaptcha or Google reCAPTCHA).

use std::time::Duration;

use super::env::{ConfigError, Vars, base_url, invalid, required};
use crate::domain::secret::Secret;

/// `CAPTCHA_PROVIDER`: whose siteverify checks the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptchaProvider {
    /// Cloudflare Turnstile.
    Turnstile,
    /// hCaptcha.
    Hcaptcha,
    /// Google reCAPTCHA (v2 or v3).
    Recaptcha,
}

impl CaptchaProvider {
    /// The `provider` label and detail.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptchaProvider::Turnstile => "turnstile",
            CaptchaProvider::Hcaptcha => "hcaptcha",
            CaptchaProvider::Recaptcha => "recaptcha",
        }
    }

    /// The provider's documented siteverify URL (the `CAPTCHA_VERIFY_URL` default).
    pub fn default_verify_url(self) -> &'static str {
        match self {
            CaptchaProvider::Turnstile => {
                "https://challenges.cloudflare.com/turnstile/v0/siteverify"
            }
            CaptchaProvider::Hcaptcha => "https://api.hcaptcha.com/siteverify",
            CaptchaProvider::Recaptcha => "https://www.google.com/recaptcha/api/siteverify",
        }
    }
}

/// `CAPTCHA_MODE`: what a verdict does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptchaMode {
    /// No check at all (the token is ignored).
    Off,
    /// Checked and recorded (metric, audit event), never refused.
    Shadow,
    /// Checked; a failed verdict refuses the login (403 `captcha_failed`).
    Enforce,
}

impl CaptchaMode {
    /// The `mode` label and detail.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptchaMode::Off => "off",
            CaptchaMode::Shadow => "shadow",
            CaptchaMode::Enforce => "enforce",
        }
    }
}

/// The captcha gate, when `CAPTCHA_PROVIDER` is set.
#[derive(Debug, Clone)]
pub struct CaptchaSettings {
    /// `CAPTCHA_PROVIDER`.
    pub provider: CaptchaProvider,
    /// `CAPTCHA_SECRET`: the provider's secret key (never logged).
    pub secret: Secret,
    /// `CAPTCHA_MODE` (default `enforce`).
    pub mode: CaptchaMode,
    /// `CAPTCHA_VERIFY_URL` (default: the provider's siteverify URL).
    pub verify_url: String,
    /// `CAPTCHA_MIN_SCORE` (default 0.5): the lowest reCAPTCHA v3 score that passes; applied
    /// only to reCAPTCHA answers that carry a score.
    pub min_score: f64,
    /// `CAPTCHA_TIMEOUT_MS` (default 3000): bound on one siteverify request.
    pub timeout: Duration,
    /// `CAPTCHA_FAIL_OPEN` (default false): whether a verifier outage lets logins through.
    pub fail_open: bool,
    /// `CAPTCHA_HOSTNAMES`: the sites (or Android packages) a token must have been solved on,
    /// lower-cased; empty = any.
    pub hostnames: Vec<String>,
    /// `CAPTCHA_ACTION`: the action a token must carry (reCAPTCHA v3, Turnstile); `None` =
    /// any.
    pub action: Option<String>,
}

/// A gate's mode from `var` (`off`, `shadow` or `enforce`, the default); anything else is
/// reported and read as `enforce`.
pub(crate) fn gate_mode(env: &Vars<'_>, var: &'static str) -> CaptchaMode {
    match env
        .get(var)
        .map(|m| m.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("enforce") => CaptchaMode::Enforce,
        Some("shadow") => CaptchaMode::Shadow,
        Some("off") => CaptchaMode::Off,
        Some(other) => {
            env.report(invalid(
                var,
                format!("expected off, shadow or enforce, got {other:?}"),
            ));
            CaptchaMode::Enforce
        }
    }
}

impl CaptchaSettings {
    /// `None` when `CAPTCHA_PROVIDER` is unset (the gate is off).
    pub(crate) fn from_env(env: &Vars<'_>) -> Result<Option<Self>, ConfigError> {
        let Some(name) = env.get("CAPTCHA_PROVIDER") else {
            return Ok(None);
        };
        let provider = match name.trim().to_ascii_lowercase().as_str() {
            "turnstile" => CaptchaProvider::Turnstile,
            "hcaptcha" => CaptchaProvider::Hcaptcha,
            "recaptcha" => CaptchaProvider::Recaptcha,
            other => {
                return Err(invalid(
                    "CAPTCHA_PROVIDER",
                    format!("expected turnstile, hcaptcha or recaptcha, got {other:?}"),
                ));
            }
        };
        let secret = Secret::new(required(
            env,
            "CAPTCHA_SECRET",
            "with CAPTCHA_PROVIDER (the provider's secret key)",
        )?);
        let mode = gate_mode(env, "CAPTCHA_MODE");
        let verify_url = base_url(env, "CAPTCHA_VERIFY_URL", provider.default_verify_url())?;
        let min_score: f64 = env.parse("CAPTCHA_MIN_SCORE", 0.5)?;
        let min_score = if (0.0..=1.0).contains(&min_score) {
            min_score
        } else {
            env.report(invalid("CAPTCHA_MIN_SCORE", "must be between 0.0 and 1.0"));
            0.5
        };
        let timeout = env.ranged("CAPTCHA_TIMEOUT_MS", 3_000u64, 50..=60_000)?;
        let fail_open = env.bool("CAPTCHA_FAIL_OPEN", false)?;
        let hostnames: Vec<String> = env
            .list("CAPTCHA_HOSTNAMES")
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        if let Some(bad) = hostnames.iter().find(|h| {
            h.is_empty() || h.contains([':', '/', '?', '#']) || h.contains(char::is_whitespace)
        }) {
            env.report(invalid(
                "CAPTCHA_HOSTNAMES",
                format!("{bad:?} is not a host name (app.example.com) or an Android package"),
            ));
        }
        let action = env.get("CAPTCHA_ACTION").map(|a| a.trim().to_string());
        if action.is_some() && provider == CaptchaProvider::Hcaptcha {
            // hCaptcha's answers carry no action: every token would be refused.
            env.report(invalid(
                "CAPTCHA_ACTION",
                "hCaptcha answers carry no action; unset it (it is for reCAPTCHA v3 and Turnstile)",
            ));
        }
        Ok(Some(Self {
            provider,
            secret,
            mode,
            verify_url,
            min_score,
            timeout: Duration::from_millis(timeout),
            fail_open,
            hostnames,
            action,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings_from as settings;

    #[test]
    fn no_provider_means_no_gate() {
        assert!(settings(&[]).unwrap().captcha.is_none());
        // The other variables alone change nothing.
        let s = settings(&[("CAPTCHA_MODE", "shadow")]).unwrap();
        assert!(s.captcha.is_none());
    }

    #[test]
    fn a_provider_needs_its_secret_and_defaults_to_enforce() {
        let err = settings(&[("CAPTCHA_PROVIDER", "turnstile")]).unwrap_err();
        assert_eq!(err.first().var, "CAPTCHA_SECRET");
        let c = settings(&[
            ("CAPTCHA_PROVIDER", "turnstile"),
            ("CAPTCHA_SECRET", "0x4AAAAAAA-secret"),
        ])
        .unwrap()
        .captcha
        .unwrap();
        assert_eq!(c.provider, CaptchaProvider::Turnstile);
        assert_eq!(c.mode, CaptchaMode::Enforce);
        assert_eq!(
            c.verify_url,
            "https://challenges.cloudflare.com/turnstile/v0/siteverify"
        );
        assert_eq!(c.min_score, 0.5);
        assert_eq!(c.timeout, Duration::from_millis(3000));
        assert!(!c.fail_open);
        assert!(!format!("{c:?}").contains("0x4AAAAAAA-secret"));
        for (name, url) in [
            ("hcaptcha", "https://api.hcaptcha.com/siteverify"),
            (
                "reCAPTCHA",
                "https://www.google.com/recaptcha/api/siteverify",
            ),
        ] {
            let c = settings(&[("CAPTCHA_PROVIDER", name), ("CAPTCHA_SECRET", "s")])
                .unwrap()
                .captcha
                .unwrap();
            assert_eq!(c.verify_url, url);
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        let var = |pairs: &[(&str, &str)]| settings(pairs).unwrap_err().first().var;
        let with = |extra: (&'static str, &'static str)| {
            vec![
                ("CAPTCHA_PROVIDER", "hcaptcha"),
                ("CAPTCHA_SECRET", "s"),
                extra,
            ]
        };
        assert_eq!(
            var(&[
                ("CAPTCHA_PROVIDER", "friendlycaptcha"),
                ("CAPTCHA_SECRET", "s")
            ]),
            "CAPTCHA_PROVIDER"
        );
        assert_eq!(var(&with(("CAPTCHA_MODE", "strict"))), "CAPTCHA_MODE");
        assert_eq!(
            var(&with(("CAPTCHA_MIN_SCORE", "1.5"))),
            "CAPTCHA_MIN_SCORE"
        );
        assert_eq!(
            var(&with(("CAPTCHA_MIN_SCORE", "high"))),
            "CAPTCHA_MIN_SCORE"
        );
        assert_eq!(
            var(&with(("CAPTCHA_TIMEOUT_MS", "0"))),
            "CAPTCHA_TIMEOUT_MS"
        );
        assert_eq!(
            var(&with((
                "CAPTCHA_HOSTNAMES",
                "app.example, https://app.example/"
            ))),
            "CAPTCHA_HOSTNAMES"
        );
        assert_eq!(
            var(&with(("CAPTCHA_HOSTNAMES", "app.example:443"))),
            "CAPTCHA_HOSTNAMES"
        );
        assert_eq!(
            var(&with(("CAPTCHA_ACTION", "login"))),
            "CAPTCHA_ACTION",
            "hCaptcha has no action"
        );
        assert_eq!(
            var(&with(("CAPTCHA_FAIL_OPEN", "maybe"))),
            "CAPTCHA_FAIL_OPEN"
        );
        assert_eq!(
            var(&with(("CAPTCHA_VERIFY_URL", "ftp://x"))),
            "CAPTCHA_VERIFY_URL"
        );
        let c = settings(&with(("CAPTCHA_MODE", "Shadow")))
            .unwrap()
            .captcha
            .unwrap();
        assert_eq!(c.mode, CaptchaMode::Shadow);
        let c = settings(&with((
            "CAPTCHA_VERIFY_URL",
            "http://127.0.0.1:9/siteverify",
        )))
        .unwrap()
        .captcha
        .unwrap();
        assert_eq!(c.verify_url, "http://127.0.0.1:9/siteverify");
    }
}
