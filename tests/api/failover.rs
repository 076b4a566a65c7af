//! Redis failures for real, each test with servers of its own (so the rest of the suite is not
//! disturbed): a standalone Redis restarted under traffic, a Redis Cluster primary killed and
//! failed over, a Sentinel primary killed and failed over. Through all of them: only 200s and
//! 503 problems (never a 500), no code accepted twice, logouts from before still hold, and the
//! replicas recover without a restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{
    Backend, TestApp, cluster_available, field, spawn_app_with, statuses_in_parallel, unique_phone,
};

/// Limits high enough for the traffic of these tests (the quotas still run).
const ROOMY_LIMITS: [(&str, &str); 5] = [
    ("RATE_LIMIT_IP_PER_HOUR", "1000000"),
    ("RATE_LIMIT_PREFIX_PER_HOUR", "1000000"),
    ("RATE_LIMIT_VERIFY_IP_PER_HOUR", "1000000"),
    ("RATE_LIMIT_FRONTDOOR_PER_SECOND", "100000"),
    ("RATE_LIMIT_FRONTDOOR_BURST", "100000"),
];

fn with_limits<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut settings = ROOMY_LIMITS.to_vec();
    settings.extend_from_slice(extra);
    settings
}

/// A Redis process of this test; killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("otpgate-redis-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A port whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    loop {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 10_000) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

fn start_redis(dir: &Path, port: u16, extra: &[&str]) -> Server {
    let data = dir.join(port.to_string());
    std::fs::create_dir_all(&data).expect("data dir");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&data)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    wait_for(Duration::from_secs(10), || cli(port, &["PING"]) == "PONG");
    Server { child, port }
}

fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "gave up waiting after {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops a Redis the hard way the issue names: `SHUTDOWN NOSAVE`.
fn kill(server: &mut Server) {
    let _ = cli(server.port, &["SHUTDOWN", "NOSAVE"]);
    let _ = server.child.wait();
}

/// One login on `base` (a new number): its status, and the body when it is an error.
async fn login_status(app: &TestApp, base: &str) -> (u16, serde_json::Value, String) {
    let phone = unique_phone();
    let reply = app.login(base, &phone).await;
    let content_type = reply.header("content-type").unwrap_or("").to_string();
    (reply.status, reply.body, content_type)
}

