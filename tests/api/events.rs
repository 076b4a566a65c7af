//! The audit log (`GET /admin/v1/audit`) and the event webhooks, on every backend: events of a
//! login, refresh, logout and block appear in the audit log; every webhook delivery carries
//! the Standard Webhooks headers and a valid signature; a failing receiver gets retries, a
//! hanging one does not slow logins, an event a replica holds when it stops answering is
//! delivered by another replica after the lease, and a burst of events (more than one claim)
//! is delivered once each.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Backend, Reply, TestApp, field, spawn_app_with, unique_phone};

crate::on_both_backends!(
    audit_log_records_login_refresh_logout_and_block,
    audit_log_filters_and_pages,
    webhook_deliveries_are_signed_and_every_event_arrives,
    failing_receiver_gets_retries_with_the_same_id,
    hanging_receiver_does_not_slow_logins,
    an_event_held_by_a_stalled_replica_is_delivered_by_another,
    a_burst_of_events_is_delivered_once_each,
    replicas_with_delivery_off_leave_their_events_to_a_worker,
);

const KEY: &str = "admin-key-0123456789abcdef0123456789";
/// The Standard Webhooks specification's example secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn app(backend: Backend, extra: &[(&str, &str)]) -> TestApp {
    let mut vars = vec![
        ("ADMIN_API_KEYS", KEY),
        ("RATE_LIMIT_PHONE_PER_HOUR", "100"),
        ("OTP_RESEND_SECONDS", "1"),
    ];
    vars.extend_from_slice(extra);
    spawn_app_with(backend, &vars).await
}

async fn audit(app: &TestApp, query: &str) -> Reply {
    app.call(
        &app.b,
        Method::GET,
        &format!("/admin/v1/audit{query}"),
        None,
        Some(KEY),
    )
    .await
}

