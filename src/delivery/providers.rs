//! The provider senders: Twilio, the team's own SMS gateway, WhatsApp Cloud API, Telegram Bot
//! API, and the log channel.

use std::time::Duration;

use serde_json::json;

use super::{Channel, DeliveryError, Destination, OtpMessage, Sender, Sent};
use crate::config::{
    HttpSmsSettings, TelegramSettings, TwilioSettings, TwilioVerifySettings, WhatsappSettings,
};

/// Pause before the single retry.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Sends a request built by `build`, retrying once on a timeout, a connection failure, a 429 or
/// a 5xx. Any other non-2xx answer is final. The error text never contains the URL; it quotes
/// the provider's answer only when `quote` (a documented API's error, not an unknown gateway
/// that might echo the code back).
async fn send_with_retry(
    channel: Channel,
    quote: bool,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, DeliveryError> {
    let fail = |reason: String| DeliveryError { channel, reason };
    let mut last = String::new();
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        match build().send().await {
            Ok(resp) if resp.status().is_success() => return Ok(resp),
            Ok(resp) => {
                let status = resp.status();
                let reason = if quote {
                    let body = resp.text().await.unwrap_or_default();
                    format!("HTTP {}: {}", status.as_u16(), truncate(&body, 300))
                } else {
                    format!("HTTP {}", status.as_u16())
                };
                if status.as_u16() == 429 || status.is_server_error() {
                    last = reason;
                    continue;
                }
                return Err(fail(reason));
            }
            Err(err) => {
                // Without the URL: Telegram's contains the bot token.
                let err = err.without_url();
                last = if err.is_timeout() {
                    "timed out".into()
                } else {
                    err.to_string()
                };
                if err.is_timeout() || err.is_connect() || err.is_request() {
                    continue;
                }
                return Err(fail(last));
            }
        }
    }
    Err(fail(last))
}

/// The provider's id of an accepted message, at `pointer` in its JSON answer (Twilio's `sid`,
/// WhatsApp's `messages[0].id`), for matching delivery receipts. An id that is missing, longer
/// than 128 bytes or not plain printable ASCII is ignored: the message still counts as sent.
async fn message_id(resp: reqwest::Response, pointer: &str) -> Sent {
    let id = resp
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|body| body.pointer(pointer)?.as_str().map(str::to_string))
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()));
    Sent { message_id: id }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// SMS through Twilio's Messages API.
pub struct TwilioSender {
    client: reqwest::Client,
    settings: TwilioSettings,
    url: String,
}

impl TwilioSender {
    /// A sender with its account settings.
    pub fn new(client: reqwest::Client, settings: TwilioSettings) -> Self {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            settings.api_base, settings.account_sid
        );
        Self {
            client,
            settings,
            url,
        }
    }
}

#[async_trait::async_trait]
impl Sender for TwilioSender {
    fn channel(&self) -> Channel {
        Channel::Sms
    }

    async fn send(
        &self,
        to: &Destination<'_>,
        message: &OtpMessage<'_>,
    ) -> Result<Sent, DeliveryError> {
        let mut form: Vec<(&str, &str)> = vec![("To", to.phone.as_str()), ("Body", message.text)];
        match (&self.settings.messaging_service_sid, &self.settings.from) {
            (Some(service), _) => form.push(("MessagingServiceSid", service)),
            (None, Some(from)) => form.push(("From", from)),
            (None, None) => {}
        }
        if let Some(callback) = &self.settings.status_callback {
            form.push(("StatusCallback", callback));
        }
        let resp = send_with_retry(Channel::Sms, true, || {
            self.client
                .post(&self.url)
                .basic_auth(
                    &self.settings.account_sid,
                    Some(self.settings.auth_token.expose()),
                )
                .form(&form)
        })
        .await?;
        // Without a status callback no receipt will come: no id to keep.
        if self.settings.status_callback.is_none() {
            return Ok(Sent::default());
        }
        Ok(message_id(resp, "/sid").await)
    }
}

