//! A local stand-in for Twilio, the WhatsApp Cloud API and the Telegram Bot API, and for a
//! captcha provider's siteverify endpoint. It checks each request as the provider documents it
//! (method, path, auth header, content type, fields), records it, and answers as the provider
//! does; a request that breaks the contract gets the provider's 400 (siteverify: `success:
//! false`), so a malformed send fails the test. Failures can be scripted per provider; the
//! siteverify answer is chosen by the token ([`siteverify`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::http::StatusCode;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::headers::authorization::{Basic, Bearer};
use poem::web::headers::{Authorization, Header};
use poem::{Request, Response, Server};
use serde_json::{Value, json};
use uuid::Uuid;

/// Credentials the stand-in accepts (the tests configure otpgate with the same).
pub const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const TWILIO_TOKEN: &str = "twilio-auth-token";
pub const TWILIO_FROM: &str = "+15005550006";
pub const TWILIO_VERIFY_SERVICE: &str = "VA0123456789abcdef0123456789abcdef";
pub const WHATSAPP_TOKEN: &str = "whatsapp-access-token";
pub const WHATSAPP_PHONE_ID: &str = "106540352242922";
pub const TELEGRAM_TOKEN: &str = "123456:ABC-telegram-bot-token";
pub const CAPTCHA_SECRET: &str = "0x4AAAAAAAcaptcha-secret-key";
/// The Android app the Play Integrity stand-in knows, and its service account (whose RSA key,
/// made for these tests only, is in `fixtures/`).
pub const PLAY_PACKAGE: &str = "com.acme.app";
pub const PLAY_INTEGRITY_ACCOUNT: &str = "otpgate@acme-app.iam.gserviceaccount.com";
const PLAY_INTEGRITY_KEY: &str = include_str!("fixtures/play-integrity-test-key.pem");
const PLAY_INTEGRITY_PUBLIC_KEY: &str = include_str!("fixtures/play-integrity-test-key.pub.pem");
/// The access token the stand-in's token endpoint hands out.
const GOOGLE_ACCESS_TOKEN: &str = "ya29.standin-access-token";

/// The signing secret of the team's own SMS gateway (`SMS_PROVIDER=http`), Standard Webhooks
/// form; its key is the 32 bytes `otpgate-test-sms-gateway-key-32b`.
pub const SMS_GATEWAY_SECRET: &str = "whsec_b3RwZ2F0ZS10ZXN0LXNtcy1nYXRld2F5LWtleS0zMmI=";

/// How a provider answers.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Check and accept.
    Ok,
    /// Answer this status to every request.
    Status(u16),
    /// Answer this status to the next `n` requests, then accept.
    FailTimes(u16, u32),
    /// Wait this long, then accept (longer than otpgate's timeout = a timeout).
    Hang(Duration),
    /// Record the request, then hold the answer until the provider's mode is set to another
    /// one ([`StandIn::set_mode`]), then accept: a test acts between the two.
    Held,
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `twilio`, `whatsapp`, `telegram`, `gateway` (the team's own SMS gateway) or `captcha`.
    pub provider: &'static str,
    /// The request path.
    pub path: String,
    /// Form fields (Twilio) or the JSON body (the others).
    pub body: Value,
    /// The `webhook-id` header (the SMS gateway's deduplication key).
    pub webhook_id: Option<String>,
    /// The message id the answer gave (Twilio's SID, WhatsApp's `wamid`), unique per message.
    pub message_id: Option<String>,
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    modes: HashMap<&'static str, Mode>,
    /// Captcha tokens already checked (`once-…` tokens work once).
    spent_tokens: std::collections::HashSet<String>,
    /// Twilio Verify: the pending code of each number and its wrong checks.
    verifications: HashMap<String, (String, u32)>,
}

