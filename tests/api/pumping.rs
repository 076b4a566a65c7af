//! The SMS-pumping defence (`PUMPING_*`) across two replicas: budgets of unverified codes per
//! network, prefix and country refuse in `enforce` (429 `sends_paused`, nothing stored) and only
//! count in `record_only`; a verified code frees its place; a prefix whose conversion falls
//! too low is blocked (metric, `pumping.blocked` event, the admin list) until lifted; allow-lists
//! pass uncounted; an undelivered code is taken back; operators block and lift by hand.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Backend, Reply, TestApp, field, spawn_app_with};
use crate::observability::{metrics_text, sample};
use crate::standin::{Mode, StandIn, TWILIO_FROM};

crate::on_both_backends!(
    a_network_budget_refuses_until_a_code_is_verified,
    record_only_counts_without_refusing,
    low_conversion_blocks_a_prefix_until_lifted,
    allow_lists_pass_uncounted,
    operators_block_and_lift_by_hand,
    an_undelivered_code_is_taken_back,
);

const KEY: &str = "admin-key-0123456789abcdef0123456789";

/// A number of the block `+91987` (prefix digits 3), unique to the call.
fn number_in_block() -> String {
    format!("+91987{:07}", Uuid::new_v4().as_u128() % 10_000_000)
}

/// An app with the pumping defence in `mode`, no budget unless `extra` sets one.
async fn app_with(backend: Backend, mode: &str, extra: &[(&str, &str)]) -> TestApp {
    let mut settings = vec![
        ("PUMPING_MODE", mode),
        ("PUMPING_COUNTRY_BUDGET", "0"),
        ("PUMPING_PREFIX_BUDGET", "0"),
        ("PUMPING_NETWORK_BUDGET", "0"),
        ("PUMPING_COUNTRY_MIN_VOLUME", "0"),
        ("PUMPING_PREFIX_MIN_VOLUME", "0"),
        ("PUMPING_PREFIX_DIGITS", "3"),
        ("ADMIN_API_KEYS", KEY),
    ];
    settings.extend_from_slice(extra);
    spawn_app_with(backend, &settings).await
}

async fn login(app: &TestApp, base: &str, phone: &str) -> Reply {
    app.post(base, "/api/auth/login", json!({ "phone": phone }))
        .await
}

/// Asserts a `sends_paused` refusal: 429 with `Retry-After`, and no code stored.
async fn assert_paused(app: &TestApp, phone: &str, reply: &Reply) {
    reply.assert_problem(429, "sends_paused");
    let wait: u64 = reply
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!(wait >= 1, "Retry-After {wait}");
    assert!(reply.body.get("otp_code").is_none());
    app.verify(&app.b, phone, "000000")
        .await
        .assert_problem(400, "otp_expired");
}

async fn refusals(app: &TestApp, scope: &str, reason: &str, mode: &str) -> f64 {
    let text = metrics_text(app, &app.a).await;
    sample(
        &text,
        &format!(
            "otpgate_pumping_refusals_total{{mode=\"{mode}\",reason=\"{reason}\",scope=\"{scope}\"}}"
        ),
    )
}

