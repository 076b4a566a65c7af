//! Delivery receipts and routing on evidence.
//!
//! - Every code a provider accepted with a message id (Twilio's SID, WhatsApp's `wamid`) is
//!   recorded under that id for the code's life: the phone as its keyed hash, the code's HMAC,
//!   the channel, the next channel of the login's plan, the text's locale and the code's mark.
//!   Receipts update its last status.
//! - A receipt reporting a failure (`failed`, `undelivered`), while the code is still live and
//!   unused, sends a **new** code by the next channel, once per message (claimed atomically in
//!   the store, so repeated receipts and other replicas do not send again), and the failed code
//!   stops working. A new code rather than the same one: the same would have to be kept
//!   readable for its whole life, and codes are kept only as HMACs; the failed one never
//!   reached the user, so replacing it costs them nothing, and whatever copy the failed route
//!   still holds becomes useless. The wrong attempts carry over; the fallback's own failure is
//!   not followed by another.
//! - The channel that delivered a code rides in its mark ([`crate::domain::routing`]), so a
//!   verification counts for that channel: `otpgate_codes_verified_total{channel,country}` and
//!   the conversion by which `OTP_ROUTING=conversion` picks a login's first channel.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::AuthService;
use super::events::EventKind;
use crate::db;
use crate::delivery::{Channel, Destination, OtpMessage, Sent};
use crate::domain::phone::Phone;
use crate::domain::routing::with_channel;
use crate::store::unix_ms;

/// What is kept for a sent code under its message id (short names: one per send).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SentRecord {
    /// The phone's keyed hash (`subjects.phone`), never the number.
    p: String,
    /// The code's HMAC.
    h: String,
    /// The channel that sent it.
    c: String,
    /// The channel a failure falls back to (empty: none).
    n: String,
    /// The locale tag of the text.
    l: String,
    /// The code's mark.
    m: u64,
}

/// A code sent by `channel`, as the login knew it.
pub(crate) struct SentCode<'a> {
    pub channel: Channel,
    pub subject: &'a str,
    pub hash: &'a str,
    pub next: Option<Channel>,
    pub locale: &'a str,
    pub mark: u64,
    pub ttl: Duration,
}

/// A fallback a failed receipt claimed, to run in the background ([`AuthService::fall_back`]).
pub struct Fallback {
    phone: Phone,
    from: Channel,
    to: Channel,
    record: SentRecord,
}

/// The store key of a message's record.
fn receipt_key(channel: Channel, message_id: &str) -> String {
    format!("{}:{message_id}", channel.as_str())
}

fn channel_named(name: &str) -> Option<Channel> {
    match name {
        "sms" => Some(Channel::Sms),
        "whatsapp" => Some(Channel::Whatsapp),
        "telegram" => Some(Channel::Telegram),
        _ => None,
    }
}

impl AuthService {
    /// Records a code a provider accepted, under its message id, for its receipts. Best
    /// effort: the code was sent, so a store failure here only loses the fallback.
    pub(super) async fn record_sent(&self, sent: &Sent, code: SentCode<'_>) {
        let Some(id) = &sent.message_id else {
            return;
        };
        let record = SentRecord {
            p: code.subject.to_string(),
            h: code.hash.to_string(),
            c: code.channel.as_str().to_string(),
            n: code
                .next
                .filter(|_| self.delivery.receipt_fallback())
                .map_or(String::new(), |c| c.as_str().to_string()),
            l: code.locale.to_string(),
            m: code.mark,
        };
        let Ok(text) = serde_json::to_string(&record) else {
            return;
        };
        if let Err(err) = self
            .store
            .put_receipt(&receipt_key(code.channel, id), &text, code.ttl)
            .await
        {
            tracing::warn!(error = %err, channel = %code.channel, "a sent code was not recorded for its delivery receipts");
        }
    }

    /// A provider's delivery receipt for `message_id` on `channel`, about `number` (as the
    /// provider writes it, with or without `+`): its status is noted on the sent code's record,
    /// and the first failure of a code that has a next channel claims a [`Fallback`] (run it
    /// with [`AuthService::fall_back`]). Receipts of messages that are not codes (replies,
    /// notices), expired or unknown, change nothing.
    pub async fn delivery_receipt(
        &self,
        channel: Channel,
        message_id: &str,
        status: &str,
        failed: bool,
        number: &str,
    ) -> Option<Fallback> {
        if message_id.is_empty() || message_id.len() > 128 {
            return None;
        }
        let key = receipt_key(channel, message_id);
        let text = match self.store.note_receipt(&key, status, false).await {
            Ok(Some((text, _))) => text,
            Ok(None) => return None,
            Err(err) => {
                tracing::warn!(error = %err, "a delivery receipt could not be noted");
                return None;
            }
        };
        if !failed || !self.delivery.receipt_fallback() {
            return None;
        }
        let record: SentRecord = serde_json::from_str(&text).ok()?;
        let to = channel_named(&record.n)?;
        let e164 = if number.starts_with('+') {
            number.to_string()
        } else {
            format!("+{number}")
        };
        // The receipt names the number; it must be the one the record was written for.
        let phone = Phone::parse(&e164, None).ok()?;
        if self.otp.subjects(&phone).phone != record.p {
            tracing::warn!(channel = %channel, "a delivery receipt names another number than its message; ignored");
            return None;
        }
        // Claimed once per message, however many receipts and replicas ask.
        match self.store.note_receipt(&key, status, true).await {
            Ok(Some((_, true))) => {}
            Ok(_) => return None,
            Err(err) => {
                tracing::warn!(error = %err, "a failed delivery's fallback could not be claimed");
                return None;
            }
        }
        Some(Fallback {
            phone,
            from: channel,
            to,
            record,
        })
    }

