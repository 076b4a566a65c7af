//! Login by message: the WhatsApp and Telegram webhooks (signatures over the exact bytes,
//! duplicates, replies through the stand-ins), login intents across replicas, contact linking
//! and the Telegram Login Widget.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::helpers::{Backend, Reply, TestApp, field, spawn_app_with, unique_phone};
use crate::standin::{Mode, StandIn, TELEGRAM_TOKEN, WHATSAPP_PHONE_ID, WHATSAPP_TOKEN};

crate::on_both_backends!(
    whatsapp_handshake_echoes_the_challenge,
    unauthentic_webhook_calls_change_nothing,
    whatsapp_intent_logs_in_on_the_other_replica,
    duplicate_deliveries_act_once,
    whatsapp_otp_command_sends_a_code_that_verifies,
    message_commands_are_not_captcha_gated,
    old_whatsapp_messages_are_ignored,
    telegram_start_binds_the_intent_and_asks_for_the_contact,
    own_contact_links_the_phone_and_foreign_contacts_nothing,
    telegram_widget_checks_hash_age_and_replay,
    telegram_widget_refuses_the_future_and_honours_a_custom_max_age,
    intents_expire_and_need_configuration,
    failed_replies_still_answer_200_and_are_counted,
    whatsapp_statuses_are_counted,
);

crate::on_sql_servers!(database_outage_loses_no_webhook_event_and_no_login);

const ADMIN_KEY: &str = "admin-key-0123456789abcdef0123456789";
const VERIFY_TOKEN: &str = "verify-me-please";
const APP_SECRET: &str = "whatsapp-app-secret";
const BUSINESS_NUMBER: &str = "15550001234";
const TG_SECRET: &str = "telegram-webhook-secret_1";
const BOT: &str = "otpgate_test_bot";

struct Messaging {
    app: TestApp,
    standin: StandIn,
}

async fn messaging_app(backend: Backend, extra: &[(&str, &str)]) -> Messaging {
    let standin = StandIn::start().await;
    let base = standin.settings();
    let mut settings: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
    settings.extend_from_slice(&[
        ("APP_NAME", "Acme"),
        ("SUPPORT_CONTACT", "security@acme.example"),
        ("WHATSAPP_ACCESS_TOKEN", WHATSAPP_TOKEN),
        ("WHATSAPP_PHONE_NUMBER_ID", WHATSAPP_PHONE_ID),
        ("WHATSAPP_VERIFY_TOKEN", VERIFY_TOKEN),
        ("WHATSAPP_WEBHOOK_SECRET", APP_SECRET),
        ("WHATSAPP_BUSINESS_NUMBER", "+1 555 000 1234"),
        ("TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN),
        ("TELEGRAM_WEBHOOK_SECRET", TG_SECRET),
        ("TELEGRAM_BOT_USERNAME", BOT),
        ("OTP_CHANNEL_ORDER", "whatsapp"),
    ]);
    settings.extend_from_slice(extra);
    Messaging {
        app: spawn_app_with(backend, &settings).await,
        standin,
    }
}

/// The audit events `query` selects (`GET /admin/v1/audit`), once `enough` holds for them or
/// after 10 s (the caller's assertions then say what is missing): events are written in batches.
async fn audit_until(app: &TestApp, query: &str, enough: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let audit = app
            .call(
                &app.a,
                reqwest::Method::GET,
                &format!("/admin/v1/audit{query}"),
                None,
                Some(ADMIN_KEY),
            )
            .await;
        assert_eq!(audit.status, 200, "{}", audit.body);
        let events = audit.body["events"].as_array().expect("events").clone();
        if enough(&events) || std::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A Cloud API notification with one text message from `from` (digits).
fn whatsapp_message(from: &str, id: &str, text: &str) -> Value {
    whatsapp_message_at(from, id, text, unix_now())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A WhatsApp message notification sent at `sent` (Unix seconds).
fn whatsapp_message_at(from: &str, id: &str, text: &str, sent: u64) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": "102290129340398",
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": { "display_phone_number": BUSINESS_NUMBER, "phone_number_id": WHATSAPP_PHONE_ID },
                    "contacts": [{ "profile": { "name": "Kerry" }, "wa_id": from }],
                    "messages": [{
                        "from": from,
                        "id": id,
                        "timestamp": sent.to_string(),
                        "type": "text",
                        "text": { "body": text }
                    }]
                }
            }]
        }]
    })
}