/// The languages Twilio Verify writes its SMS in (its documented `Locale` values); a user's
/// locale outside them is left to the service's default.
const VERIFY_LOCALES: &[&str] = &[
    "af", "ar", "ca", "zh", "zh-CN", "zh-HK", "hr", "cs", "da", "nl", "en", "en-GB", "et", "fi",
    "fr", "de", "el", "he", "hi", "hu", "id", "it", "ja", "kn", "ko", "lt", "ms", "mr", "nb", "pl",
    "pt", "pt-BR", "ro", "ru", "sk", "es", "sv", "tl", "te", "th", "tr", "vi",
];

/// What Twilio Verify said about a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyCheck {
    /// `approved`: the code is right (and now used up at Twilio).
    Approved,
    /// Wrong, or no pending verification any more (expired, approved before, too many
    /// checks: Twilio's 404 and 429).
    Refused,
}

/// SMS codes generated, sent and checked by Twilio Verify (`SMS_PROVIDER=twilio_verify`).
pub struct TwilioVerifySender {
    client: reqwest::Client,
    settings: TwilioVerifySettings,
    start_url: String,
    check_url: String,
    app_hash: Option<String>,
}

impl TwilioVerifySender {
    /// A sender for one Verify service; `app_hash` (the SMS Retriever hash) goes with each SMS.
    pub fn new(
        client: reqwest::Client,
        settings: TwilioVerifySettings,
        app_hash: Option<String>,
    ) -> Self {
        let service = format!("{}/v2/Services/{}", settings.api_base, settings.service_sid);
        Self {
            client,
            start_url: format!("{service}/Verifications"),
            check_url: format!("{service}/VerificationCheck"),
            settings,
            app_hash,
        }
    }

    fn post(&self, url: &str, form: &[(&str, &str)]) -> reqwest::RequestBuilder {
        self.client
            .post(url)
            .basic_auth(
                &self.settings.account_sid,
                Some(self.settings.auth_token.expose()),
            )
            .form(form)
    }

    /// Checks `code` for `to` (`POST …/VerificationCheck`, `To` and `Code`). `approved` is
    /// [`VerifyCheck::Approved`]; another status, a 404 (no pending verification: expired,
    /// approved before) and a 429 with Twilio's code 60202 (too many checks) are refusals.
    /// Anything else (a timeout, a 5xx, another 4xx, an unreadable answer) is an error, so the
    /// caller answers 503 and keeps the code. A check is not idempotent (a second look at an
    /// approved code is a 404), so it is repeated only when the first one never reached Twilio.
    pub async fn check(&self, to: &str, code: &str) -> Result<VerifyCheck, DeliveryError> {
        let form = [("To", to), ("Code", code)];
        let fail = |reason: String| DeliveryError {
            channel: Channel::Sms,
            reason: format!("Verify check: {reason}"),
        };
        let mut sent = self.post(&self.check_url, &form).send().await;
        if matches!(&sent, Err(err) if err.is_connect()) {
            tokio::time::sleep(RETRY_PAUSE).await;
            sent = self.post(&self.check_url, &form).send().await;
        }
        let resp = sent.map_err(|err| {
            let err = err.without_url();
            fail(if err.is_timeout() {
                "timed out".into()
            } else {
                err.to_string()
            })
        })?;
        let status = resp.status().as_u16();
        let body: Option<serde_json::Value> = resp.json().await.ok();
        match (status, body) {
            (200..=299, Some(body)) if body["status"] == "approved" => Ok(VerifyCheck::Approved),
            (200..=299, Some(body)) if body["status"].is_string() => Ok(VerifyCheck::Refused),
            (404, _) => Ok(VerifyCheck::Refused),
            (429, Some(body)) if body["code"] == 60202 => Ok(VerifyCheck::Refused),
            (status, body) => Err(fail(format!(
                "HTTP {status}: {}",
                body.map_or_else(String::new, |b| truncate(&b.to_string(), 300).to_string())
            ))),
        }
    }
}

