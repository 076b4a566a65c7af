//! Login by message: the WhatsApp and Telegram webhooks, login intents and the Telegram Login
//! Widget.

use std::time::Duration;

use super::env::{ConfigError, Vars, invalid};
use crate::domain::secret::Secret;

/// Login by message: webhooks, login intents and the Telegram Login Widget.
#[derive(Debug, Clone)]
pub struct MessagingSettings {
    /// `WHATSAPP_VERIFY_TOKEN`: the token Meta echoes in the webhook handshake.
    pub whatsapp_verify_token: Option<Secret>,
    /// `WHATSAPP_WEBHOOK_SECRET` (the app secret): key of `X-Hub-Signature-256`.
    pub whatsapp_webhook_secret: Option<Secret>,
    /// `WHATSAPP_BUSINESS_NUMBER`: the number users message, digits with country code.
    pub whatsapp_business_number: Option<String>,
    /// `TELEGRAM_WEBHOOK_SECRET`: `secret_token` given to `setWebhook`.
    pub telegram_webhook_secret: Option<Secret>,
    /// `TELEGRAM_BOT_USERNAME`: the bot's username, for `t.me` links.
    pub telegram_bot_username: Option<String>,
    /// `INTENT_EXPIRY_SECONDS`: lifetime of a login intent.
    pub intent_ttl: Duration,
    /// `TELEGRAM_AUTH_MAX_AGE_SECONDS`: oldest Login Widget `auth_date` accepted.
    pub telegram_auth_max_age: Duration,
    /// `SUPPORT_CONTACT`: where users report a login that was not theirs.
    pub support_contact: Option<String>,
    /// `WHATSAPP_MAX_MESSAGE_AGE_SECONDS`: inbound messages older than this, by their own
    /// timestamp, are ignored (a captured webhook body cannot be replayed later).
    pub whatsapp_max_message_age: Duration,
}

impl MessagingSettings {
    pub(crate) fn from_env(env: &Vars<'_>) -> Result<Self, ConfigError> {
        messaging_settings(env)
    }
}

fn messaging_settings(env: &Vars<'_>) -> Result<MessagingSettings, ConfigError> {
    let whatsapp_business_number = match env.get("WHATSAPP_BUSINESS_NUMBER") {
        None => None,
        Some(number) => {
            let digits: String = number
                .chars()
                .filter(|c| !matches!(c, '+' | ' ' | '-' | '(' | ')'))
                .collect();
            if !(6..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
                env.report(invalid(
                    "WHATSAPP_BUSINESS_NUMBER",
                    "expected the number in international form, e.g. +15550001234",
                ));
            }
            Some(digits)
        }
    };
    let telegram_bot_username = match env.get("TELEGRAM_BOT_USERNAME") {
        None => None,
        Some(name) => {
            let name = name.trim().trim_start_matches('@').to_string();
            if !(5..=32).contains(&name.len())
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                env.report(invalid(
                    "TELEGRAM_BOT_USERNAME",
                    "expected a bot username (5-32 letters, digits or _)",
                ));
            }
            Some(name)
        }
    };
    let telegram_webhook_secret = env.get("TELEGRAM_WEBHOOK_SECRET");
    // Telegram allows 1-256 characters A-Z, a-z, 0-9, _ and - in `secret_token`.
    if let Some(secret) = &telegram_webhook_secret
        && (secret.is_empty()
            || secret.len() > 256
            || !secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        env.report(invalid(
            "TELEGRAM_WEBHOOK_SECRET",
            "Telegram accepts 1-256 characters of A-Z, a-z, 0-9, _ and -",
        ));
    }
    let intent_seconds: u64 = env.ranged("INTENT_EXPIRY_SECONDS", 300, 1..=3600)?;
    let max_age: u64 = env.ranged("TELEGRAM_AUTH_MAX_AGE_SECONDS", 300, 10..=86_400)?;
    let max_message_age: u64 = env.ranged("WHATSAPP_MAX_MESSAGE_AGE_SECONDS", 600, 10..=86_400)?;
    Ok(MessagingSettings {
        whatsapp_verify_token: env.get("WHATSAPP_VERIFY_TOKEN").map(Secret::new),
        whatsapp_webhook_secret: env.get("WHATSAPP_WEBHOOK_SECRET").map(Secret::new),
        whatsapp_business_number,
        telegram_webhook_secret: telegram_webhook_secret.map(Secret::new),
        telegram_bot_username,
        intent_ttl: Duration::from_secs(intent_seconds),
        telegram_auth_max_age: Duration::from_secs(max_age),
        support_contact: env.get("SUPPORT_CONTACT"),
        whatsapp_max_message_age: Duration::from_secs(max_message_age),
    })
}
