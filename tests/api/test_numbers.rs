//! Test numbers for store review and CI (`TEST_PHONE_NUMBERS`): a fixed code, no provider, no
//! send quota or cooldown, the attempt limit kept, ordinary again after
//! `TEST_PHONE_NUMBERS_VALID_UNTIL`; bad entries stop start-up; production warns per number.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use crate::delivery::link_telegram;
use crate::helpers::{Backend, Reply, TestApp, spawn_app_with, unique_phone};
use crate::observability::{metrics_text, sample};
use crate::standin::{StandIn, TELEGRAM_TOKEN, TWILIO_FROM, WHATSAPP_PHONE_ID, WHATSAPP_TOKEN};

crate::on_both_backends!(
    test_numbers_reach_no_provider_on_any_channel,
    test_numbers_skip_send_quotas_and_cooldown,
    test_numbers_keep_the_attempt_limit,
    test_numbers_past_valid_until_are_ordinary,
    test_numbers_end_at_valid_until_without_a_restart,
);

/// The fixed code the tests list their numbers with.
const CODE: &str = "123456";

/// Every channel configured against the stand-in: SMS first, then WhatsApp; Telegram on request.
const CHANNELS: [(&str, &str); 6] = [
    ("SEND_OTP_VIA_SMS", "true"),
    ("TWILIO_PHONE_NUMBER", TWILIO_FROM),
    ("WHATSAPP_ACCESS_TOKEN", WHATSAPP_TOKEN),
    ("WHATSAPP_PHONE_NUMBER_ID", WHATSAPP_PHONE_ID),
    ("TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN),
    ("OTP_CHANNEL_ORDER", "sms,whatsapp"),
];

/// An app whose providers are the stand-in, with `phone` listed as a test number and `extra`
/// settings on top.
async fn app_with(
    backend: Backend,
    standin: &StandIn,
    phone: &str,
    extra: &[(&str, &str)],
) -> TestApp {
    let listed = format!("{phone}={CODE}");
    let base = standin.settings();
    let mut settings: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
    settings.extend_from_slice(&CHANNELS);
    settings.push(("TEST_PHONE_NUMBERS", &listed));
    settings.extend_from_slice(extra);
    spawn_app_with(backend, &settings).await
}

async fn login_via(app: &TestApp, base: &str, phone: &str, channel: Option<&str>) -> Reply {
    let body = match channel {
        Some(c) => json!({ "phone": phone, "channel": c }),
        None => json!({ "phone": phone }),
    };
    app.post(base, "/api/auth/login", body).await
}

/// Every request the stand-in received, by provider.
fn provider_requests(standin: &StandIn) -> [(&'static str, usize); 3] {
    ["twilio", "whatsapp", "telegram"].map(|p| (p, standin.requests(p).len()))
}

async fn test_numbers_reach_no_provider_on_any_channel(backend: Backend) {
    let standin = StandIn::start().await;
    let phone = unique_phone();
    let app = app_with(backend, &standin, &phone, &[]).await;
    let before = metrics_text(&app, &app.a).await;
    // Answered as a send would be, channel included; nothing leaves.
    for (requested, answered) in [
        (None, "sms"),
        (Some("sms"), "sms"),
        (Some("whatsapp"), "whatsapp"),
        // No linked chat: answered as if sent, as for any number.
        (Some("telegram"), "telegram"),
    ] {
        let reply = login_via(&app, &app.a, &phone, requested).await;
        assert_eq!(reply.status, 200, "{requested:?}: {}", reply.body);
        assert_eq!(reply.body["channel"], json!(answered), "{requested:?}");
        assert_eq!(reply.body["phone"], json!(phone));
        assert_eq!(reply.body["expires_in"], json!(300));
        assert_eq!(reply.body["resend_after"], json!(60));
        assert_eq!(reply.body["otp_code"], json!(CODE), "the fixed code");
    }
    // With a linked chat, Telegram is the first channel, and still nothing is sent.
    link_telegram(&app, &phone, 777_000_222).await;
    let reply = login_via(&app, &app.a, &phone, Some("telegram")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["channel"], json!("telegram"));
    // Any form of the number is the test number.
    let digits = phone.trim_start_matches('+');
    let reply = login_via(&app, &app.a, digits, Some("whatsapp")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["otp_code"], json!(CODE));

    // The fixed code opens a session like any code.
    let session = app.verify(&app.b, &phone, CODE).await;
    assert_eq!(session.status, 200, "{}", session.body);
    assert_eq!(session.body["token_type"], json!("bearer"));
    assert_eq!(session.body["user"]["phone"], json!(phone));
    let access = session.body["access_token"].as_str().expect("access token");
    assert_eq!(app.me(&app.a, access).await.status, 200);

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        provider_requests(&standin),
        [("twilio", 0), ("whatsapp", 0), ("telegram", 0)]
    );
    let after = metrics_text(&app, &app.a).await;
    for (channel, expected) in [("sms", 2.0), ("whatsapp", 2.0), ("telegram", 2.0)] {
        let series =
            format!("otpgate_otp_sent_total{{channel=\"{channel}\",outcome=\"test_number\"}}");
        assert_eq!(
            sample(&after, &series) - sample(&before, &series),
            expected,
            "{series}"
        );
    }
    let on_b = metrics_text(&app, &app.b).await;
    assert!(
        sample(
            &on_b,
            "otpgate_otp_verifications_total{outcome=\"test_number\"}"
        ) >= 1.0,
        "{on_b}"
    );

    // The stand-in does answer: an ordinary number on the same app reaches Twilio.
    let other = login_via(&app, &app.a, &unique_phone(), None).await;
    assert_eq!(other.status, 200, "{}", other.body);
    assert_eq!(standin.requests("twilio").len(), 1);
}

async fn test_numbers_skip_send_quotas_and_cooldown(backend: Backend) {
    let standin = StandIn::start().await;
    let phone = unique_phone();
    let app = app_with(backend, &standin, &phone, &[]).await;
    // Twice the per-phone quota (5 an hour), with no pause for the 60 s cooldown.
    for i in 0..10 {
        let base = if i % 2 == 0 { &app.a } else { &app.b };
        let reply = login_via(&app, base, &phone, None).await;
        assert_eq!(reply.status, 200, "login {i}: {}", reply.body);
    }
    assert_eq!(app.verify(&app.a, &phone, CODE).await.status, 200);
    // The limits are on: an ordinary number's second login is refused.
    let other = unique_phone();
    assert_eq!(login_via(&app, &app.a, &other, None).await.status, 200);
    login_via(&app, &app.b, &other, None)
        .await
        .assert_problem(429, "rate_limited");
    assert_eq!(standin.requests("twilio").len(), 1);
}

/// `OTP_MAX_ATTEMPTS` wrong codes, then the right one: the answers, as (status, code).
async fn burn(app: &TestApp, phone: &str, right: &str) -> Vec<(u16, String)> {
    let wrong = if right == "999999" {
        "888888"
    } else {
        "999999"
    };
    let mut answers = Vec::new();
    for i in 0..3 {
        let base = if i % 2 == 0 { &app.a } else { &app.b };
        let reply = app.verify(base, phone, wrong).await;
        answers.push((reply.status, reply.code().to_string()));
    }
    let reply = app.verify(&app.a, phone, right).await;
    answers.push((reply.status, reply.code().to_string()));
    answers
}

async fn test_numbers_keep_the_attempt_limit(backend: Backend) {
    let standin = StandIn::start().await;
    let phone = unique_phone();
    let app = app_with(backend, &standin, &phone, &[("OTP_MAX_ATTEMPTS", "3")]).await;
    assert_eq!(login_via(&app, &app.a, &phone, None).await.status, 200);
    let test_number = burn(&app, &phone, CODE).await;
    let expected: Vec<(u16, String)> = [
        (400, "invalid_otp"),
        (400, "invalid_otp"),
        (429, "too_many_attempts"),
        (429, "too_many_attempts"),
    ]
    .iter()
    .map(|(s, c)| (*s, c.to_string()))
    .collect();
    assert_eq!(
        test_number, expected,
        "the right code is refused once burned"
    );
    // Exactly what an ordinary number gets.
    let other = unique_phone();
    let code = app.login_code(&app.a, &other).await;
    assert_eq!(burn(&app, &other, &code).await, test_number);
    // A new login brings the fixed code back, once.
    assert_eq!(login_via(&app, &app.b, &phone, None).await.status, 200);
    assert_eq!(app.verify(&app.a, &phone, CODE).await.status, 200);
    app.verify(&app.b, &phone, CODE)
        .await
        .assert_problem(400, "otp_expired");
}

async fn test_numbers_past_valid_until_are_ordinary(backend: Backend) {
    let standin = StandIn::start().await;
    let phone = unique_phone();
    let app = app_with(
        backend,
        &standin,
        &phone,
        &[("TEST_PHONE_NUMBERS_VALID_UNTIL", "2020-01-01T00:00:00Z")],
    )
    .await;
    let reply = login_via(&app, &app.a, &phone, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["channel"], json!("sms"));
    let sent = standin.requests("twilio");
    assert_eq!(sent.len(), 1, "the provider is called");
    assert_eq!(sent[0].body["To"], json!(phone));
    let code = reply.body["otp_code"].as_str().expect("code");
    assert!(
        sent[0].body["Body"]
            .as_str()
            .expect("Body")
            .starts_with(code)
    );
    // The cooldown is back.
    login_via(&app, &app.b, &phone, None)
        .await
        .assert_problem(429, "rate_limited");
    let metrics = metrics_text(&app, &app.a).await;
    assert_eq!(
        sample(
            &metrics,
            "otpgate_otp_sent_total{channel=\"sms\",outcome=\"test_number\"}"
        ),
        0.0
    );
}

async fn test_numbers_end_at_valid_until_without_a_restart(backend: Backend) {
    let standin = StandIn::start().await;
    let phone = unique_phone();
    let until = Utc::now() + chrono::Duration::seconds(6);
    let until_text = until.to_rfc3339();
    let app = app_with(
        backend,
        &standin,
        &phone,
        &[("TEST_PHONE_NUMBERS_VALID_UNTIL", &until_text)],
    )
    .await;
    assert!(
        Utc::now() + chrono::Duration::seconds(1) < until,
        "the app took too long to start for this test"
    );
    let reply = login_via(&app, &app.a, &phone, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["otp_code"], json!(CODE));
    assert!(standin.requests("twilio").is_empty());
    let left = (until - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(200)).await;
    // Same process, same settings: now an ordinary number.
    let reply = login_via(&app, &app.b, &phone, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        standin.requests("twilio").len(),
        1,
        "the provider is called"
    );
}

/// A bad entry stops start-up (exit 2, like every configuration error), naming the entry and
/// never its code.
#[test]
fn bad_test_numbers_stop_start_up_naming_the_entry() {
    for (vars, expected) in [
        (
            &[("TEST_PHONE_NUMBERS", "+12015550123")][..],
            "TEST_PHONE_NUMBERS: entry 1 is not phone=code",
        ),
        (
            &[("TEST_PHONE_NUMBERS", "+12015550123=975310,+1201=864200")],
            "TEST_PHONE_NUMBERS: entry 2: ",
        ),
        (
            &[("TEST_PHONE_NUMBERS", "+12015550123=97531")],
            "TEST_PHONE_NUMBERS: entry 1 (+1******0123): the code must be 6 digits",
        ),
        (
            &[("TEST_PHONE_NUMBERS", "+12015550123=97531x")],
            "TEST_PHONE_NUMBERS: entry 1 (+1******0123): the code must be 6 digits",
        ),
        (
            &[(
                "TEST_PHONE_NUMBERS",
                "+12015550123=975310,1 (201) 555-0123=864200",
            )],
            "TEST_PHONE_NUMBERS: entry 2 (+1******0123) repeats entry 1",
        ),
        (
            &[
                ("TEST_PHONE_NUMBERS", "+12015550123=975310"),
                ("TEST_PHONE_NUMBERS_VALID_UNTIL", "2027-13-01"),
            ],
            "TEST_PHONE_NUMBERS_VALID_UNTIL: \"2027-13-01\" is not an RFC 3339 instant",
        ),
    ] {
        let output = crate::cli::otpgate(&crate::cli::temp_dir())
            .env("PORT", "0")
            .envs(vars.iter().copied())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{vars:?}: {stderr}");
        assert!(stderr.contains(expected), "{vars:?}: {stderr}");
        for code in ["975310", "864200", "97531"] {
            assert!(!stderr.contains(code), "{vars:?} shows a code: {stderr}");
        }
    }
}

/// In production, start-up logs one WARN per listed number, masked, without its code (before
/// it connects to anything: this run then fails on its unreachable database).
#[test]
fn production_warns_once_per_test_number() {
    let output = crate::cli::otpgate(&crate::cli::temp_dir())
        .envs([
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
            ("PORT", "0"),
            (
                "TEST_PHONE_NUMBERS",
                "+12015550123=918273,+91 98765 43210=192837",
            ),
            ("TEST_PHONE_NUMBERS_VALID_UNTIL", "2999-01-01T00:00:00Z"),
        ])
        .output()
        .expect("run");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let warnings: Vec<serde_json::Value> = all
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| {
            line["level"] == "WARN"
                && line["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("TEST_PHONE_NUMBERS"))
        })
        .collect();
    assert_eq!(warnings.len(), 2, "{all}");
    assert!(
        warnings[0]["message"]
            .as_str()
            .unwrap()
            .contains("+1******0123")
    );
    assert!(
        warnings[1]["message"]
            .as_str()
            .unwrap()
            .contains("+91******3210")
    );
    for secret in ["918273", "192837", "2015550123", "9876543210"] {
        assert!(!all.contains(secret), "{secret} in the output: {all}");
    }
}
