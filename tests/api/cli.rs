//! The binary as ops run it: `otpgate` with no environment, `migrate`, `healthcheck`, and the
//! production guards.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_otpgate");

pub(crate) fn otpgate(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().current_dir(dir).stdin(Stdio::null());
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

pub(crate) fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("otpgate-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn no_environment_serves_on_8000_and_stops_on_sigterm() {
    let dir = temp_dir();
    let mut child = otpgate(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut healthy = false;
    while Instant::now() < deadline {
        let probe = otpgate(&dir)
            .arg("healthcheck")
            .stderr(Stdio::null())
            .status()
            .expect("probe");
        if probe.success() {
            healthy = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGTERM: graceful shutdown, exit 0.
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(killed.is_ok_and(|s| s.success()));
    let status = child.wait().expect("wait");
    assert!(
        healthy,
        "otpgate with no environment did not answer /health on :8000"
    );
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    assert!(
        dir.join("otpgate.db").exists(),
        "the embedded SQLite file is created"
    );
    // Nothing listens any more: the probe fails.
    assert!(
        !otpgate(&dir)
            .arg("healthcheck")
            .stderr(Stdio::null())
            .status()
            .expect("probe")
            .success()
    );
}

#[test]
fn production_with_the_default_secret_refuses_to_start() {
    let output = otpgate(&temp_dir())
        .env("ENVIRONMENT", "production")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("JWT_SECRET_KEY"), "{stderr}");
}

#[test]
fn bad_configuration_names_the_variable() {
    let output = otpgate(&temp_dir())
        .env("OTP_LENGTH", "twelve")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("OTP_LENGTH"));
    let output = otpgate(&temp_dir())
        .arg("frobnicate")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn seed_dotenv_is_read() {
    let dir = temp_dir();
    std::fs::write(dir.join(".env"), "OTP_LENGTH=3\n").expect("write .env");
    let output = otpgate(&dir).arg("serve").output().expect("run");
    assert_eq!(
        output.status.code(),
        Some(2),
        "the .env value must be read and refused"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("OTP_LENGTH"));
}

#[test]
fn migrate_exits_0_on_sqlite_and_postgres() {
    let dir = temp_dir();
    let status = otpgate(&dir)
        .arg("migrate")
        .stdout(Stdio::null())
        .status()
        .expect("run");
    assert!(status.success());
    assert!(dir.join("otpgate.db").exists());
    // The seed's README form is relative to the working directory.
    let status = otpgate(&dir)
        .arg("migrate")
        .env("DATABASE_URL", "sqlite:///./seed-form.db")
        .stdout(Stdio::null())
        .status()
        .expect("run");
    assert!(status.success());
    assert!(dir.join("seed-form.db").exists());
    if !crate::helpers::cluster_available() {
        return;
    }
    let url = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(crate::helpers::fresh_postgres_database())
        .2;
    for _ in 0..2 {
        // Twice: a second run finds nothing to do and still exits 0.
        let status = otpgate(&dir)
            .arg("migrate")
            .env("DATABASE_URL", &url)
            .stdout(Stdio::null())
            .status()
            .expect("run");
        assert!(status.success());
    }
}

/// PostgreSQL refusing the configuration is reported like MySQL's (tests/api/mariadb.rs): a
/// database that does not exist is exit 2 naming host, port and database.
#[test]
fn a_missing_postgres_database_exits_2_naming_it() {
    if !crate::helpers::cluster_available() {
        return;
    }
    let admin = std::env::var("TEST_POSTGRES_URL").expect("TEST_POSTGRES_URL");
    let (base, _) = admin.rsplit_once('/').expect("ends with /dbname");
    let url = format!("{base}/otpgate_missing_{}", uuid::Uuid::new_v4().simple());
    let host = base.rsplit_once('@').map_or(base, |(_, h)| h);
    for args in [&["migrate"][..], &["serve"]] {
        let output = otpgate(&temp_dir())
            .args(args)
            .env("PORT", "0")
            .env("DATABASE_URL", &url)
            .output()
            .expect("run");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(output.status.code(), Some(2), "{args:?}: {all}");
        assert!(
            all.contains(&format!("postgres at {host}/otpgate_missing_")),
            "{args:?}: {all}"
        );
        assert!(
            all.contains("the database does not exist"),
            "{args:?}: {all}"
        );
    }
}

#[test]
fn env_example_is_a_valid_env_file() {
    let dir = temp_dir();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example");
    std::fs::copy(example, dir.join(".env")).expect("copy .env.example");
    let output = otpgate(&dir).arg("migrate").output().expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // `serve` reads the whole file: check it the way serve does, without serving.
    let env = otpgate::config::parse_dotenv(&std::fs::read_to_string(example).expect("read"));
    otpgate::config::Settings::from_lookup(|k| env.get(k).cloned())
        .expect("the example settings are valid");
}

#[test]
fn migrate_needs_only_the_database_url() {
    // A migration job in production carries no JWT or provider secrets.
    let dir = temp_dir();
    let status = otpgate(&dir)
        .arg("migrate")
        .env("ENVIRONMENT", "production")
        .stdout(Stdio::null())
        .status()
        .expect("run");
    assert!(status.success());
}

#[test]
fn a_bad_cors_origin_exits_2_naming_the_variable() {
    let output = otpgate(&temp_dir())
        .env("PORT", "0")
        .env("CORS_ORIGINS", "https://ok.example.com, not an origin")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2), "no panic, exit 2");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CORS_ORIGINS"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn database_passwords_never_reach_the_output() {
    for (args, url) in [
        (vec![], "postgress://u:SuperSecret123@db/x"),
        (vec!["migrate"], "postgress://u:SuperSecret123@db/x"),
    ] {
        let output = otpgate(&temp_dir())
            .args(&args)
            .env("PORT", "0")
            .env("DATABASE_URL", url)
            .env("LOG_FORMAT", "json")
            .output()
            .expect("run");
        assert!(!output.status.success());
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!all.contains("SuperSecret123"), "{args:?} {url}: {all}");
        // Recognisable without the password: redacted (migrate), or named by its scheme (the
        // configuration check, which never echoes a malformed URL).
        assert!(
            all.contains("u:***@") || all.contains("a postgress:// URL"),
            "the URL is still recognisable: {all}"
        );
    }
}