impl State {
    /// How the next request answers: the mode of the first of `keys` that has one (`Ok` when
    /// none); a `FailTimes` counts down.
    fn next_mode(&mut self, keys: &[&'static str]) -> Mode {
        let Some((key, mode)) = keys
            .iter()
            .find_map(|k| self.modes.get(k).map(|m| (*k, *m)))
        else {
            return Mode::Ok;
        };
        if let Mode::FailTimes(status, n) = mode {
            let next = if n <= 1 {
                Mode::Ok
            } else {
                Mode::FailTimes(status, n - 1)
            };
            self.modes.insert(key, next);
        }
        mode
    }
}

/// A running stand-in on a loopback port.
#[derive(Clone)]
pub struct StandIn {
    /// Its base URL.
    pub base: String,
    state: Arc<Mutex<State>>,
}

impl StandIn {
    /// Starts a stand-in on a free port.
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .expect("bind");
        let port = acceptor.local_addr()[0]
            .as_socket_addr()
            .expect("socket")
            .port();
        let handler_state = state.clone();
        let app = poem::endpoint::make(move |req: Request| {
            let state = handler_state.clone();
            async move { handle(state, req).await }
        });
        tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
        StandIn {
            base: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    /// otpgate settings for SMS by Twilio Verify through this stand-in.
    pub fn verify_settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SMS_PROVIDER", "twilio_verify".into()),
            ("TWILIO_VERIFY_SERVICE_SID", TWILIO_VERIFY_SERVICE.into()),
            ("TWILIO_VERIFY_API_BASE", self.base.clone()),
        ]
    }

    /// The code Twilio Verify sent to `to` and still waits for.
    pub fn verify_code(&self, to: &str) -> Option<String> {
        let state = self.state.lock().expect("lock");
        state.verifications.get(to).map(|(code, _)| code.clone())
    }

    /// Sets how `provider` answers from now on.
    pub fn set_mode(&self, provider: &'static str, mode: Mode) {
        self.state
            .lock()
            .expect("lock")
            .modes
            .insert(provider, mode);
    }

    /// The requests `provider` received so far.
    pub fn requests(&self, provider: &str) -> Vec<Recorded> {
        let state = self.state.lock().expect("lock");
        state
            .requests
            .iter()
            .filter(|r| r.provider == provider)
            .cloned()
            .collect()
    }

    /// Waits (up to 5 s) until `provider` has received `n` requests; returns them.
    pub async fn wait_for(&self, provider: &str, n: usize) -> Vec<Recorded> {
        for _ in 0..250 {
            let seen = self.requests(provider);
            if seen.len() >= n {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{provider} received {} request(s), expected {n}",
            self.requests(provider).len()
        );
    }

    /// otpgate settings pointing every provider at this stand-in.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TWILIO_API_BASE", self.base.clone()),
            ("TWILIO_ACCOUNT_SID", TWILIO_SID.into()),
            ("TWILIO_AUTH_TOKEN", TWILIO_TOKEN.into()),
            ("WHATSAPP_API_BASE", format!("{}/v21.0", self.base)),
            ("TELEGRAM_API_BASE", self.base.clone()),
        ]
    }

    /// otpgate settings sending SMS to this stand-in as the team's own gateway.
    pub fn gateway_settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SMS_PROVIDER", "http".into()),
            ("SMS_HTTP_URL", format!("{}/sms-gateway", self.base)),
            ("SMS_HTTP_SECRET", SMS_GATEWAY_SECRET.into()),
        ]
    }

    /// otpgate settings for a Play Integrity gate of `com.acme.app` in `mode`, its service account
    /// signing in and tokens decoded here.
    pub fn integrity_settings(&self, mode: &'static str) -> Vec<(&'static str, String)> {
        let account = json!({
            "type": "service_account",
            "project_id": "acme-app",
            "private_key_id": "0123456789abcdef",
            "private_key": PLAY_INTEGRITY_KEY,
            "client_email": PLAY_INTEGRITY_ACCOUNT,
            "token_uri": format!("{}/google/token", self.base),
        });
        vec![
            ("PLAY_INTEGRITY_PACKAGE", PLAY_PACKAGE.into()),
            ("PLAY_INTEGRITY_MODE", mode.into()),
            ("PLAY_INTEGRITY_CREDENTIALS", account.to_string()),
            ("PLAY_INTEGRITY_API_URL", format!("{}/google", self.base)),
            ("PLAY_INTEGRITY_TIMEOUT_MS", "500".into()),
        ]
    }

    /// otpgate settings for a captcha gate of `provider` checked here, in `mode`.
    pub fn captcha_settings(
        &self,
        provider: &'static str,
        mode: &'static str,
    ) -> Vec<(&'static str, String)> {
        vec![
            ("CAPTCHA_PROVIDER", provider.into()),
            ("CAPTCHA_SECRET", CAPTCHA_SECRET.into()),
            ("CAPTCHA_MODE", mode.into()),
            ("CAPTCHA_VERIFY_URL", format!("{}/siteverify", self.base)),
            ("CAPTCHA_TIMEOUT_MS", "500".into()),
        ]
    }
}

