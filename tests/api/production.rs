//! Production refuses to run with the quotas switched off (`RATE_LIMIT_ENABLED=false`), as the
//! settings and as the binary see it; development allows it (the API fuzzing with limits off
//! relies on that).

use std::collections::HashMap;
use std::process::{Command, Stdio};

use otpgate::config::Settings;

/// A production configuration that passes every guard.
fn production() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        ("ENVIRONMENT", "production"),
        (
            "DATABASE_URL",
            "postgres://otpgate:db-password-0123@127.0.0.1:1/otpgate",
        ),
        ("JWT_SECRET_KEY", "0123456789abcdef0123456789abcdef"),
        ("REDIS_URL", "redis://127.0.0.1:1"),
        ("SEND_OTP_VIA_SMS", "true"),
        ("TWILIO_ACCOUNT_SID", "AC123"),
        ("TWILIO_AUTH_TOKEN", "token"),
        ("TWILIO_PHONE_NUMBER", "+15005550006"),
        ("METRICS_PORT", "0"),
    ])
}

fn settings(env: &HashMap<&str, &str>) -> Result<Settings, otpgate::config::ConfigErrors> {
    Settings::from_lookup(|k| env.get(k).map(|v| (*v).to_string()))
}

#[test]
fn production_refuses_rate_limit_enabled_false() {
    let mut env = production();
    assert!(settings(&env).is_ok(), "the base configuration passes");
    env.insert("RATE_LIMIT_ENABLED", "true");
    assert!(settings(&env).is_ok());
    env.insert("RATE_LIMIT_ENABLED", "false");
    let err = settings(&env).expect_err("limits off in production");
    assert_eq!(err.first().var, "RATE_LIMIT_ENABLED", "{err}");

    // Development accepts it.
    env.insert("ENVIRONMENT", "development");
    let dev = settings(&env).expect("development");
    assert!(!dev.limits.quotas.enabled);

    // The binary refuses to start: exit 2, the variable named, before connecting to anything.
    env.insert("ENVIRONMENT", "production");
    let dir = std::env::temp_dir().join(format!("otpgate-prod-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_otpgate"))
        .env_clear()
        .envs(&env)
        .env("PORT", "0")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("run otpgate");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("RATE_LIMIT_ENABLED"), "{stderr}");
}