    /// Sends a new code by the fallback's next channel, replacing the failed one while it is
    /// still live and unused.
    pub async fn fall_back(&self, fallback: Fallback) {
        let Fallback {
            phone,
            from,
            to,
            record,
        } = fallback;
        let count = |outcome: &str| {
            self.metrics
                .delivery_fallbacks
                .with_label_values(&[from.as_str(), to.as_str(), outcome])
                .inc();
        };
        let Some(sender) = self.delivery.sender(to).cloned() else {
            count("no_route");
            return;
        };
        let telegram_chat = if to == Channel::Telegram {
            match self
                .db_query(
                    "telegram_chat_for_phone",
                    db::telegram_chat_for_phone(&self.db, phone.as_str()),
                )
                .await
            {
                Ok(Some(chat)) => Some(chat),
                Ok(None) | Err(_) => {
                    count("no_route");
                    return;
                }
            }
        } else {
            None
        };
        let code = self.otp.generate();
        let hash = self.otp.hash(&phone, &code);
        let mark = with_channel(record.m, to);
        let ttl = self.otp.ttl();
        match self
            .store
            .replace_code(&record.p, &record.h, &hash, ttl, mark)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                count("stale");
                return;
            }
            Err(err) => {
                tracing::warn!(phone = %phone.masked(), error = %err, "a failed delivery could not fall back");
                count("failed");
                return;
            }
        }
        let locale = self
            .delivery
            .locales()
            .choose(Some(&record.l), None, phone.region());
        let text = self.delivery.render(&code, ttl.as_secs() / 60, locale);
        let message = OtpMessage {
            code: &code,
            text: &text,
            locale: self.delivery.locales().tag(locale),
        };
        let destination = Destination {
            phone: &phone,
            telegram_chat: telegram_chat.as_deref(),
        };
        let country = phone.region().unwrap_or("unknown");
        match sender.send(&destination, &message).await {
            Ok(sent) => {
                count("sent");
                self.metrics
                    .otp_sent
                    .with_label_values(&[to.as_str(), "sent"])
                    .inc();
                self.metrics
                    .codes_sent
                    .with_label_values(&[to.as_str(), country])
                    .inc();
                self.conversions.sent(country, to, unix_ms());
                self.record_sent(
                    &sent,
                    SentCode {
                        channel: to,
                        subject: &record.p,
                        hash: &hash,
                        next: None,
                        locale: message.locale,
                        mark,
                        ttl,
                    },
                )
                .await;
                tracing::info!(phone = %phone.masked(), from = %from, to = %to, "a failed delivery fell back to the next channel");
                self.event(EventKind::OtpSent)
                    .phone(&phone)
                    .detail("channel", to.as_str())
                    .detail("outcome", "fallback")
                    .detail("failed_channel", from.as_str())
                    .emit();
            }
            Err(err) => {
                count("failed");
                self.metrics
                    .otp_sent
                    .with_label_values(&[to.as_str(), "failed"])
                    .inc();
                let reason = err
                    .reason
                    .replace(phone.as_str(), &phone.masked())
                    .replace(phone.as_str().trim_start_matches('+'), &phone.masked());
                tracing::warn!(phone = %phone.masked(), channel = %to, reason, "the fallback delivery failed too");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_name_no_number() {
        let record = SentRecord {
            p: "a".repeat(32),
            h: "b".repeat(64),
            c: "sms".into(),
            n: "whatsapp".into(),
            l: "pt-BR".into(),
            m: with_channel(1, Channel::Sms),
        };
        let text = serde_json::to_string(&record).unwrap();
        assert!(!text.contains('+'));
        assert_eq!(serde_json::from_str::<SentRecord>(&text).unwrap(), record);
        assert_eq!(receipt_key(Channel::Sms, "SM1"), "sms:SM1");
        assert_eq!(channel_named("log"), None);
    }
}
