//! The red-team findings, each as a test that failed before its fix: bounded metrics series,
//! the front door on every path, the request-head deadline and connection caps, hyper's errors
//! as problems, one successor per refresh in the grace window, intent quotas with IPv6 /64
//! buckets, docs headers and `Vary: Origin`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, field, spawn_app, spawn_app_with, unique_phone};

crate::on_both_backends!(
    invented_methods_do_not_grow_the_metrics,
    front_door_covers_every_path_but_the_probes,
    trickled_headers_are_cut_off_and_keepalive_still_works,
    a_client_that_stops_reading_is_cut_off,
    connections_over_a_cap_are_closed,
    hyper_errors_are_problems,
    refreshes_in_the_grace_window_share_one_successor,
    intents_are_limited_per_client_and_ipv6_by_64,
    docs_are_locked_down_and_cors_varies_by_origin,
);

fn address(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

/// Sends raw bytes on a new connection and reads until the server closes it (or `wait`).
fn raw_exchange(base: &str, bytes: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(address(base)).expect("connect");
    stream.set_read_timeout(Some(wait)).expect("timeout");
    stream.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

fn series(metrics: &str, name: &str) -> usize {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .count()
}

async fn metrics_text(app: &TestApp) -> String {
    app.client
        .get(format!("{}/metrics", app.a))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

async fn invented_methods_do_not_grow_the_metrics(backend: Backend) {
    let app = spawn_app_with(backend, &[("RATE_LIMIT_FRONTDOOR_PER_SECOND", "100000")]).await;
    for i in 0..300 {
        let method = Method::from_bytes(format!("Q{i:06}").as_bytes()).expect("a token");
        let resp = app
            .client
            .request(method, format!("{}/x", app.a))
            .send()
            .await
            .expect("sent");
        assert!(resp.status().is_client_error(), "{}", resp.status());
    }
    let text = metrics_text(&app).await;
    assert!(
        text.contains("method=\"other\""),
        "invented methods are labelled other"
    );
    assert!(!text.contains("Q000001"), "no raw method in any label");
    for name in [
        "otpgate_http_requests_total",
        "otpgate_http_request_duration_seconds_count",
    ] {
        let n = series(&text, name);
        assert!(n < 20, "{name}: {n} series after 300 invented methods");
    }
}

async fn front_door_covers_every_path_but_the_probes(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("RATE_LIMIT_FRONTDOOR_PER_SECOND", "1"),
            ("RATE_LIMIT_FRONTDOOR_BURST", "1"),
        ],
    )
    .await;
    for path in ["/no/such/path", "/docs/", "/openapi.json"] {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(app.call(&app.a, Method::GET, path, None, None).await.status);
        }
        assert!(statuses.contains(&429), "{path}: {statuses:?}");
    }
    let refused = app
        .call(&app.a, Method::GET, "/no/such/path", None, None)
        .await;
    refused.assert_problem(429, "rate_limited");
    for path in ["/health", "/ready", "/metrics"] {
        for _ in 0..20 {
            let reply = app.call(&app.a, Method::GET, path, None, None).await;
            assert_eq!(reply.status, 200, "{path} is never refused");
        }
    }
}

async fn trickled_headers_are_cut_off_and_keepalive_still_works(backend: Backend) {
    let app = spawn_app_with(backend, &[("HTTP_HEADER_TIMEOUT_SECONDS", "1")]).await;
    let base = app.a.clone();
    // Blocking sockets, off the runtime the server runs on.
    tokio::task::spawn_blocking(move || trickle_then_keepalive(&base))
        .await
        .expect("raw client");
}

fn trickle_then_keepalive(base: &str) {
    // One header byte every 200 ms: the idle timer never fires, the head deadline does.
    let mut stream = TcpStream::connect(address(base)).expect("connect");
    stream
        .write_all(b"GET /health HTTP/1.1\r\n")
        .expect("write");
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(200));
        if stream.write_all(b"X").is_err() {
            closed = true;
            break;
        }
        stream
            .set_read_timeout(Some(Duration::from_millis(1)))
            .expect("timeout");
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
                assert!(text.contains("application/problem+json"), "{text}");
                assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(closed, "a trickling client is cut off");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut off after {:?}",
        started.elapsed()
    );

    // An idle keep-alive connection is not a slow head: it serves again after a pause longer
    // than the head deadline.
    let mut stream = TcpStream::connect(address(base)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let request = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n";
    for round in 0..2 {
        stream.write_all(request).expect("write");
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "round {round}: {text}");
        std::thread::sleep(Duration::from_millis(1500));
    }
}