#[async_trait::async_trait]
impl Sender for TwilioVerifySender {
    fn channel(&self) -> Channel {
        Channel::Sms
    }

    /// Starts a verification (`POST …/Verifications`, `To`, `Channel=sms`, `Locale` when
    /// Twilio writes that language, `AppHash`): Twilio makes the code and writes the message,
    /// so `message` only lends its locale.
    async fn send(
        &self,
        to: &Destination<'_>,
        message: &OtpMessage<'_>,
    ) -> Result<Sent, DeliveryError> {
        let mut form: Vec<(&str, &str)> = vec![("To", to.phone.as_str()), ("Channel", "sms")];
        if let Some(locale) = VERIFY_LOCALES
            .iter()
            .find(|l| l.eq_ignore_ascii_case(message.locale))
        {
            form.push(("Locale", locale));
        }
        if let Some(hash) = &self.app_hash {
            form.push(("AppHash", hash));
        }
        send_with_retry(Channel::Sms, true, || self.post(&self.start_url, &form)).await?;
        Ok(Sent::default())
    }
}

/// SMS through the team's own gateway (`SMS_PROVIDER=http`): the message as JSON, signed the
/// Standard Webhooks way; the same `webhook-id` on the retry, so the gateway can deduplicate.
pub struct HttpSmsSender {
    client: reqwest::Client,
    settings: HttpSmsSettings,
}

impl HttpSmsSender {
    /// A sender posting to the configured gateway.
    pub fn new(client: reqwest::Client, settings: HttpSmsSettings) -> Self {
        Self { client, settings }
    }
}

#[async_trait::async_trait]
impl Sender for HttpSmsSender {
    fn channel(&self) -> Channel {
        Channel::Sms
    }

    async fn send(
        &self,
        to: &Destination<'_>,
        message: &OtpMessage<'_>,
    ) -> Result<Sent, DeliveryError> {
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        // A code, or (no code) the notice an old number gets when its account moves.
        let mut body = json!({
            "type": if message.code.is_empty() { "notice.sms" } else { "otp.sms" },
            "to": to.phone.as_str(),
            "locale": message.locale,
            "text": message.text,
        });
        if !message.code.is_empty() {
            body["code"] = json!(message.code);
        }
        let body = body.to_string();
        send_with_retry(Channel::Sms, false, || {
            let timestamp = chrono::Utc::now().timestamp();
            let signature = crate::domain::webhook::signature(
                &self.settings.key,
                &id,
                timestamp,
                body.as_bytes(),
            );
            self.client
                .post(&self.settings.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(body.clone())
        })
        .await
        .map(|_| Sent::default())
    }
}

/// WhatsApp messages through the Cloud API.
pub struct WhatsappSender {
    client: reqwest::Client,
    settings: WhatsappSettings,
    url: String,
}

impl WhatsappSender {
    /// A sender for one business phone number.
    pub fn new(client: reqwest::Client, settings: WhatsappSettings) -> Self {
        let url = format!(
            "{}/{}/messages",
            settings.api_base, settings.phone_number_id
        );
        Self {
            client,
            settings,
            url,
        }
    }

    /// The request body: an authentication template with the code as body parameter and as
    /// the copy-code button's parameter, or a plain text message.
    pub fn body(&self, to: &str, message: &OtpMessage<'_>) -> serde_json::Value {
        match &self.settings.template {
            Some(name) => json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": to,
                "type": "template",
                "template": {
                    "name": name,
                    "language": { "code": self.settings.template_language },
                    "components": [
                        {
                            "type": "body",
                            "parameters": [{ "type": "text", "text": message.code }]
                        },
                        {
                            "type": "button",
                            "sub_type": "url",
                            "index": "0",
                            "parameters": [{ "type": "text", "text": message.code }]
                        }
                    ]
                }
            }),
            None => json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": to,
                "type": "text",
                "text": { "preview_url": false, "body": message.text }
            }),
        }
    }
}