/// The audit events of `user` once every kind of `kinds` is among them (polled for 10 s).
async fn audit_of(app: &TestApp, user: &str, kinds: &[&str]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = audit(app, &format!("?user_id={user}&limit=100")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let events = reply.body["events"].as_array().expect("events").clone();
        let seen: HashSet<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
        if kinds.iter().all(|k| seen.contains(k)) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "audit events of {user}: {seen:?}, wanted {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Login on A, verify on B with a user agent; the token response.
async fn sign_in(app: &TestApp, phone: &str) -> Value {
    let code = app.login_code(&app.a, phone).await;
    let resp = app
        .client
        .post(format!("{}/api/auth/verify-otp", app.b))
        .header("User-Agent", "EventsTest/1.0")
        .header("X-Request-Id", "events-test-verify")
        .json(&json!({ "phone": phone, "otp_code": code }))
        .send()
        .await
        .expect("verify sent");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("token json")
}

fn user_id(tokens: &Value) -> String {
    tokens["user"]["id"].as_str().expect("user id").to_string()
}

async fn audit_log_records_login_refresh_logout_and_block(backend: Backend) {
    let app = app(backend, &[]).await;
    let phone = unique_phone();
    let tokens = sign_in(&app, &phone).await;
    let user = user_id(&tokens);
    let refreshed = app.refresh(&app.a, field(&tokens, "refresh_token")).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    assert_eq!(
        app.logout(&app.b, field(&refreshed.body, "access_token"))
            .await
            .status,
        200
    );
    let blocked = app
        .call(
            &app.a,
            Method::POST,
            &format!("/admin/v1/users/{user}/block"),
            None,
            Some(KEY),
        )
        .await;
    assert_eq!(blocked.status, 200, "{}", blocked.body);

    let events = audit_of(
        &app,
        &user,
        &[
            "user.created",
            "login.succeeded",
            "token.refreshed",
            "session.revoked",
            "user.blocked",
        ],
    )
    .await;
    let text = Value::Array(events.clone()).to_string();
    let digits = phone.trim_start_matches('+');
    assert!(!text.contains(digits), "the number is never stored: {text}");
    let by_kind = |kind: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind)
            .unwrap_or_else(|| panic!("{kind} in {text}"))
    };
    // A verified code is recorded as the login it opened.
    let verified = by_kind("login.succeeded");
    assert_eq!(verified["details"]["method"], "otp");
    assert_eq!(verified["user_id"], user.as_str());
    assert_eq!(verified["ip"], "127.0.0.0/24");
    assert_eq!(verified["user_agent"], "EventsTest/1.0");
    assert_eq!(verified["request_id"], "events-test-verify");
    let hash = verified["phone_hash"].as_str().expect("phone hash");
    assert_eq!(hash.len(), 64, "a hex HMAC-SHA256");
    assert_eq!(by_kind("session.revoked")["details"]["scope"], "local");
    assert_eq!(by_kind("user.blocked")["details"]["actor"], "admin");
    // Which admin key: a fingerprint (the first 8 hex digits of its SHA-256), never the key.
    let fingerprint = &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(KEY.as_bytes()))[..8];
    assert_eq!(by_kind("user.blocked")["details"]["key_id"], fingerprint);
    assert!(!text.contains(KEY), "the key is never stored");
    let sid = by_kind("login.succeeded")["details"]["session_id"].clone();
    assert_eq!(by_kind("token.refreshed")["details"]["session_id"], sid);
    // The code sent for this number: found by kind, with the same phone hash.
    let sent = audit(&app, "?kind=otp.sent&limit=100").await;
    assert!(
        sent.body["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["phone_hash"] == hash && e["details"]["outcome"] == "sent"),
        "{}",
        sent.body
    );
    // A wrong code: otp.failed for the number's hash, without a user.
    let other = unique_phone();
    app.login_code(&app.a, &other).await;
    app.verify(&app.b, &other, "000000").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let failed = audit(&app, "?kind=otp.failed&limit=100").await;
        let found = failed.body["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["details"]["reason"] == "invalid_otp" && e["phone_hash"] != hash);
        if found {
            break;
        }
        assert!(Instant::now() < deadline, "no otp.failed: {}", failed.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn audit_log_filters_and_pages(backend: Backend) {
    let app = app(backend, &[]).await;
    let phone = unique_phone();
    let first = sign_in(&app, &phone).await;
    sign_in(&app, &phone).await;
    sign_in(&app, &phone).await;
    let user = user_id(&first);
    // created, 3 × login.succeeded (a verified code is recorded as its login).
    let all = audit_of(&app, &user, &["user.created", "login.succeeded"]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let all = {
        let mut all = all;
        while all.len() < 4 {
            assert!(Instant::now() < deadline, "{all:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            all = audit_of(&app, &user, &[]).await;
        }
        all
    };
    // Newest first.
    let ids: Vec<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted);
    // Pages of 2 hold every event once.
    let mut paged = Vec::new();
    let mut cursor = None::<String>;
    loop {
        let query = match &cursor {
            Some(c) => format!("?user_id={user}&limit=2&cursor={c}"),
            None => format!("?user_id={user}&limit=2"),
        };
        let page = audit(&app, &query).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let events = page.body["events"].as_array().expect("events");
        assert!(events.len() <= 2);
        paged.extend(events.iter().map(|e| e["id"].as_str().unwrap().to_string()));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(paged, ids, "pages hold every event once, in order");
    // Kind filter.
    let logins = audit(&app, &format!("?user_id={user}&kind=login.succeeded")).await;
    let logins = logins.body["events"].as_array().expect("events").clone();
    assert_eq!(logins.len(), 3, "{logins:?}");
    assert!(logins.iter().all(|e| e["kind"] == "login.succeeded"));
    // Time filters: since excludes the past, until excludes the future.
    let future = "2999-01-01T00:00:00Z";
    let past = "2000-01-01T00:00:00Z";
    for (query, expected) in [
        (format!("?user_id={user}&since={future}"), 0),
        (format!("?user_id={user}&until={past}"), 0),
        (
            format!("?user_id={user}&since={past}&until={future}"),
            all.len(),
        ),
    ] {
        let reply = audit(&app, &query).await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.body);
        assert_eq!(
            reply.body["events"].as_array().unwrap().len(),
            expected,
            "{query}"
        );
    }
    let at = all[0]["at"].as_str().unwrap();
    let reply = audit(
        &app,
        &format!("?user_id={user}&since={}", at.replace('+', "%2B")),
    )
    .await;
    assert!(!reply.body["events"].as_array().unwrap().is_empty());
    // Refusals.
    audit(&app, "?cursor=not-a-cursor!")
        .await
        .assert_problem(400, "invalid_request");
    audit(&app, "?user_id=nope")
        .await
        .assert_problem(400, "invalid_request");
    let no_key = app
        .call(&app.a, Method::GET, "/admin/v1/audit", None, None)
        .await;
    assert_eq!(no_key.status, 401, "{}", no_key.body);
    let user_token = app
        .call(
            &app.a,
            Method::GET,
            "/admin/v1/audit",
            None,
            Some(field(&first, "access_token")),
        )
        .await;
    assert_eq!(user_token.status, 401, "{}", user_token.body);
    for limit in ["0", "101"] {
        let reply = audit(&app, &format!("?limit={limit}")).await;
        assert_eq!(reply.status, 400, "limit={limit}: {}", reply.body);
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

/// How the receiver answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// 204, after the first `fail` requests got 500.
    Ok { fail: usize },
    /// Never: reads the request and holds the connection.
    Hang,
}

/// A local webhook receiver (plain HTTP/1.1 on a Tokio listener).
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    async fn start(answer: Answer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let url = format!(
            "http://{}/hooks/otpgate",
            listener.local_addr().expect("addr")
        );
        let got = Arc::new(Mutex::new(Vec::new()));
        let log = got.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let Some(delivery) = read_request(&mut socket).await else {
                    continue;
                };
                let count = {
                    let mut log = log.lock().unwrap();
                    log.push(delivery);
                    log.len()
                };
                match answer {
                    Answer::Hang => held.push(socket),
                    Answer::Ok { fail } => {
                        let status = if count <= fail {
                            "500 Internal Server Error"
                        } else {
                            "204 No Content"
                        };
                        let head = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                        let _ = socket.write_all(head.as_bytes()).await;
                        let _ = socket.shutdown().await;
                    }
                }
            }
        });
        Self { url, got }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    /// The deliveries once one of each `types` arrived (polled for `within`).
    async fn wait_for(&self, types: &[&str], within: Duration) -> Vec<Delivery> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.deliveries();
            let seen: HashSet<String> = got
                .iter()
                .filter_map(|d| serde_json::from_str::<Value>(&d.body).ok())
                .filter_map(|b| b["type"].as_str().map(str::to_string))
                .collect();
            if types.iter().all(|t| seen.contains(*t)) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "webhook types seen {seen:?}, wanted {types:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Reads one HTTP/1.1 request (head and `content-length` body).
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Delivery> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers.get("content-length")?.parse().ok()?;
    while buf.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Delivery {
        id: headers.get("webhook-id").cloned().unwrap_or_default(),
        timestamp: headers
            .get("webhook-timestamp")
            .cloned()
            .unwrap_or_default(),
        signature: headers
            .get("webhook-signature")
            .cloned()
            .unwrap_or_default(),
        body: String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string(),
    })
}

/// Checks a delivery as a receiver would: headers present, timestamp recent, HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` under the decoded secret, body shape.
fn check_signed(d: &Delivery) -> Value {
    assert!(!d.id.is_empty(), "webhook-id: {d:?}");
    let ts: i64 = d
        .timestamp
        .parse()
        .expect("webhook-timestamp is Unix seconds");
    let now = chrono::Utc::now().timestamp();
    assert!((now - ts).abs() < 120, "timestamp {ts} vs now {now}");
    let key = STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", d.id, d.timestamp, d.body).as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(d.signature, expected, "signature of {d:?}");
    let body: Value = serde_json::from_str(&d.body).expect("JSON body");
    assert!(body["type"].is_string(), "{body}");
    chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().expect("timestamp"))
        .expect("RFC 3339 timestamp");
    assert!(body["data"].is_object(), "{body}");
    body
}