async fn a_client_that_stops_reading_is_cut_off(backend: Backend) {
    let app = spawn_app_with(backend, &[("HTTP_IDLE_TIMEOUT_SECONDS", "1")]).await;
    let page = app
        .client
        .get(format!("{}/docs/", app.a))
        .send()
        .await
        .expect("docs")
        .bytes()
        .await
        .expect("body")
        .len();
    let base = app.a.clone();
    let (received, closed) = tokio::task::spawn_blocking(move || {
        // 20 large responses asked for at once, none read: the socket buffers fill and the
        // server's writes stall.
        let mut stream = TcpStream::connect(address(&base)).expect("connect");
        let request = "GET /docs/ HTTP/1.1\r\nHost: t\r\n\r\n".repeat(20);
        stream.write_all(request.as_bytes()).expect("write");
        std::thread::sleep(Duration::from_secs(4));
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut received = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return (received, true),
                Ok(n) => received += n,
                Err(_) => return (received, false),
            }
        }
    })
    .await
    .expect("raw client");
    assert!(closed, "a stalled connection is closed");
    assert!(
        received < 20 * page,
        "closed before every response went out ({received} of {} bytes)",
        20 * page
    );
    let text = metrics_text(&app).await;
    assert!(
        text.contains("otpgate_connection_events_total{event=\"write_stalled\"}"),
        "{text}"
    );
}

/// Whether the server closes a fresh connection at once (read gives EOF or a reset).
fn closed_at_accept(base: &str) -> bool {
    let mut stream = TcpStream::connect(address(base)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let _ = stream.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) | Err(_) => true,
        Ok(n) => !String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
    }
}

async fn connections_over_a_cap_are_closed(backend: Backend) {
    for (var, cap) in [
        ("HTTP_MAX_CONNECTIONS_PER_IP", 2),
        ("HTTP_MAX_CONNECTIONS", 2),
    ] {
        let app = spawn_app_with(backend, &[(var, "2")]).await;
        let base = app.a.clone();
        let held = tokio::task::spawn_blocking(move || {
            let held: Vec<TcpStream> = (0..cap)
                .map(|_| TcpStream::connect(address(&base)).expect("connect"))
                .collect();
            std::thread::sleep(Duration::from_millis(200));
            let refused = closed_at_accept(&base);
            (held, refused)
        });
        let (held, refused) = held.await.expect("probe");
        assert!(refused, "{var}={cap}: a third connection is closed");
        drop(held);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reply = app.call(&app.a, Method::GET, "/health", None, None).await;
        assert_eq!(reply.status, 200, "{var}: served again once below the cap");
        let text = metrics_text(&app).await;
        assert!(
            text.contains("otpgate_connection_events_total{event=\"refused_"),
            "{text}"
        );
    }
}

async fn hyper_errors_are_problems(backend: Backend) {
    let app = spawn_app(backend).await;
    let base = app.a.clone();
    let (long_uri, garbage) = tokio::task::spawn_blocking(move || {
        let long = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(70_000));
        (
            raw_exchange(&base, long.as_bytes(), Duration::from_secs(3)),
            raw_exchange(&base, b"NOT HTTP AT ALL\r\n\r\n", Duration::from_secs(3)),
        )
    })
    .await
    .expect("raw requests");
    for (text, status, code) in [
        (long_uri, "414", "uri_too_long"),
        (garbage, "400", "invalid_request"),
    ] {
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{text}"
        );
        let body: Value =
            serde_json::from_str(text.split_once("\r\n\r\n").expect("body").1).expect("json");
        assert_eq!(body["code"], json!(code), "{text}");
    }
}

/// The `jti` of a token, read without verifying it.
fn jti(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let claims: Value = serde_json::from_slice(&bytes).expect("claims");
    claims["jti"].as_str().expect("jti").to_string()
}

async fn refreshes_in_the_grace_window_share_one_successor(backend: Backend) {
    let app = Arc::new(spawn_app_with(backend, &[("REFRESH_REUSE_GRACE_SECONDS", "3")]).await);
    let session = app.sign_in(&unique_phone()).await;
    let original = field(&session, "refresh_token").to_string();
    // 40 refreshes of one token at once, across both replicas.
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let app = app.clone();
            let token = original.clone();
            tokio::spawn(async move {
                let base = if i % 2 == 0 { &app.a } else { &app.b };
                app.refresh(base, &token).await
            })
        })
        .collect();
    let mut successors = Vec::new();
    for task in tasks {
        let reply = task.await.expect("task");
        assert_eq!(reply.status, 200, "{}", reply.body);
        successors.push(field(&reply.body, "refresh_token").to_string());
    }
    let first = &successors[0];
    assert_ne!(jti(first), jti(&original));
    for s in &successors {
        assert_eq!(jti(s), jti(first), "one successor id for the whole burst");
        assert_eq!(s, first, "HS256: the very same successor token");
    }
    // The successor works (once) and the chain goes on.
    let next = app.refresh(&app.b, first).await;
    assert_eq!(next.status, 200, "{}", next.body);
    let access = field(&next.body, "access_token").to_string();
    assert_eq!(app.me(&app.a, &access).await.status, 200);
    // After the grace window, the original once more: reuse, and the one chain dies.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    app.refresh(&app.a, &original)
        .await
        .assert_problem(401, "token_reused");
    app.me(&app.b, &access)
        .await
        .assert_problem(401, "invalid_token");
    let late = app
        .refresh(&app.b, field(&next.body, "refresh_token"))
        .await;
    assert_eq!(late.status, 401, "{}", late.body);
}

