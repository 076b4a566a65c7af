//! The captcha gate before a code is sent (`CAPTCHA_*`), against the stand-in's siteverify:
//! enforce refuses (403, nothing sent, nothing stored), shadow records (metric, audit event)
//! without refusing, a verifier outage fails closed (503) or open as configured, bad numbers and
//! test numbers cost no verifier call, and bad settings stop start-up.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::{otpgate, temp_dir};
use crate::helpers::{Backend, Reply, TestApp, field, spawn_app_with, unique_phone};
use crate::observability::{metrics_text, sample};
use crate::standin::{CAPTCHA_SECRET, StandIn, TWILIO_FROM};

crate::on_both_backends!(
    enforce_sends_only_after_a_pass,
    recaptcha_scores_count_and_hcaptcha_scores_do_not,
    shadow_records_failures_without_refusing,
    verifier_outages_fail_closed_or_open,
    test_numbers_skip_the_gate_and_number_changes_pass_it,
    tokens_must_come_from_our_sites_and_action,
);

const KEY: &str = "admin-key-0123456789abcdef0123456789";

/// An app sending SMS to the stand-in, with a captcha gate of `provider` in `mode` checked by
/// the stand-in, and `extra` settings on top.
async fn app_with(
    backend: Backend,
    standin: &StandIn,
    provider: &'static str,
    mode: &'static str,
    extra: &[(&str, &str)],
) -> TestApp {
    let mut owned = standin.settings();
    owned.extend(standin.captcha_settings(provider, mode));
    let mut settings: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    settings.extend_from_slice(&[
        ("SEND_OTP_VIA_SMS", "true"),
        ("TWILIO_PHONE_NUMBER", TWILIO_FROM),
        ("ADMIN_API_KEYS", KEY),
    ]);
    settings.extend_from_slice(extra);
    spawn_app_with(backend, &settings).await
}

async fn login(app: &TestApp, phone: &str, token: Option<&str>) -> Reply {
    let body = match token {
        Some(t) => json!({ "phone": phone, "captcha_token": t }),
        None => json!({ "phone": phone }),
    };
    app.post(&app.a, "/api/auth/login", body).await
}

/// Asserts a refusal that sent nothing: 403 `captcha_failed` (or `status`/`code`), no SMS, and
/// no code stored for the number.
async fn assert_refused(
    app: &TestApp,
    standin: &StandIn,
    phone: &str,
    reply: &Reply,
    (status, code): (u16, &str),
) {
    reply.assert_problem(status, code);
    assert!(
        standin
            .requests("twilio")
            .iter()
            .all(|r| r.body["To"] != json!(phone)),
        "an SMS went to {phone}"
    );
    app.verify(&app.b, phone, "000000")
        .await
        .assert_problem(400, "otp_expired");
}

/// A captcha verdict counter on instance A.
async fn verdicts(app: &TestApp, provider: &str, verdict: &str, mode: &str) -> f64 {
    let text = metrics_text(app, &app.a).await;
    sample(
        &text,
        &format!(
            "otpgate_captcha_verdicts_total{{mode=\"{mode}\",provider=\"{provider}\",verdict=\"{verdict}\"}}"
        ),
    )
}