/// Every attempt of one event carries the same id and the same body.
fn check_duplicates(got: &[Delivery]) {
    let mut bodies: HashMap<&str, &str> = HashMap::new();
    for d in got {
        let first = bodies.entry(&d.id).or_insert(&d.body);
        assert_eq!(*first, d.body, "event {} changed between attempts", d.id);
    }
}

fn webhook_vars(url: &str) -> Vec<(&str, &str)> {
    vec![
        ("EVENT_WEBHOOK_URL", url),
        ("EVENT_WEBHOOK_SECRET", SECRET),
        ("EVENT_WEBHOOK_RETRY_BASE_MS", "50"),
    ]
}

async fn webhook_deliveries_are_signed_and_every_event_arrives(backend: Backend) {
    let receiver = Receiver::start(Answer::Ok { fail: 0 }).await;
    let app = app(backend, &webhook_vars(&receiver.url)).await;
    let phone = unique_phone();
    let tokens = sign_in(&app, &phone).await;
    let user = user_id(&tokens);
    // A wrong code, a logout, a block and a delete.
    app.login_code(&app.a, &phone).await;
    app.verify(&app.b, &phone, "000000").await;
    assert_eq!(
        app.logout(&app.a, field(&tokens, "access_token"))
            .await
            .status,
        200
    );
    for (method, path) in [
        (Method::POST, format!("/admin/v1/users/{user}/block")),
        (Method::DELETE, format!("/admin/v1/users/{user}")),
    ] {
        let reply = app.call(&app.b, method, &path, None, Some(KEY)).await;
        assert!(reply.status < 300, "{path}: {}", reply.body);
    }
    let got = receiver
        .wait_for(
            &[
                "user.created",
                "login.succeeded",
                "otp.failed",
                "session.revoked",
                "user.blocked",
                "user.deleted",
            ],
            Duration::from_secs(20),
        )
        .await;
    check_duplicates(&got);
    for d in &got {
        let body = check_signed(d);
        let text = body.to_string();
        assert!(
            !text.contains(phone.trim_start_matches('+')),
            "no phone number in webhook bodies: {text}"
        );
        assert!(
            body["data"].get("key_id").is_none(),
            "which admin key acted stays in the audit log: {text}"
        );
        if body["type"] != "otp.failed" {
            assert_eq!(body["data"]["user_id"], user.as_str(), "{body}");
        }
    }
    let failed = got
        .iter()
        .map(|d| serde_json::from_str::<Value>(&d.body).unwrap())
        .find(|b| b["type"] == "otp.failed")
        .unwrap();
    assert_eq!(failed["data"]["reason"], "invalid_otp");
    // Audit-only kinds are not sent.
    assert!(
        got.iter().all(|d| !d.body.contains("\"otp.sent\"")),
        "otp.sent is audit only"
    );
    // The audit row and the webhook event share the id.
    let created = got
        .iter()
        .find(|d| d.body.contains("\"user.created\""))
        .unwrap();
    let audit_rows = audit_of(&app, &user, &["user.created"]).await;
    assert!(audit_rows.iter().any(|e| e["id"] == created.id.as_str()));
}