fn json_response(status: u16, body: Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("status"))
        .content_type("application/json")
        .body(body.to_string())
}

/// Decodes `application/x-www-form-urlencoded` into a JSON object (last value wins).
fn parse_form(body: &str) -> Value {
    let decode = |s: &str| {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                if let Ok(b) = u8::from_str_radix(hex, 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8(out).expect("utf-8 form value")
    };
    let mut map = serde_json::Map::new();
    for pair in body.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.insert(decode(k), Value::String(decode(v)));
    }
    Value::Object(map)
}

/// Waits while any of `keys` (those the request's mode was looked up by) is [`Mode::Held`].
async fn held(state: &Arc<Mutex<State>>, keys: &[&'static str]) {
    while keys
        .iter()
        .any(|key| matches!(state.lock().expect("lock").modes.get(key), Some(Mode::Held)))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn handle(state: Arc<Mutex<State>>, mut req: Request) -> Response {
    let path = req.uri().path().to_string();
    if path == "/siteverify" {
        return siteverify(state, req).await;
    }
    if path == "/google/token" || path.starts_with("/google/v1/") {
        return google(state, req).await;
    }
    if path.starts_with("/v2/Services/") {
        return twilio_verify(state, req).await;
    }
    let provider: &'static str = if path.starts_with("/2010-04-01/Accounts/") {
        "twilio"
    } else if path.starts_with("/v21.0/") {
        "whatsapp"
    } else if path.starts_with("/bot") {
        "telegram"
    } else if path == "/sms-gateway" {
        "gateway"
    } else {
        return json_response(404, json!({ "error": "no such endpoint" }));
    };
    let content_type = req.content_type().unwrap_or("").to_string();
    let authorization = req.headers().get("authorization").cloned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let signed = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let raw = req.take_body().into_string().await.unwrap_or_default();
    let body = if provider == "twilio" {
        parse_form(&raw)
    } else {
        serde_json::from_str(&raw).unwrap_or(Value::Null)
    };
    let (mode, message_id) = {
        let mut state = state.lock().expect("lock");
        let index = state.requests.len();
        let message_id = match provider {
            "twilio" => format!("SM{index:032x}"),
            _ => format!("wamid.HBgL{index:030}"),
        };
        state.requests.push(Recorded {
            provider,
            path: path.clone(),
            body: body.clone(),
            webhook_id: signed.0.clone(),
            message_id: matches!(provider, "twilio" | "whatsapp").then(|| message_id.clone()),
        });
        (state.next_mode(&[provider]), message_id)
    };
    match mode {
        Mode::Status(status) | Mode::FailTimes(status, _) => {
            return json_response(status, json!({ "error": "scripted failure" }));
        }
        Mode::Hang(pause) => tokio::time::sleep(pause).await,
        Mode::Held => held(&state, &[provider]).await,
        Mode::Ok => {}
    }
    if req.method() != poem::http::Method::POST {
        return json_response(405, json!({ "error": "POST only" }));
    }
    let problems = match provider {
        "twilio" => check_twilio(&path, &content_type, authorization.as_ref(), &body),
        "whatsapp" => check_whatsapp(&path, &content_type, authorization.as_ref(), &body),
        "gateway" => check_gateway(&content_type, &signed, &raw, &body),
        _ => check_telegram(&path, &content_type, &body),
    };
    if let Some(problem) = problems {
        return match provider {
            "twilio" => json_response(
                400,
                json!({ "code": 21211, "message": problem, "status": 400 }),
            ),
            "whatsapp" => json_response(
                400,
                json!({ "error": { "message": problem, "type": "OAuthException", "code": 100 } }),
            ),
            "gateway" => json_response(400, json!({ "error": problem })),
            _ => json_response(
                400,
                json!({ "ok": false, "error_code": 400, "description": format!("Bad Request: {problem}") }),
            ),
        };
    }
    match provider {
        "gateway" => json_response(202, json!({ "accepted": true })),
        "twilio" => json_response(
            201,
            json!({ "sid": message_id, "status": "queued", "to": body["To"] }),
        ),
        "whatsapp" => json_response(
            200,
            json!({
                "messaging_product": "whatsapp",
                "contacts": [{ "input": body["to"], "wa_id": body["to"] }],
                "messages": [{ "id": message_id }]
            }),
        ),
        _ => json_response(
            200,
            json!({
                "ok": true,
                "result": { "message_id": 7, "chat": { "id": body["chat_id"], "type": "private" }, "text": body["text"] }
            }),
        ),
    }
}

fn check_twilio(
    path: &str,
    content_type: &str,
    auth: Option<&poem::http::HeaderValue>,
    form: &Value,
) -> Option<String> {
    if path != format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages.json") {
        return Some(format!("unexpected path {path}"));
    }
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Some(format!("content type {content_type}"));
    }
    let basic = auth.and_then(|v| Authorization::<Basic>::decode(&mut std::iter::once(v)).ok());
    match basic {
        Some(b) if b.username() == TWILIO_SID && b.password() == TWILIO_TOKEN => {}
        _ => return Some("authentication failed".into()),
    }
    let to = form["To"].as_str().unwrap_or("");
    if !to.starts_with('+') || to.len() < 8 {
        return Some(format!("The 'To' number {to} is not a valid phone number."));
    }
    if form["Body"].as_str().is_none_or(str::is_empty) {
        return Some("A 'Body' is required".into());
    }
    match (form.get("From"), form.get("MessagingServiceSid")) {
        (Some(_), None) | (None, Some(_)) => None,
        _ => Some("exactly one of 'From' and 'MessagingServiceSid' is required".into()),
    }
}

