//! Delivery channels against the provider stand-in: request shapes, fallback, retries,
//! timeouts, nothing charged when nothing was sent, and autofill lines.

use std::time::Duration;

use chrono::Utc;
use sea_orm::{ActiveModelTrait, Set};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{Backend, Reply, TestApp, spawn_app_with, unique_phone};
use crate::observability::{metrics_text, sample};
use crate::standin::{
    Mode, StandIn, TELEGRAM_TOKEN, TWILIO_FROM, TWILIO_SID, TWILIO_VERIFY_SERVICE,
    WHATSAPP_PHONE_ID, WHATSAPP_TOKEN,
};

crate::on_both_backends!(
    sms_goes_to_twilio_with_basic_auth,
    messaging_service_sid_replaces_from,
    whatsapp_text_and_authentication_template,
    telegram_needs_a_linked_chat,
    provider_failure_falls_back_to_the_next_channel,
    one_retry_rides_out_a_blip,
    timeouts_and_total_failure_are_503_and_charge_nothing,
    autofill_lines_end_the_sms,
    a_blocked_number_is_answered_about_as_slowly_as_a_send,
    a_replica_past_its_in_flight_bound_sheds_at_once,
    messages_are_written_in_the_users_language,
    sms_goes_to_the_teams_own_gateway_signed,
    twilio_status_callbacks_are_signed_and_counted,
    conversion_is_counted_per_country,
    a_failed_receipt_sends_a_new_code_by_the_next_channel_once,
    a_failure_receipt_faster_than_the_send_still_falls_back,
    a_fallback_is_a_send_that_may_not_happen,
    a_failed_whatsapp_status_falls_back_to_sms,
    routing_by_conversion_prefers_the_channel_that_converts,
    twilio_verify_makes_and_checks_the_sms_codes,
    a_failed_whatsapp_code_falls_back_to_a_twilio_verify_sms,
);

/// An app wired to the stand-in with `extra` settings on top.
async fn app_with(backend: Backend, standin: &StandIn, extra: &[(&str, &str)]) -> TestApp {
    let base = standin.settings();
    let mut settings: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
    settings.extend_from_slice(extra);
    spawn_app_with(backend, &settings).await
}

const SMS: [(&str, &str); 2] = [
    ("SEND_OTP_VIA_SMS", "true"),
    ("TWILIO_PHONE_NUMBER", TWILIO_FROM),
];
const WHATSAPP: [(&str, &str); 2] = [
    ("WHATSAPP_ACCESS_TOKEN", WHATSAPP_TOKEN),
    ("WHATSAPP_PHONE_NUMBER_ID", WHATSAPP_PHONE_ID),
];

async fn login_via(app: &TestApp, phone: &str, channel: Option<&str>) -> Reply {
    let body = match channel {
        Some(c) => json!({ "phone": phone, "channel": c }),
        None => json!({ "phone": phone }),
    };
    app.post(&app.a, "/api/auth/login", body).await
}

async fn sms_goes_to_twilio_with_basic_auth(backend: Backend) {
    let standin = StandIn::start().await;
    let app = app_with(backend, &standin, &SMS).await;
    let phone = unique_phone();
    let reply = login_via(&app, &phone, Some("sms")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["channel"], json!("sms"));
    let sent = standin.requests("twilio");
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].path,
        format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages.json")
    );
    assert_eq!(sent[0].body["To"], json!(phone));
    assert_eq!(sent[0].body["From"], json!(TWILIO_FROM));
    let text = sent[0].body["Body"].as_str().expect("Body");
    let code = reply.body["otp_code"].as_str().expect("code");
    assert!(
        text.starts_with(&format!("{code} is your otpgate verification code")),
        "{text}"
    );
    // The delivered code is the one that verifies.
    assert_eq!(app.verify(&app.b, &phone, code).await.status, 200);
    // Without a channel, the default (`OTP_CHANNEL_ORDER`, sms) is used.
    let reply = login_via(&app, &unique_phone(), None).await;
    assert_eq!(reply.body["channel"], json!("sms"));
    assert_eq!(standin.requests("twilio").len(), 2);
}

async fn messaging_service_sid_replaces_from(backend: Backend) {
    let standin = StandIn::start().await;
    let app = app_with(
        backend,
        &standin,
        &[
            ("SEND_OTP_VIA_SMS", "true"),
            ("TWILIO_MESSAGING_SERVICE_SID", "MG0123"),
        ],
    )
    .await;
    assert_eq!(login_via(&app, &unique_phone(), None).await.status, 200);
    let sent = standin.requests("twilio");
    assert_eq!(sent[0].body["MessagingServiceSid"], json!("MG0123"));
    assert!(sent[0].body.get("From").is_none());
}

