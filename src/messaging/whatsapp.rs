//! The WhatsApp Cloud API webhook: the verification handshake and signed notifications.

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{Messaging, background};
use crate::auth::intents::{IntentChannel, find_code};
use crate::domain::channel::Channel;
use crate::error::Error;

const SOURCE: &str = "whatsapp";

/// A webhook notification: `entry[].changes[].value.{messages,statuses}`.
#[derive(Debug, Default, Deserialize)]
struct Notification {
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Debug, Default, Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Debug, Default, Deserialize)]
struct Change {
    #[serde(default)]
    value: ChangeValue,
}

#[derive(Debug, Default, Deserialize)]
struct ChangeValue {
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    statuses: Vec<serde_json::Value>,
}

/// One inbound message.
#[derive(Debug, Deserialize)]
struct Message {
    /// The sender's WhatsApp number: digits with country code.
    from: String,
    /// The message id (`wamid.…`), unique per message; redeliveries repeat it.
    id: String,
    /// When the user sent it (Unix seconds, as a string).
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(rename = "type", default)]
    kind: String,
    text: Option<Text>,
}

/// Whether `message` is older than `max_age` by its own timestamp (a missing or unreadable
/// one counts as old: Meta always sends it, and a replayed body cannot change it).
fn is_stale(message: &Message, max_age: std::time::Duration, now: u64) -> bool {
    match message
        .timestamp
        .as_deref()
        .and_then(|t| t.trim().parse::<u64>().ok())
    {
        Some(sent) => now.saturating_sub(sent) > max_age.as_secs(),
        None => true,
    }
}

#[derive(Debug, Deserialize)]
struct Text {
    body: String,
}

/// Checks `X-Hub-Signature-256: sha256=<hex>` against HMAC-SHA256(app secret, raw body), in
/// constant time.
pub fn signature_valid(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

impl Messaging {
    /// The `GET` handshake: the challenge when `hub.mode=subscribe` and the verify token match.
    pub fn whatsapp_handshake(
        &self,
        mode: Option<&str>,
        token: Option<&str>,
        challenge: Option<String>,
    ) -> Result<String, Error> {
        let expected = self
            .settings
            .whatsapp_verify_token
            .as_ref()
            .ok_or(Error::InvalidSignature)?;
        let token_ok =
            token.is_some_and(|t| bool::from(t.as_bytes().ct_eq(expected.expose().as_bytes())));
        match (mode, token_ok, challenge) {
            (Some("subscribe"), true, Some(challenge)) => {
                self.metrics.webhook(SOURCE, "verified");
                Ok(challenge)
            }
            _ => {
                self.metrics.webhook(SOURCE, "forbidden");
                Err(Error::InvalidSignature)
            }
        }
    }

    /// A `POST` notification: 403 unless signed; then every message is handled once.
    pub async fn whatsapp_notification(
        &self,
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<(), Error> {
        let signed = self
            .settings
            .whatsapp_webhook_secret
            .as_ref()
            .is_some_and(|secret| signature_valid(secret.expose().as_bytes(), body, signature));
        let Some(notification) = self.authentic_body::<Notification>(SOURCE, signed, body)? else {
            return Ok(());
        };
        let mut failure = None;
        for value in notification
            .entry
            .iter()
            .flat_map(|e| &e.changes)
            .map(|c| &c.value)
        {
            for status in &value.statuses {
                self.metrics.webhook(SOURCE, "status");
                self.whatsapp_status(status).await;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            for message in &value.messages {
                if is_stale(message, self.settings.whatsapp_max_message_age, now) {
                    // A replay of a captured body, or a delivery Meta retried for too long.
                    self.metrics.webhook(SOURCE, "stale");
                    tracing::info!(
                        "WhatsApp message older than WHATSAPP_MAX_MESSAGE_AGE_SECONDS ignored"
                    );
                    continue;
                }
                let handled = self
                    .once(SOURCE, &message.id, self.whatsapp_message(message))
                    .await;
                if let Err(err) = handled {
                    failure = Some(err);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    async fn whatsapp_message(&self, message: &Message) -> Result<(), Error> {
        // The sender was verified by WhatsApp: `from` is their number.
        let Ok(phone) = self.auth.parse_phone(&format!("+{}", message.from)) else {
            self.metrics.webhook(SOURCE, "invalid_sender");
            return Ok(());
        };
        let to = phone.as_str().trim_start_matches('+').to_string();
        let text = match (&message.kind[..], &message.text) {
            ("text", Some(text)) => text.body.trim(),
            _ => "",
        };
        let command = text.to_ascii_uppercase();
        if command == "OTP" || command == "CODE" {
            self.metrics.webhook(SOURCE, "otp_command");
            let me = self.replier();
            background(async move {
                if let Some(refusal) = me.send_code(phone.as_str(), Channel::Whatsapp).await {
                    me.whatsapp(&to, refusal).await;
                }
            });
            return Ok(());
        }
        let reply = match find_code(text) {
            Some(code) => {
                self.bind(IntentChannel::Whatsapp, &code, phone.as_str())
                    .await?
            }
            None => {
                self.metrics.webhook(SOURCE, "help");
                format!(
                    "Hi! To log in to {app}, tap \"Continue with WhatsApp\" in the app and send the \
                     message it prepares. Send OTP to get a one-time code here.",
                    app = self.auth.app_name()
                )
            }
        };
        let me = self.replier();
        background(async move { me.whatsapp(&to, reply).await });
        Ok(())
    }
}
