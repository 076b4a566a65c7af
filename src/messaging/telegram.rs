//! The Telegram bot webhook (`/start <code>`, contact sharing, `/otp`) and the Login Widget.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Messaging, Replier, background};
use crate::auth::intents::{IntentChannel, is_code};
use crate::auth::{LoggedIn, LoginMethod};
use crate::domain::channel::Channel;
use crate::error::Error;

const SOURCE: &str = "telegram";

/// An update (only messages are acted on).
#[derive(Debug, Deserialize)]
struct Update {
    update_id: i64,
    message: Option<Message>,
}

#[derive(Debug, Deserialize)]
struct Message {
    chat: Chat,
    from: Option<User>,
    text: Option<String>,
    contact: Option<Contact>,
}

#[derive(Debug, Deserialize)]
struct Chat {
    id: i64,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct User {
    id: i64,
    #[serde(default)]
    is_bot: bool,
}

/// A shared contact; `user_id` is set when the contact is a Telegram user.
#[derive(Debug, Deserialize)]
struct Contact {
    phone_number: String,
    user_id: Option<i64>,
}

/// A reply keyboard with one button that shares the user's own phone number.
fn contact_keyboard() -> Value {
    json!({
        "keyboard": [[{ "text": "Share my phone number", "request_contact": true }]],
        "one_time_keyboard": true,
        "resize_keyboard": true
    })
}

/// The fields the Telegram Login Widget hands to the page.
#[derive(Debug)]
pub struct WidgetLogin {
    /// Every field but `hash`, as `(name, value)`.
    pub fields: Vec<(String, String)>,
    /// Telegram user id.
    pub id: i64,
    /// Unix time of the authentication.
    pub auth_date: i64,
    /// Hex HMAC-SHA256 of the data-check-string, keyed by SHA-256(bot token).
    pub hash: String,
}

/// Checks a widget login's hash: HMAC-SHA256 over the `key=value` lines of every other field,
/// sorted by key and joined by `\n`, with SHA-256 of the bot token as key; constant time.
pub fn widget_hash_valid(bot_token: &str, login: &WidgetLogin) -> bool {
    let mut fields: Vec<&(String, String)> = login.fields.iter().collect();
    fields.sort();
    let check_string = fields
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n");
    let Ok(expected) = hex::decode(login.hash.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&Sha256::digest(bot_token.as_bytes())) else {
        return false;
    };
    mac.update(check_string.as_bytes());
    mac.verify_slice(&expected).is_ok()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Messaging {
    /// A Login Widget login: 401 unless signed by our bot, fresh and unused; then a session
    /// for that Telegram account (created on first login, without a phone).
    pub async fn telegram_widget(
        &self,
        login: WidgetLogin,
        client: &crate::auth::sessions::ClientInfo,
    ) -> Result<LoggedIn, Error> {
        let token = self
            .bot_token
            .as_ref()
            .ok_or_else(|| Error::ChannelUnavailable("telegram".into()))?;
        if !widget_hash_valid(token.expose(), &login) {
            tracing::warn!("Telegram widget login with a wrong hash refused");
            return Err(Error::InvalidTelegramAuth);
        }
        let max_age = i64::try_from(self.settings.telegram_auth_max_age.as_secs()).unwrap_or(300);
        let age = unix_now() - login.auth_date;
        // A minute of clock skew is tolerated for dates from the future.
        if !(-60..=max_age).contains(&age) {
            return Err(Error::TelegramAuthExpired);
        }
        // The user first (found, or created once however often this runs): a database outage
        // (503) leaves the signed login usable for the client's retry.
        let (user, created) = self.auth.user_for_telegram(&login.id.to_string()).await?;
        // Each signed login works once: a replayed one (stolen from a log or a page) is refused.
        let ttl = self.settings.telegram_auth_max_age + std::time::Duration::from_secs(60);
        if !self
            .store
            .first_delivery(
                &format!("tg-widget:{}", login.hash.to_ascii_lowercase()),
                ttl,
            )
            .await?
        {
            return Err(Error::InvalidTelegramAuth);
        }
        self.auth
            .open_session(user, created, client, LoginMethod::TelegramWidget, &[])
            .await
    }

    /// A webhook update: 403 unless it carries our secret token; then handled once.
    pub async fn telegram_update(&self, body: &[u8], secret: Option<&str>) -> Result<(), Error> {
        let authentic = match (&self.settings.telegram_webhook_secret, secret) {
            (Some(expected), Some(given)) => {
                bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes()))
            }
            _ => false,
        };
        let Some(update) = self.authentic_body::<Update>(SOURCE, authentic, body)? else {
            return Ok(());
        };
        let key = update.update_id.to_string();
        self.once(SOURCE, &key, self.telegram_message(update.message))
            .await
    }