/// Twilio Verify as its API reference documents it: `POST /v2/Services/{VA…}/Verifications`
/// (form `To` in E.164, `Channel`, optional `Locale`, `AppHash`; Basic auth with the account
/// SID and token) answers 201 with a `VE…` verification, `status: pending`, and keeps a
/// six-digit code (the same one while it is pending, as Twilio does); `POST …/VerificationCheck`
/// (form `To`, `Code`) answers 200 `approved` (and the verification is done), 200 `pending` for
/// a wrong code, 404 (20404) when nothing is pending, and 429 (60202) after five wrong checks.
/// Anything else in the request is a 400 naming it. Recorded as provider `verify`.
async fn twilio_verify(state: Arc<Mutex<State>>, mut req: Request) -> Response {
    let path = req.uri().path().to_string();
    let content_type = req.content_type().unwrap_or("").to_string();
    let authorization = req.headers().get("authorization").cloned();
    let raw = req.take_body().into_string().await.unwrap_or_default();
    let form = parse_form(&raw);
    let mode = {
        let mut state = state.lock().expect("lock");
        state.requests.push(Recorded {
            provider: "verify",
            path: path.clone(),
            body: form.clone(),
            webhook_id: None,
            message_id: None,
        });
        state.next_mode(&["verify"])
    };
    match mode {
        Mode::Status(status) | Mode::FailTimes(status, _) => {
            return json_response(
                status,
                json!({ "code": 20500, "message": "scripted failure", "status": status }),
            );
        }
        Mode::Hang(pause) => tokio::time::sleep(pause).await,
        Mode::Held => held(&state, &["verify"]).await,
        Mode::Ok => {}
    }
    let refuse = |message: String| {
        json_response(
            400,
            json!({ "code": 60200, "message": message, "status": 400 }),
        )
    };
    let service = format!("/v2/Services/{TWILIO_VERIFY_SERVICE}");
    let basic = authorization
        .as_ref()
        .and_then(|v| Authorization::<Basic>::decode(&mut std::iter::once(v)).ok());
    if !basic.is_some_and(|b| b.username() == TWILIO_SID && b.password() == TWILIO_TOKEN) {
        return json_response(
            401,
            json!({ "code": 20003, "message": "Authenticate", "status": 401 }),
        );
    }
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return refuse(format!("content type {content_type}"));
    }
    let to = form["To"].as_str().unwrap_or("").to_string();
    if !to.starts_with('+') || to.len() < 8 || !to[1..].bytes().all(|b| b.is_ascii_digit()) {
        return refuse(format!("Invalid parameter `To`: {to}"));
    }
    if path == format!("{service}/Verifications") {
        if form["Channel"].as_str() != Some("sms") {
            return refuse("Invalid parameter `Channel`".into());
        }
        // A language tag (`pt-BR`); one Twilio does not write is a 404 (60220), as documented.
        if let Some(locale) = form.get("Locale").and_then(Value::as_str) {
            let (language, region) = locale.split_once('-').unwrap_or((locale, "AA"));
            let tag = language.len() == 2
                && language.bytes().all(|b| b.is_ascii_lowercase())
                && region.len() == 2
                && region.bytes().all(|b| b.is_ascii_uppercase());
            if !tag || locale == "xx" {
                return json_response(
                    404,
                    json!({ "code": 60220, "message": format!("Locale {locale} not supported"), "status": 404 }),
                );
            }
        }
        if let Some(hash) = form.get("AppHash").and_then(Value::as_str)
            && hash.len() != 11
        {
            return refuse("Invalid parameter `AppHash`".into());
        }
        state
            .lock()
            .expect("lock")
            .verifications
            .entry(to.clone())
            .or_insert_with(|| (format!("{:06}", Uuid::new_v4().as_u128() % 1_000_000), 0));
        return json_response(
            201,
            json!({
                "sid": format!("VE{}", Uuid::new_v4().simple()),
                "service_sid": TWILIO_VERIFY_SERVICE,
                "account_sid": TWILIO_SID,
                "to": to,
                "channel": "sms",
                "status": "pending",
                "valid": false
            }),
        );
    }
    if path == format!("{service}/VerificationCheck") {
        let Some(code) = form["Code"].as_str().map(str::to_string) else {
            return refuse("Missing required parameter `Code`".into());
        };
        let mut state = state.lock().expect("lock");
        let Some((expected, wrong)) = state.verifications.get(&to).cloned() else {
            return json_response(
                404,
                json!({ "code": 20404, "message": "The requested resource was not found", "status": 404 }),
            );
        };
        if code == expected {
            state.verifications.remove(&to);
            return json_response(
                200,
                json!({ "to": to, "status": "approved", "valid": true }),
            );
        }
        if wrong + 1 >= 5 {
            state.verifications.remove(&to);
            return json_response(
                429,
                json!({ "code": 60202, "message": "Max check attempts reached", "status": 429 }),
            );
        }
        state
            .verifications
            .insert(to.clone(), (expected, wrong + 1));
        return json_response(
            200,
            json!({ "to": to, "status": "pending", "valid": false }),
        );
    }
    json_response(
        404,
        json!({ "code": 20404, "message": "no such resource", "status": 404 }),
    )
}