async fn admin(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Reply {
    app.call(&app.b, method, path, body, Some(KEY)).await
}

async fn a_network_budget_refuses_until_a_code_is_verified(backend: Backend) {
    let app = app_with(backend, "enforce", &[("PUMPING_NETWORK_BUDGET", "2")]).await;
    let first = crate::helpers::unique_phone();
    let reply = login(&app, &app.a, &first).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let code = field(&reply.body, "otp_code").to_string();
    let second = crate::helpers::unique_phone();
    assert_eq!(login(&app, &app.b, &second).await.status, 200);

    // Two unverified codes from this network (127.0.0.0/24), on either replica: the third waits.
    let third = crate::helpers::unique_phone();
    let refused = login(&app, &app.a, &third).await;
    assert_paused(&app, &third, &refused).await;
    // A refused resend leaves the code already sent alone (it is checked before the resend
    // cooldown, and before a new code would replace the old one).
    login(&app, &app.a, &first)
        .await
        .assert_problem(429, "sends_paused");
    assert_eq!(
        refusals(&app, "network", "over_budget", "enforce").await,
        2.0
    );
    // Nothing was counted for the refusal, and the number's resend cooldown did not start.
    let again = login(&app, &app.b, &third).await;
    assert_paused(&app, &third, &again).await;

    // A code verified frees its place.
    let verified = app.verify(&app.b, &first, &code).await;
    assert_eq!(verified.status, 200, "{}", verified.body);
    let reply = login(&app, &app.a, &third).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // And the budget holds again.
    let fourth = crate::helpers::unique_phone();
    let refused = login(&app, &app.b, &fourth).await;
    assert_paused(&app, &fourth, &refused).await;
}

async fn record_only_counts_without_refusing(backend: Backend) {
    let app = app_with(backend, "record_only", &[("PUMPING_NETWORK_BUDGET", "1")]).await;
    for i in 0..3 {
        let phone = number_in_block();
        let reply = login(&app, &app.a, &phone).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        // Sent for real: the code works.
        if i == 2 {
            let code = field(&reply.body, "otp_code").to_string();
            let verified = app.verify(&app.b, &phone, &code).await;
            assert_eq!(verified.status, 200, "{}", verified.body);
        }
    }
    // The two sends over the budget are counted as refusals that would have been.
    assert_eq!(
        refusals(&app, "network", "over_budget", "record_only").await,
        2.0
    );
}

async fn low_conversion_blocks_a_prefix_until_lifted(backend: Backend) {
    let app = app_with(
        backend,
        "enforce",
        &[
            ("PUMPING_PREFIX_MIN_VOLUME", "4"),
            // Every send counts at once (no grace for codes on their way).
            ("PUMPING_GRACE_SECONDS", "0"),
            ("PUMPING_MIN_CONVERSION", "0.5"),
            ("PUMPING_BLOCK_MINUTES", "30"),
        ],
    )
    .await;
    // Two codes of the block verified, two not: 50 % is not below 50 %.
    for _ in 0..2 {
        let phone = number_in_block();
        let code = app.login_code(&app.a, &phone).await;
        let reply = app.verify(&app.b, &phone, &code).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    for _ in 0..2 {
        assert_eq!(login(&app, &app.a, &number_in_block()).await.status, 200);
    }
    // The fifth send: 2 of 5 verified, 40 % < 50 %: sent, and the block starts.
    assert_eq!(login(&app, &app.b, &number_in_block()).await.status, 200);
    let phone = number_in_block();
    let refused = login(&app, &app.a, &phone).await;
    assert_paused(&app, &phone, &refused).await;
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1700..=1800).contains(&wait), "Retry-After {wait}");
    assert_eq!(refusals(&app, "prefix", "blocked", "enforce").await, 1.0);
    let text = metrics_text(&app, &app.b).await;
    assert_eq!(
        sample(
            &text,
            "otpgate_pumping_blocks_total{mode=\"enforce\",scope=\"prefix\"}"
        ),
        1.0
    );
    // Other blocks and countries are not affected.
    let other = format!("+91986{:07}", Uuid::new_v4().as_u128() % 10_000_000);
    assert_eq!(login(&app, &app.a, &other).await.status, 200);

    // Operators see it, with the counts that set it, and an event tells the story.
    let listed = admin(&app, Method::GET, "/admin/v1/pumping/blocks", None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body["mode"], "enforce");
    let blocks = listed.body["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 1, "{}", listed.body);
    assert_eq!(blocks[0]["scope"], "prefix");
    assert_eq!(blocks[0]["key"], "+91987");
    assert_eq!(
        (blocks[0]["sent"].as_u64(), blocks[0]["verified"].as_u64()),
        (Some(5), Some(2))
    );
    let event = wait_for_event(&app, "pumping.blocked").await;
    assert_eq!(event["details"]["scope"], "prefix");
    assert_eq!(event["details"]["key"], "+91987");
    assert_eq!(event["details"]["by"], "conversion");

    // Lifted: codes flow at once, and the counts start afresh.
    let lift = json!({ "scope": "prefix", "key": "+91987" });
    let lifted = admin(
        &app,
        Method::POST,
        "/admin/v1/pumping/blocks/lift",
        Some(lift.clone()),
    )
    .await;
    assert_eq!(lifted.status, 204, "{}", lifted.body);
    assert_eq!(login(&app, &app.a, &phone).await.status, 200);
    let listed = admin(&app, Method::GET, "/admin/v1/pumping/blocks", None).await;
    assert_eq!(listed.body["blocks"], json!([]));
    admin(
        &app,
        Method::POST,
        "/admin/v1/pumping/blocks/lift",
        Some(lift),
    )
    .await
    .assert_problem(404, "not_found");
}

/// The first audit event of `kind` (polled for 10 s).
async fn wait_for_event(app: &TestApp, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = admin(
            app,
            Method::GET,
            &format!("/admin/v1/audit?kind={kind}"),
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        if let Some(event) = reply.body["events"].as_array().and_then(|e| e.first()) {
            return event.clone();
        }
        assert!(Instant::now() < deadline, "no {kind} event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn allow_lists_pass_uncounted(backend: Backend) {
    let app = app_with(
        backend,
        "enforce",
        &[
            ("PUMPING_NETWORK_BUDGET", "1"),
            ("PUMPING_ALLOW_PREFIXES", "+91987"),
        ],
    )
    .await;
    for _ in 0..3 {
        let reply = login(&app, &app.a, &number_in_block()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // Numbers outside the list are counted: one passes, the next waits.
    let outside = || format!("+91986{:07}", Uuid::new_v4().as_u128() % 10_000_000);
    assert_eq!(login(&app, &app.a, &outside()).await.status, 200);
    let phone = outside();
    let refused = login(&app, &app.b, &phone).await;
    assert_paused(&app, &phone, &refused).await;

    let app = app_with(
        backend,
        "enforce",
        &[
            ("PUMPING_NETWORK_BUDGET", "1"),
            ("PUMPING_ALLOW_CIDRS", "127.0.0.0/8,::1/128"),
        ],
    )
    .await;
    for _ in 0..3 {
        let reply = login(&app, &app.a, &crate::helpers::unique_phone()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(
        refusals(&app, "network", "over_budget", "enforce").await,
        0.0
    );
}

async fn operators_block_and_lift_by_hand(backend: Backend) {
    let app = app_with(backend, "enforce", &[]).await;
    let block = json!({ "scope": "network", "key": "127.0.0.1", "minutes": 5 });
    let reply = admin(&app, Method::POST, "/admin/v1/pumping/blocks", Some(block)).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let phone = crate::helpers::unique_phone();
    let refused = login(&app, &app.a, &phone).await;
    assert_paused(&app, &phone, &refused).await;
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((290..=300).contains(&wait), "Retry-After {wait}");
    let listed = admin(&app, Method::GET, "/admin/v1/pumping/blocks", None).await;
    assert_eq!(
        listed.body["blocks"][0]["key"], "127.0.0.0/24",
        "{}",
        listed.body
    );
    let event = wait_for_event(&app, "pumping.blocked").await;
    assert_eq!(event["details"]["by"], "admin");

    // Bad input is a 422 naming the field; no key is a 401.
    for (body, field_name) in [
        (
            json!({ "scope": "prefix", "key": "+91x", "minutes": 5 }),
            "key",
        ),
        (
            json!({ "scope": "country", "key": "India", "minutes": 5 }),
            "key",
        ),
        (
            json!({ "scope": "network", "key": "300.1.2.3", "minutes": 5 }),
            "key",
        ),
        (
            json!({ "scope": "planet", "key": "IN", "minutes": 5 }),
            "scope",
        ),
        (
            json!({ "scope": "country", "key": "IN", "minutes": 0 }),
            "minutes",
        ),
    ] {
        let reply = admin(&app, Method::POST, "/admin/v1/pumping/blocks", Some(body)).await;
        reply.assert_problem(422, "invalid_field");
        assert_eq!(reply.body["field"], field_name, "{}", reply.body);
    }
    app.call(&app.a, Method::GET, "/admin/v1/pumping/blocks", None, None)
        .await
        .assert_problem(401, "unauthorized");

    let lift = json!({ "scope": "network", "key": "127.0.0.0/24" });
    let lifted = admin(
        &app,
        Method::POST,
        "/admin/v1/pumping/blocks/lift",
        Some(lift),
    )
    .await;
    assert_eq!(lifted.status, 204, "{}", lifted.body);
    assert_eq!(login(&app, &app.a, &phone).await.status, 200);
    let event = wait_for_event(&app, "admin.action").await;
    assert_eq!(event["details"]["action"], "pumping.lift");
}

async fn an_undelivered_code_is_taken_back(backend: Backend) {
    let standin = StandIn::start().await;
    let owned = standin.settings();
    let mut settings: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    settings.extend_from_slice(&[
        ("SEND_OTP_VIA_SMS", "true"),
        ("TWILIO_PHONE_NUMBER", TWILIO_FROM),
        ("PUMPING_NETWORK_BUDGET", "1"),
    ]);
    let app = app_with(backend, "enforce", &settings).await;
    standin.set_mode("twilio", Mode::Status(500));
    let phone = crate::helpers::unique_phone();
    login(&app, &app.a, &phone)
        .await
        .assert_problem(503, "delivery_failed");
    // The failed send does not hold the network's only place.
    standin.set_mode("twilio", Mode::Ok);
    let reply = login(&app, &app.b, &phone).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let other = crate::helpers::unique_phone();
    let refused = login(&app, &app.a, &other).await;
    assert_paused(&app, &other, &refused).await;
}
