//! Rate limits and abuse controls, checked from outside on both backends (two replicas sharing
//! Redis on the cluster backend, so every limit is shown to hold across replicas).

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    Backend, Reply, TestApp, spawn_app, spawn_app_with, statuses_in_parallel, unique_phone,
};

crate::on_both_backends!(
    second_login_on_another_replica_is_429_with_ratelimit_fields,
    parallel_logins_for_one_phone_give_one_success,
    client_ip_limit_with_trusted_proxy,
    forwarded_for_from_an_untrusted_peer_changes_nothing,
    phone_limit_holds_across_verified_sends,
    country_allow_and_block_lists,
    numbers_that_cannot_receive_codes,
    failed_verifications_per_phone_are_limited_across_codes,
    verify_attempts_per_ip_are_limited,
    prefix_daily_and_country_caps,
    front_door_sheds_floods_per_ip,
    limits_off_for_benchmarks,
);

impl TestApp {
    /// Login from a forwarded client address.
    async fn login_from(&self, base: &str, phone: &str, forwarded_for: &str) -> Reply {
        let resp = self
            .client
            .post(format!("{base}/api/auth/login"))
            .header("x-forwarded-for", forwarded_for)
            .json(&json!({ "phone": phone }))
            .send()
            .await
            .expect("sent");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }
}

/// Asserts a 429 from `policy` with all three header fields.
fn assert_limited(reply: &Reply, policy: &str) {
    reply.assert_problem(429, "rate_limited");
    let retry: u64 = reply
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("secs");
    assert!(retry > 0);
    let quoted = format!("\"{policy}\"");
    let policy_field = reply.header("ratelimit-policy").expect("RateLimit-Policy");
    assert!(policy_field.starts_with(&quoted), "{policy_field}");
    let current = reply.header("ratelimit").expect("RateLimit");
    assert!(
        current.starts_with(&format!("{quoted};r=0;t=")),
        "{current}"
    );
}

async fn second_login_on_another_replica_is_429_with_ratelimit_fields(backend: Backend) {
    let app = spawn_app(backend).await;
    let phone = unique_phone();
    let first = app.login(&app.a, &phone).await;
    assert_eq!(first.status, 200);
    let policy = first
        .header("ratelimit-policy")
        .expect("RateLimit-Policy on success");
    assert!(policy.contains("\"otp-phone\";q=5;w=3600"), "{policy}");
    assert!(policy.contains("\"otp-ip\";q=30;w=3600"), "{policy}");
    let current = first.header("ratelimit").expect("RateLimit on success");
    assert!(current.contains("\"otp-phone\";r=4;t="), "{current}");
    assert!(current.contains("\"otp-ip\";r=29;t="), "{current}");

    let second = app.login(&app.b, &phone).await;
    assert_limited(&second, "otp-resend");
    assert!(
        second
            .header("ratelimit-policy")
            .is_some_and(|p| p.contains("q=1;w=60"))
    );
}

async fn parallel_logins_for_one_phone_give_one_success(backend: Backend) {
    let app = std::sync::Arc::new(spawn_app(backend).await);
    let phone = unique_phone();
    let statuses = statuses_in_parallel(&app, 40, |app, base| {
        let phone = phone.clone();
        async move { app.login(&base, &phone).await }
    })
    .await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        39,
        "{statuses:?}"
    );
}

async fn client_ip_limit_with_trusted_proxy(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("TRUSTED_PROXIES", "127.0.0.1/32"),
            ("RATE_LIMIT_IP_PER_HOUR", "20"),
        ],
    )
    .await;
    for i in 0..20 {
        let base = if i % 2 == 0 { &app.a } else { &app.b };
        let reply = app.login_from(base, &unique_phone(), "198.51.100.7").await;
        assert_eq!(reply.status, 200, "login {i}: {}", reply.body);
    }
    assert_limited(
        &app.login_from(&app.a, &unique_phone(), "198.51.100.7")
            .await,
        "otp-ip",
    );
    assert_limited(
        &app.login_from(&app.b, &unique_phone(), "198.51.100.7")
            .await,
        "otp-ip",
    );
    // A spoofed left-most address does not get around it: the right-most untrusted hop counts.
    let spoofed = app
        .login_from(&app.a, &unique_phone(), "203.0.113.1, 198.51.100.7")
        .await;
    assert_limited(&spoofed, "otp-ip");
    // Another client behind the same proxy still passes.
    assert_eq!(
        app.login_from(&app.b, &unique_phone(), "198.51.100.8")
            .await
            .status,
        200
    );
}

async fn forwarded_for_from_an_untrusted_peer_changes_nothing(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("TRUSTED_PROXIES", "10.0.0.0/8"),
            ("RATE_LIMIT_IP_PER_HOUR", "20"),
        ],
    )
    .await;
    for i in 0..20 {
        // A different forged address each time: all count against the real peer.
        let forged = format!("198.51.100.{i}");
        let reply = app.login_from(&app.a, &unique_phone(), &forged).await;
        assert_eq!(reply.status, 200, "login {i}: {}", reply.body);
    }
    let reply = app
        .login_from(&app.b, &unique_phone(), "198.51.100.200")
        .await;
    assert_limited(&reply, "otp-ip");
}