async fn post_from(app: &TestApp, path: &str, body: Value, forwarded_for: &str) -> (u16, Value) {
    let resp = app
        .client
        .post(format!("{}{path}", app.a))
        .header("x-forwarded-for", forwarded_for)
        .json(&body)
        .send()
        .await
        .expect("sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn intents_are_limited_per_client_and_ipv6_by_64(backend: Backend) {
    let intents = [
        ("WHATSAPP_WEBHOOK_SECRET", "app-secret"),
        ("WHATSAPP_BUSINESS_NUMBER", "+15550001234"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ];
    let mut settings = intents.to_vec();
    settings.push(("RATE_LIMIT_INTENT_IP_PER_HOUR", "3"));
    let app = spawn_app_with(backend, &settings).await;
    let body = json!({ "channel": "whatsapp" });
    // Three addresses of one /64 share one budget of 3.
    for ip in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"] {
        let (status, reply) = post_from(&app, "/api/auth/intents", body.clone(), ip).await;
        assert_eq!(status, 201, "{reply}");
    }
    let (status, reply) =
        post_from(&app, "/api/auth/intents", body.clone(), "2001:db8:1:2::9").await;
    assert_eq!(status, 429, "{reply}");
    assert_eq!(reply["code"], json!("rate_limited"));
    // Another /64, and an IPv4 client, have their own.
    for ip in ["2001:db8:1:3::1", "198.51.100.7"] {
        let (status, reply) = post_from(&app, "/api/auth/intents", body.clone(), ip).await;
        assert_eq!(status, 201, "{ip}: {reply}");
    }

    // The global cap holds whatever the addresses.
    let mut settings = intents.to_vec();
    settings.push(("RATE_LIMIT_INTENT_GLOBAL_PER_MINUTE", "4"));
    let app = spawn_app_with(backend, &settings).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let ip = format!("203.0.113.{i}");
        statuses.push(
            post_from(&app, "/api/auth/intents", body.clone(), &ip)
                .await
                .0,
        );
    }
    assert_eq!(statuses, [201, 201, 201, 201, 429, 429]);
}

async fn docs_are_locked_down_and_cors_varies_by_origin(backend: Backend) {
    let app = spawn_app_with(backend, &[("CORS_ORIGINS", "https://app.example.com")]).await;
    for path in ["/docs/", "/redoc/"] {
        let resp = app
            .client
            .get(format!("{}{path}", app.a))
            .send()
            .await
            .expect("docs");
        assert_eq!(resp.status(), 200, "{path}");
        let csp = resp
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp:?}");
        assert_eq!(
            resp.headers()
                .get("x-frame-options")
                .and_then(|v| v.to_str().ok()),
            Some("DENY")
        );
    }
    let resp = app
        .client
        .post(format!("{}/api/auth/login", app.a))
        .header("origin", "https://app.example.com")
        .json(&json!({ "phone": unique_phone() }))
        .send()
        .await
        .expect("login");
    assert_eq!(
        resp.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example.com")
    );
    let vary: Vec<String> = resp
        .headers()
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .collect();
    assert!(vary.iter().any(|v| v.contains("origin")), "{vary:?}");

    // DOCS_ENABLED=false: no docs, no spec.
    let closed = spawn_app_with(backend, &[("DOCS_ENABLED", "false")]).await;
    for path in ["/docs/", "/redoc/", "/openapi.json"] {
        let reply = closed.call(&closed.a, Method::GET, path, None, None).await;
        reply.assert_problem(404, "not_found");
    }
}

/// A body sent a byte at a time never completes within the body deadline (10 s): the request
/// is answered 408 as a problem, whatever the idle timer (reset by every byte) says.
#[tokio::test]
async fn a_trickled_body_gets_408() {
    let app = spawn_app(Backend::Embedded).await;
    let base = app.a.clone();
    let (answer, after) = tokio::task::spawn_blocking(move || trickle_body(&base))
        .await
        .expect("raw client");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("\"status\":408"), "{answer}");
    assert!(
        after >= Duration::from_secs(9) && after < Duration::from_secs(14),
        "answered after {after:?}, the body deadline is 10 s"
    );
}

/// Sends a login head announcing a 200-byte body, then one body byte per 500 ms until an answer
/// arrives (at most 16 s); returns the answer and when it came.
fn trickle_body(base: &str) -> (String, Duration) {
    let mut stream = TcpStream::connect(address(base)).expect("connect");
    stream
        .write_all(
            b"POST /api/auth/login HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
              Content-Length: 200\r\n\r\n{",
        )
        .expect("write");
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut out = Vec::new();
    while started.elapsed() < Duration::from_secs(16) {
        let mut buf = [0u8; 2048];
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    // The head is in; give the body a moment to follow.
                    std::thread::sleep(Duration::from_millis(100));
                    stream.set_nonblocking(true).expect("nonblocking");
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        out.extend_from_slice(&buf[..n]);
                    }
                    break;
                }
            }
            Err(_) => {
                if out.is_empty() && stream.write_all(b" ").is_err() {
                    break;
                }
            }
        }
    }
    (String::from_utf8_lossy(&out).to_string(), started.elapsed())
}
