//! Warnings about an environment that would otherwise be silently ignored: variables that look
//! like otpgate's but are not read (`OTP_LENGHT=8`), and `.env` lines that do not parse.
//!
//! The known names are those of `.env.example`, which lists every variable with its default
//! (a test keeps it in step with what the settings read), plus the `NAME_FILE` form of each
//! secret and the legacy aliases.

use super::env::SECRET_VARIABLES;

/// `.env.example`: every variable otpgate reads, with its default.
const EXAMPLE_ENV: &str = include_str!("../../.env.example");

/// Old names still read.
const ALIASES: &[&str] = &["REDIS_POOL_SIZE"];

/// Prefixes of otpgate's own variables: an unknown name with one of them is a mistake.
const PREFIXES: &[&str] = &[
    "OTP_",
    "OTPGATE_",
    "JWT_",
    "REDIS_",
    "TWILIO_",
    "WHATSAPP_",
    "TELEGRAM_",
    "RATE_LIMIT_",
    "METRICS_",
    "DATABASE_",
    "DELIVERY_",
    "INTENT_",
    "ACCESS_TOKEN_",
    "REFRESH_TOKEN_",
    "REFRESH_REUSE_",
    "SEND_OTP_",
    "COUNTRY_",
    "DAILY_SEND_",
    "CORS_",
    "DOCS_",
    "SHUTDOWN_",
    "HTTP_MAX_",
    "HTTP_IDLE_",
    "HTTP_HEADER_",
    "ADMIN_",
    "SESSION_",
    "REAUTH_",
    "CAPTCHA_",
    "SMS_",
    "PUBLIC_",
    "PUMPING_",
    "PLAY_INTEGRITY_",
    "APP_ATTEST_",
    "EVENT_WEBHOOK_",
    "AUDIT_RETENTION_",
];

/// Every variable name otpgate reads.
pub fn known_variables() -> Vec<String> {
    let mut names: Vec<String> = super::parse_dotenv(EXAMPLE_ENV).into_keys().collect();
    names.extend(ALIASES.iter().map(|a| a.to_string()));
    names.extend(SECRET_VARIABLES.iter().map(|s| format!("{s}_FILE")));
    names.sort();
    names
}

/// Warnings for the variable `names` set in the environment and the `.env` text, if any.
pub fn warnings(names: &[String], dotenv: Option<&str>) -> Vec<String> {
    let known = known_variables();
    let mut out = Vec::new();
    if let Some(text) = dotenv {
        out.extend(
            super::env::dotenv_problems(text)
                .into_iter()
                .map(|(line, why)| format!(".env line {line} is ignored: {why}")),
        );
    }
    let mut seen: Vec<&str> = names.iter().map(String::as_str).collect();
    seen.sort_unstable();
    seen.dedup();
    for name in seen {
        if known.iter().any(|k| k == name) || kubernetes_service_variable(name) {
            continue;
        }
        let nearest = known
            .iter()
            .map(|k| (distance(name, k), k))
            .min()
            .filter(|(d, _)| *d <= 2);
        let ours = PREFIXES.iter().any(|p| name.starts_with(p));
        match nearest {
            Some((_, k)) if ours || name.len() >= 6 => out.push(format!(
                "{name} is not an otpgate setting and is ignored; did you mean {k}?"
            )),
            None if ours => out.push(format!(
                "{name} is not an otpgate setting and is ignored (see .env.example or the \
                 README's configuration table)"
            )),
            _ => {}
        }
    }
    out
}

/// The warnings of this process: its environment and `./.env`.
pub fn environment_warnings() -> Vec<String> {
    let dotenv = std::fs::read_to_string(".env").ok();
    // Kubernetes also sets `<SERVICE>_PORT=tcp://…` for every service in the namespace (a
    // `redis` service gives REDIS_PORT): not settings.
    let mut names: Vec<String> = std::env::vars_os()
        .filter(|(_, v)| {
            let v = v.to_string_lossy();
            !(v.starts_with("tcp://") || v.starts_with("udp://"))
        })
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    if let Some(text) = &dotenv {
        names.extend(super::parse_dotenv(text).into_keys());
    }
    warnings(&names, dotenv.as_deref())
}

/// Kubernetes sets `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_8000_TCP…` for every service in
/// the namespace, `OTPGATE_…` included for ours.
fn kubernetes_service_variable(name: &str) -> bool {
    name.contains("_SERVICE_HOST")
        || name.contains("_SERVICE_PORT")
        || name.contains("_PORT_") && name.contains("_TCP")
        || name.contains("_PORT_") && name.contains("_UDP")
        || name.ends_with("_PORT") && name.starts_with("OTPGATE_")
}

