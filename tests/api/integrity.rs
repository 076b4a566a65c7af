//! The Play Integrity gate (`PLAY_INTEGRITY_*`) against the stand-in's Google OAuth token
//! endpoint and `decodeIntegrityToken`: a passing verdict bound to the login's number sends a
//! code (and stands in for the captcha); forged, replayed, stale, side-loaded, weak-device or
//! other-number tokens are 403 `integrity_failed` with nothing sent; shadow records without
//! refusing; an outage fails closed (503) or open as configured, and Google refusing our
//! credentials never lets a login through.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Backend, Reply, TestApp, spawn_app_with, unique_phone};
use crate::observability::{metrics_text, sample};
use crate::standin::{Mode, StandIn, TWILIO_FROM};

crate::on_both_backends!(
    enforce_sends_only_for_a_genuine_app_on_a_genuine_device,
    shadow_records_and_outages_fail_closed_or_open,
    a_pass_stands_in_for_the_captcha_and_other_clients_solve_it,
);

const KEY: &str = "admin-key-0123456789abcdef0123456789";

/// The request hash an app binds its token to for `phone` (as the README documents it).
fn request_hash(phone: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(format!("otpgate-login:{phone}")))
}

/// A stand-in token of `kind` for a login of `phone`.
fn token(kind: &str, phone: &str) -> String {
    format!("{kind}.{}", request_hash(phone))
}

async fn app_with(backend: Backend, standin: &StandIn, extra: &[(&str, String)]) -> TestApp {
    let mut owned = standin.settings();
    owned.extend(extra.iter().cloned());
    let mut settings: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    settings.extend_from_slice(&[
        ("SEND_OTP_VIA_SMS", "true"),
        ("TWILIO_PHONE_NUMBER", TWILIO_FROM),
        ("ADMIN_API_KEYS", KEY),
    ]);
    spawn_app_with(backend, &settings).await
}

/// An app enforcing Play Integrity that lets logins through while Google is down.
async fn fail_open_app(backend: Backend, standin: &StandIn) -> TestApp {
    let settings = [
        standin.integrity_settings("enforce"),
        vec![("PLAY_INTEGRITY_FAIL_OPEN", "true".to_string())],
    ]
    .concat();
    app_with(backend, standin, &settings).await
}

async fn login(
    app: &TestApp,
    phone: &str,
    integrity: Option<&str>,
    captcha: Option<&str>,
) -> Reply {
    let mut body = json!({ "phone": phone });
    if let Some(t) = integrity {
        body["integrity_token"] = json!(t);
    }
    if let Some(t) = captcha {
        body["captcha_token"] = json!(t);
    }
    app.post(&app.a, "/api/auth/login", body).await
}

fn sms_to(standin: &StandIn, phone: &str) -> usize {
    standin
        .requests("twilio")
        .iter()
        .filter(|r| r.body["To"] == json!(phone))
        .count()
}

async fn verdicts(app: &TestApp, verdict: &str, mode: &str) -> f64 {
    verdicts_on(app, &app.a, verdict, mode).await
}

async fn verdicts_on(app: &TestApp, base: &str, verdict: &str, mode: &str) -> f64 {
    let text = metrics_text(app, base).await;
    sample(
        &text,
        &format!(
            "otpgate_integrity_verdicts_total{{mode=\"{mode}\",provider=\"play_integrity\",verdict=\"{verdict}\"}}"
        ),
    )
}

/// The decode requests the stand-in saw.
fn decodes(standin: &StandIn) -> Vec<Value> {
    standin
        .requests("google")
        .into_iter()
        .filter(|r| r.path.ends_with(":decodeIntegrityToken"))
        .map(|r| r.body)
        .collect()
}