async fn failing_receiver_gets_retries_with_the_same_id(backend: Backend) {
    let receiver = Receiver::start(Answer::Ok { fail: 3 }).await;
    let app = app(backend, &webhook_vars(&receiver.url)).await;
    sign_in(&app, &unique_phone()).await;
    let got = receiver
        .wait_for(
            &["user.created", "login.succeeded"],
            Duration::from_secs(20),
        )
        .await;
    // Wait for both to be answered 2xx: more than the 3 refused requests.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = got;
    while got.len() < 5 {
        assert!(Instant::now() < deadline, "{got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        got = receiver.deliveries();
    }
    for d in &got {
        check_signed(d);
    }
    check_duplicates(&got);
    let ids: HashSet<&str> = got.iter().map(|d| d.id.as_str()).collect();
    assert!(
        ids.len() < got.len(),
        "a refused event came again with its id: {got:?}"
    );
}

async fn hanging_receiver_does_not_slow_logins(backend: Backend) {
    let receiver = Receiver::start(Answer::Hang).await;
    let mut vars = webhook_vars(&receiver.url);
    vars.push(("EVENT_WEBHOOK_TIMEOUT_SECONDS", "30"));
    let app = app(backend, &vars).await;
    // Warm up (first statements, first connections), then measure.
    sign_in(&app, &unique_phone()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.deliveries().is_empty() {
        assert!(Instant::now() < deadline, "the receiver got nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    for _ in 0..5 {
        sign_in(&app, &unique_phone()).await;
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "5 sign-ins took {took:?} while the receiver hangs"
    );
}

async fn an_event_held_by_a_stalled_replica_is_delivered_by_another(backend: Backend) {
    // The app's replicas post to a receiver that never answers (as a replica that died
    // mid-delivery never finishes): their leases of 2 s run out while they wait.
    let stalled = Receiver::start(Answer::Hang).await;
    let mut vars = webhook_vars(&stalled.url);
    vars.push(("EVENT_WEBHOOK_TIMEOUT_SECONDS", "60"));
    vars.push(("EVENT_WEBHOOK_LEASE_SECONDS", "2"));
    let app = app(backend, &vars).await;
    let tokens = sign_in(&app, &unique_phone()).await;
    let user = user_id(&tokens);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stalled.deliveries().is_empty() {
        assert!(Instant::now() < deadline, "no replica claimed the events");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another replica, reaching the receiver, takes the events over after the lease.
    let healthy = Receiver::start(Answer::Ok { fail: 0 }).await;
    app.start_replica(&[
        ("EVENT_WEBHOOK_URL", &healthy.url),
        ("EVENT_WEBHOOK_TIMEOUT_SECONDS", "10"),
    ])
    .await;
    let got = healthy
        .wait_for(
            &["user.created", "login.succeeded"],
            Duration::from_secs(20),
        )
        .await;
    let stalled_ids: HashSet<String> = stalled.deliveries().into_iter().map(|d| d.id).collect();
    for d in &got {
        let body = check_signed(d);
        assert_eq!(body["data"]["user_id"], user.as_str());
    }
    assert!(
        got.iter().any(|d| stalled_ids.contains(&d.id)),
        "an event the stalled replica held was delivered by the new one: {stalled_ids:?}"
    );
}

async fn a_burst_of_events_is_delivered_once_each(backend: Backend) {
    // 150 sign-ins queue 300 events (replicas with delivery off); then one worker delivers
    // them: a whole claim (256) and the rest, recorded in batches. A delivery not recorded
    // would come again once its 3 s lease is over.
    let receiver = Receiver::start(Answer::Ok { fail: 0 }).await;
    let mut vars = webhook_vars(&receiver.url);
    vars.extend([
        ("EVENT_WEBHOOK_DELIVERY", "false"),
        ("EVENT_WEBHOOK_LEASE_SECONDS", "3"),
        ("RATE_LIMIT_IP_PER_HOUR", "1000000"),
        ("RATE_LIMIT_VERIFY_IP_PER_HOUR", "1000000"),
        ("RATE_LIMIT_FRONTDOOR_PER_SECOND", "100000"),
        ("RATE_LIMIT_FRONTDOOR_BURST", "100000"),
    ]);
    let app = app(backend, &vars).await;
    let users: Vec<String> = futures_util::stream::iter(0..150)
        .map(|_| async { user_id(&sign_in(&app, &unique_phone()).await) })
        .buffer_unordered(16)
        .collect()
        .await;
    // Every event written (the audit log and the outbox are written together).
    for user in &users {
        audit_of(&app, user, &["user.created", "login.succeeded"]).await;
    }
    app.start_replica(&[("EVENT_WEBHOOK_DELIVERY", "true")])
        .await;
    let wanted: HashSet<(String, String)> = users
        .iter()
        .flat_map(|u| ["user.created", "login.succeeded"].map(|t| (t.to_string(), u.clone())))
        .collect();
    let seen = |got: &[Delivery]| -> HashSet<(String, String)> {
        got.iter()
            .map(check_signed)
            .map(|b| {
                (
                    b["type"].as_str().unwrap_or_default().to_string(),
                    b["data"]["user_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !wanted.is_subset(&seen(&receiver.deliveries())) {
        assert!(
            Instant::now() < deadline,
            "{} of {} events arrived",
            wanted.intersection(&seen(&receiver.deliveries())).count(),
            wanted.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the lease: still one delivery per event.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let got = receiver.deliveries();
    let ids: HashSet<&str> = got.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), got.len(), "an event was delivered twice");
    assert_eq!(got.len(), wanted.len());
}

async fn replicas_with_delivery_off_leave_their_events_to_a_worker(backend: Backend) {
    // Both replicas serve logins and queue events, but deliver none (EVENT_WEBHOOK_DELIVERY);
    // a third, serving nothing, delivers them.
    let receiver = Receiver::start(Answer::Ok { fail: 0 }).await;
    let mut vars = webhook_vars(&receiver.url);
    vars.push(("EVENT_WEBHOOK_DELIVERY", "false"));
    let app = app(backend, &vars).await;
    let user = user_id(&sign_in(&app, &unique_phone()).await);
    audit_of(&app, &user, &["user.created", "login.succeeded"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        receiver.deliveries().is_empty(),
        "a replica with delivery off posted {:?}",
        receiver.deliveries()
    );
    app.start_replica(&[("EVENT_WEBHOOK_DELIVERY", "true")])
        .await;
    let got = receiver
        .wait_for(
            &["user.created", "login.succeeded"],
            Duration::from_secs(20),
        )
        .await;
    for d in &got {
        assert_eq!(check_signed(d)["data"]["user_id"], user.as_str());
    }
}