/// The team's own SMS gateway as the README tells teams to build it: a recent timestamp, the
/// Standard Webhooks signature over `{id}.{timestamp}.{body}`, and the documented body.
fn check_gateway(
    content_type: &str,
    (id, timestamp, signature): &(Option<String>, Option<String>, Option<String>),
    raw: &str,
    body: &Value,
) -> Option<String> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{Hmac, KeyInit, Mac};
    if !content_type.starts_with("application/json") {
        return Some(format!("content type {content_type}"));
    }
    let (Some(id), Some(timestamp), Some(signature)) = (id, timestamp, signature) else {
        return Some("webhook-id, webhook-timestamp and webhook-signature are required".into());
    };
    let Ok(ts) = timestamp.parse::<i64>() else {
        return Some(format!(
            "webhook-timestamp {timestamp:?} is not Unix seconds"
        ));
    };
    if (chrono::Utc::now().timestamp() - ts).abs() > 300 {
        return Some("webhook-timestamp is too far from now".into());
    }
    let key = STANDARD
        .decode(SMS_GATEWAY_SECRET.strip_prefix("whsec_").expect("whsec_"))
        .expect("base64");
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).expect("key");
    mac.update(format!("{id}.{timestamp}.{raw}").as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    if !signature.split(' ').any(|s| s == expected) {
        return Some("bad signature".into());
    }
    let to = body["to"].as_str().unwrap_or("");
    if !to.starts_with('+') || to.len() < 8 {
        return Some(format!("to {to:?} is not E.164"));
    }
    if body["text"].as_str().is_none_or(str::is_empty) || !body["locale"].is_string() {
        return Some("text and locale are required".into());
    }
    match body["type"].as_str() {
        Some("otp.sms") => {
            let code = body["code"].as_str().unwrap_or("");
            if code.is_empty() || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Some("an otp.sms needs its code".into());
            }
        }
        Some("notice.sms") if body.get("code").is_none() => {}
        other => return Some(format!("unexpected type {other:?}")),
    }
    None
}