/// The `captcha.failed` audit events once there are `n` (polled for 10 s).
async fn captcha_events(app: &TestApp, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = app
            .call(
                &app.b,
                Method::GET,
                "/admin/v1/audit?kind=captcha.failed&limit=100",
                None,
                Some(KEY),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let events = reply.body["events"].as_array().expect("events").clone();
        if events.len() >= n {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{} captcha.failed event(s), wanted {n}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn enforce_sends_only_after_a_pass(backend: Backend) {
    let standin = StandIn::start().await;
    let app = app_with(backend, &standin, "turnstile", "enforce", &[]).await;

    // A pass: the code is sent, and the siteverify request is the documented one.
    let phone = unique_phone();
    let reply = login(&app, &phone, Some("pass-1")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(standin.requests("twilio").len(), 1);
    let checked = standin.requests("captcha");
    assert_eq!(checked.len(), 1);
    assert_eq!(checked[0].body["secret"], json!(CAPTCHA_SECRET));
    assert_eq!(checked[0].body["response"], json!("pass-1"));
    assert_eq!(checked[0].body["remoteip"], json!("127.0.0.1"));
    let code = reply.body["otp_code"].as_str().expect("code");
    assert_eq!(app.verify(&app.b, &phone, code).await.status, 200);

    // Refused by the provider, missing: 403, nothing sent, nothing stored.
    let refused = (403, "captcha_failed");
    let phone = unique_phone();
    let reply = login(&app, &phone, Some("fail-1")).await;
    assert_refused(&app, &standin, &phone, &reply, refused).await;
    assert_eq!(standin.requests("captcha").len(), 2);
    let phone = unique_phone();
    let reply = login(&app, &phone, None).await;
    assert_refused(&app, &standin, &phone, &reply, refused).await;
    let reply = login(&app, &phone, Some("")).await;
    assert_refused(&app, &standin, &phone, &reply, refused).await;
    assert_eq!(
        standin.requests("captcha").len(),
        2,
        "no call without a token"
    );

    // A token works once: replayed, the provider says `timeout-or-duplicate`.
    let reply = login(&app, &unique_phone(), Some("once-1")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let phone = unique_phone();
    let reply = login(&app, &phone, Some("once-1")).await;
    assert_refused(&app, &standin, &phone, &reply, refused).await;

    // A bad number is refused before any verifier call; so is an oversize token.
    let calls = standin.requests("captcha").len();
    login(&app, "+91123", Some("pass-2"))
        .await
        .assert_problem(422, "invalid_phone");
    let long = "p".repeat(4097);
    let phone = unique_phone();
    let reply = login(&app, &phone, Some(&long)).await;
    assert_refused(&app, &standin, &phone, &reply, (422, "invalid_field")).await;
    assert_eq!(
        reply.body["field"],
        json!("captcha_token"),
        "{}",
        reply.body
    );
    assert_eq!(standin.requests("captcha").len(), calls);
    assert_eq!(standin.requests("twilio").len(), 2);
    // A token of exactly 4096 characters is read (and refused by the provider here).
    let phone = unique_phone();
    let reply = login(&app, &phone, Some(&"f".repeat(4096))).await;
    assert_refused(&app, &standin, &phone, &reply, refused).await;

    // Counted, and audited (failures only) with the enforce mode.
    assert_eq!(verdicts(&app, "turnstile", "pass", "enforce").await, 2.0);
    assert_eq!(verdicts(&app, "turnstile", "fail", "enforce").await, 3.0);
    assert_eq!(verdicts(&app, "turnstile", "missing", "enforce").await, 2.0);
    // Audited: the 3 refusals by the provider; not the passes, nor (in enforce mode, where
    // they cost nothing but would flood the audit queue) the requests without a token.
    let events = captcha_events(&app, 3).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e["details"]["mode"] == json!("enforce")
                && e["details"]["verdict"] == json!("fail")
                && e["details"]["provider"] == json!("turnstile")
                && e["phone_hash"].is_string())
    );
}

async fn recaptcha_scores_count_and_hcaptcha_scores_do_not(backend: Backend) {
    let standin = StandIn::start().await;
    let app = app_with(
        backend,
        &standin,
        "recaptcha",
        "enforce",
        &[("CAPTCHA_MIN_SCORE", "0.5")],
    )
    .await;
    let phone = unique_phone();
    let reply = login(&app, &phone, Some("low-1")).await;
    assert_refused(&app, &standin, &phone, &reply, (403, "captcha_failed")).await;
    let reply = login(&app, &unique_phone(), Some("high-1")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        verdicts(&app, "recaptcha", "low_score", "enforce").await,
        1.0
    );
    let events = captcha_events(&app, 1).await;
    assert_eq!(events[0]["details"]["verdict"], json!("low_score"));
    assert_eq!(events[0]["details"]["score"], json!(0.1));

    // hCaptcha's (enterprise) score is a risk score: not applied.
    let standin = StandIn::start().await;
    let app = app_with(backend, &standin, "hcaptcha", "enforce", &[]).await;
    let reply = login(&app, &unique_phone(), Some("low-2")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(verdicts(&app, "hcaptcha", "pass", "enforce").await, 1.0);
}

async fn shadow_records_failures_without_refusing(backend: Backend) {
    let standin = StandIn::start().await;
    let app = app_with(backend, &standin, "turnstile", "shadow", &[]).await;
    for token in [Some("fail-1"), None, Some("pass-1")] {
        let reply = login(&app, &unique_phone(), token).await;
        assert_eq!(reply.status, 200, "{token:?}: {}", reply.body);
    }
    assert_eq!(standin.requests("twilio").len(), 3, "every code was sent");
    assert_eq!(standin.requests("captcha").len(), 2);
    for (verdict, n) in [("fail", 1.0), ("missing", 1.0), ("pass", 1.0)] {
        assert_eq!(
            verdicts(&app, "turnstile", verdict, "shadow").await,
            n,
            "{verdict}"
        );
    }
    assert_eq!(verdicts(&app, "turnstile", "fail", "enforce").await, 0.0);
    let events = captcha_events(&app, 2).await;
    assert_eq!(events.len(), 2, "{events:?}");
    let mut seen: Vec<&str> = events
        .iter()
        .map(|e| e["details"]["verdict"].as_str().unwrap_or(""))
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, ["fail", "missing"]);
    for e in &events {
        assert_eq!(e["details"]["mode"], json!("shadow"));
        assert_eq!(e["details"]["provider"], json!("turnstile"));
        assert!(e["details"].get("score").is_none());
    }
}

async fn verifier_outages_fail_closed_or_open(backend: Backend) {
    let standin = StandIn::start().await;
    let app = app_with(backend, &standin, "turnstile", "enforce", &[]).await;
    for token in ["slow-1", "boom-1", "junk-1"] {
        let phone = unique_phone();
        let started = Instant::now();
        let reply = login(&app, &phone, Some(token)).await;
        assert_refused(&app, &standin, &phone, &reply, (503, "captcha_unavailable")).await;
        assert!(
            started.elapsed() < Duration::from_millis(1800),
            "{token}: bounded by CAPTCHA_TIMEOUT_MS"
        );
    }
    assert_eq!(
        verdicts(&app, "turnstile", "unavailable", "enforce").await,
        3.0
    );
    let events = captcha_events(&app, 3).await;
    assert!(
        events
            .iter()
            .all(|e| e["details"]["verdict"] == json!("unavailable"))
    );
    // Down altogether (nothing listens): the same.
    let dead = app_with(
        backend,
        &standin,
        "turnstile",
        "enforce",
        &[("CAPTCHA_VERIFY_URL", "http://127.0.0.1:9/siteverify")],
    )
    .await;
    let phone = unique_phone();
    let reply = login(&dead, &phone, Some("pass-1")).await;
    assert_refused(
        &dead,
        &standin,
        &phone,
        &reply,
        (503, "captcha_unavailable"),
    )
    .await;

    // Fail-open: the code is sent, and the outage still counted.
    let standin = StandIn::start().await;
    let app = app_with(
        backend,
        &standin,
        "turnstile",
        "enforce",
        &[("CAPTCHA_FAIL_OPEN", "true")],
    )
    .await;
    for token in ["boom-2", "slow-2"] {
        let reply = login(&app, &unique_phone(), Some(token)).await;
        assert_eq!(reply.status, 200, "{token}: {}", reply.body);
    }
    assert_eq!(standin.requests("twilio").len(), 2);
    assert_eq!(
        verdicts(&app, "turnstile", "unavailable", "enforce").await,
        2.0
    );
    // A real refusal is still refused.
    let phone = unique_phone();
    let reply = login(&app, &phone, Some("fail-3")).await;
    assert_refused(&app, &standin, &phone, &reply, (403, "captcha_failed")).await;
    // The provider refusing to answer us (429: our secret throttled, which a flood of bogus
    // tokens can cause) never opens the gate.
    let phone = unique_phone();
    let reply = login(&app, &phone, Some("throttled-1")).await;
    assert_refused(&app, &standin, &phone, &reply, (503, "captcha_unavailable")).await;
    assert_eq!(
        verdicts(&app, "turnstile", "unavailable", "enforce").await,
        3.0
    );
}

async fn test_numbers_skip_the_gate_and_number_changes_pass_it(backend: Backend) {
    let standin = StandIn::start().await;
    let test_phone = unique_phone();
    let listed = format!("{test_phone}=123456");
    let app = app_with(
        backend,
        &standin,
        "turnstile",
        "enforce",
        &[("TEST_PHONE_NUMBERS", &listed)],
    )
    .await;
    let reply = login(&app, &test_phone, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(standin.requests("captcha").is_empty(), "no verifier call");
    assert!(standin.requests("twilio").is_empty(), "no SMS");

    // The number change sends a code through the same gate.
    let phone = unique_phone();
    let reply = login(&app, &phone, Some("pass-1")).await;
    let code = reply.body["otp_code"].as_str().expect("code").to_string();
    let session = app.verify(&app.b, &phone, &code).await;
    assert_eq!(session.status, 200, "{}", session.body);
    let access = field(&session.body, "access_token").to_string();
    let change = |body: Value| {
        let (app, access) = (&app, access.clone());
        async move {
            app.call(
                &app.a,
                Method::POST,
                "/api/auth/phone",
                Some(body),
                Some(&access),
            )
            .await
        }
    };
    let new_phone = unique_phone();
    let reply = change(json!({ "phone": new_phone })).await;
    assert_refused(&app, &standin, &new_phone, &reply, (403, "captcha_failed")).await;
    let reply = change(json!({ "phone": new_phone, "captcha_token": "fail-1" })).await;
    reply.assert_problem(403, "captcha_failed");
    let reply = change(json!({ "phone": new_phone, "captcha_token": "pass-2" })).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(standin.requests("twilio").len(), 2);
}

/// `/openapi.json` documents the field and both errors on the operations that send a code.
#[tokio::test]
async fn the_spec_documents_the_token_and_its_errors() {
    let app = spawn_app_with(Backend::Embedded, &[]).await;
    let spec = app
        .client
        .get(format!("{}/openapi.json", app.a))
        .send()
        .await
        .expect("sent")
        .json::<Value>()
        .await
        .expect("json");
    let schemas = &spec["components"]["schemas"];
    for schema in ["LoginRequest", "PhoneChangeRequest"] {
        let token = &schemas[schema]["properties"]["captcha_token"];
        assert_eq!(token["maxLength"], json!(4096), "{schema}: {token}");
        assert!(
            !schemas[schema]["required"]
                .as_array()
                .is_some_and(|r| r.contains(&json!("captcha_token"))),
            "{schema}: optional"
        );
    }
    let text = spec.to_string();
    for code in ["captcha_failed", "captcha_unavailable"] {
        assert!(
            text.contains(&format!("urn:otpgate:problem:{code}")),
            "{code}"
        );
    }
    for (path, status) in [
        ("/api/auth/login", "403"),
        ("/api/auth/login", "503"),
        ("/api/auth/phone", "403"),
    ] {
        assert!(
            spec["paths"][path]["post"]["responses"][status].is_object(),
            "{path} {status}"
        );
    }
}

/// A provider without its secret, an unknown provider or mode: start-up stops (exit 2) naming
/// the variable, and the secret never reaches the output.
#[test]
fn bad_captcha_settings_stop_start_up() {
    for (env, var) in [
        (vec![("CAPTCHA_PROVIDER", "turnstile")], "CAPTCHA_SECRET"),
        (
            vec![
                ("CAPTCHA_PROVIDER", "friendlycaptcha"),
                ("CAPTCHA_SECRET", "s3cr3t-value"),
            ],
            "CAPTCHA_PROVIDER",
        ),
        (
            vec![
                ("CAPTCHA_PROVIDER", "hcaptcha"),
                ("CAPTCHA_SECRET", "s3cr3t-value"),
                ("CAPTCHA_MODE", "strict"),
            ],
            "CAPTCHA_MODE",
        ),
    ] {
        let mut cmd = otpgate(&temp_dir());
        cmd.env("PORT", "0");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let output = cmd.output().expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains(var), "{env:?}: {stderr}");
        assert!(!stderr.contains("s3cr3t-value"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `CAPTCHA_HOSTNAMES` and `CAPTCHA_ACTION`: a valid token solved on another site (a phishing
/// page farming tokens with our site key) or for another action is refused like a failed one;
/// an Android app's package counts as a site.
async fn tokens_must_come_from_our_sites_and_action(backend: Backend) {
    let standin = StandIn::start().await;
    let app = app_with(
        backend,
        &standin,
        "recaptcha",
        "enforce",
        &[
            ("CAPTCHA_HOSTNAMES", "App.Example, com.acme.app"),
            ("CAPTCHA_ACTION", "login"),
        ],
    )
    .await;
    for token in ["login-1", "android-1", "high-1"] {
        let reply = login(&app, &unique_phone(), Some(token)).await;
        assert_eq!(reply.status, 200, "{token}: {}", reply.body);
    }
    let phone = unique_phone();
    let reply = login(&app, &phone, Some("abroad-1")).await;
    assert_refused(&app, &standin, &phone, &reply, (403, "captcha_failed")).await;
    let phone = unique_phone();
    let reply = login(&app, &phone, Some("signup-1")).await;
    assert_refused(&app, &standin, &phone, &reply, (403, "captcha_failed")).await;
    // No action at all, where one is required.
    let phone = unique_phone();
    let reply = login(&app, &phone, Some("pass-1")).await;
    assert_refused(&app, &standin, &phone, &reply, (403, "captcha_failed")).await;
    assert_eq!(
        verdicts(&app, "recaptcha", "wrong_hostname", "enforce").await,
        1.0
    );
    assert_eq!(
        verdicts(&app, "recaptcha", "wrong_action", "enforce").await,
        2.0
    );
    assert_eq!(verdicts(&app, "recaptcha", "pass", "enforce").await, 3.0);
    // Without the lists, the same tokens pass.
    let standin = StandIn::start().await;
    let app = app_with(backend, &standin, "turnstile", "enforce", &[]).await;
    for token in ["abroad-2", "signup-2", "android-2"] {
        let reply = login(&app, &unique_phone(), Some(token)).await;
        assert_eq!(reply.status, 200, "{token}: {}", reply.body);
    }
}