/// Logins across both replicas for `duration`: every answer is a 200 or a 503 problem.
async fn only_200_or_503_during(app: &TestApp, duration: Duration) -> (usize, usize) {
    let (mut ok, mut unavailable) = (0, 0);
    let deadline = Instant::now() + duration;
    let mut i = 0usize;
    while Instant::now() < deadline {
        let base = if i.is_multiple_of(2) { &app.a } else { &app.b };
        i += 1;
        let (status, body, content_type) = login_status(app, base).await;
        match status {
            200 => ok += 1,
            503 => {
                assert_eq!(content_type, "application/problem+json", "{body}");
                assert!(body["code"].is_string(), "{body}");
                unavailable += 1;
            }
            other => panic!("only 200 or 503 while Redis fails over, got {other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ok, unavailable)
}

/// A right code verified by 8 requests at once over both replicas: at most one succeeds (none
/// when the store is unavailable; then every refusal is a 4xx or 503).
async fn code_accepted_at_most_once(app: &Arc<TestApp>) {
    let phone = unique_phone();
    let login = app.login(&app.a, &phone).await;
    if login.status != 200 {
        assert_eq!(login.status, 503, "{}", login.body);
        return;
    }
    let code = field(&login.body, "otp_code").to_string();
    let statuses = statuses_in_parallel(app, 8, move |app, base| {
        let (phone, code) = (phone.clone(), code.clone());
        async move { app.verify(&base, &phone, &code).await }
    })
    .await;
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        accepted <= 1,
        "a code accepted {accepted} times: {statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == 200 || *s == 503 || (400..500).contains(s)),
        "{statuses:?}"
    );
}

/// Traffic over both replicas until `recovered` says the failover is over (and at least 20
/// logins were tried): only 200s and 503 problems, no code accepted twice.
async fn ride_out_failover(app: &Arc<TestApp>, recovered: impl Fn() -> bool) {
    let watch = async {
        let mut total = (0, 0);
        while !recovered() || total.0 + total.1 < 20 {
            let (ok, unavailable) = only_200_or_503_during(app, Duration::from_millis(500)).await;
            total = (total.0 + ok, total.1 + unavailable);
            code_accepted_at_most_once(app).await;
        }
        total
    };
    let (ok, unavailable) = tokio::time::timeout(Duration::from_secs(60), watch)
        .await
        .expect("the failover ends");
    eprintln!("during failover: {ok} logins served, {unavailable} answered 503");
}

/// `redis://127.0.0.1:P` for each port, comma-separated (a `REDIS_URL` list).
fn redis_urls(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Waits until `base` logs a new number in; the time it took.
async fn until_logins_succeed(app: &TestApp, limit: Duration) -> Duration {
    let started = Instant::now();
    for base in [&app.a, &app.b] {
        loop {
            let (status, body, _) = login_status(app, base).await;
            if status == 200 {
                break;
            }
            assert!(
                started.elapsed() < limit,
                "{base}: still {status} after {limit:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    started.elapsed()
}

/// A session that is logged out: its access token must stay refused.
async fn logged_out_session(app: &TestApp) -> String {
    let session = app.sign_in(&unique_phone()).await;
    let access = field(&session, "access_token").to_string();
    assert_eq!(app.logout(&app.a, &access).await.status, 200);
    access
}

async fn ready(app: &TestApp, base: &str) -> bool {
    app.call(base, reqwest::Method::GET, "/ready", None, None)
        .await
        .status
        == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_restart_leaves_no_stale_connection() {
    if !cluster_available() {
        return;
    }
    let dir = scratch();
    let port = free_port();
    let mut redis = start_redis(&dir, port, &[]);
    let url = format!("redis://127.0.0.1:{port}");
    let app = spawn_app_with(
        Backend::Cluster,
        &with_limits(&[("REDIS_URL", &url), ("REDIS_CONNECTIONS", "2")]),
    )
    .await;
    // Light traffic on both replicas.
    for base in [&app.a, &app.b, &app.a, &app.b] {
        assert_eq!(login_status(&app, base).await.0, 200);
    }
    // Redis goes away; only replica A sees traffic meanwhile.
    kill(&mut redis);
    for _ in 0..5 {
        let (status, body, _) = login_status(&app, &app.a).await;
        assert_eq!(status, 503, "{body}");
    }
    redis = start_redis(&dir, port, &[]);
    let started = Instant::now();
    while !(ready(&app, &app.a).await && ready(&app, &app.b).await) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never ready again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The next 100 requests across both replicas all succeed.
    for i in 0..100u32 {
        let base = if i.is_multiple_of(2) { &app.a } else { &app.b };
        let (status, body, _) = login_status(&app, base).await;
        assert_eq!(status, 200, "request {i} after recovery: {body}");
    }
    drop(redis);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_primary_failover_loses_nothing() {
    if !cluster_available() {
        return;
    }
    let dir = scratch();
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let mut servers: Vec<Server> = ports
        .iter()
        .map(|p| {
            start_redis(
                &dir,
                *p,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-config-file",
                    &dir.join(format!("nodes-{p}.conf")).display().to_string(),
                ],
            )
        })
        .collect();
    let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("redis-cli --cluster create");
    assert!(created.success());
    wait_for(Duration::from_secs(20), || {
        ports
            .iter()
            .all(|p| cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    });
    let seeds = redis_urls(&ports);
    let app = Arc::new(
        spawn_app_with(
            Backend::Cluster,
            &with_limits(&[
                ("REDIS_MODE", "cluster"),
                ("REDIS_URL", &seeds),
                ("REDIS_TIMEOUT_MS", "1000"),
            ]),
        )
        .await,
    );
    let revoked = logged_out_session(&app).await;
    let kept = app.sign_in(&unique_phone()).await;
    code_accepted_at_most_once(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // replication to the replicas

    // Kill the primary of the first slot range.
    let primaries: Vec<usize> = (0..6)
        .filter(|i| cli(ports[*i], &["ROLE"]).starts_with("master"))
        .collect();
    let victim = primaries[0];
    kill(&mut servers[victim]);
    let survivor = ports[(0..6).find(|i| *i != victim).expect("another node")];

    // While it fails over: only 200 and 503 problems, and no code accepted twice.
    ride_out_failover(&app, || {
        cli(survivor, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
    })
    .await;
    wait_for(Duration::from_secs(30), || {
        cli(survivor, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
    });
    // Once the cluster says ok, logins succeed on every replica within 3 s.
    let took = until_logins_succeed(&app, Duration::from_secs(3)).await;
    eprintln!("logins succeeded on both replicas {took:?} after cluster_state:ok");
    code_accepted_at_most_once(&app).await;
    // Sessions logged out before the failover stay revoked; others still work.
    app.me(&app.b, &revoked)
        .await
        .assert_problem(401, "invalid_token");
    assert_eq!(
        app.me(&app.a, field(&kept, "access_token")).await.status,
        200
    );
    let refreshed = app.refresh(&app.b, field(&kept, "refresh_token")).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    drop(servers);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_primary_failover_loses_nothing() {
    if !cluster_available() {
        return;
    }
    let dir = scratch();
    let primary_port = free_port();
    let mut primary = start_redis(&dir, primary_port, &[]);
    let replica_port = free_port();
    let replica_of = primary_port.to_string();
    let _replica = start_redis(
        &dir,
        replica_port,
        &["--replicaof", "127.0.0.1", &replica_of],
    );
    wait_for(Duration::from_secs(10), || {
        cli(replica_port, &["INFO", "replication"]).contains("master_link_status:up")
    });
    let sentinel_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let _sentinels: Vec<Server> = sentinel_ports
        .iter()
        .map(|p| {
            let conf = dir.join(format!("sentinel-{p}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {p}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor mymaster 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\n\
                     sentinel failover-timeout mymaster 5000\n\
                     sentinel parallel-syncs mymaster 1\n",
                    dir.display()
                ),
            )
            .expect("sentinel config");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel");
            wait_for(Duration::from_secs(10), || cli(*p, &["PING"]) == "PONG");
            Server { child, port: *p }
        })
        .collect();
    let sentinels = redis_urls(&sentinel_ports);
    let app = Arc::new(
        spawn_app_with(
            Backend::Cluster,
            &with_limits(&[
                ("REDIS_MODE", "sentinel"),
                ("REDIS_URL", &sentinels),
                ("REDIS_SENTINEL_MASTER", "mymaster"),
            ]),
        )
        .await,
    );
    let revoked = logged_out_session(&app).await;
    code_accepted_at_most_once(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // replication to the replica

    kill(&mut primary);
    let promoted = || {
        cli(
            sentinel_ports[0],
            &["SENTINEL", "get-master-addr-by-name", "mymaster"],
        )
        .contains(&replica_port.to_string())
    };
    ride_out_failover(&app, promoted).await;
    wait_for(Duration::from_secs(10), || {
        cli(replica_port, &["ROLE"]).starts_with("master")
    });
    let took = until_logins_succeed(&app, Duration::from_secs(3)).await;
    eprintln!("logins succeeded on both replicas {took:?} after the promotion");
    code_accepted_at_most_once(&app).await;
    app.me(&app.b, &revoked)
        .await
        .assert_problem(401, "invalid_token");
    let status = app
        .post(
            &app.a,
            "/api/auth/login",
            json!({ "phone": unique_phone() }),
        )
        .await
        .status;
    assert_eq!(status, 200);
    std::fs::remove_dir_all(&dir).ok();
}