fn check_whatsapp(
    path: &str,
    content_type: &str,
    auth: Option<&poem::http::HeaderValue>,
    body: &Value,
) -> Option<String> {
    if path != format!("/v21.0/{WHATSAPP_PHONE_ID}/messages") {
        return Some(format!("unexpected path {path}"));
    }
    if !content_type.starts_with("application/json") {
        return Some(format!("content type {content_type}"));
    }
    let bearer = auth.and_then(|v| Authorization::<Bearer>::decode(&mut std::iter::once(v)).ok());
    if bearer.is_none_or(|b| b.token() != WHATSAPP_TOKEN) {
        return Some("Invalid OAuth access token".into());
    }
    if body["messaging_product"] != "whatsapp" {
        return Some("messaging_product must be whatsapp".into());
    }
    let to = body["to"].as_str().unwrap_or("");
    if to.is_empty() || !to.bytes().all(|b| b.is_ascii_digit()) {
        return Some(format!("'to' must be digits with country code, got {to:?}"));
    }
    match body["type"].as_str() {
        Some("text") if body["text"]["body"].as_str().is_some_and(|t| !t.is_empty()) => None,
        Some("template") => {
            let t = &body["template"];
            let ok = t["name"].is_string()
                && t["language"]["code"].is_string()
                && t["components"][0]["type"] == "body"
                && t["components"][0]["parameters"][0]["type"] == "text"
                && t["components"][1]["type"] == "button"
                && t["components"][1]["sub_type"] == "url"
                && t["components"][1]["index"] == "0"
                && t["components"][1]["parameters"][0]["text"]
                    == t["components"][0]["parameters"][0]["text"];
            (!ok).then(|| "malformed authentication template".into())
        }
        other => Some(format!("unsupported message type {other:?}")),
    }
}

fn check_telegram(path: &str, content_type: &str, body: &Value) -> Option<String> {
    if path != format!("/bot{TELEGRAM_TOKEN}/sendMessage") {
        return Some("Unauthorized".into());
    }
    if !content_type.starts_with("application/json") {
        return Some(format!("content type {content_type}"));
    }
    if !(body["chat_id"].is_i64() || body["chat_id"].is_string()) {
        return Some("chat_id is empty".into());
    }
    if body["text"].as_str().is_none_or(str::is_empty) {
        return Some("message text is empty".into());
    }
    match body.get("reply_markup") {
        None => None,
        // ReplyKeyboardRemove.
        Some(markup) if markup["remove_keyboard"] == json!(true) => None,
        // ReplyKeyboardMarkup: rows of buttons, each with a text.
        Some(markup) => {
            let rows = markup["keyboard"].as_array();
            let ok = rows.is_some_and(|rows| {
                !rows.is_empty()
                    && rows.iter().all(|row| {
                        row.as_array().is_some_and(|buttons| {
                            !buttons.is_empty()
                                && buttons
                                    .iter()
                                    .all(|b| b["text"].as_str().is_some_and(|t| !t.is_empty()))
                        })
                    })
            });
            (!ok).then(|| "can't parse reply keyboard markup JSON object".into())
        }
    }
}