async fn raw_post(
    app: &TestApp,
    base: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, String)],
) -> Reply {
    let mut req = app
        .client
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    Reply {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// POSTs `body` to the WhatsApp webhook, correctly signed over these exact bytes.
async fn whatsapp_signed(app: &TestApp, base: &str, body: &Value) -> Reply {
    let bytes = serde_json::to_vec(body).expect("json");
    let sig = signature(&bytes);
    raw_post(
        app,
        base,
        "/api/whatsapp/webhook",
        &bytes,
        &[("X-Hub-Signature-256", sig)],
    )
    .await
}

/// POSTs a Telegram update with the secret token.
async fn telegram_update(app: &TestApp, base: &str, update: &Value) -> Reply {
    let bytes = serde_json::to_vec(update).expect("json");
    raw_post(
        app,
        base,
        "/api/telegram/webhook",
        &bytes,
        &[("X-Telegram-Bot-Api-Secret-Token", TG_SECRET.to_string())],
    )
    .await
}

fn update_id() -> i64 {
    i64::try_from(Uuid::new_v4().as_u128() % 1_000_000_000).expect("fits")
}

fn telegram_user() -> i64 {
    1_000_000_000 + update_id()
}

/// An update with a private message from `user`.
fn telegram_message(user: i64, message: Value) -> Value {
    let mut msg = json!({
        "message_id": 11,
        "from": { "id": user, "is_bot": false, "first_name": "Kerry", "language_code": "en" },
        "chat": { "id": user, "first_name": "Kerry", "type": "private" },
        "date": 1_760_000_000
    });
    for (k, v) in message.as_object().expect("object") {
        msg[k] = v.clone();
    }
    json!({ "update_id": update_id(), "message": msg })
}

async fn create_intent(app: &TestApp, base: &str, channel: &str) -> Value {
    let reply = app
        .post(base, "/api/auth/intents", json!({ "channel": channel }))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body
}

async fn poll(app: &TestApp, base: &str, intent: &Value) -> Reply {
    app.post(
        base,
        "/api/auth/intents/poll",
        json!({ "intent_id": intent["intent_id"], "poll_token": intent["poll_token"] }),
    )
    .await
}

/// The `/start` payload of a Telegram intent's link.
fn start_code(intent: &Value) -> String {
    field(intent, "deep_link")
        .rsplit_once("start=")
        .expect("start parameter")
        .1
        .to_string()
}

/// Telegram user `user` taps Start on a link carrying `code`; the update goes to `base`.
async fn tap_start(app: &TestApp, base: &str, user: i64, code: &str) -> Reply {
    telegram_update(
        app,
        base,
        &telegram_message(user, json!({ "text": format!("/start {code}") })),
    )
    .await
}

/// `POST /api/auth/login` asking for the Telegram channel.
async fn telegram_login(app: &TestApp, base: &str, phone: &str) -> Reply {
    app.post(
        base,
        "/api/auth/login",
        json!({ "phone": phone, "channel": "telegram" }),
    )
    .await
}

/// The metrics text of `base`.
async fn metrics(app: &TestApp, base: &str) -> String {
    app.client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body")
}

/// The text a WhatsApp deep link prefills.
fn prefilled_text(deep_link: &str) -> String {
    let (_, encoded) = deep_link.split_once("?text=").expect("text parameter");
    let bytes = encoded.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&encoded[i + 1..i + 3], 16).expect("hex"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf-8")
}

fn digits(phone: &str) -> String {
    phone.trim_start_matches('+').to_string()
}

async fn whatsapp_handshake_echoes_the_challenge(backend: Backend) {
    let m = messaging_app(backend, &[]).await;
    let url = |mode: &str, token: &str| {
        format!(
            "{}/api/whatsapp/webhook?hub.mode={mode}&hub.verify_token={token}&hub.challenge=1158201444",
            m.app.b
        )
    };
    let resp = m
        .app
        .client
        .get(url("subscribe", VERIFY_TOKEN))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain")
    );
    assert_eq!(resp.text().await.expect("body"), "1158201444");
    for wrong in [url("subscribe", "guess"), url("unsubscribe", VERIFY_TOKEN)] {
        let resp = m.app.client.get(wrong).send().await.expect("sent");
        assert_eq!(resp.status(), 403);
    }
    let bare = m
        .app
        .client
        .get(format!("{}/api/whatsapp/webhook", m.app.a))
        .send()
        .await
        .expect("sent");
    assert_eq!(bare.status(), 403);
}

async fn unauthentic_webhook_calls_change_nothing(backend: Backend) {
    let m = messaging_app(backend, &[]).await;
    let intent = create_intent(&m.app, &m.app.a, "whatsapp").await;
    let text = prefilled_text(field(&intent, "deep_link"));
    let sender = digits(&unique_phone());
    let body = whatsapp_message(&sender, "wamid.unsigned", &text);
    let compact = serde_json::to_vec(&body).expect("json");
    let pretty = serde_json::to_vec_pretty(&body).expect("json");
    let path = "/api/whatsapp/webhook";
    // No signature; a wrong one; another key; a signature of the same JSON serialised
    // differently (the HMAC covers the bytes, not the meaning).
    let mut other_key = Hmac::<Sha256>::new_from_slice(b"not-the-app-secret").expect("key");
    other_key.update(&compact);
    let cases = [
        vec![],
        vec![("X-Hub-Signature-256", "sha256=00".to_string())],
        vec![(
            "X-Hub-Signature-256",
            format!("sha256={}", hex::encode(other_key.finalize().into_bytes())),
        )],
        vec![("X-Hub-Signature-256", signature(&pretty))],
        vec![(
            "X-Hub-Signature-256",
            signature(&compact).replace("sha256=", ""),
        )],
    ];
    for headers in cases {
        raw_post(&m.app, &m.app.b, path, &compact, &headers)
            .await
            .assert_problem(403, "invalid_signature");
    }
    // Telegram: a missing or wrong secret token.
    let user = telegram_user();
    let tg = create_intent(&m.app, &m.app.a, "telegram").await;
    let code = start_code(&tg);
    let update = serde_json::to_vec(&telegram_message(
        user,
        json!({ "text": format!("/start {code}") }),
    ))
    .expect("json");
    for headers in [
        vec![],
        vec![("X-Telegram-Bot-Api-Secret-Token", "wrong".to_string())],
    ] {
        raw_post(&m.app, &m.app.b, "/api/telegram/webhook", &update, &headers)
            .await
            .assert_problem(403, "invalid_signature");
    }
    // Nothing was bound, and nothing was replied.
    assert_eq!(poll(&m.app, &m.app.a, &intent).await.status, 202);
    assert_eq!(poll(&m.app, &m.app.a, &tg).await.status, 202);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(m.standin.requests("whatsapp").is_empty());
    assert!(m.standin.requests("telegram").is_empty());
    // The same bytes, correctly signed, do bind.
    let reply = raw_post(
        &m.app,
        &m.app.b,
        path,
        &compact,
        &[("X-Hub-Signature-256", signature(&compact))],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(poll(&m.app, &m.app.a, &intent).await.status, 200);
}

async fn whatsapp_intent_logs_in_on_the_other_replica(backend: Backend) {
    let m = messaging_app(backend, &[]).await;
    let intent = create_intent(&m.app, &m.app.a, "whatsapp").await;
    let link = field(&intent, "deep_link");
    assert!(
        link.starts_with(&format!("https://wa.me/{BUSINESS_NUMBER}?text=")),
        "{link}"
    );
    assert_eq!(intent["expires_in"], json!(300));
    assert_eq!(
        poll(&m.app, &m.app.b, &intent).await.body,
        json!({ "status": "pending" })
    );

    let phone = unique_phone();
    let text = prefilled_text(link);
    assert!(text.contains("Acme"), "{text}");
    let reply = whatsapp_signed(
        &m.app,
        &m.app.b,
        &whatsapp_message(&digits(&phone), "wamid.bind-1", &text),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // A wrong poll token gets nothing and spends nothing.
    let mut stolen = intent.clone();
    stolen["poll_token"] = json!("x".repeat(43));
    poll(&m.app, &m.app.a, &stolen)
        .await
        .assert_problem(403, "invalid_poll_token");

    let first = poll(&m.app, &m.app.a, &intent).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["token_type"], json!("bearer"));
    assert_eq!(first.body["user"]["phone"], json!(phone));
    let me = m.app.me(&m.app.b, field(&first.body, "access_token")).await;
    assert_eq!(me.body["phone"], json!(phone));
    // Exactly once.
    poll(&m.app, &m.app.b, &intent)
        .await
        .assert_problem(410, "intent_consumed");
    poll(&m.app, &m.app.a, &intent)
        .await
        .assert_problem(410, "intent_consumed");
    // The refresh token works like any other.
    assert_eq!(
        m.app
            .refresh(&m.app.a, field(&first.body, "refresh_token"))
            .await
            .status,
        200
    );

    // The sender got a confirmation naming the app and how to report a login that was not theirs.
    let sent = m.standin.wait_for("whatsapp", 1).await;
    assert_eq!(sent[0].body["to"], json!(digits(&phone)));
    let confirmation = sent[0].body["text"]["body"].as_str().expect("text");
    assert!(
        confirmation.contains("Acme") && confirmation.contains("security@acme.example"),
        "{confirmation}"
    );

    // The same login code from someone else binds nothing.
    let other = digits(&unique_phone());
    whatsapp_signed(
        &m.app,
        &m.app.a,
        &whatsapp_message(&other, "wamid.bind-2", &text),
    )
    .await;
    let sent = m.standin.wait_for("whatsapp", 2).await;
    assert_eq!(sent[1].body["to"], json!(other));
    assert!(
        sent[1].body["text"]["body"]
            .as_str()
            .expect("text")
            .contains("already used")
    );

    // Unknown text gets a help reply.
    whatsapp_signed(
        &m.app,
        &m.app.a,
        &whatsapp_message(&other, "wamid.hello", "hello"),
    )
    .await;
    let sent = m.standin.wait_for("whatsapp", 3).await;
    assert!(
        sent[2].body["text"]["body"]
            .as_str()
            .expect("text")
            .contains("Send OTP")
    );

    let metrics = metrics(&m.app, &m.app.a).await;
    assert!(
        metrics.contains("otpgate_login_intents_total{channel=\"whatsapp\",outcome=\"created\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("otpgate_webhook_events_total"),
        "{metrics}"
    );
}

async fn duplicate_deliveries_act_once(backend: Backend) {
    let m = messaging_app(backend, &[]).await;
    let phone = unique_phone();
    let body = whatsapp_message(
        &digits(&phone),
        &format!("wamid.{}", Uuid::new_v4().simple()),
        "OTP",
    );
    for base in [&m.app.a, &m.app.b, &m.app.a] {
        assert_eq!(whatsapp_signed(&m.app, base, &body).await.status, 200);
    }
    m.standin.wait_for("whatsapp", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        m.standin.requests("whatsapp").len(),
        1,
        "one code for three deliveries"
    );

    // A status update is accepted and ignored.
    let status = json!({ "object": "whatsapp_business_account", "entry": [{ "id": "1", "changes": [{ "field": "messages", "value": {
        "messaging_product": "whatsapp",
        "statuses": [{ "id": "wamid.x", "status": "delivered", "timestamp": "1760000000", "recipient_id": digits(&phone) }]
    }}]}]});
    assert_eq!(whatsapp_signed(&m.app, &m.app.b, &status).await.status, 200);
    // Signed but not understood: still 200, so WhatsApp does not retry it forever.
    let junk = b"[not json";
    let reply = raw_post(
        &m.app,
        &m.app.a,
        "/api/whatsapp/webhook",
        junk,
        &[("X-Hub-Signature-256", signature(junk))],
    )
    .await;
    assert_eq!(reply.status, 200);

    // Telegram: a redelivered update (same update_id) acts once.
    let user = telegram_user();
    let update = telegram_message(user, json!({ "text": "hello" }));
    for base in [&m.app.a, &m.app.b] {
        assert_eq!(telegram_update(&m.app, base, &update).await.status, 200);
    }
    m.standin.wait_for("telegram", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(m.standin.requests("telegram").len(), 1);
    assert_eq!(m.standin.requests("whatsapp").len(), 1);
}

async fn whatsapp_otp_command_sends_a_code_that_verifies(backend: Backend) {
    let m = messaging_app(backend, &[]).await;
    let phone = unique_phone();
    let reply = whatsapp_signed(
        &m.app,
        &m.app.a,
        &whatsapp_message(&digits(&phone), "wamid.otp-1", " code "),
    )
    .await;
    assert_eq!(reply.status, 200);
    let sent = m.standin.wait_for("whatsapp", 1).await;
    assert_eq!(sent[0].path, format!("/v21.0/{WHATSAPP_PHONE_ID}/messages"));
    assert_eq!(sent[0].body["to"], json!(digits(&phone)));
    let text = sent[0].body["text"]["body"].as_str().expect("text");
    let code: String = text.chars().take_while(char::is_ascii_digit).collect();
    assert_eq!(code.len(), 6, "{text}");
    // Same limits as a login: the resend cooldown refuses a second request, and the user is told.
    whatsapp_signed(
        &m.app,
        &m.app.b,
        &whatsapp_message(&digits(&phone), "wamid.otp-2", "OTP"),
    )
    .await;
    let sent = m.standin.wait_for("whatsapp", 2).await;
    assert!(
        sent[1].body["text"]["body"]
            .as_str()
            .expect("text")
            .contains("Too many codes")
    );
    let verified = m.app.verify(&m.app.b, &phone, &code).await;
    assert_eq!(verified.status, 200, "{}", verified.body);
}

/// A code asked for by a message from the user's own WhatsApp account skips the captcha gate
/// (the message is the human step): sent even with an enforced gate whose verifier is down.
async fn message_commands_are_not_captcha_gated(backend: Backend) {
    let m = messaging_app(
        backend,
        &[
            ("CAPTCHA_PROVIDER", "turnstile"),
            ("CAPTCHA_SECRET", "captcha-secret"),
            ("CAPTCHA_MODE", "enforce"),
            ("CAPTCHA_VERIFY_URL", "http://127.0.0.1:9/siteverify"),
        ],
    )
    .await;
    let phone = unique_phone();
    // The app's own login is gated: refused without a token.
    m.app
        .login(&m.app.a, &unique_phone())
        .await
        .assert_problem(403, "captcha_failed");
    let reply = whatsapp_signed(
        &m.app,
        &m.app.a,
        &whatsapp_message(&digits(&phone), "wamid.otp-captcha", "code"),
    )
    .await;
    assert_eq!(reply.status, 200);
    let sent = m.standin.wait_for("whatsapp", 1).await;
    assert_eq!(sent[0].body["to"], json!(digits(&phone)));
    let text = sent[0].body["text"]["body"].as_str().expect("text");
    let code: String = text.chars().take_while(char::is_ascii_digit).collect();
    assert_eq!(code.len(), 6, "{text}");
    assert!(m.standin.requests("captcha").is_empty());
}

async fn old_whatsapp_messages_are_ignored(backend: Backend) {
    let m = messaging_app(backend, &[("WHATSAPP_MAX_MESSAGE_AGE_SECONDS", "600")]).await;
    let phone = unique_phone();
    // A captured body replayed 11 minutes later: authentic, answered 200, but acts on nothing.
    let old = whatsapp_message_at(&digits(&phone), "wamid.old-1", "OTP", unix_now() - 660);
    assert_eq!(whatsapp_signed(&m.app, &m.app.a, &old).await.status, 200);
    let intent = create_intent(&m.app, &m.app.a, "whatsapp").await;
    let stale_bind = whatsapp_message_at(
        &digits(&phone),
        "wamid.old-2",
        &prefilled_text(field(&intent, "deep_link")),
        unix_now() - 3600,
    );
    assert_eq!(
        whatsapp_signed(&m.app, &m.app.a, &stale_bind).await.status,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        m.standin.requests("whatsapp").is_empty(),
        "no reply, no code"
    );
    assert_eq!(
        poll(&m.app, &m.app.b, &intent).await.status,
        202,
        "not bound"
    );
    let text = m
        .app
        .client
        .get(format!("{}/metrics", m.app.a))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("otpgate_webhook_events_total{outcome=\"stale\",source=\"whatsapp\"} 2"),
        "{text}"
    );
    // A fresh message still works.
    let fresh = whatsapp_message(&digits(&phone), "wamid.new-1", "OTP");
    assert_eq!(whatsapp_signed(&m.app, &m.app.a, &fresh).await.status, 200);
    m.standin.wait_for("whatsapp", 1).await;
}

async fn telegram_start_binds_the_intent_and_asks_for_the_contact(backend: Backend) {
    let m = messaging_app(backend, &[]).await;
    let intent = create_intent(&m.app, &m.app.a, "telegram").await;
    let link = field(&intent, "deep_link");
    let (prefix, code) = link.rsplit_once("?start=").expect("start parameter");
    assert_eq!(prefix, format!("https://t.me/{BOT}"));
    assert!(
        code.len() <= 64
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    );
    assert_eq!(poll(&m.app, &m.app.b, &intent).await.status, 202);

    let user = telegram_user();
    let reply = tap_start(&m.app, &m.app.b, user, code).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let tokens = poll(&m.app, &m.app.a, &intent).await;
    assert_eq!(tokens.status, 200, "{}", tokens.body);
    assert_eq!(tokens.body["user"]["phone"], Value::Null);
    let me = m
        .app
        .me(&m.app.b, field(&tokens.body, "access_token"))
        .await;
    assert_eq!(me.body["identities"][0]["provider"], json!("telegram"));
    assert_eq!(me.body["identities"][0]["subject"], json!(user.to_string()));
    poll(&m.app, &m.app.b, &intent)
        .await
        .assert_problem(410, "intent_consumed");

    // The bot confirmed and, with no phone linked, offered the share-contact button.
    let sent = m.standin.wait_for("telegram", 1).await;
    assert_eq!(sent[0].path, format!("/bot{TELEGRAM_TOKEN}/sendMessage"));
    assert_eq!(sent[0].body["chat_id"], json!(user));
    assert!(
        sent[0].body["text"]
            .as_str()
            .expect("text")
            .contains("Acme")
    );
    assert_eq!(
        sent[0].body["reply_markup"]["keyboard"][0][0]["request_contact"],
        json!(true)
    );

    // A second Telegram login of the same account is the same user.
    let again = create_intent(&m.app, &m.app.b, "telegram").await;
    tap_start(&m.app, &m.app.a, user, &start_code(&again)).await;
    let second = poll(&m.app, &m.app.b, &again).await;
    assert_eq!(second.body["user"]["id"], tokens.body["user"]["id"]);
    // A WhatsApp code sent to the Telegram bot binds nothing.
    let wa = create_intent(&m.app, &m.app.a, "whatsapp").await;
    let wa_code = prefilled_text(field(&wa, "deep_link"))
        .rsplit_once(' ')
        .expect("code")
        .1
        .to_string();
    tap_start(&m.app, &m.app.a, user, &wa_code).await;
    assert_eq!(poll(&m.app, &m.app.a, &wa).await.status, 202);
}

async fn own_contact_links_the_phone_and_foreign_contacts_nothing(backend: Backend) {
    let m = messaging_app(backend, &[]).await;
    let user = telegram_user();
    // Logged in by Telegram first: a user without a phone.
    let intent = create_intent(&m.app, &m.app.a, "telegram").await;
    tap_start(&m.app, &m.app.a, user, &start_code(&intent)).await;
    let session = poll(&m.app, &m.app.b, &intent).await;
    assert_eq!(session.status, 200);

    // Someone else's contact links nothing.
    let stranger = unique_phone();
    let foreign = telegram_message(
        user,
        json!({ "contact": {
            "phone_number": digits(&stranger), "first_name": "Eve", "user_id": user + 1
        }}),
    );
    assert_eq!(
        telegram_update(&m.app, &m.app.b, &foreign).await.status,
        200
    );
    // A number without a linked chat is answered like one with it (the answer must not tell
    // who uses the bot): 200, channel telegram, quota spent, nothing sent.
    let no_chat = telegram_login(&m.app, &m.app.a, &stranger).await;
    assert_eq!(no_chat.status, 200, "{}", no_chat.body);
    assert_eq!(no_chat.body["channel"], json!("telegram"));
    let unsent = field(&no_chat.body, "otp_code").to_string();
    // A contact card without a Telegram user id is not proof either.
    let card = telegram_message(
        user,
        json!({ "contact": { "phone_number": digits(&stranger), "first_name": "Eve" } }),
    );
    let refused = telegram_update(&m.app, &m.app.b, &card).await;
    assert_eq!(refused.status, 200, "{}", refused.body);
    // Nothing was linked: the account still has no phone, and a bot reply said why.
    let me = m
        .app
        .me(&m.app.a, field(&session.body, "access_token"))
        .await;
    assert_eq!(me.body["phone"], Value::Null, "{}", me.body);
    let refusals = || {
        m.standin
            .requests("telegram")
            .iter()
            .filter(|r| {
                r.body["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("not your own contact"))
            })
            .count()
    };
    // The replies go out in the background.
    for _ in 0..250 {
        if refusals() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        refusals(),
        2,
        "the foreign contact and the card were both refused"
    );
    let again = telegram_login(&m.app, &m.app.a, &stranger).await;
    again.assert_problem(429, "rate_limited");
    assert!(
        !m.standin
            .requests("telegram")
            .iter()
            .any(|r| r.body["text"].as_str().is_some_and(|t| t.contains(&unsent))),
        "no code goes to an unlinked number"
    );

    // The user's own contact links the phone to the same user.
    let phone = unique_phone();
    let own = telegram_message(
        user,
        json!({ "contact": {
            "phone_number": digits(&phone), "first_name": "Kerry", "user_id": user
        }}),
    );
    assert_eq!(telegram_update(&m.app, &m.app.a, &own).await.status, 200);
    let me = m
        .app
        .me(&m.app.a, field(&session.body, "access_token"))
        .await;
    assert_eq!(me.body["phone"], json!(phone), "{}", me.body);

    // Codes for the phone can now go to the chat.
    let login = telegram_login(&m.app, &m.app.b, &phone).await;
    assert_eq!(login.status, 200, "{}", login.body);
    assert_eq!(login.body["channel"], json!("telegram"));
    let code = login.body["otp_code"].as_str().expect("code").to_string();
    let sent = m.standin.requests("telegram");
    let delivered = sent.iter().find(|r| {
        r.body["text"]
            .as_str()
            .is_some_and(|t| t.starts_with(&code))
    });
    let delivered = delivered.expect("code sent to the chat");
    assert_eq!(delivered.body["chat_id"], json!(user));
    let verified = m.app.verify(&m.app.a, &phone, &code).await;
    assert_eq!(verified.body["user"]["id"], session.body["user"]["id"]);

    // Replies: the foreign contact was refused with a reason, the own one confirmed.
    let texts: Vec<String> = m
        .standin
        .requests("telegram")
        .iter()
        .filter_map(|r| r.body["text"].as_str().map(str::to_string))
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("not your own contact")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("is now linked")),
        "{texts:?}"
    );

    // `/otp` from the linked account sends a code to the chat (after the cooldown: a new phone).
    let before = m.standin.requests("telegram").len();
    let fresh_user = telegram_user();
    let fresh_phone = unique_phone();
    telegram_update(&m.app, &m.app.a, &telegram_message(fresh_user, json!({ "contact": {
        "phone_number": format!("+{}", digits(&fresh_phone)), "user_id": fresh_user, "first_name": "Ann"
    }}))).await;
    telegram_update(
        &m.app,
        &m.app.b,
        &telegram_message(fresh_user, json!({ "text": "/otp" })),
    )
    .await;
    let sent = m.standin.wait_for("telegram", before + 2).await;
    let code_message = sent[before..].iter().find(|r| {
        r.body["text"]
            .as_str()
            .is_some_and(|t| t.contains("verification code"))
    });
    let text = code_message.expect("a code message").body["text"]
        .as_str()
        .expect("text")
        .to_string();
    let code: String = text.chars().take_while(char::is_ascii_digit).collect();
    assert_eq!(
        m.app.verify(&m.app.a, &fresh_phone, &code).await.status,
        200
    );
}

/// Widget fields signed with the bot token, as Telegram does.
fn widget(id: i64, auth_date: u64) -> Value {
    let fields = [
        ("auth_date", auth_date.to_string()),
        ("first_name", "Kerry".to_string()),
        ("id", id.to_string()),
        ("username", "kerry".to_string()),
    ];
    let check = fields
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&Sha256::digest(TELEGRAM_TOKEN.as_bytes())).expect("key");
    mac.update(check.as_bytes());
    json!({
        "id": id, "first_name": "Kerry", "username": "kerry", "auth_date": auth_date,
        "hash": hex::encode(mac.finalize().into_bytes())
    })
}

async fn telegram_widget_checks_hash_age_and_replay(backend: Backend) {
    let m = messaging_app(backend, &[("ADMIN_API_KEYS", ADMIN_KEY)]).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let user = telegram_user();
    let path = "/api/auth/telegram/widget";
    let login = widget(user, now - 5);
    let reply = m.app.post(&m.app.a, path, login.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let me = m.app.me(&m.app.b, field(&reply.body, "access_token")).await;
    assert_eq!(me.body["identities"][0]["subject"], json!(user.to_string()));
    // The new user is in the audit log, created by the widget, then its login; a second
    // widget login is a login only.
    let again = m.app.post(&m.app.b, path, widget(user, now - 4)).await;
    assert_eq!(again.status, 200, "{}", again.body);
    let user_id = me.body["id"].as_str().expect("id").to_string();
    let events = audit_until(&m.app, &format!("?user_id={user_id}"), |e| e.len() >= 3).await;
    // Sorted: events of one millisecond have no order among them.
    let mut kinds: Vec<(String, Value)> = events
        .iter()
        .map(|e| (e["kind"].to_string(), e["details"]["method"].clone()))
        .collect();
    kinds.sort_by(|a, b| a.0.cmp(&b.0));
    let widget_method = json!("telegram_widget");
    let expected = |kind: &str| (json!(kind).to_string(), widget_method.clone());
    assert_eq!(
        kinds,
        vec![
            expected("login.succeeded"),
            expected("login.succeeded"),
            expected("user.created"),
        ]
    );
    // Each signed login works once.
    m.app
        .post(&m.app.b, path, login)
        .await
        .assert_problem(401, "invalid_telegram_auth");
    // Too old.
    m.app
        .post(&m.app.a, path, widget(user, now - 301))
        .await
        .assert_problem(401, "telegram_auth_expired");
    // Tampered: another id with the same hash.
    let mut forged = widget(user, now - 1);
    forged["id"] = json!(user + 1);
    m.app
        .post(&m.app.a, path, forged)
        .await
        .assert_problem(401, "invalid_telegram_auth");
    // A field left out of the signature.
    let mut extra = widget(user, now - 2);
    extra["last_name"] = json!("Mallory");
    m.app
        .post(&m.app.a, path, extra)
        .await
        .assert_problem(401, "invalid_telegram_auth");
}

async fn telegram_widget_refuses_the_future_and_honours_a_custom_max_age(backend: Backend) {
    let m = messaging_app(backend, &[("TELEGRAM_AUTH_MAX_AGE_SECONDS", "30")]).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let path = "/api/auth/telegram/widget";
    // A clock up to a minute ahead is tolerated; a date further in the future is refused.
    let skewed = m
        .app
        .post(&m.app.a, path, widget(telegram_user(), now + 30))
        .await;
    assert_eq!(skewed.status, 200, "{}", skewed.body);
    m.app
        .post(&m.app.a, path, widget(telegram_user(), now + 120))
        .await
        .assert_problem(401, "telegram_auth_expired");
    // TELEGRAM_AUTH_MAX_AGE_SECONDS=30 replaces the default 300: 45 s old is too old now.
    let fresh = m
        .app
        .post(&m.app.b, path, widget(telegram_user(), now - 10))
        .await;
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    m.app
        .post(&m.app.b, path, widget(telegram_user(), now - 45))
        .await
        .assert_problem(401, "telegram_auth_expired");
}

async fn intents_expire_and_need_configuration(backend: Backend) {
    let m = messaging_app(backend, &[("INTENT_EXPIRY_SECONDS", "1")]).await;
    let intent = create_intent(&m.app, &m.app.a, "whatsapp").await;
    assert_eq!(intent["expires_in"], json!(1));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    poll(&m.app, &m.app.b, &intent)
        .await
        .assert_problem(410, "intent_expired");
    let text = prefilled_text(field(&intent, "deep_link"));
    let phone = unique_phone();
    whatsapp_signed(
        &m.app,
        &m.app.a,
        &whatsapp_message(&digits(&phone), "wamid.late", &text),
    )
    .await;
    let sent = m.standin.wait_for("whatsapp", 1).await;
    assert!(
        sent[0].body["text"]["body"]
            .as_str()
            .expect("text")
            .contains("expired")
    );
    poll(&m.app, &m.app.b, &intent)
        .await
        .assert_problem(410, "intent_expired");

    // Without the link settings there is no intent (and no webhook works).
    let bare = spawn_app_with(backend, &[]).await;
    for channel in ["whatsapp", "telegram"] {
        bare.post(&bare.a, "/api/auth/intents", json!({ "channel": channel }))
            .await
            .assert_problem(422, "channel_unavailable");
    }
    let refused = bare
        .post(&bare.a, "/api/auth/intents", json!({ "channel": "sms" }))
        .await;
    refused.assert_problem(422, "invalid_field");
    assert_eq!(refused.body["field"], json!("channel"));
    let body =
        serde_json::to_vec(&whatsapp_message("919000000000", "wamid.x", "OTP")).expect("json");
    raw_post(
        &bare,
        &bare.a,
        "/api/whatsapp/webhook",
        &body,
        &[("X-Hub-Signature-256", signature(&body))],
    )
    .await
    .assert_problem(403, "invalid_signature");
}

/// A database outage: the webhook answers 503 and the platform's redelivery is processed; a
/// poll answers 503 and the next poll still gets the tokens. Nothing is lost.
async fn database_outage_loses_no_webhook_event_and_no_login(backend: Backend) {
    let m = messaging_app(backend, &[("ADMIN_API_KEYS", ADMIN_KEY)]).await;
    let user = telegram_user();
    let phone = unique_phone();
    let own = telegram_message(
        user,
        json!({ "contact": { "phone_number": digits(&phone), "first_name": "Kerry", "user_id": user } }),
    );
    let intent = create_intent(&m.app, &m.app.a, "whatsapp").await;
    let text = prefilled_text(field(&intent, "deep_link"));
    let sender = unique_phone();
    whatsapp_signed(
        &m.app,
        &m.app.b,
        &whatsapp_message(&digits(&sender), "wamid.outage", &text),
    )
    .await;

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let signed = widget(telegram_user(), now - 3);
    let path = "/api/auth/telegram/widget";

    m.app.set_database_connections(false).await;
    telegram_update(&m.app, &m.app.a, &own)
        .await
        .assert_problem(503, "database_unavailable");
    poll(&m.app, &m.app.a, &intent)
        .await
        .assert_problem(503, "database_unavailable");
    m.app
        .post(&m.app.a, path, signed.clone())
        .await
        .assert_problem(503, "database_unavailable");
    m.app.set_database_connections(true).await;

    // The signed widget login was not spent by the outage: the client's retry works, once.
    let widget_login = m.app.post(&m.app.b, path, signed.clone()).await;
    assert_eq!(widget_login.status, 200, "{}", widget_login.body);
    m.app
        .post(&m.app.a, path, signed)
        .await
        .assert_problem(401, "invalid_telegram_auth");

    assert_eq!(telegram_update(&m.app, &m.app.b, &own).await.status, 200);
    let login = telegram_login(&m.app, &m.app.a, &phone).await;
    assert_eq!(login.status, 200, "{}", login.body);
    // The contact created the number's user: a user.created by the contact, once.
    let by_contact = |e: &Value| e["details"]["method"] == json!("telegram_contact");
    let created: Vec<Value> = audit_until(&m.app, "?kind=user.created&limit=100", |events| {
        events.iter().any(by_contact)
    })
    .await
    .into_iter()
    .filter(by_contact)
    .collect();
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(created[0]["phone_hash"].is_string());
    let tokens = poll(&m.app, &m.app.b, &intent).await;
    assert_eq!(tokens.status, 200, "{}", tokens.body);
    assert_eq!(tokens.body["user"]["phone"], json!(sender));
}

async fn failed_replies_still_answer_200_and_are_counted(backend: Backend) {
    let m = messaging_app(backend, &[]).await;
    m.standin.set_mode("whatsapp", Mode::Status(500));
    m.standin.set_mode("telegram", Mode::Status(400));
    // The intent still binds although the confirmation cannot be sent.
    let intent = create_intent(&m.app, &m.app.a, "whatsapp").await;
    let text = prefilled_text(field(&intent, "deep_link"));
    let phone = unique_phone();
    let reply = whatsapp_signed(
        &m.app,
        &m.app.b,
        &whatsapp_message(&digits(&phone), "wamid.no-reply", &text),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let user = telegram_user();
    let update = telegram_message(user, json!({ "text": "hello" }));
    assert_eq!(telegram_update(&m.app, &m.app.a, &update).await.status, 200);
    assert_eq!(poll(&m.app, &m.app.a, &intent).await.status, 200);
    // Both replies were tried (WhatsApp twice: one retry on a 5xx) and counted as failed.
    m.standin.wait_for("whatsapp", 2).await;
    m.standin.wait_for("telegram", 1).await;
    let mut counted = false;
    for _ in 0..50 {
        let a = metrics(&m.app, &m.app.a).await;
        let b = metrics(&m.app, &m.app.b).await;
        let wa = "otpgate_webhook_events_total{outcome=\"reply_failed\",source=\"whatsapp\"}";
        let tg = "otpgate_webhook_events_total{outcome=\"reply_failed\",source=\"telegram\"}";
        if (a.contains(wa) || b.contains(wa)) && a.contains(tg) {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted, "reply failures are counted");
}

/// The `statuses` of signed WhatsApp notifications are counted per status; an unsigned
/// notification counts nothing.
async fn whatsapp_statuses_are_counted(backend: Backend) {
    let m = messaging_app(backend, &[]).await;
    let app = &m.app;
    let statuses = |list: Value| {
        json!({
            "object": "whatsapp_business_account",
            "entry": [{ "id": "102290129340398", "changes": [{ "field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": { "display_phone_number": BUSINESS_NUMBER, "phone_number_id": WHATSAPP_PHONE_ID },
                "statuses": list
            }}]}]
        })
    };
    let body = statuses(json!([
        { "id": "wamid.A", "status": "sent", "timestamp": "1700000000", "recipient_id": "919812345678" },
        { "id": "wamid.A", "status": "delivered", "timestamp": "1700000001", "recipient_id": "919812345678" },
        { "id": "wamid.B", "status": "failed", "timestamp": "1700000002", "recipient_id": "919812345679",
          "errors": [{ "code": 131026, "title": "Message undeliverable" }] }
    ]));
    let reply = whatsapp_signed(app, &app.a, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let bytes = serde_json::to_vec(&body).expect("json");
    let forged = raw_post(app, &app.a, "/api/whatsapp/webhook", &bytes, &[]).await;
    assert_eq!(forged.status, 403);
    let text = crate::observability::metrics_text(app, &app.a).await;
    for status in ["sent", "delivered", "failed"] {
        let series =
            format!("otpgate_delivery_status_total{{channel=\"whatsapp\",status=\"{status}\"}}");
        assert_eq!(
            crate::observability::sample(&text, &series),
            1.0,
            "{series}\n{text}"
        );
    }
}