async fn enforce_sends_only_for_a_genuine_app_on_a_genuine_device(backend: Backend) {
    let standin = StandIn::start().await;
    let app = app_with(backend, &standin, &standin.integrity_settings("enforce")).await;

    let phone = unique_phone();
    let pass = token("pass", &phone);
    let reply = login(&app, &phone, Some(&pass), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(sms_to(&standin, &phone), 1);
    // The documented decode request, for the configured package, with the token as sent.
    let seen = decodes(&standin);
    assert_eq!(seen, vec![json!({ "integrity_token": pass })]);
    assert!(
        standin
            .requests("google")
            .iter()
            .any(|r| r.path == "/google/v1/com.acme.app:decodeIntegrityToken")
    );
    // A classic request (the hash in `nonce`) passes too.
    let classic = unique_phone();
    let reply = login(&app, &classic, Some(&token("nonce", &classic)), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // The same token again, on the other replica: refused.
    let replay = app
        .post(
            &app.b,
            "/api/auth/login",
            json!({ "phone": phone, "integrity_token": pass }),
        )
        .await;
    replay.assert_problem(403, "integrity_failed");
    // Each replica signed in once; from now on its access token is kept.
    let sign_ins = || {
        standin
            .requests("google")
            .iter()
            .filter(|r| r.path == "/google/token")
            .count()
    };
    let signed_in = sign_ins();
    assert!((1..=2).contains(&signed_in), "{signed_in}");

    // Refused, nothing sent: another number's, stale, side-loaded, a weak device, another
    // app's, undecodable, and none at all (no captcha gate to fall back to).
    for (kind, verdict) in [
        ("other-number", "wrong_request"),
        ("stale", "stale"),
        ("sideload", "app_unrecognized"),
        ("basic", "device_integrity"),
        ("other", "wrong_request"),
        ("forged", "fail"),
        ("none", "missing"),
    ] {
        let fresh = unique_phone();
        let sent = match kind {
            "other-number" => Some(token("pass", &unique_phone())),
            "forged" => Some("forged-token".to_string()),
            "none" => None,
            kind => Some(token(kind, &fresh)),
        };
        let before = verdicts(&app, verdict, "enforce").await;
        let reply = login(&app, &fresh, sent.as_deref(), None).await;
        reply.assert_problem(403, "integrity_failed");
        assert_eq!(
            verdicts(&app, verdict, "enforce").await,
            before + 1.0,
            "{kind}"
        );
        assert_eq!(
            sms_to(&standin, &fresh),
            0,
            "{kind}: a refused login sent a code"
        );
    }
    assert_eq!(verdicts_on(&app, &app.b, "replayed", "enforce").await, 1.0);
    assert_eq!(sign_ins(), signed_in, "the access token was not kept");
    // A stronger level refuses what `device` let through.
    let strict = app_with(
        backend,
        &standin,
        &[
            standin.integrity_settings("enforce"),
            vec![("PLAY_INTEGRITY_DEVICE", "strong".to_string())],
        ]
        .concat(),
    )
    .await;
    let phone = unique_phone();
    login(&strict, &phone, Some(&token("pass", &phone)), None)
        .await
        .assert_problem(403, "integrity_failed");
    let reply = login(&strict, &phone, Some(&token("strong", &phone)), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // A bad request field is a 422, never sent to Google.
    let before = decodes(&standin).len();
    let reply = app
        .post(
            &app.a,
            "/api/auth/login",
            json!({ "phone": unique_phone(), "integrity_token": 42 }),
        )
        .await;
    reply.assert_problem(422, "invalid_field");
    assert_eq!(reply.body["field"], "integrity_token");
    assert_eq!(decodes(&standin).len(), before);
}

async fn shadow_records_and_outages_fail_closed_or_open(backend: Backend) {
    let standin = StandIn::start().await;
    let app = app_with(backend, &standin, &standin.integrity_settings("shadow")).await;
    let phone = unique_phone();
    let reply = login(&app, &phone, Some(&token("sideload", &phone)), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(verdicts(&app, "app_unrecognized", "shadow").await, 1.0);
    // The audit event tells the verdict (events are written in the background).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let reply = app
            .call(
                &app.b,
                Method::GET,
                "/admin/v1/audit?kind=integrity.failed",
                None,
                Some(KEY),
            )
            .await;
        if let Some(event) = reply.body["events"].as_array().and_then(|e| e.first()) {
            assert_eq!(event["details"]["verdict"], "app_unrecognized");
            assert_eq!(event["details"]["mode"], "shadow");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no integrity.failed event"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Enforce: Google down is 503 and nothing sent; with fail-open the login goes through.
    let app = app_with(backend, &standin, &standin.integrity_settings("enforce")).await;
    standin.set_mode("google", Mode::Status(503));
    let phone = unique_phone();
    login(&app, &phone, Some(&token("pass", &phone)), None)
        .await
        .assert_problem(503, "integrity_unavailable");
    assert_eq!(sms_to(&standin, &phone), 0);
    let open = fail_open_app(backend, &standin).await;
    let reply = login(&open, &phone, Some(&token("pass", &phone)), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Google refusing us (our credentials, our quota) never lets a login through: at sign-in,
    // or at the decode itself (a fresh app signs in first).
    // (A replica that failed to sign in moments ago answers from that failure for 2 s: a
    // replica that has not tried yet meets the 403.)
    standin.set_mode("google", Mode::Status(403));
    let phone = unique_phone();
    let open = fail_open_app(backend, &standin).await;
    login(&open, &phone, Some(&token("pass", &phone)), None)
        .await
        .assert_problem(503, "integrity_unavailable");
    assert_eq!(sms_to(&standin, &phone), 0);
    standin.set_mode("google", Mode::Ok);
    let fresh = fail_open_app(backend, &standin).await;
    for status in [429, 403] {
        standin.set_mode("google-decode", Mode::Status(status));
        let phone = unique_phone();
        login(&fresh, &phone, Some(&token("pass", &phone)), None)
            .await
            .assert_problem(503, "integrity_unavailable");
        assert_eq!(sms_to(&standin, &phone), 0);
    }
    // A decode that fails for a moment: closed without fail-open, open with it.
    standin.set_mode("google-decode", Mode::Status(502));
    let phone = unique_phone();
    login(&app, &phone, Some(&token("pass", &phone)), None)
        .await
        .assert_problem(503, "integrity_unavailable");
    let reply = login(&fresh, &phone, Some(&token("pass", &phone)), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    standin.set_mode("google-decode", Mode::Ok);
}

async fn a_pass_stands_in_for_the_captcha_and_other_clients_solve_it(backend: Backend) {
    let standin = StandIn::start().await;
    let settings = [
        standin.integrity_settings("enforce"),
        standin.captcha_settings("turnstile", "enforce"),
    ]
    .concat();
    let app = app_with(backend, &standin, &settings).await;
    // The Android app: no captcha needed.
    let phone = unique_phone();
    let reply = login(&app, &phone, Some(&token("pass", &phone)), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(standin.requests("captcha").is_empty());
    // A failing verdict is not rescued by a captcha.
    let phone = unique_phone();
    login(&app, &phone, Some(&token("basic", &phone)), Some("pass-1"))
        .await
        .assert_problem(403, "integrity_failed");
    // Web and iOS clients (no integrity token) solve the captcha.
    let phone = unique_phone();
    login(&app, &phone, None, None)
        .await
        .assert_problem(403, "captcha_failed");
    let reply = login(&app, &phone, None, Some("pass-2")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Google refusing us (its quota spent) sends Android users to the captcha, not to a 503.
    standin.set_mode("google-decode", Mode::Status(429));
    let phone = unique_phone();
    login(&app, &phone, Some(&token("pass", &phone)), None)
        .await
        .assert_problem(403, "captcha_failed");
    let reply = login(&app, &phone, Some(&token("pass", &phone)), Some("pass-3")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    standin.set_mode("google-decode", Mode::Ok);

    // A captcha gate that only records does not stand in for a missing integrity token.
    let settings = [
        standin.integrity_settings("enforce"),
        standin.captcha_settings("turnstile", "shadow"),
    ]
    .concat();
    let app = app_with(backend, &standin, &settings).await;
    let phone = unique_phone();
    login(&app, &phone, None, Some("pass-4"))
        .await
        .assert_problem(403, "integrity_failed");
    assert_eq!(sms_to(&standin, &phone), 0);
}