async fn whatsapp_text_and_authentication_template(backend: Backend) {
    let standin = StandIn::start().await;
    let app = app_with(backend, &standin, &WHATSAPP).await;
    let phone = unique_phone();
    let reply = login_via(&app, &phone, Some("whatsapp")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["channel"], json!("whatsapp"));
    let code = reply.body["otp_code"].as_str().expect("code").to_string();
    let sent = standin.requests("whatsapp");
    assert_eq!(sent[0].path, format!("/v21.0/{WHATSAPP_PHONE_ID}/messages"));
    assert_eq!(sent[0].body["to"], json!(phone.trim_start_matches('+')));
    assert_eq!(sent[0].body["type"], json!("text"));
    assert!(
        sent[0].body["text"]["body"]
            .as_str()
            .expect("text")
            .contains(&code)
    );
    // Without SEND_OTP_VIA_SMS, `sms` is the development log channel, as in the seed.
    let reply = login_via(&app, &unique_phone(), Some("sms")).await;
    assert_eq!(reply.body["channel"], json!("log"), "{}", reply.body);

    let mut with_template = WHATSAPP.to_vec();
    with_template.extend([
        ("WHATSAPP_OTP_TEMPLATE", "login_code"),
        ("WHATSAPP_TEMPLATE_LANGUAGE", "en_GB"),
    ]);
    let standin = StandIn::start().await;
    let app = app_with(backend, &standin, &with_template).await;
    let reply = login_via(&app, &unique_phone(), Some("whatsapp")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let code = reply.body["otp_code"].as_str().expect("code");
    let template = &standin.requests("whatsapp")[0].body["template"];
    assert_eq!(template["name"], json!("login_code"));
    assert_eq!(template["language"]["code"], json!("en_GB"));
    assert_eq!(
        template["components"][0]["parameters"][0]["text"],
        json!(code)
    );
    assert_eq!(
        template["components"][1]["parameters"][0]["text"],
        json!(code)
    );
}

/// Links a Telegram chat to a (new) user with `phone`, as the messaging-login flow will.
pub(crate) async fn link_telegram(app: &TestApp, phone: &str, chat: i64) {
    let db = otpgate::db::connect(&app.database_url, 1)
        .await
        .expect("db");
    let now = Utc::now();
    let user = otpgate::db::user::ActiveModel {
        id: Set(Uuid::now_v7()),
        phone: Set(Some(phone.to_string())),
        created_at: Set(now),
        last_login_at: Set(None),
        blocked_at: Set(None),
    }
    .insert(&db)
    .await
    .expect("user");
    otpgate::db::identity::ActiveModel {
        id: Set(Uuid::now_v7()),
        user_id: Set(user.id),
        provider: Set("telegram".into()),
        subject: Set(chat.to_string()),
        created_at: Set(now),
    }
    .insert(&db)
    .await
    .expect("identity");
}

async fn telegram_needs_a_linked_chat(backend: Backend) {
    let standin = StandIn::start().await;
    let app = app_with(
        backend,
        &standin,
        &[
            ("TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN),
            ("OTP_RESEND_SECONDS", "0"),
        ],
    )
    .await;
    let phone = unique_phone();
    // No linked chat: answered as if sent (the answer must not tell who uses the bot), and
    // nothing goes out.
    let unlinked = login_via(&app, &phone, Some("telegram")).await;
    assert_eq!(unlinked.status, 200, "{}", unlinked.body);
    assert_eq!(unlinked.body["channel"], json!("telegram"));
    assert!(standin.requests("telegram").is_empty());
    link_telegram(&app, &phone, 777_000_111).await;
    let reply = login_via(&app, &phone, Some("telegram")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["channel"], json!("telegram"));
    let sent = standin.requests("telegram");
    assert_eq!(sent[0].path, format!("/bot{TELEGRAM_TOKEN}/sendMessage"));
    assert_eq!(sent[0].body["chat_id"], json!(777_000_111));
    assert_eq!(sent[0].body["protect_content"], json!(true));
    let code = reply.body["otp_code"].as_str().expect("code");
    assert!(sent[0].body["text"].as_str().expect("text").contains(code));
    // Its /me shows the linked identity.
    let session = app.verify(&app.b, &phone, code).await;
    let me = app
        .me(
            &app.a,
            session.body["access_token"].as_str().expect("token"),
        )
        .await;
    assert_eq!(me.body["identities"][0]["provider"], json!("telegram"));
    assert_eq!(me.body["identities"][0]["subject"], json!("777000111"));
}

async fn provider_failure_falls_back_to_the_next_channel(backend: Backend) {
    let standin = StandIn::start().await;
    let mut settings = SMS.to_vec();
    settings.extend(WHATSAPP);
    settings.push(("OTP_CHANNEL_ORDER", "sms,whatsapp"));
    let app = app_with(backend, &standin, &settings).await;
    standin.set_mode("twilio", Mode::Status(500));
    let reply = login_via(&app, &unique_phone(), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["channel"], json!("whatsapp"));
    assert_eq!(standin.requests("twilio").len(), 2, "one retry on a 5xx");
    assert_eq!(standin.requests("whatsapp").len(), 1);
    // A refusal (4xx) is final for that provider: no retry, straight to the fallback.
    standin.set_mode("twilio", Mode::Status(400));
    let reply = login_via(&app, &unique_phone(), Some("sms")).await;
    assert_eq!(reply.body["channel"], json!("whatsapp"));
    assert_eq!(standin.requests("twilio").len(), 3);
    // The code names the channel that took it: its verification counts for WhatsApp.
    let phone = unique_phone();
    let reply = login_via(&app, &phone, None).await;
    assert_eq!(reply.body["channel"], json!("whatsapp"));
    let code = reply.body["otp_code"].as_str().expect("code").to_string();
    assert_eq!(app.verify(&app.a, &phone, &code).await.status, 200);
    let text = metrics_text(&app, &app.a).await;
    assert_eq!(
        sample(
            &text,
            "otpgate_codes_verified_total{channel=\"whatsapp\",country=\"IN\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "otpgate_codes_verified_total{channel=\"sms\",country=\"IN\"}"
        ),
        0.0
    );
}

async fn one_retry_rides_out_a_blip(backend: Backend) {
    let standin = StandIn::start().await;
    let app = app_with(backend, &standin, &SMS).await;
    standin.set_mode("twilio", Mode::FailTimes(503, 1));
    let reply = login_via(&app, &unique_phone(), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["channel"], json!("sms"));
    assert_eq!(standin.requests("twilio").len(), 2);
}

async fn timeouts_and_total_failure_are_503_and_charge_nothing(backend: Backend) {
    let standin = StandIn::start().await;
    let mut settings = SMS.to_vec();
    settings.extend(WHATSAPP);
    settings.extend([
        ("OTP_CHANNEL_ORDER", "sms,whatsapp"),
        ("DELIVERY_TIMEOUT_MS", "300"),
    ]);
    let app = app_with(backend, &standin, &settings).await;
    let phone = unique_phone();

    // SMS times out (twice: one retry), WhatsApp delivers.
    standin.set_mode("twilio", Mode::Hang(Duration::from_secs(2)));
    let reply = login_via(&app, &phone, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["channel"], json!("whatsapp"));
    let code = reply.body["otp_code"].as_str().expect("code").to_string();
    assert_eq!(app.verify(&app.b, &phone, &code).await.status, 200);

    // Everything down: 503, and neither the cooldown nor a quota is charged.
    standin.set_mode("whatsapp", Mode::Status(502));
    let down = login_via(&app, &phone, None).await;
    down.assert_problem(503, "delivery_failed");
    let detail = down.body["detail"].as_str().expect("detail");
    assert!(
        !detail.contains("502") && !detail.contains("scripted"),
        "provider details stay server-side: {detail}"
    );
    let down = login_via(&app, &phone, None).await;
    down.assert_problem(503, "delivery_failed");

    standin.set_mode("twilio", Mode::Ok);
    let back = login_via(&app, &phone, None).await;
    assert_eq!(
        back.status, 200,
        "no cooldown after failed sends: {}",
        back.body
    );
    let current = back.header("ratelimit").expect("RateLimit");
    // One verified send before, two failed sends that were given back, this one: 5 - 2 = 3.
    assert!(current.contains("\"otp-phone\";r=3;"), "{current}");
}

async fn autofill_lines_end_the_sms(backend: Backend) {
    let standin = StandIn::start().await;
    let mut settings = SMS.to_vec();
    settings.extend([
        ("APP_NAME", "Acme"),
        ("OTP_ANDROID_APP_HASH", "FA+9qCX9VSu"),
        ("OTP_WEBOTP_DOMAIN", "acme.example"),
    ]);
    let app = app_with(backend, &standin, &settings).await;
    let reply = login_via(&app, &unique_phone(), None).await;
    let code = reply.body["otp_code"].as_str().expect("code");
    let text = standin.requests("twilio")[0].body["Body"]
        .as_str()
        .expect("Body")
        .to_string();
    assert!(
        text.starts_with(&format!("{code} is your Acme verification code")),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&format!("@acme.example #{code}").as_str()),
        "{text}"
    );
    assert!(lines.contains(&"FA+9qCX9VSu"), "{text}");
}

/// A login for a blocked number sends nothing, but its answer takes about as long as recent
/// sends did (±50 %), so its timing does not tell that the number is blocked.
async fn a_blocked_number_is_answered_about_as_slowly_as_a_send(backend: Backend) {
    const KEY: &str = "admin-key-0123456789abcdef0123456789";
    let standin = StandIn::start().await;
    let mut extra = SMS.to_vec();
    extra.extend([("ADMIN_API_KEYS", KEY), ("OTP_RESEND_SECONDS", "0")]);
    let app = app_with(backend, &standin, &extra).await;
    let phone = unique_phone();
    let code = app.login_code(&app.a, &phone).await;
    let tokens = app.verify(&app.a, &phone, &code).await;
    assert_eq!(tokens.status, 200, "{}", tokens.body);
    let id = tokens.body["user"]["id"].as_str().expect("id").to_string();
    let blocked = app
        .call(
            &app.a,
            reqwest::Method::POST,
            &format!("/admin/v1/users/{id}/block"),
            None,
            Some(KEY),
        )
        .await;
    assert_eq!(blocked.status, 200, "{}", blocked.body);
    // Sends now take 200 ms at the provider.
    standin.set_mode("twilio", Mode::Hang(Duration::from_millis(200)));
    for _ in 0..12 {
        assert_eq!(login_via(&app, &unique_phone(), None).await.status, 200);
    }
    let before = standin.requests("twilio").len();
    let started = std::time::Instant::now();
    let login = login_via(&app, &phone, None).await;
    let took = started.elapsed();
    assert_eq!(login.status, 200, "{}", login.body);
    assert_eq!(standin.requests("twilio").len(), before, "nothing sent");
    // The typical send is ~160 ms by now (an average weighted 1/8 to each new send, the
    // first ones ~0 ms), so the answer takes at least ~80 ms.
    assert!(
        took >= Duration::from_millis(60),
        "answered in {took:?}, sends took 200 ms"
    );
}

/// `HTTP_MAX_IN_FLIGHT=1`. A login waiting on Twilio holds no place (a slow provider must not
/// fill the bound): other requests are served meanwhile. A request held up by the database does
/// hold its place (PostgreSQL backends, with the users table locked): the next request to that
/// replica is answered 503 `overloaded` at once, costs nothing, the probes still answer, the
/// other replica serves, and the place comes back when the held request ends.
async fn a_replica_past_its_in_flight_bound_sheds_at_once(backend: Backend) {
    let standin = StandIn::start().await;
    let mut settings = SMS.to_vec();
    settings.extend([("HTTP_MAX_IN_FLIGHT", "1"), ("DELIVERY_TIMEOUT_MS", "5000")]);
    let app = app_with(backend, &standin, &settings).await;
    let hold = Duration::from_millis(1500);
    standin.set_mode("twilio", Mode::Hang(hold));
    let login_in = |phone: String| {
        let (client, url) = (app.client.clone(), format!("{}/api/auth/login", app.a));
        tokio::spawn(async move {
            let resp = client
                .post(url)
                .json(&json!({ "phone": phone }))
                .send()
                .await
                .expect("answered");
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.expect("json");
            (status, body)
        })
    };
    let waiting = login_in(unique_phone());
    standin.wait_for("twilio", 1).await;
    standin.set_mode("twilio", Mode::Ok);
    // The login waits on Twilio: it stepped out of its place, so this one is served.
    let started = std::time::Instant::now();
    let phone = unique_phone();
    let served = login_via(&app, &phone, None).await;
    assert_eq!(served.status, 200, "{}", served.body);
    assert!(
        started.elapsed() < hold / 2,
        "not queued behind the waiting login"
    );
    assert!(
        !waiting.is_finished(),
        "the first login was still at Twilio"
    );
    let code = served.body["otp_code"].as_str().expect("code").to_string();
    let (status, body) = waiting.await.expect("waiting login");
    assert_eq!(status, 200, "{body}");

    let Some((admin_url, name)) = app.postgres.clone() else {
        return; // The shedding itself: the unit test `requests_past_the_in_flight_bound_are_shed`.
    };
    let url = format!("{}/{name}", admin_url.rsplit_once('/').expect("url").0);
    let blocker = sea_orm::Database::connect(url.as_str())
        .await
        .expect("connect");
    let lock = sea_orm::TransactionTrait::begin(&blocker)
        .await
        .expect("begin");
    sea_orm::ConnectionTrait::execute_unprepared(
        &lock,
        "LOCK TABLE users IN ACCESS EXCLUSIVE MODE",
    )
    .await
    .expect("lock");
    // The verify waits for the database, in its place.
    let held = tokio::spawn({
        let (client, url) = (app.client.clone(), format!("{}/api/auth/verify-otp", app.a));
        async move {
            let resp = client
                .post(url)
                .json(&json!({ "phone": phone, "otp_code": code }))
                .send()
                .await
                .expect("the held verify is answered");
            resp.status().as_u16()
        }
    });
    let mut shed = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let reply = login_via(&app, &unique_phone(), None).await;
        if reply.status == 503 {
            shed = Some(reply);
            break;
        }
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let shed = shed.expect("a request shed while the verify holds the only place");
    assert_eq!(shed.code(), "overloaded", "{}", shed.body);
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert!(
        shed.header("content-type")
            .is_some_and(|t| t.starts_with("application/problem+json"))
    );
    let sends = standin.requests("twilio").len();
    let again = login_via(&app, &unique_phone(), None).await;
    assert_eq!(again.status, 503, "{}", again.body);
    assert_eq!(
        standin.requests("twilio").len(),
        sends,
        "a shed login sends nothing"
    );
    let health = app
        .call(&app.a, reqwest::Method::GET, "/health", None, None)
        .await;
    assert_eq!(health.status, 200, "the probes are never shed");
    // The other replica has its own places.
    let elsewhere = app
        .post(
            &app.b,
            "/api/auth/login",
            json!({ "phone": unique_phone() }),
        )
        .await;
    assert_eq!(elsewhere.status, 200, "{}", elsewhere.body);
    assert!(!held.is_finished(), "the verify was still held");
    lock.commit().await.expect("unlock");
    assert_eq!(held.await.expect("held verify"), 200);
    // The place is back: the replica serves again.
    let after = login_via(&app, &unique_phone(), None).await;
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(metric(&app, "otpgate_requests_shed_total").await, 2.0);
}

/// A number of `country_prefix` no other test uses (the rest of the digits random).
fn unique_number(country_prefix: &str, digits: usize) -> String {
    let n = Uuid::new_v4().as_u128() % 10u128.pow(digits as u32);
    format!("{country_prefix}{n:0digits$}")
}

/// The code message's language: the request's `locale`, then `Accept-Language`, then the
/// number's country, then the default; an unknown locale is no error. The segments are counted.
async fn messages_are_written_in_the_users_language(backend: Backend) {
    let standin = StandIn::start().await;
    let mut settings = SMS.to_vec();
    settings.push(("APP_NAME", "Acme"));
    let app = app_with(backend, &standin, &settings).await;
    let send = |body: serde_json::Value, accept_language: Option<&'static str>| {
        let mut req = app
            .client
            .post(format!("{}/api/auth/login", app.a))
            .json(&body);
        if let Some(value) = accept_language {
            req = req.header("accept-language", value);
        }
        let standin = standin.clone();
        async move {
            let resp = req.send().await.expect("login");
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.expect("json");
            assert_eq!(status, 200, "{body}");
            let code = body["otp_code"].as_str().expect("code").to_string();
            let sent = standin.requests("twilio");
            let text = sent.last().expect("an SMS").body["Body"]
                .as_str()
                .expect("Body")
                .to_string();
            assert!(text.starts_with(&code), "{text}");
            text[code.len()..].to_string()
        }
    };
    // Indian numbers: English by default.
    let english = " is your Acme verification code. It expires in 5 minutes. Do not share it.";
    assert_eq!(
        send(json!({ "phone": unique_phone() }), None).await,
        english
    );
    // The request's locale first, whatever the header says.
    assert_eq!(
        send(
            json!({ "phone": unique_phone(), "locale": "es-MX" }),
            Some("pt-BR")
        )
        .await,
        " es tu código de Acme. Vence en 5 min. No lo compartas."
    );
    // Then Accept-Language, by weight.
    assert_eq!(
        send(
            json!({ "phone": unique_phone() }),
            Some("de;q=0.9, hi, en;q=0.8")
        )
        .await,
        " आपका Acme कोड है। 5 मिनट तक मान्य। इसे साझा न करें।"
    );
    // Then the number's country: Brazil, Indonesia.
    assert_eq!(
        send(json!({ "phone": unique_number("+551198", 7) }), None).await,
        " é seu código Acme. Expira em 5 min. Não compartilhe."
    );
    assert_eq!(
        send(
            json!({ "phone": unique_number("+62812", 8), "locale": "xx" }),
            None
        )
        .await,
        " adalah kode verifikasi Acme Anda. Berlaku 5 menit. Jangan berikan kepada siapa pun."
    );
    // An unknown or malformed locale is not an error.
    for locale in ["tlh", "not a locale!", ""] {
        assert_eq!(
            send(
                json!({ "phone": unique_phone(), "locale": locale }),
                Some("*")
            )
            .await,
            english,
            "{locale:?}"
        );
    }
    assert_eq!(
        send(json!({ "phone": unique_phone(), "locale": "ar-EG" }), None).await,
        " هو رمز التحقق من Acme. صالح لمدة 5 دقائق. لا تشاركه."
    );
    let metrics = metrics_text(&app, &app.a).await;
    let value = |series: &str| sample(&metrics, series);
    // English and Indonesian are GSM-7; Spanish (ó), Hindi, Portuguese and Arabic are UCS-2.
    assert_eq!(value("otpgate_sms_segments_total{encoding=\"gsm7\"}"), 5.0);
    assert_eq!(value("otpgate_sms_segments_total{encoding=\"ucs2\"}"), 4.0);
    assert_eq!(
        value("otpgate_sms_template_segments{encoding=\"ucs2\",locale=\"hi\"}"),
        1.0
    );
    assert_eq!(
        value("otpgate_sms_template_segments{encoding=\"gsm7\",locale=\"en\"}"),
        1.0
    );
}

/// `SMS_PROVIDER=http`: the code goes to the team's own gateway as signed JSON (the stand-in
/// checks the Standard Webhooks signature and the body as the README documents them), never to
/// Twilio; a retry carries the same `webhook-id`; a refusal falls back to the next channel.
async fn sms_goes_to_the_teams_own_gateway_signed(backend: Backend) {
    let standin = StandIn::start().await;
    let gateway = standin.gateway_settings();
    let mut settings: Vec<(&str, &str)> = gateway.iter().map(|(k, v)| (*k, v.as_str())).collect();
    settings.extend(WHATSAPP);
    settings.push(("OTP_CHANNEL_ORDER", "sms,whatsapp"));
    let app = app_with(backend, &standin, &settings).await;

    let phone = unique_phone();
    let reply = login_via(&app, &phone, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["channel"], json!("sms"));
    let code = reply.body["otp_code"].as_str().expect("code").to_string();
    let sent = standin.requests("gateway");
    assert_eq!(sent.len(), 1, "the gateway accepted the signed request");
    let body = &sent[0].body;
    assert_eq!(body["type"], json!("otp.sms"));
    assert_eq!(body["to"], json!(phone));
    assert_eq!(body["code"], json!(code));
    assert_eq!(body["locale"], json!("en"));
    assert!(
        body["text"].as_str().expect("text").starts_with(&code),
        "{body}"
    );
    assert!(
        standin.requests("twilio").is_empty(),
        "nothing went to Twilio"
    );
    assert_eq!(app.verify(&app.b, &phone, &code).await.status, 200);

    // The language travels with the message.
    let reply = app
        .post(
            &app.a,
            "/api/auth/login",
            json!({ "phone": unique_phone(), "locale": "es" }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = &standin.requests("gateway")[1].body;
    assert_eq!(body["locale"], json!("es"));
    assert!(
        body["text"]
            .as_str()
            .expect("text")
            .contains(" es tu código de "),
        "{body}"
    );

    // A blip (503) is retried once, under the same webhook-id.
    standin.set_mode("gateway", Mode::FailTimes(503, 1));
    let reply = login_via(&app, &unique_phone(), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["channel"], json!("sms"));
    let sent = standin.requests("gateway");
    assert_eq!(sent.len(), 4);
    assert!(sent[2].webhook_id.is_some());
    assert_eq!(
        sent[2].webhook_id, sent[3].webhook_id,
        "a retry keeps its id"
    );
    assert_ne!(
        sent[1].webhook_id, sent[2].webhook_id,
        "each message has its own"
    );

    // A refusal falls back to WhatsApp.
    standin.set_mode("gateway", Mode::Status(400));
    let reply = login_via(&app, &unique_phone(), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["channel"], json!("whatsapp"));
    assert_eq!(standin.requests("gateway").len(), 5, "a 400 is not retried");
}

/// Twilio's request signature, computed here as its documentation describes it: base64
/// HMAC-SHA1 under the auth token of the URL followed by the fields' names and values, sorted.
fn twilio_signature(url: &str, fields: &[(&str, &str)]) -> String {
    use base64::Engine;
    use hmac::{Hmac, KeyInit, Mac};
    let mut sorted = fields.to_vec();
    sorted.sort();
    let mut data = url.to_string();
    for (name, value) in sorted {
        data.push_str(name);
        data.push_str(value);
    }
    let mut mac =
        <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(crate::standin::TWILIO_TOKEN.as_bytes())
            .expect("key");
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

async fn status_callback(
    app: &TestApp,
    fields: &[(&str, &str)],
    signature: Option<String>,
) -> Reply {
    let mut req = app
        .client
        .post(format!("{}/api/twilio/status", app.a))
        .form(fields);
    if let Some(signature) = signature {
        req = req.header("x-twilio-signature", signature);
    }
    let resp = req.send().await.expect("callback");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

async fn metric(app: &TestApp, series: &str) -> f64 {
    sample(&metrics_text(app, &app.a).await, series)
}

/// With `PUBLIC_BASE_URL`, each SMS asks Twilio for status callbacks; a callback signed by our
/// account over that URL is counted, anything else is 403 and counts nothing; without
/// `PUBLIC_BASE_URL` the endpoint is 404.
async fn twilio_status_callbacks_are_signed_and_counted(backend: Backend) {
    let standin = StandIn::start().await;
    let public = "https://auth.acme.example";
    let callback = format!("{public}/api/twilio/status");
    let mut settings = SMS.to_vec();
    settings.push(("PUBLIC_BASE_URL", "https://auth.acme.example/"));
    let app = app_with(backend, &standin, &settings).await;
    let phone = unique_phone();
    assert_eq!(login_via(&app, &phone, None).await.status, 200);
    let sent = standin.requests("twilio");
    assert_eq!(sent[0].body["StatusCallback"], json!(callback));

    let delivered = [
        ("MessageSid", "SM0123"),
        ("SmsSid", "SM0123"),
        ("AccountSid", TWILIO_SID),
        ("MessageStatus", "delivered"),
        ("SmsStatus", "delivered"),
        ("To", phone.as_str()),
        ("From", TWILIO_FROM),
        ("ApiVersion", "2010-04-01"),
    ];
    let series = "otpgate_delivery_status_total{channel=\"sms\",status=\"delivered\"}";
    let reply = status_callback(
        &app,
        &delivered,
        Some(twilio_signature(&callback, &delivered)),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(metric(&app, series).await, 1.0);

    // Unsigned, signed with another URL, or a field changed after signing: 403, not counted.
    let other_url = twilio_signature("https://evil.example/api/twilio/status", &delivered);
    let mut tampered = delivered;
    tampered[3] = ("MessageStatus", "failed");
    for (fields, signature) in [
        (&delivered, None),
        (&delivered, Some(String::new())),
        (&delivered, Some(other_url)),
        (&tampered, Some(twilio_signature(&callback, &delivered))),
    ] {
        let reply = status_callback(&app, fields, signature).await;
        assert_eq!(reply.status, 403, "{}", reply.body);
        assert_eq!(reply.code(), "invalid_signature");
    }
    assert_eq!(
        metric(&app, series).await,
        1.0,
        "refused callbacks count nothing"
    );
    // A form far larger than any callback is not parsed, signed or not.
    let names: Vec<String> = (0..100).map(|i| format!("F{i}")).collect();
    let huge: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x")).collect();
    let reply = status_callback(&app, &huge, Some(twilio_signature(&callback, &huge))).await;
    assert_eq!(reply.status, 400, "{}", reply.body);

    // A failure is counted under its own status; an unknown status is "other".
    let failed = [
        ("MessageSid", "SM0124"),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "30003"),
        ("To", phone.as_str()),
    ];
    let reply = status_callback(&app, &failed, Some(twilio_signature(&callback, &failed))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let odd = [("MessageSid", "SM0125"), ("MessageStatus", "teleported")];
    let reply = status_callback(&app, &odd, Some(twilio_signature(&callback, &odd))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        metric(
            &app,
            "otpgate_delivery_status_total{channel=\"sms\",status=\"undelivered\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &app,
            "otpgate_delivery_status_total{channel=\"sms\",status=\"other\"}"
        )
        .await,
        1.0
    );

    // Without PUBLIC_BASE_URL: no StatusCallback, and the endpoint does not exist.
    let standin = StandIn::start().await;
    let app = app_with(backend, &standin, &SMS).await;
    assert_eq!(login_via(&app, &unique_phone(), None).await.status, 200);
    assert!(
        standin.requests("twilio")[0]
            .body
            .get("StatusCallback")
            .is_none()
    );
    let reply = status_callback(
        &app,
        &delivered,
        Some(twilio_signature(&callback, &delivered)),
    )
    .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
}

/// Codes sent (by channel and country) and codes verified (by country): the conversion ratio.
async fn conversion_is_counted_per_country(backend: Backend) {
    let standin = StandIn::start().await;
    let app = app_with(backend, &standin, &SMS).await;
    let brazil = unique_number("+551198", 7);
    let reply = login_via(&app, &brazil, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let code = reply.body["otp_code"].as_str().expect("code").to_string();
    // On this replica: the counters are per replica.
    assert_eq!(app.verify(&app.a, &brazil, &code).await.status, 200);
    for _ in 0..2 {
        assert_eq!(login_via(&app, &unique_phone(), None).await.status, 200);
    }
    // A wrong code counts nothing.
    let india = unique_phone();
    assert_eq!(login_via(&app, &india, None).await.status, 200);
    assert_eq!(app.verify(&app.a, &india, "000000").await.status, 400);
    let sent = |country: &str| {
        format!("otpgate_codes_sent_total{{channel=\"sms\",country=\"{country}\"}}")
    };
    assert_eq!(metric(&app, &sent("BR")).await, 1.0);
    assert_eq!(metric(&app, &sent("IN")).await, 3.0);
    assert_eq!(
        metric(
            &app,
            "otpgate_codes_verified_total{channel=\"sms\",country=\"BR\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &app,
            "otpgate_codes_verified_total{channel=\"sms\",country=\"IN\"}"
        )
        .await,
        0.0
    );
}

/// The code in a message text: its first run of six digits.
fn code_in(text: &str) -> String {
    let digits: Vec<char> = text.chars().collect();
    digits
        .windows(6)
        .find(|w| w.iter().all(char::is_ascii_digit))
        .map(|w| w.iter().collect())
        .expect("a six-digit code in the message")
}

/// Waits (up to 5 s) until `series` reads `value` on replica A.
async fn wait_for_metric(app: &TestApp, series: &str, value: f64) {
    for _ in 0..100 {
        if metric(app, series).await == value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(app, series).await, value, "{series}");
}

/// Where the receipt tests tell Twilio to report.
const PUBLIC: &str = "https://auth.acme.example";

/// An app sending by SMS first, then WhatsApp, with Twilio status callbacks; and Twilio's side.
struct ReceiptApp {
    app: TestApp,
    standin: StandIn,
}

impl ReceiptApp {
    async fn start(backend: Backend, extra: &[(&'static str, &'static str)]) -> Self {
        let standin = StandIn::start().await;
        let mut settings = SMS.to_vec();
        settings.extend(WHATSAPP);
        settings.extend([
            ("PUBLIC_BASE_URL", PUBLIC),
            ("OTP_CHANNEL_ORDER", "sms,whatsapp"),
        ]);
        settings.extend_from_slice(extra);
        let app = app_with(backend, &standin, &settings).await;
        Self { app, standin }
    }

    /// Logs `phone` in by SMS: its code (exposed in tests) and the SMS's SID.
    async fn login(&self, phone: &str) -> (String, String) {
        let reply = login_via(&self.app, phone, None).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["channel"], json!("sms"));
        let code = reply.body["otp_code"].as_str().expect("code").to_string();
        let sent = self.standin.requests("twilio");
        let sid = sent
            .last()
            .and_then(|r| r.message_id.clone())
            .expect("a SID");
        (code, sid)
    }

    /// Twilio reporting `status` of message `sid` to `phone`, signed, to replica `base`.
    async fn report_to(&self, base: &str, sid: &str, status: &str, phone: &str) {
        let fields = [
            ("MessageSid", sid),
            ("MessageStatus", status),
            ("To", phone),
        ];
        let signature = twilio_signature(&format!("{PUBLIC}/api/twilio/status"), &fields);
        let resp = self
            .app
            .client
            .post(format!("{base}/api/twilio/status"))
            .header("x-twilio-signature", signature)
            .form(&fields)
            .send()
            .await
            .expect("callback");
        assert_eq!(resp.status().as_u16(), 200);
    }

    async fn report(&self, sid: &str, status: &str, phone: &str) {
        self.report_to(&self.app.a, sid, status, phone).await;
    }

    /// Waits until the fallbacks counted with `outcome` reach `n`.
    async fn fallbacks(&self, outcome: &str, n: f64) {
        let series = format!(
            "otpgate_delivery_fallbacks_total{{from=\"sms\",outcome=\"{outcome}\",to=\"whatsapp\"}}"
        );
        wait_for_metric(&self.app, &series, n).await;
    }

    /// The WhatsApp messages sent, after a pause for any that should not come.
    async fn whatsapp_after_a_pause(&self) -> usize {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.standin.requests("whatsapp").len()
    }
}

/// An SMS that Twilio reports `undelivered` within the code's life: a new code goes out by
/// WhatsApp (once, however often and wherever the receipt arrives), the SMS's code stops
/// working and the new one verifies, counted for WhatsApp. The fallback goes to the number of
/// the record, whatever the receipt names; an unknown message sends nothing.
async fn a_failed_receipt_sends_a_new_code_by_the_next_channel_once(backend: Backend) {
    let r = ReceiptApp::start(backend, &[]).await;
    let phone = unique_phone();
    let (first_code, sid) = r.login(&phone).await;
    // `sent` first: noted, nothing re-sent. Then `undelivered`, twice, to both replicas.
    r.report(&sid, "sent", &phone).await;
    r.report_to(&r.app.a, &sid, "undelivered", &phone).await;
    r.report_to(&r.app.b, &sid, "undelivered", &phone).await;
    let whatsapp = r.standin.wait_for("whatsapp", 1).await;
    assert_eq!(whatsapp[0].body["to"], json!(phone.trim_start_matches('+')));
    let new_code = code_in(whatsapp[0].body["text"]["body"].as_str().expect("text"));
    assert_eq!(r.whatsapp_after_a_pause().await, 1, "one fallback");
    assert_eq!(r.standin.requests("twilio").len(), 1, "no SMS again");
    r.fallbacks("sent", 1.0).await;

    // The SMS's code no longer works (one wrong try); the WhatsApp one does, on the other
    // replica, and counts as a WhatsApp conversion there.
    if first_code != new_code {
        r.app
            .verify(&r.app.a, &phone, &first_code)
            .await
            .assert_problem(400, "invalid_otp");
    }
    assert_eq!(r.app.verify(&r.app.b, &phone, &new_code).await.status, 200);
    let verified = sample(
        &metrics_text(&r.app, &r.app.b).await,
        "otpgate_codes_verified_total{channel=\"whatsapp\",country=\"IN\"}",
    );
    assert_eq!(verified, 1.0);

    let phone2 = unique_phone();
    let (_, sid2) = r.login(&phone2).await;
    r.report("SM00000000000000000000000000000000", "failed", &phone2)
        .await;
    r.report(&sid2, "failed", &phone).await;
    let whatsapp = r.standin.wait_for("whatsapp", 2).await;
    assert_eq!(
        whatsapp[1].body["to"],
        json!(phone2.trim_start_matches('+'))
    );
    assert_eq!(r.whatsapp_after_a_pause().await, 2, "nothing else sent");
}

/// Twilio reports the SMS `undelivered` before its answer to the send reaches us (the
/// stand-in holds the answer until both receipts were taken): the receipt is kept, and the
/// record picks it up and falls back, once; the SMS's code stops working and the WhatsApp
/// one verifies.
async fn a_failure_receipt_faster_than_the_send_still_falls_back(backend: Backend) {
    let r = ReceiptApp::start(backend, &[]).await;
    r.standin.set_mode("twilio", Mode::Held);
    let phone = unique_phone();
    let (reply, ()) = tokio::join!(login_via(&r.app, &phone, None), async {
        let sent = r.standin.wait_for("twilio", 1).await;
        let sid = sent[0].message_id.clone().expect("a SID");
        // Before the record, to the other replica; a `sent` after it changes nothing.
        r.report_to(&r.app.b, &sid, "undelivered", &phone).await;
        r.report_to(&r.app.b, &sid, "sent", &phone).await;
        assert_eq!(
            r.standin.requests("whatsapp").len(),
            0,
            "nothing falls back before the record"
        );
        r.standin.set_mode("twilio", Mode::Ok);
    });
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["channel"], json!("sms"));
    let first_code = reply.body["otp_code"].as_str().expect("code").to_string();
    let whatsapp = r.standin.wait_for("whatsapp", 1).await;
    let new_code = code_in(whatsapp[0].body["text"]["body"].as_str().expect("text"));
    r.fallbacks("sent", 1.0).await;
    // The SMS's answer came after the receipt; another receipt now sends nothing more.
    let sid = message_id(&r.standin, "twilio", 0);
    r.report(&sid, "undelivered", &phone).await;
    assert_eq!(r.whatsapp_after_a_pause().await, 1, "one fallback");
    if first_code != new_code {
        r.app
            .verify(&r.app.a, &phone, &first_code)
            .await
            .assert_problem(400, "invalid_otp");
    }
    assert_eq!(r.app.verify(&r.app.a, &phone, &new_code).await.status, 200);
}

/// No fallback for a code verified before its failure receipt (stale); a fallback whose own
/// send fails puts the first code back; the daily cap refuses a fallback as any send; and
/// `OTP_RECEIPT_FALLBACK=false` only counts the failure.
async fn a_fallback_is_a_send_that_may_not_happen(backend: Backend) {
    let r = ReceiptApp::start(backend, &[]).await;
    let phone = unique_phone();
    let (code, sid) = r.login(&phone).await;
    assert_eq!(r.app.verify(&r.app.a, &phone, &code).await.status, 200);
    r.report(&sid, "failed", &phone).await;
    r.fallbacks("stale", 1.0).await;
    assert_eq!(
        r.whatsapp_after_a_pause().await,
        0,
        "a used code is not re-sent"
    );

    let phone = unique_phone();
    let (code, sid) = r.login(&phone).await;
    r.standin.set_mode("whatsapp", Mode::Status(400));
    r.report(&sid, "undelivered", &phone).await;
    r.fallbacks("failed", 1.0).await;
    assert_eq!(r.app.verify(&r.app.b, &phone, &code).await.status, 200);

    let r = ReceiptApp::start(backend, &[("DAILY_SEND_CAP", "1")]).await;
    let phone = unique_phone();
    let (code, sid) = r.login(&phone).await;
    r.report(&sid, "failed", &phone).await;
    r.fallbacks("limited", 1.0).await;
    assert_eq!(r.whatsapp_after_a_pause().await, 0);
    assert_eq!(
        r.app.verify(&r.app.a, &phone, &code).await.status,
        200,
        "a refused fallback leaves the code alone"
    );

    let r = ReceiptApp::start(backend, &[("OTP_RECEIPT_FALLBACK", "false")]).await;
    let phone = unique_phone();
    let (_, sid) = r.login(&phone).await;
    r.report(&sid, "failed", &phone).await;
    wait_for_metric(
        &r.app,
        "otpgate_delivery_status_total{channel=\"sms\",status=\"failed\"}",
        1.0,
    )
    .await;
    assert_eq!(r.whatsapp_after_a_pause().await, 0);
    assert_eq!(
        metric(
            &r.app,
            "otpgate_delivery_fallbacks_total{from=\"sms\",outcome=\"sent\",to=\"whatsapp\"}"
        )
        .await,
        0.0
    );
}

const META_APP_SECRET: &str = "meta-app-secret-for-receipts";

/// The message id the stand-in gave `provider`'s `index`th message (a SID, a `wamid`).
fn message_id(standin: &StandIn, provider: &str, index: usize) -> String {
    standin.requests(provider)[index]
        .message_id
        .clone()
        .expect("a message id")
}

/// Meta reporting WhatsApp message `wamid` `failed` for `recipient` (a WhatsApp id), signed
/// with `X-Hub-Signature-256` under [`META_APP_SECRET`], to replica `base`.
async fn whatsapp_failed(app: &TestApp, base: &str, wamid: &str, recipient: &str) {
    use hmac::{Hmac, KeyInit, Mac};
    let body = json!({ "object": "whatsapp_business_account", "entry": [{ "id": "1", "changes": [{ "field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "15550001111", "phone_number_id": WHATSAPP_PHONE_ID },
        "statuses": [{ "id": wamid, "status": "failed", "timestamp": "1760000000", "recipient_id": recipient,
            "errors": [{ "code": 131026, "title": "Message undeliverable" }] }]
    }}]}]})
    .to_string();
    let mut mac =
        <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(META_APP_SECRET.as_bytes()).expect("key");
    mac.update(body.as_bytes());
    let resp = app
        .client
        .post(format!("{base}/api/whatsapp/webhook"))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
        )
        .body(body)
        .send()
        .await
        .expect("notification");
    assert_eq!(resp.status().as_u16(), 200);
}

/// A WhatsApp message whose status comes back `failed`: the code goes again by SMS, once.
async fn a_failed_whatsapp_status_falls_back_to_sms(backend: Backend) {
    let standin = StandIn::start().await;
    let mut settings = SMS.to_vec();
    settings.extend(WHATSAPP);
    settings.extend([
        ("OTP_CHANNEL_ORDER", "whatsapp,sms"),
        ("WHATSAPP_WEBHOOK_SECRET", META_APP_SECRET),
        ("PUBLIC_BASE_URL", "https://auth.acme.example"),
    ]);
    let app = app_with(backend, &standin, &settings).await;
    let phone = unique_phone();
    let reply = login_via(&app, &phone, None).await;
    assert_eq!(reply.body["channel"], json!("whatsapp"), "{}", reply.body);
    let wamid = message_id(&standin, "whatsapp", 0);
    // Meta's recipient id is a WhatsApp id, not always the number (Brazil, Mexico): the
    // fallback goes to the number the code was sent to. Delivered three times, to both
    // replicas.
    for base in [&app.a, &app.b, &app.a] {
        whatsapp_failed(&app, base, &wamid, "5511987654321").await;
    }
    let sms = standin.wait_for("twilio", 1).await;
    assert_eq!(sms[0].body["To"], json!(phone));
    let code = code_in(sms[0].body["Body"].as_str().expect("text"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(standin.requests("twilio").len(), 1, "one fallback");
    // The fallback failing too: no third try.
    let sid = sms[0].message_id.clone().expect("a SID");
    let failed = [
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "undelivered"),
        ("To", phone.as_str()),
    ];
    let callback = "https://auth.acme.example/api/twilio/status";
    let reply = status_callback(&app, &failed, Some(twilio_signature(callback, &failed))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(standin.requests("whatsapp").len(), 1);
    assert_eq!(standin.requests("twilio").len(), 1);
    assert_eq!(app.verify(&app.b, &phone, &code).await.status, 200);
}

/// `OTP_ROUTING=conversion`: once each channel has enough sends to a country, a login without
/// a requested channel goes first by the one whose codes are verified more; a requested
/// channel is never overridden, and other countries keep the configured order.
async fn routing_by_conversion_prefers_the_channel_that_converts(backend: Backend) {
    let standin = StandIn::start().await;
    let mut settings = SMS.to_vec();
    settings.extend(WHATSAPP);
    settings.extend([
        ("OTP_CHANNEL_ORDER", "sms,whatsapp"),
        ("OTP_ROUTING", "conversion"),
        ("OTP_ROUTING_MIN_SENDS", "3"),
        ("OTP_ROUTING_EXPLORE_PERCENT", "0"),
    ]);
    let app = app_with(backend, &standin, &settings).await;
    // On one replica (the evidence is per replica): three SMS never verified, three WhatsApp
    // codes verified.
    for _ in 0..3 {
        let reply = login_via(&app, &unique_phone(), Some("sms")).await;
        assert_eq!(reply.body["channel"], json!("sms"), "{}", reply.body);
        let phone = unique_phone();
        let reply = login_via(&app, &phone, Some("whatsapp")).await;
        assert_eq!(reply.body["channel"], json!("whatsapp"), "{}", reply.body);
        let code = reply.body["otp_code"].as_str().expect("code").to_string();
        assert_eq!(app.verify(&app.a, &phone, &code).await.status, 200);
    }
    let reply = login_via(&app, &unique_phone(), None).await;
    assert_eq!(reply.body["channel"], json!("whatsapp"), "{}", reply.body);
    let reply = login_via(&app, &unique_phone(), Some("sms")).await;
    assert_eq!(
        reply.body["channel"],
        json!("sms"),
        "a requested channel stands"
    );
    let brazil = unique_number("+551198", 7);
    let reply = login_via(&app, &brazil, None).await;
    assert_eq!(reply.body["channel"], json!("sms"), "no evidence for BR");
    // Replica B (another process, with the shared store) has seen none of it: the order.
    if backend.shared() {
        let reply = app
            .post(
                &app.b,
                "/api/auth/login",
                json!({ "phone": unique_phone() }),
            )
            .await;
        assert_eq!(reply.body["channel"], json!("sms"), "{}", reply.body);
    }
}

/// `SMS_PROVIDER=twilio_verify`: Twilio makes, sends and checks the SMS code; otpgate keeps its
/// own limits around it. A wrong code is a counted wrong try, the right one works once (on any
/// replica), a Verify outage is 503 `verifier_unavailable` that uses nothing up, and when Verify
/// refuses to send, the next channel gets a code of otpgate's own, which verifies as usual.
async fn twilio_verify_makes_and_checks_the_sms_codes(backend: Backend) {
    let standin = StandIn::start().await;
    let verify: Vec<(&str, String)> = standin.verify_settings();
    let mut settings: Vec<(&str, &str)> = verify.iter().map(|(k, v)| (*k, v.as_str())).collect();
    settings.extend(WHATSAPP);
    settings.push(("OTP_CHANNEL_ORDER", "sms,whatsapp"));
    let app = app_with(backend, &standin, &settings).await;
    let phone = unique_phone();
    let reply = app
        .post(
            &app.a,
            "/api/auth/login",
            json!({ "phone": phone, "locale": "pt-BR" }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["channel"], json!("sms"));
    assert!(
        reply.body.get("otp_code").is_none(),
        "Twilio's code never reaches otpgate: {}",
        reply.body
    );
    let started = standin.requests("verify");
    assert_eq!(
        started[0].path,
        format!("/v2/Services/{TWILIO_VERIFY_SERVICE}/Verifications")
    );
    assert_eq!(started[0].body["To"], json!(phone));
    assert_eq!(started[0].body["Channel"], json!("sms"));
    assert_eq!(started[0].body["Locale"], json!("pt-BR"));
    let code = standin.verify_code(&phone).expect("a pending verification");

    // A wrong code: checked at Twilio, counted here.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let reply = app.verify(&app.a, &phone, wrong).await;
    reply.assert_problem(400, "invalid_otp");
    assert!(
        reply.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("4 attempt(s) left")),
        "{}",
        reply.body
    );
    let checks = standin.requests("verify");
    assert_eq!(
        checks[1].path,
        format!("/v2/Services/{TWILIO_VERIFY_SERVICE}/VerificationCheck")
    );
    assert_eq!(checks[1].body["Code"], json!(wrong));
    // The right one, on the other replica; then never again.
    let reply = app.verify(&app.b, &phone, &code).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body["access_token"].is_string());
    app.verify(&app.a, &phone, &code)
        .await
        .assert_problem(400, "otp_expired");

    // Twilio Verify down at check time: 503, the code unused, no try counted.
    let phone = unique_phone();
    assert_eq!(login_via(&app, &phone, None).await.status, 200);
    let code = standin.verify_code(&phone).expect("a pending verification");
    standin.set_mode("verify", Mode::Status(503));
    let before = standin.requests("verify").len();
    let reply = app.verify(&app.a, &phone, &code).await;
    reply.assert_problem(503, "verifier_unavailable");
    assert_eq!(
        standin.requests("verify").len(),
        before + 1,
        "a check that reached Twilio is not repeated"
    );
    standin.set_mode("verify", Mode::Ok);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let reply = app.verify(&app.a, &phone, wrong).await;
    assert!(
        reply.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("4 attempt(s) left")),
        "the outage's try was given back: {}",
        reply.body
    );
    assert_eq!(app.verify(&app.a, &phone, &code).await.status, 200);

    // Every wrong try counts, and a burned code stays burned even with Twilio's right code.
    let phone = unique_phone();
    assert_eq!(login_via(&app, &phone, None).await.status, 200);
    let code = standin.verify_code(&phone).expect("a pending verification");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for left in (1..=4).rev() {
        let reply = app.verify(&app.a, &phone, wrong).await;
        reply.assert_problem(400, "invalid_otp");
        assert!(
            reply.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&format!("{left} attempt(s) left"))),
            "{}",
            reply.body
        );
    }
    app.verify(&app.a, &phone, wrong)
        .await
        .assert_problem(429, "too_many_attempts");
    app.verify(&app.b, &phone, &code)
        .await
        .assert_problem(429, "too_many_attempts");

    // Verify refusing to send: WhatsApp gets otpgate's own code, which verifies here.
    let phone = unique_phone();
    standin.set_mode("verify", Mode::Status(400));
    let reply = login_via(&app, &phone, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["channel"], json!("whatsapp"));
    let code = reply.body["otp_code"].as_str().expect("code").to_string();
    standin.set_mode("verify", Mode::Ok);
    assert_eq!(app.verify(&app.b, &phone, &code).await.status, 200);

    // `channel: whatsapp` first, then (WhatsApp refusing) Verify: Twilio's code works.
    let phone = unique_phone();
    standin.set_mode("whatsapp", Mode::Status(400));
    let reply = login_via(&app, &phone, Some("whatsapp")).await;
    assert_eq!(reply.body["channel"], json!("sms"), "{}", reply.body);
    standin.set_mode("whatsapp", Mode::Ok);
    let code = standin.verify_code(&phone).expect("a pending verification");
    assert_eq!(app.verify(&app.a, &phone, &code).await.status, 200);
}

/// A WhatsApp code that Meta reports failed falls back to an SMS by Twilio Verify, whose code
/// (Twilio's) then verifies.
async fn a_failed_whatsapp_code_falls_back_to_a_twilio_verify_sms(backend: Backend) {
    let standin = StandIn::start().await;
    let verify: Vec<(&str, String)> = standin.verify_settings();
    let mut settings: Vec<(&str, &str)> = verify.iter().map(|(k, v)| (*k, v.as_str())).collect();
    settings.extend(WHATSAPP);
    settings.extend([
        ("OTP_CHANNEL_ORDER", "whatsapp,sms"),
        ("WHATSAPP_WEBHOOK_SECRET", META_APP_SECRET),
        ("OTP_RESEND_SECONDS", "0"),
    ]);
    let app = app_with(backend, &standin, &settings).await;
    let phone = unique_phone();
    let reply = login_via(&app, &phone, None).await;
    assert_eq!(reply.body["channel"], json!("whatsapp"), "{}", reply.body);
    let wamid = message_id(&standin, "whatsapp", 0);
    whatsapp_failed(&app, &app.a, &wamid, phone.trim_start_matches('+')).await;
    standin.wait_for("verify", 1).await;
    let code = standin.verify_code(&phone).expect("a pending verification");
    assert_eq!(app.verify(&app.b, &phone, &code).await.status, 200);

    // A late failure of an older WhatsApp code, while the number's newer code went by Verify:
    // the fallback finds the code replaced, and leaves the newer one alone.
    let phone = unique_phone();
    assert_eq!(
        login_via(&app, &phone, None).await.body["channel"],
        json!("whatsapp")
    );
    let wamid = message_id(&standin, "whatsapp", 1);
    let reply = login_via(&app, &phone, Some("sms")).await;
    assert_eq!(reply.body["channel"], json!("sms"), "{}", reply.body);
    let code = standin.verify_code(&phone).expect("a pending verification");
    whatsapp_failed(&app, &app.a, &wamid, phone.trim_start_matches('+')).await;
    wait_for_metric(
        &app,
        "otpgate_delivery_fallbacks_total{from=\"whatsapp\",outcome=\"stale\",to=\"sms\"}",
        1.0,
    )
    .await;
    assert_eq!(app.verify(&app.a, &phone, &code).await.status, 200);
}
