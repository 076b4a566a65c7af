//! A failing dependency gets a 503 problem, never a 500 or a success.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Backend, spawn_app_with, unique_phone};

crate::on_sql_servers!(
    database_outage_loses_nothing,
    database_lost_after_the_code_check_loses_nothing,
    database_outage_does_not_spend_a_refresh_token,
);

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

/// A PostgreSQL or MySQL server that is down when the replica starts (`RUN_MIGRATIONS=false`):
/// it starts, `/ready` says the database is unavailable, and a verify is a 503.
async fn unreachable_database_is_503(scheme: &str) {
    let database = format!("{scheme}://otpgate:pw@127.0.0.1:{}/otpgate", closed_port());
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

#[tokio::test]
async fn database_unreachable_is_503() {
    unreachable_database_is_503("postgres").await;
}

#[tokio::test]
async fn mysql_unreachable_is_503() {
    unreachable_database_is_503("mysql").await;
}

/// The database refuses connections for a while (PostgreSQL: `ALLOW_CONNECTIONS false`;
/// MariaDB: the app's user locked; both: the app's connections ended): verify answers 503 and
/// the code survives, so the same code works once the database is back.
async fn database_outage_loses_nothing(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
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

/// The database ends the connections a replica keeps for logins and refuses new ones: on
/// PostgreSQL the verify passes the code check on a connection that is already dead (the login
/// pool does not ping), answers 503 and puts the code back, so the same code works once the
/// database is back.
async fn database_lost_after_the_code_check_loses_nothing(backend: Backend) {
    let prefix = format!("outage:{}:", uuid::Uuid::new_v4().simple());
    let app = spawn_app_with(backend, &[("REDIS_KEY_PREFIX", &prefix)]).await;
    // A login on replica b leaves it an idle login connection.
    let first = app.sign_in(&unique_phone()).await;
    let phone = unique_phone();
    let code = app.login_code(&app.a, &phone).await;

    app.set_database_connections(false).await;
    app.verify(&app.b, &phone, &code)
        .await
        .assert_problem(503, "database_unavailable");

    app.set_database_connections(true).await;
    let reply = app.verify(&app.b, &phone, &code).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Used once more it is gone, as any code.
    app.verify(&app.a, &phone, &code)
        .await
        .assert_problem(400, "otp_expired");
    // The session the failed attempt recorded with its code check (PostgreSQL) went with it:
    // every session index in Redis is one of the two users'.
    let id = |tokens: &serde_json::Value| tokens["user"]["id"].as_str().expect("id").to_string();
    let mut users = vec![id(&first), id(&reply.body)];
    users.sort();
    assert_eq!(
        crate::redis_keys::session_index_owners(&prefix).await,
        users
    );
}

/// A refresh while the database is away is a 503 that spends nothing: the same refresh token
/// works once the database is back, even after the reuse grace window (no session is revoked).
async fn database_outage_does_not_spend_a_refresh_token(backend: Backend) {
    let app = spawn_app_with(backend, &[("REFRESH_REUSE_GRACE_SECONDS", "1")]).await;
    let session = app.sign_in(&unique_phone()).await;
    let refresh = session["refresh_token"].as_str().expect("refresh token");
    app.set_database_connections(false).await;
    app.refresh(&app.a, refresh)
        .await
        .assert_problem(503, "database_unavailable");
    app.set_database_connections(true).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let reply = app.refresh(&app.b, refresh).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// A redis-server of our own on `port`, killed on drop.
struct OwnRedis(std::process::Child);

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test.sh installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        OwnRedis(child)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Redis goes away and comes back: 503 while it is gone, then service resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_503_then_recovers() {
    if !crate::helpers::cluster_available() {
        return;
    }
    let port = closed_port();
    let redis = OwnRedis::start(port);
    let url = format!("redis://127.0.0.1:{port}");
    let app = spawn_app_with(
        Backend::Embedded,
        &[("REDIS_URL", url.as_str()), ("REDIS_TIMEOUT_MS", "500")],
    )
    .await;
    let phone = unique_phone();
    assert_eq!(app.login(&app.a, &phone).await.status, 200);

    drop(redis);
    let phone = unique_phone();
    app.login(&app.a, &phone)
        .await
        .assert_problem(503, "store_unavailable");
    app.verify(&app.a, &phone, "123456")
        .await
        .assert_problem(503, "store_unavailable");
    let ready = app.call(&app.a, Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, 503);

    let _redis = OwnRedis::start(port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let code = loop {
        let reply = app.login(&app.a, &phone).await;
        if reply.status == 200 {
            break reply.body["otp_code"].as_str().expect("code").to_string();
        }
        reply.assert_problem(503, "store_unavailable");
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(app.verify(&app.a, &phone, &code).await.status, 200);
    let ready = app.call(&app.a, Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, 200);
}