#[async_trait::async_trait]
impl Sender for WhatsappSender {
    fn channel(&self) -> Channel {
        Channel::Whatsapp
    }

    async fn send(
        &self,
        to: &Destination<'_>,
        message: &OtpMessage<'_>,
    ) -> Result<Sent, DeliveryError> {
        // The Cloud API takes the number as digits with country code, without `+`.
        let body = self.body(to.phone.as_str().trim_start_matches('+'), message);
        let resp = self.post(&body).await?;
        Ok(message_id(resp, "/messages/0/id").await)
    }
}

impl WhatsappSender {
    async fn post(&self, body: &serde_json::Value) -> Result<reqwest::Response, DeliveryError> {
        send_with_retry(Channel::Whatsapp, true, || {
            self.client
                .post(&self.url)
                .bearer_auth(self.settings.access_token.expose())
                .json(body)
        })
        .await
    }

    /// Replies with a text message to `to` (digits with country code), who wrote to us within
    /// the last 24 hours (the customer-service window that allows free-form messages).
    pub async fn send_text(&self, to: &str, text: &str) -> Result<(), DeliveryError> {
        self.post(&json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": { "preview_url": false, "body": text }
        }))
        .await
        .map(drop)
    }
}

/// Telegram messages from the bot to a linked chat.
pub struct TelegramSender {
    client: reqwest::Client,
    url: String,
}

impl TelegramSender {
    /// A sender for one bot.
    pub fn new(client: reqwest::Client, settings: TelegramSettings) -> Self {
        let url = format!(
            "{}/bot{}/sendMessage",
            settings.api_base,
            settings.bot_token.expose()
        );
        Self { client, url }
    }
}

#[async_trait::async_trait]
impl Sender for TelegramSender {
    fn channel(&self) -> Channel {
        Channel::Telegram
    }

    async fn send(
        &self,
        to: &Destination<'_>,
        message: &OtpMessage<'_>,
    ) -> Result<Sent, DeliveryError> {
        let chat = to.telegram_chat.ok_or_else(|| DeliveryError {
            channel: Channel::Telegram,
            reason: "no Telegram chat is linked to this number".into(),
        })?;
        let chat_id: serde_json::Value = match chat.parse::<i64>() {
            Ok(id) => id.into(),
            Err(_) => chat.into(),
        };
        let body = json!({ "chat_id": chat_id, "text": message.text, "protect_content": true });
        // The Bot API reports no delivery statuses: no id is kept.
        self.post(&body).await.map(|()| Sent::default())
    }
}

impl TelegramSender {
    async fn post(&self, body: &serde_json::Value) -> Result<(), DeliveryError> {
        send_with_retry(Channel::Telegram, true, || {
            self.client.post(&self.url).json(body)
        })
        .await
        .map(drop)
    }

    /// Sends `text` to chat `chat_id`, with an optional `reply_markup` (a keyboard).
    pub async fn send_message(
        &self,
        chat_id: i64,
        text: &str,
        reply_markup: Option<serde_json::Value>,
    ) -> Result<(), DeliveryError> {
        let mut body = json!({ "chat_id": chat_id, "text": text });
        if let Some(markup) = reply_markup {
            body["reply_markup"] = markup;
        }
        self.post(&body).await
    }
}

/// Development delivery: the code goes to the log, with the phone masked.
pub struct LogSender;

#[async_trait::async_trait]
impl Sender for LogSender {
    fn channel(&self) -> Channel {
        Channel::Log
    }

    async fn send(
        &self,
        to: &Destination<'_>,
        message: &OtpMessage<'_>,
    ) -> Result<Sent, DeliveryError> {
        tracing::info!(
            phone = %to.phone.masked(),
            code = message.code,
            "development delivery (log channel): one-time code"
        );
        Ok(Sent::default())
    }
}