    async fn telegram_message(&self, message: Option<Message>) -> Result<(), Error> {
        let Some(message) = message else {
            self.metrics.webhook(SOURCE, "ignored");
            return Ok(());
        };
        let from = match &message.from {
            Some(user) if !user.is_bot && message.chat.kind == "private" => user.id,
            _ => {
                self.metrics.webhook(SOURCE, "ignored");
                return Ok(());
            }
        };
        let chat = message.chat.id;
        let me = self.replier();
        if let Some(contact) = &message.contact {
            return self.telegram_contact(from, chat, contact).await;
        }
        let text = message.text.as_deref().unwrap_or("").trim();
        let (command, argument) = text.split_once(' ').unwrap_or((text, ""));
        // `/start@bot_name` is how commands look in some clients.
        let command = command.split('@').next().unwrap_or("").to_ascii_lowercase();
        match command.as_str() {
            "/start" => {
                let payload = argument.trim();
                if !is_code(payload) {
                    self.metrics.webhook(SOURCE, "start");
                    background(me.telegram_welcome(from, chat, None));
                    return Ok(());
                }
                let reply = self
                    .bind(IntentChannel::Telegram, payload, &from.to_string())
                    .await?;
                background(me.telegram_welcome(from, chat, Some(reply)));
            }
            "/otp" | "/code" => {
                self.metrics.webhook(SOURCE, "otp_command");
                background(me.telegram_otp(from, chat));
            }
            _ => {
                self.metrics.webhook(SOURCE, "help");
                let text = format!(
                    "Hi! To log in to {app}, tap \"Continue with Telegram\" in the app. Send /otp \
                     to get a one-time code here once your phone number is linked.",
                    app = self.auth.app_name()
                );
                background(async move { me.telegram(chat, text, None).await });
            }
        }
        Ok(())
    }

    /// A shared contact: linked only when it is the sender's own (`user_id == from.id`).
    async fn telegram_contact(&self, from: i64, chat: i64, contact: &Contact) -> Result<(), Error> {
        let me = self.replier();
        if contact.user_id != Some(from) {
            self.metrics.webhook(SOURCE, "foreign_contact");
            background(async move {
                me.telegram(
                    chat,
                    "That is not your own contact, so nothing was linked. Tap the button to share \
                     your own phone number."
                        .into(),
                    Some(contact_keyboard()),
                )
                .await;
            });
            return Ok(());
        }
        let number = contact.phone_number.trim();
        let number = if number.starts_with('+') {
            number.to_string()
        } else {
            format!("+{number}")
        };
        let Ok(phone) = self.auth.parse_phone(&number) else {
            self.metrics.webhook(SOURCE, "invalid_contact");
            background(async move {
                me.telegram(chat, "That phone number is not valid.".into(), None)
                    .await;
            });
            return Ok(());
        };
        self.auth
            .link_telegram_phone(&from.to_string(), &phone)
            .await?;
        self.metrics.webhook(SOURCE, "phone_linked");
        tracing::info!(telegram_id = from, phone = %phone.masked(), "phone linked to Telegram");
        let text = format!(
            "Your number {} is now linked. Codes for it can come here: send /otp, or choose \
             Telegram in the app.",
            phone.masked()
        );
        background(async move {
            me.telegram(chat, text, Some(json!({ "remove_keyboard": true })))
                .await;
        });
        Ok(())
    }
}

impl Replier {
    /// The answer to `/start`: the confirmation (when a login was bound), plus the
    /// share-contact button when no phone is linked yet.
    async fn telegram_welcome(self, from: i64, chat: i64, confirmation: Option<String>) {
        let linked = match self.auth.telegram_phone(&from.to_string()).await {
            Ok(phone) => phone.is_some(),
            Err(err) => {
                tracing::warn!(code = err.code(), "could not look up the Telegram account");
                true
            }
        };
        let app = self.auth.app_name().to_string();
        let mut text = confirmation.unwrap_or_else(|| format!("Welcome to {app}'s login bot."));
        if linked {
            self.telegram(chat, text, None).await;
        } else {
            text.push_str(
                "\n\nShare your phone number with the button below to receive login codes here.",
            );
            self.telegram(chat, text, Some(contact_keyboard())).await;
        }
    }

    /// `/otp`: a code for the linked phone, sent to this chat.
    async fn telegram_otp(self, from: i64, chat: i64) {
        let phone = match self.auth.telegram_phone(&from.to_string()).await {
            Ok(Some(phone)) => phone,
            Ok(None) => {
                self.telegram(
                    chat,
                    "Share your phone number first, with the button below.".into(),
                    Some(contact_keyboard()),
                )
                .await;
                return;
            }
            Err(err) => {
                tracing::warn!(code = err.code(), "could not look up the Telegram account");
                self.metrics.webhook(SOURCE, "otp_failed");
                return;
            }
        };
        if let Some(refusal) = self.send_code(&phone, Channel::Telegram).await {
            self.telegram(chat, refusal, None).await;
        }
    }
}