async fn phone_limit_holds_across_verified_sends(backend: Backend) {
    let app = spawn_app_with(backend, &[("RATE_LIMIT_PHONE_PER_HOUR", "3")]).await;
    let phone = unique_phone();
    for i in 0..3 {
        let base = if i % 2 == 0 { &app.a } else { &app.b };
        let code = app.login_code(base, &phone).await;
        // Verifying clears the cooldown, not the hourly quota.
        assert_eq!(app.verify(&app.b, &phone, &code).await.status, 200);
    }
    assert_limited(&app.login(&app.a, &phone).await, "otp-phone");
}

async fn country_allow_and_block_lists(backend: Backend) {
    let app = spawn_app_with(backend, &[("OTP_ALLOWED_COUNTRIES", "IN,US")]).await;
    app.login(&app.a, "+44 7400 123456")
        .await
        .assert_problem(422, "country_not_allowed");
    assert_eq!(app.login(&app.b, &unique_phone()).await.status, 200);
    let app = spawn_app_with(backend, &[("OTP_BLOCKED_COUNTRIES", "GB")]).await;
    app.login(&app.a, "+44 7400 123456")
        .await
        .assert_problem(422, "country_not_allowed");
    assert_eq!(app.login(&app.b, &unique_phone()).await.status, 200);
}

async fn numbers_that_cannot_receive_codes(backend: Backend) {
    let app = spawn_app(backend).await;
    for number in ["+1 800 253 0000", "+44 909 8790000", "+44 20 7946 0000"] {
        app.login(&app.a, number)
            .await
            .assert_problem(422, "unsupported_number");
    }
    // A US number that may be mobile passes.
    assert_eq!(app.login(&app.a, "+1 415 555 2671").await.status, 200);
}

async fn failed_verifications_per_phone_are_limited_across_codes(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("RATE_LIMIT_VERIFY_FAILURES_PER_PHONE_PER_HOUR", "3"),
            ("OTP_RESEND_SECONDS", "0"),
        ],
    )
    .await;
    let phone = unique_phone();
    let first = app.login_code(&app.a, &phone).await;
    let wrong = |code: &str| if code == "000000" { "111111" } else { "000000" }.to_string();
    for _ in 0..2 {
        app.verify(&app.b, &phone, &wrong(&first))
            .await
            .assert_problem(400, "invalid_otp");
    }
    // A new code does not reset the failure count.
    let second = app.login_code(&app.b, &phone).await;
    app.verify(&app.a, &phone, &wrong(&second))
        .await
        .assert_problem(400, "invalid_otp");
    let refused = app.verify(&app.b, &phone, &second).await;
    assert_limited(&refused, "verify-phone-failures");
}

async fn verify_attempts_per_ip_are_limited(backend: Backend) {
    let app = spawn_app_with(backend, &[("RATE_LIMIT_VERIFY_IP_PER_HOUR", "2")]).await;
    for _ in 0..2 {
        app.verify(&app.a, &unique_phone(), "123456")
            .await
            .assert_problem(400, "otp_expired");
    }
    assert_limited(
        &app.verify(&app.b, &unique_phone(), "123456").await,
        "verify-ip",
    );
}

async fn prefix_daily_and_country_caps(backend: Backend) {
    let block = unique_phone();
    let block = &block[..block.len() - 4];
    let app = spawn_app_with(backend, &[("RATE_LIMIT_PREFIX_PER_HOUR", "2")]).await;
    assert_eq!(app.login(&app.a, &format!("{block}0001")).await.status, 200);
    assert_eq!(app.login(&app.b, &format!("{block}0002")).await.status, 200);
    assert_limited(
        &app.login(&app.a, &format!("{block}0003")).await,
        "otp-prefix",
    );
    assert_eq!(
        app.login(&app.a, &unique_phone()).await.status,
        200,
        "another block passes"
    );

    let app = spawn_app_with(backend, &[("DAILY_SEND_CAP", "2")]).await;
    assert_eq!(app.login(&app.a, &unique_phone()).await.status, 200);
    assert_eq!(app.login(&app.b, &unique_phone()).await.status, 200);
    assert_limited(&app.login(&app.a, &unique_phone()).await, "otp-daily");

    let app = spawn_app_with(backend, &[("COUNTRY_DAILY_CAPS", "GB=1")]).await;
    assert_eq!(app.login(&app.a, "+44 7400 123456").await.status, 200);
    assert_limited(
        &app.login(&app.b, "+44 7400 123457").await,
        "otp-country-daily",
    );
    assert_eq!(
        app.login(&app.b, &unique_phone()).await.status,
        200,
        "other countries pass"
    );
}

async fn front_door_sheds_floods_per_ip(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("RATE_LIMIT_FRONTDOOR_PER_SECOND", "1"),
            ("RATE_LIMIT_FRONTDOOR_BURST", "3"),
        ],
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(app.login(&app.a, "12").await.status);
    }
    assert_eq!(&statuses[..3], &[422, 422, 422], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    let shed = app.login(&app.a, "12").await;
    assert_limited(&shed, "frontdoor");
    // Probes and docs are not behind the front door.
    let health = app.call(&app.a, Method::GET, "/health", None, None).await;
    assert_eq!(health.status, 200);
}

async fn limits_off_for_benchmarks(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("RATE_LIMIT_ENABLED", "false"),
            ("RATE_LIMIT_PHONE_PER_HOUR", "1"),
            ("RATE_LIMIT_FRONTDOOR_PER_SECOND", "1"),
            ("OTP_RESEND_SECONDS", "0"),
        ],
    )
    .await;
    let phone = unique_phone();
    for _ in 0..5 {
        let reply = app.login(&app.a, &phone).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(reply.header("ratelimit").is_none());
    }
}