/// Edit distance with adjacent transpositions (`LENGHT` is one edit from `LENGTH`).
fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn misspellings_and_unknown_names_are_named() {
        let w = warnings(
            &names(&[
                "OTP_LENGHT",
                "ENVIROMENT",
                "RATE_LIMIT_PER_PHONE",
                "PATH",
                "HOME",
                "HOSTNAME",
                "OTPGATE_SERVICE_HOST",
                "OTPGATE_PORT_8000_TCP_ADDR",
                "OTP_LENGTH",
                "JWT_SECRET_KEY_FILE",
                "REDIS_POOL_SIZE",
            ]),
            None,
        );
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("ENVIROMENT") && w[0].contains("did you mean ENVIRONMENT"));
        assert!(w[1].contains("OTP_LENGHT") && w[1].contains("did you mean OTP_LENGTH"));
        assert!(w[2].contains("RATE_LIMIT_PER_PHONE") && w[2].contains("ignored"));
    }

    #[test]
    fn malformed_dotenv_lines_are_named() {
        let w = warnings(
            &[],
            Some("OK=1\nthis line has no equals sign\nBAD KEY=2\nQ=\"unterminated\n"),
        );
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with(".env line 2"));
        assert!(w[1].starts_with(".env line 3"));
        assert!(w[2].starts_with(".env line 4"));
    }

    /// Every variable the settings read is in `.env.example` (so it is known, and documented
    /// with its default), and `.env.example` lists nothing the settings never read.
    #[test]
    fn env_example_lists_exactly_what_the_settings_read() {
        let asked = Mutex::new(BTreeSet::new());
        let dir = std::env::temp_dir().join(format!("otpgate-lint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("es256.pem");
        std::fs::write(
            &key,
            crate::keys::generate_pem(crate::keys::SigningAlgorithm::Es256).unwrap(),
        )
        .unwrap();
        let key = key.display().to_string();
        // Settings that switch every optional section on, so their variables are read too.
        let full = [
            ("SEND_OTP_VIA_SMS", "true"),
            ("TWILIO_ACCOUNT_SID", "AC1"),
            ("TWILIO_AUTH_TOKEN", "x"),
            ("TWILIO_PHONE_NUMBER", "+15005550006"),
            ("WHATSAPP_ACCESS_TOKEN", "t"),
            ("WHATSAPP_PHONE_NUMBER_ID", "1"),
            ("TELEGRAM_BOT_TOKEN", "1:x"),
            ("CAPTCHA_PROVIDER", "turnstile"),
            ("CAPTCHA_SECRET", "x"),
            ("PLAY_INTEGRITY_PACKAGE", "com.acme.app"),
            ("PLAY_INTEGRITY_CREDENTIALS", "{}"),
            ("APP_ATTEST_APP_ID", "ABCDE12345.com.acme.app"),
            ("REDIS_URL", "redis://127.0.0.1"),
            ("JWT_ALGORITHM", "ES256"),
            ("JWT_PRIVATE_KEY_FILE", key.as_str()),
            ("DEBUG", "true"),
        ];
        // The other SMS providers.
        let gateway = [
            ("SMS_PROVIDER", "http"),
            ("SMS_HTTP_URL", "https://sms.example/otp"),
            (
                "SMS_HTTP_SECRET",
                "whsec_b3RwZ2F0ZS10ZXN0LXNtcy1nYXRld2F5LWtleS0zMmI=",
            ),
        ];
        let verify = [
            ("SMS_PROVIDER", "twilio_verify"),
            ("TWILIO_ACCOUNT_SID", "AC1"),
            ("TWILIO_AUTH_TOKEN", "x"),
            (
                "TWILIO_VERIFY_SERVICE_SID",
                "VA0123456789abcdef0123456789abcdef",
            ),
        ];
        for pairs in [&full[..], &gateway[..], &verify[..], &[]] {
            let _ = crate::config::Settings::from_lookup(|k| {
                asked.lock().unwrap().insert(k.to_string());
                pairs
                    .iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.to_string())
            });
        }
        let asked = asked.into_inner().unwrap();
        let known: BTreeSet<String> = known_variables().into_iter().collect();
        let unknown: Vec<_> = asked.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "read but not in .env.example: {unknown:?}"
        );
        let unread: Vec<_> = known
            .iter()
            .filter(|k| !asked.contains(*k) && !k.ends_with("_FILE"))
            .collect();
        assert!(
            unread.is_empty(),
            "in .env.example but never read: {unread:?}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The chart's `config` accepts exactly otpgate's non-secret settings: a misspelt key or a
    /// secret in a ConfigMap is refused by `helm`, and the keys the chart writes itself (`PORT`,
    /// `METRICS_PORT`, `RUN_MIGRATIONS`, the key file paths) cannot be written twice.
    #[test]
    fn helm_schema_lists_exactly_the_non_secret_settings() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("helm/otpgate/values.schema.json")).unwrap();
        let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
        let config = &schema["properties"]["config"];
        assert_eq!(config["additionalProperties"], false);
        let listed: BTreeSet<String> = config["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let chart_owned = [
            "PORT",
            "METRICS_PORT",
            "RUN_MIGRATIONS",
            "JWT_PRIVATE_KEY_FILE",
            "JWT_PREVIOUS_PUBLIC_KEY_FILES",
            "OTP_TEMPLATES_DIR",
        ];
        let expected: BTreeSet<String> = super::super::parse_dotenv(EXAMPLE_ENV)
            .into_keys()
            .filter(|k| !SECRET_VARIABLES.contains(&k.as_str()))
            .filter(|k| !chart_owned.contains(&k.as_str()))
            .collect();
        assert_eq!(listed, expected);
        let template =
            std::fs::read_to_string(root.join("helm/otpgate/templates/configmap.yaml")).unwrap();
        for key in ["PORT", "METRICS_PORT", "RUN_MIGRATIONS"] {
            assert!(
                template.contains(&format!("  {key}: ")),
                "{key} not written by the chart"
            );
        }
    }

    /// The README's configuration table documents every variable.
    #[test]
    fn readme_documents_every_variable() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let first_cells: Vec<&str> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| "))
            .filter_map(|l| l.split(" | ").next())
            .collect();
        let missing: Vec<String> = super::super::parse_dotenv(EXAMPLE_ENV)
            .into_keys()
            .filter(|v| !first_cells.iter().any(|c| c.contains(&format!("`{v}`"))))
            .collect();
        assert!(missing.is_empty(), "not in the README's table: {missing:?}");
    }

    #[test]
    fn distance_counts_transpositions_once() {
        assert_eq!(distance("OTP_LENGHT", "OTP_LENGTH"), 1);
        assert_eq!(distance("HOST", "HOME"), 2);
        assert_eq!(distance("", "ABC"), 3);
    }
}