/// A captcha provider's siteverify (Turnstile, hCaptcha and reCAPTCHA document the same
/// request): POST, form-encoded `secret`, `response`, `remoteip`. A request that breaks this
/// gets `success: false` with the provider's error code. The token chooses the answer:
/// `pass…` passes, `fail…` is refused (`invalid-input-response`), `low…` passes with score 0.1,
/// `high…` with score 0.9, `abroad…` valid but solved on `phish.example`, `android…` valid from
/// the Android app `com.acme.app`, `signup…` / `login…` valid for that action, `once-…` passes the first time and is then `timeout-or-duplicate`,
/// `slow…` answers after 2 s, `boom…` is an HTTP 500, `throttled…` an HTTP 429, `junk…` a 200
/// that is not JSON.
async fn siteverify(state: Arc<Mutex<State>>, mut req: Request) -> Response {
    let method = req.method().clone();
    let content_type = req.content_type().unwrap_or("").to_string();
    let raw = req.take_body().into_string().await.unwrap_or_default();
    let form = parse_form(&raw);
    let token = form["response"].as_str().unwrap_or("").to_string();
    let replayed = {
        let mut state = state.lock().expect("lock");
        state.requests.push(Recorded {
            provider: "captcha",
            path: "/siteverify".into(),
            body: form.clone(),
            webhook_id: None,
            message_id: None,
        });
        !state.spent_tokens.insert(token.clone())
    };
    let refuse =
        |code: &str| json_response(200, json!({ "success": false, "error-codes": [code] }));
    if method != poem::http::Method::POST {
        return json_response(
            405,
            json!({ "success": false, "error-codes": ["bad-request"] }),
        );
    }
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return refuse("bad-request");
    }
    match form["secret"].as_str() {
        None | Some("") => return refuse("missing-input-secret"),
        Some(secret) if secret != CAPTCHA_SECRET => return refuse("invalid-input-secret"),
        Some(_) => {}
    }
    if token.is_empty() {
        return refuse("missing-input-response");
    }
    if form["remoteip"]
        .as_str()
        .is_none_or(|ip| ip.parse::<std::net::IpAddr>().is_err())
    {
        return refuse("invalid-remoteip");
    }
    let ok = |extra: Value| {
        let mut body = json!({
            "success": true,
            "challenge_ts": "2026-11-29T12:00:00Z",
            "hostname": "app.example",
            "error-codes": [],
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        json_response(200, body)
    };
    if token.starts_with("pass") {
        ok(json!({}))
    } else if token.starts_with("fail") {
        refuse("invalid-input-response")
    } else if token.starts_with("low") {
        ok(json!({ "score": 0.1, "action": "login" }))
    } else if token.starts_with("high") {
        ok(json!({ "score": 0.9, "action": "login" }))
    } else if token.starts_with("abroad") {
        // Valid, but solved on another site.
        ok(json!({ "hostname": "phish.example", "action": "login" }))
    } else if token.starts_with("android") {
        // reCAPTCHA on Android: the app's package instead of a hostname.
        ok(json!({ "hostname": null, "apk_package_name": "com.acme.app", "action": "login" }))
    } else if token.starts_with("signup") {
        ok(json!({ "action": "signup" }))
    } else if token.starts_with("login") {
        ok(json!({ "action": "login" }))
    } else if token.starts_with("once-") {
        if replayed {
            refuse("timeout-or-duplicate")
        } else {
            ok(json!({}))
        }
    } else if token.starts_with("slow") {
        tokio::time::sleep(Duration::from_secs(2)).await;
        ok(json!({}))
    } else if token.starts_with("boom") {
        json_response(500, json!({ "error": "internal" }))
    } else if token.starts_with("throttled") {
        json_response(429, json!({ "error": "too many requests" }))
    } else if token.starts_with("junk") {
        Response::builder()
            .status(StatusCode::OK)
            .content_type("text/html")
            .body("<html>maintenance</html>")
    } else {
        refuse("invalid-input-response")
    }
}

/// Google's OAuth token endpoint and the Play Integrity API, as documented:
///
/// - `POST /google/token`, form `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and
///   `assertion`: a JWT signed RS256 with the service account's key (`kid` its key id), `iss`
///   the account, `aud` this endpoint, `scope` Play Integrity's, at most an hour long. Answers
///   an access token; anything else is 400 `invalid_grant`.
/// - `POST /google/v1/{packageName}:decodeIntegrityToken` with `Authorization: Bearer` that
///   token and JSON `{"integrity_token": …}`: 401 without the token, 400 `INVALID_ARGUMENT` for
///   a token it cannot decode. The token `<kind>.<request hash>` chooses the verdict: `pass`
///   (Play-recognized app, `MEETS_DEVICE_INTEGRITY`), `basic` (only `MEETS_BASIC_INTEGRITY`),
///   `strong`, `sideload` (`UNRECOGNIZED_VERSION`), `stale` (ten minutes old), `other` (another
///   package asked for it), `nonce` (a classic request: the hash in `nonce`); anything else
///   cannot be decoded.
async fn google(state: Arc<Mutex<State>>, mut req: Request) -> Response {
    let path = req.uri().path().to_string();
    let content_type = req.content_type().unwrap_or("").to_string();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let raw = req.take_body().into_string().await.unwrap_or_default();
    let body = if path == "/google/token" {
        parse_form(&raw)
    } else {
        serde_json::from_str(&raw).unwrap_or(Value::Null)
    };
    // `google-token` / `google-decode` script one endpoint, `google` both.
    let endpoint = if path == "/google/token" {
        "google-token"
    } else {
        "google-decode"
    };
    let mode = {
        let mut state = state.lock().expect("lock");
        state.requests.push(Recorded {
            provider: "google",
            path: path.clone(),
            body: body.clone(),
            webhook_id: None,
            message_id: None,
        });
        state.next_mode(&[endpoint, "google"])
    };
    match mode {
        Mode::Status(status) | Mode::FailTimes(status, _) => {
            return json_response(
                status,
                json!({ "error": { "code": status, "status": "UNAVAILABLE" } }),
            );
        }
        Mode::Hang(pause) => tokio::time::sleep(pause).await,
        Mode::Held => held(&state, &[endpoint, "google"]).await,
        Mode::Ok => {}
    }
    if req.method() != poem::http::Method::POST {
        return json_response(405, json!({ "error": "POST only" }));
    }
    if path == "/google/token" {
        let grant = |why: &str| {
            json_response(
                400,
                json!({ "error": "invalid_grant", "error_description": why }),
            )
        };
        if !content_type.starts_with("application/x-www-form-urlencoded") {
            return grant("form expected");
        }
        if body["grant_type"] != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
            return grant("unsupported grant_type");
        }
        let assertion = body["assertion"].as_str().unwrap_or("");
        let header = jsonwebtoken::decode_header(assertion);
        if header.as_ref().map_or(true, |h| {
            h.alg != jsonwebtoken::Algorithm::RS256 || h.kid.as_deref() != Some("0123456789abcdef")
        }) {
            return grant("RS256 with the key's id expected");
        }
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(PLAY_INTEGRITY_PUBLIC_KEY.as_bytes())
            .expect("test public key");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_issuer(&[PLAY_INTEGRITY_ACCOUNT]);
        validation.set_audience(&[format!(
            "http://{}/google/token",
            req.headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
        )]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
        let Ok(claims) = jsonwebtoken::decode::<Value>(assertion, &key, &validation) else {
            return grant("Invalid JWT Signature.");
        };
        let claims = claims.claims;
        if claims["scope"] != "https://www.googleapis.com/auth/playintegrity" {
            return grant("wrong scope");
        }
        let life = claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0);
        if !(1..=3600).contains(&life) {
            return grant("Invalid JWT: exp too far from iat");
        }
        return json_response(
            200,
            json!({ "access_token": GOOGLE_ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer" }),
        );
    }
    if authorization.as_deref() != Some(&format!("Bearer {GOOGLE_ACCESS_TOKEN}")) {
        return json_response(
            401,
            json!({ "error": { "code": 401, "status": "UNAUTHENTICATED" } }),
        );
    }
    let Some(package) = path
        .strip_prefix("/google/v1/")
        .and_then(|p| p.strip_suffix(":decodeIntegrityToken"))
    else {
        return json_response(
            404,
            json!({ "error": { "code": 404, "status": "NOT_FOUND" } }),
        );
    };
    let invalid = || {
        json_response(
            400,
            json!({ "error": { "code": 400, "message": "Integrity token cannot be decoded due to invalid arguments.", "status": "INVALID_ARGUMENT" } }),
        )
    };
    if !content_type.starts_with("application/json") || package != PLAY_PACKAGE {
        return invalid();
    }
    let token = body["integrity_token"].as_str().unwrap_or("");
    let Some((kind, hash)) = token.split_once('.') else {
        return invalid();
    };
    let now = chrono::Utc::now().timestamp_millis();
    let mut request = json!({
        "requestPackageName": PLAY_PACKAGE,
        "requestHash": hash,
        "timestampMillis": now.to_string(),
    });
    let mut app = "PLAY_RECOGNIZED";
    let mut device = vec!["MEETS_DEVICE_INTEGRITY"];
    match kind {
        "pass" => {}
        "basic" => device = vec!["MEETS_BASIC_INTEGRITY"],
        "strong" => {
            device = vec![
                "MEETS_BASIC_INTEGRITY",
                "MEETS_DEVICE_INTEGRITY",
                "MEETS_STRONG_INTEGRITY",
            ]
        }
        "sideload" => app = "UNRECOGNIZED_VERSION",
        "stale" => request["timestampMillis"] = json!((now - 600_000).to_string()),
        "other" => request["requestPackageName"] = json!("com.evil.app"),
        "nonce" => {
            request = json!({
                "requestPackageName": PLAY_PACKAGE,
                "nonce": hash,
                "timestampMillis": now.to_string(),
            });
        }
        _ => return invalid(),
    }
    json_response(
        200,
        json!({
            "tokenPayloadExternal": {
                "requestDetails": request,
                "appIntegrity": {
                    "appRecognitionVerdict": app,
                    "packageName": PLAY_PACKAGE,
                    "certificateSha256Digest": ["6a6a1474b5cbbb2b1aa57e0bc3"],
                    "versionCode": "42",
                },
                "deviceIntegrity": { "deviceRecognitionVerdict": device },
                "accountDetails": { "appLicensingVerdict": "LICENSED" },
            }
        }),
    )
}
