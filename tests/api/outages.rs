//! A failing dependency gets a 503 problem, never a 500 or a success.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Backend, spawn_app_with, unique_phone};

/// A loopback port with nothing listening.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

#[tokio::test]
async fn redis_down_is_503_store_unavailable() {
    let redis = format!("redis://127.0.0.1:{}", closed_port());
    let app = spawn_app_with(
        Backend::Embedded,
        &[("REDIS_URL", redis.as_str()), ("REDIS_TIMEOUT_MS", "300")],
    )
    .await;
    let phone = unique_phone();
    let reply = app.login(&app.a, &phone).await;
    reply.assert_problem(503, "store_unavailable");
    assert_eq!(reply.header("retry-after"), Some("1"));
    // No internals in the body.
    assert!(
        !reply.body.to_string().contains("refused"),
        "{}",
        reply.body
    );
    app.verify(&app.a, &phone, "123456")
        .await
        .assert_problem(503, "store_unavailable");
    let ready = app.call(&app.a, Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body["store"], json!("unavailable"));
    assert_eq!(ready.body["database"], json!("ok"));
    let health = app.call(&app.a, Method::GET, "/health", None, None).await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn database_unreachable_is_503() {
    let database = format!("postgres://otpgate@127.0.0.1:{}/otpgate", closed_port());
    let app = spawn_app_with(
        Backend::Embedded,
        &[
            ("DATABASE_URL", database.as_str()),
            ("RUN_MIGRATIONS", "false"),
        ],
    )
    .await;
    let phone = unique_phone();
    let code = app.login_code(&app.a, &phone).await;
    app.verify(&app.a, &phone, &code)
        .await
        .assert_problem(503, "database_unavailable");
    let ready = app.call(&app.a, Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body["database"], json!("unavailable"));
    assert_eq!(ready.body["store"], json!("ok"));
}

/// PostgreSQL refuses connections for a while: verify answers 503 and the code survives, so
/// the same code works once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_loses_nothing() {
    if !crate::helpers::cluster_available() {
        return;
    }
    let app = spawn_app_with(Backend::Cluster, &[]).await;
    let phone = unique_phone();
    let code = app.login_code(&app.a, &phone).await;

    app.set_database_connections(false).await;
    app.verify(&app.b, &phone, &code)
        .await
        .assert_problem(503, "database_unavailable");
    let ready = app.call(&app.a, Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.body["database"], json!("unavailable"));

    app.set_database_connections(true).await;
    let reply = app.verify(&app.a, &phone, &code).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let ready = app.call(&app.b, Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
}