#[test]
fn bad_redis_settings_exit_2_naming_the_variable() {
    for (env, var) in [
        (
            vec![("REDIS_URL", "redis://10.0.0.1:6379,redis://10.0.0.2:6379")],
            "REDIS_URL",
        ),
        (
            vec![
                ("REDIS_MODE", "sentinel"),
                ("REDIS_URL", "redis://10.0.0.1:26379"),
            ],
            "REDIS_SENTINEL_MASTER",
        ),
        (vec![("REDIS_MODE", "sharded")], "REDIS_MODE"),
        (
            vec![
                ("REDIS_MODE", "cluster"),
                ("REDIS_URL", "redis://:pw1234@10.0.0.1:6379,::nope"),
            ],
            "REDIS_URL",
        ),
    ] {
        let output = otpgate(&temp_dir())
            .env("PORT", "0")
            .envs(env.clone())
            .output()
            .expect("run");
        assert_eq!(output.status.code(), Some(2), "{env:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(var), "{env:?}: {stderr}");
        assert!(!stderr.contains("pw1234"), "{stderr}");
    }
}

#[test]
fn unreachable_cluster_nodes_start_unready_and_are_named() {
    let dir = temp_dir();
    let port = free_port();
    let mut child = otpgate(&dir)
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .env("REDIS_MODE", "cluster")
        .env("REDIS_URL", "redis://127.0.0.1:1,redis://127.0.0.1:2")
        .env("REDIS_TIMEOUT_MS", "300")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let get = |path: &str| -> Option<u16> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.get(9..12)?.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while get("/health") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the replica starts without Redis"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    assert_eq!(get("/ready"), Some(503));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no hang past the timeout"
    );
    std::thread::sleep(Duration::from_millis(1500));
    stop(&mut child);
    let mut logs = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().expect("stdout"), &mut logs).ok();
    assert!(
        logs.contains("127.0.0.1:1") && logs.contains("127.0.0.1:2"),
        "the warning names the nodes tried: {logs}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Stops a child with SIGTERM (via `kill`) and waits for it.
fn stop(child: &mut std::process::Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// A request over plain HTTP/1.1: the status code and body of the answer.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    socket.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Asks for a code for `phone` (200 expected); the answer.
fn login(port: u16, phone: &str) -> serde_json::Value {
    let (status, body) = http(
        port,
        "POST",
        "/api/auth/login",
        &format!(r#"{{"phone":"{phone}"}}"#),
    )
    .expect("login");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

/// Logs `phone` in with the code the development server exposes; the user's id.
fn sign_in(port: u16, phone: &str) -> String {
    let sent = login(port, phone);
    let code = sent["otp_code"].as_str().expect("otp_code (EXPOSE_OTP)");
    let (status, body) = http(
        port,
        "POST",
        "/api/auth/verify-otp",
        &format!(r#"{{"phone":"{phone}","otp_code":"{code}"}}"#),
    )
    .expect("verify");
    assert_eq!(status, 200, "{body}");
    let tokens: serde_json::Value = serde_json::from_str(&body).expect("json");
    tokens["user"]["id"].as_str().expect("user id").to_string()
}

#[tokio::test]
async fn what_is_queued_at_sigterm_is_written_before_exit() {
    let dir = temp_dir();
    let port = free_port();
    let database = format!("sqlite://{}?mode=rwc", dir.join("queued.db").display());
    let mut child = otpgate(&dir)
        .env("PORT", port.to_string())
        .env("DATABASE_URL", &database)
        .env("OTP_RESEND_SECONDS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(port, "GET", "/health", "").is_none() {
        assert!(Instant::now() < deadline, "otpgate did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let returning = crate::helpers::unique_phone();
    let user = sign_in(port, &returning);
    std::thread::sleep(Duration::from_millis(20));
    // A returning user's login time and three codes' audit events, all still queued when
    // SIGTERM comes at once (the audit waits 50 ms for a batch to fill).
    assert_eq!(sign_in(port, &returning), user);
    for _ in 0..3 {
        login(port, &crate::helpers::unique_phone());
    }
    stop(&mut child);
    let db = otpgate::db::connect(&database, 1).await.expect("connect");
    let sent = otpgate::db::events::search_audit(
        &db,
        &otpgate::db::events::AuditFilter {
            kind: Some("otp.sent".into()),
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .expect("search");
    assert_eq!(sent.len(), 5, "every event queued is written");
    let user = otpgate::db::find_user_by_id(&db, user.parse().expect("uuid"))
        .await
        .expect("find")
        .expect("user");
    let last = user.last_login_at.expect("last_login_at");
    assert!(
        last - user.created_at >= chrono::Duration::milliseconds(20),
        "the second login's time is written: {last} vs {}",
        user.created_at
    );
}
