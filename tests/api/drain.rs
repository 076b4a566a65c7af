//! Graceful shutdown as ops see it: the real binary gets SIGTERM while a login waits on a slow
//! SMS provider. The login still gets its 200, new connections are refused at once, a request
//! on a kept-alive connection is still answered, with `Connection: close` (so a proxy never
//! writes into a connection the server is closing), and the process exits within
//! `SHUTDOWN_GRACE_SECONDS`, also when a request outlives the grace.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::unique_phone;
use crate::standin::{Mode, StandIn, TWILIO_FROM};

const BIN: &str = env!("CARGO_BIN_EXE_otpgate");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The binary on embedded backends, sending codes by SMS to `standin`.
fn start(standin: &StandIn, port: u16, grace_seconds: u32) -> Child {
    let dir: PathBuf = std::env::temp_dir().join(format!("otpgate-drain-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(standin.settings())
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("SEND_OTP_VIA_SMS", "true")
        .env("TWILIO_PHONE_NUMBER", TWILIO_FROM)
        .env("DELIVERY_TIMEOUT_MS", "60000")
        .env("SHUTDOWN_GRACE_SECONDS", grace_seconds.to_string())
        .env("LOG_LEVEL", "warn");
    cmd.spawn().expect("spawn otpgate")
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(resp) = client.get(format!("{base}/health")).send().await
            && resp.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "otpgate did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sigterm(child: &Child) {
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -TERM");
}

/// Waits (polling) for the child to exit, at most `limit`.
async fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Waits until connecting to `port` is refused (at most `limit`).
async fn refused_within(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    false
}

/// One `GET /health` on a kept-alive connection; returns the response head, lower-cased.
fn health_on(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: drain\r\n\r\n")
        .expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

#[tokio::test]
async fn sigterm_drains_a_login_in_flight() {
    let standin = StandIn::start().await;
    // Twilio answers after 3 s: the login is in flight for that long.
    let provider_delay = Duration::from_secs(3);
    standin.set_mode("twilio", Mode::Hang(provider_delay));
    let port = free_port();
    let grace = Duration::from_secs(15);
    let mut child = start(&standin, port, 15);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;
    // A kept-alive connection, as a proxy holds them.
    let mut kept = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    kept.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let head = health_on(&mut kept);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");

    let phone = unique_phone();
    let login = tokio::spawn({
        let client = client.clone();
        let url = format!("{base}/api/auth/login");
        async move {
            let resp = client
                .post(url)
                .json(&json!({ "phone": phone, "channel": "sms" }))
                .send()
                .await
                .expect("the login in flight gets an answer");
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.expect("json body");
            (status, body)
        }
    });
    // The login reached the provider: it is in flight now.
    standin.wait_for("twilio", 1).await;
    let signalled = Instant::now();
    sigterm(&child);

    assert!(
        refused_within(port, Duration::from_secs(2)).await,
        "new connections are still accepted after SIGTERM"
    );
    assert!(
        !login.is_finished(),
        "the login finished before the listener closed: nothing was in flight"
    );
    // The kept-alive connection still gets its answer, marked as the last one, and closes.
    let head = health_on(&mut kept);
    assert!(
        head.starts_with("http/1.1 200"),
        "answer while draining: {head:?}"
    );
    assert!(head.contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    let _ = kept.read_to_end(&mut rest);
    let (status, body) = login.await.expect("login task");
    assert_eq!(status, 200, "the login in flight at SIGTERM: {body}");
    assert_eq!(body["channel"], json!("sms"), "{body}");
    assert!(
        signalled.elapsed() >= provider_delay - Duration::from_millis(500),
        "answered before the provider did"
    );
    let status = exit_within(&mut child, grace).await;
    let Some(status) = status else {
        let _ = child.kill();
        panic!("otpgate still running {grace:?} after SIGTERM");
    };
    assert!(status.success(), "exit after draining: {status:?}");
    assert!(
        signalled.elapsed() < provider_delay + Duration::from_secs(3),
        "exit long after the last request finished: {:?}",
        signalled.elapsed()
    );
    assert_eq!(standin.requests("twilio").len(), 1, "one code sent");
}

#[tokio::test]
async fn sigterm_exits_within_the_grace_when_a_request_hangs() {
    let standin = StandIn::start().await;
    standin.set_mode("twilio", Mode::Hang(Duration::from_secs(60)));
    let port = free_port();
    let mut child = start(&standin, port, 2);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;
    let login = tokio::spawn({
        let client = client.clone();
        let url = format!("{base}/api/auth/login");
        async move {
            client
                .post(url)
                .json(&json!({ "phone": unique_phone(), "channel": "sms" }))
                .send()
                .await
        }
    });
    standin.wait_for("twilio", 1).await;
    let signalled = Instant::now();
    sigterm(&child);
    let status = exit_within(&mut child, Duration::from_secs(6)).await;
    let Some(status) = status else {
        let _ = child.kill();
        panic!("otpgate ignored its 2 s grace after SIGTERM");
    };
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "exited before the grace was over: {:?}",
        signalled.elapsed()
    );
    assert!(status.success(), "{status:?}");
    // The request cut off by the grace gets no answer (its connection is closed).
    let cut = tokio::time::timeout(Duration::from_secs(5), login)
        .await
        .expect("the client sees the connection end")
        .expect("task");
    assert!(
        cut.is_err(),
        "a request past the grace cannot have an answer"
    );
}

/// nginx must not resend a POST that reached a replica: a login sent twice is two codes (two
/// SMS bills). Draining makes the retry unnecessary on SIGTERM; connection errors before the
/// request was sent are still retried (nginx's default for every method).
#[test]
fn nginx_does_not_retry_non_idempotent_requests() {
    let conf = include_str!("../../deploy/nginx.conf");
    let directives: Vec<&str> = conf
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| l.starts_with("proxy_next_upstream "))
        .collect();
    assert!(
        !directives.is_empty(),
        "deploy/nginx.conf sets proxy_next_upstream"
    );
    for d in directives {
        assert!(!d.contains("non_idempotent"), "{d}");
    }
}
