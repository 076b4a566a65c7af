//! Delivery receipts and routing on evidence.
//!
//! - Every code a provider accepted with a message id (Twilio's SID when a status callback is
//!   configured, WhatsApp's `wamid` when its webhook is) is recorded under that id for the
//!   code's life: the phone as its keyed hash, the number itself encrypted under a key derived
//!   from the OTP pepper and the message id, the code's HMAC, the channel, the next channel of
//!   the login's plan, the text's locale and the code's mark. Receipts update its last status.
//! - A receipt reporting a failure (`failed`, `undelivered`), while the code is still live,
//!   unused, not burned and the phone not blocked, sends a **new** code by the next channel,
//!   once per message (claimed atomically in the store, so repeated receipts and other replicas
//!   do not send again), and the failed code stops working. A new code rather than the same
//!   one: the same would have to be kept readable for its whole life, and codes are kept only
//!   as HMACs; whatever copy the failed route still holds becomes useless. The wrong attempts
//!   carry over. The fallback is a send like any other: the send quotas (daily caps included)
//!   and the pumping defence are charged first and may refuse it; when its own delivery fails,
//!   the failed code is put back and the charges given back, and no further fallback follows.
//! - A failure receipt can overtake the send's own answer (the provider reports before its
//!   answer reaches us, or before the record is written): its status is kept for
//!   [`EARLY_RECEIPT`] under the message id, and the record, once written, picks it up; the
//!   login's caller then claims and runs its fallback in the background.
//! - The channel that delivered a code rides in its mark ([`crate::domain::routing`]), so a
//!   verification counts for that channel: `otpgate_codes_verified_total{channel,country}` and
//!   the conversion by which `OTP_ROUTING=conversion` picks a login's first channel.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::events::EventKind;
use super::sessions::ClientInfo;
use super::{AuthService, LoginStarted};
use crate::db;
use crate::delivery::{Channel, Destination, OtpMessage, Sent};
use crate::domain::phone::Phone;
use crate::domain::routing::{channel_of, with_channel};
use crate::store::unix_ms;

/// How long a failure receipt for a message not recorded yet is kept for its record (longer
/// than any provider takes to answer a send).
pub(crate) const EARLY_RECEIPT: Duration = Duration::from_secs(120);

/// What is kept for a sent code under its message id (short names: one per send).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SentRecord {
    /// The phone's keyed hash (`subjects.phone`), never the number.
    p: String,
    /// The number, encrypted ([`AuthService::seal_number`]), hex.
    t: String,
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
    pub phone: &'a Phone,
    pub subject: &'a str,
    pub hash: &'a str,
    pub next: Option<Channel>,
    pub locale: &'a str,
    pub mark: u64,
    pub ttl: Duration,
}

/// A failure receipt that came before its send was recorded (so before the send's login
/// answered): its fallback is claimed and run by [`AuthService::spawn_fallback`].
#[derive(Debug)]
pub struct EarlyReceipt {
    channel: Channel,
    message_id: String,
    status: String,
}

/// A fallback a failed receipt claimed, to run in the background ([`AuthService::fall_back`]).
/// Claimed once per message: dropping it unrun loses the fallback.
#[must_use]
pub struct Fallback {
    phone: Phone,
    from: Channel,
    to: Channel,
    record: SentRecord,
}

impl std::fmt::Debug for Fallback {
    /// The channels only: the record holds the number (sealed) and the code's HMAC.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

/// XORs `bytes` with a key stream of 32 bytes (numbers are at most 16).
fn xor(bytes: &[u8], stream: &[u8]) -> Option<Vec<u8>> {
    (bytes.len() <= stream.len()).then(|| bytes.iter().zip(stream).map(|(b, k)| b ^ k).collect())
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
    /// The key stream that hides a number in message `id`'s record: HMAC-SHA256 under the OTP
    /// pepper of the message id, unique per message, so the record holds no readable number.
    fn number_stream(&self, id: &str) -> Vec<u8> {
        hex::decode(self.otp.keyed_hash("receipt-number", id)).unwrap_or_default()
    }

    fn seal_number(&self, id: &str, phone: &Phone) -> String {
        xor(phone.as_str().as_bytes(), &self.number_stream(id)).map_or(String::new(), hex::encode)
    }

    fn open_number(&self, id: &str, sealed: &str) -> Option<String> {
        let bytes = xor(&hex::decode(sealed).ok()?, &self.number_stream(id))?;
        String::from_utf8(bytes).ok()
    }

    /// Records a code a provider accepted, under its message id, for its receipts: when the
    /// provider gave an id and its receipts can arrive (Twilio with a status callback, which is
    /// the only way its sender returns an id; WhatsApp with `WHATSAPP_WEBHOOK_SECRET`). One
    /// store write, on a send that already waited for a provider. Best effort: the code was
    /// sent, so a store failure here only loses the fallback. A failure receipt that came
    /// before the record is returned, for the caller to act on in the background
    /// ([`AuthService::spawn_fallback`]).
    #[must_use]
    pub(super) async fn record_sent(
        &self,
        sent: &Sent,
        code: SentCode<'_>,
    ) -> Option<EarlyReceipt> {
        let id = sent.message_id.as_ref()?;
        if code.channel == Channel::Whatsapp && self.messaging.whatsapp_webhook_secret.is_none() {
            return None;
        }
        let record = SentRecord {
            p: code.subject.to_string(),
            t: self.seal_number(id, code.phone),
            h: code.hash.to_string(),
            c: code.channel.as_str().to_string(),
            n: code
                .next
                .filter(|_| self.delivery.receipt_fallback())
                .map_or(String::new(), |c| c.as_str().to_string()),
            l: code.locale.to_string(),
            m: code.mark,
        };
        let text = serde_json::to_string(&record).ok()?;
        match self
            .store
            .put_receipt(&receipt_key(code.channel, id), &text, code.ttl)
            .await
        {
            Ok(Some(status)) => {
                tracing::info!(channel = %code.channel, status, "a delivery receipt came before its send's answer");
                Some(EarlyReceipt {
                    channel: code.channel,
                    message_id: id.clone(),
                    status,
                })
            }
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(error = %err, channel = %code.channel, "a sent code was not recorded for its delivery receipts");
                None
            }
        }
    }

    /// A code verified: counted for the channel that delivered it (from its `mark`) and the
    /// number's country, in the metric and in the routing evidence.
    pub(super) fn count_verified(&self, phone: &Phone, mark: u64) {
        let country = phone.region().unwrap_or("unknown");
        let channel = channel_of(mark);
        self.metrics
            .codes_verified
            .with_label_values(&[channel.map_or("unknown", Channel::as_str), country])
            .inc();
        if let Some(channel) = channel {
            self.conversions.verified(country, channel, unix_ms());
        }
    }

    /// A provider's delivery receipt for `message_id` on `channel`: its status is noted on the
    /// sent code's record, and the first failure of a code that has a next channel claims a
    /// [`Fallback`] (run it with [`AuthService::fall_back`]). Receipts of messages that are not
    /// recorded codes (replies, notices, expired), change nothing. The receipt itself is
    /// authenticated by the caller (Twilio's or Meta's signature) and names an unguessable id;
    /// the number the fallback goes to is the record's, not the receipt's (WhatsApp's
    /// `recipient_id` is a WhatsApp id, which for some countries differs from the number).
    pub async fn delivery_receipt(
        &self,
        channel: Channel,
        message_id: &str,
        status: &str,
        failed: bool,
    ) -> Option<Fallback> {
        if message_id.is_empty() || message_id.len() > 128 {
            return None;
        }
        let key = receipt_key(channel, message_id);
        // A failure that may need its fallback is kept when the message is not recorded yet.
        let early = (failed && self.delivery.receipt_fallback()).then_some(EARLY_RECEIPT);
        let text = match self.store.note_receipt(&key, status, false, early).await {
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
        let number = self.open_number(message_id, &record.t)?;
        let phone = Phone::parse(&number, None).ok()?;
        if self.otp.subjects(&phone).phone != record.p {
            tracing::warn!(channel = %channel, "a delivery record does not match its number; ignored");
            return None;
        }
        // Claimed once per message, however many receipts and replicas ask.
        match self.store.note_receipt(&key, status, true, None).await {
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

    /// Acts in the background on the failure receipt that came before a login's send was
    /// recorded ([`LoginStarted::early_receipt`]): claims its fallback and runs it, as the
    /// receipt handler does. Neither dies with the request (a claim cannot be made twice) nor
    /// holds it up.
    pub fn spawn_fallback(self: &Arc<Self>, started: &mut LoginStarted) {
        if let Some(early) = started.early_receipt.take() {
            let auth = self.clone();
            self.background.spawn(async move {
                let claimed = auth
                    .delivery_receipt(early.channel, &early.message_id, &early.status, true)
                    .await;
                if let Some(fallback) = claimed {
                    auth.fall_back(fallback).await;
                }
            });
        }
    }

    /// Runs a claimed fallback in the background ([`AuthService::fall_back`]); a stopping
    /// replica finishes it first ([`AuthService::flush_events`]).
    pub fn spawn_claimed_fallback(self: &Arc<Self>, fallback: Fallback) {
        let auth = self.clone();
        self.background
            .spawn(async move { auth.fall_back(fallback).await });
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
        // A send like any other: the send quotas (daily caps included) and the pumping defence
        // first. Neither names the client (there is none): the network quotas are not charged.
        let subjects = self.otp.subjects(&phone);
        let quotas = self.quotas.for_send(&phone, &subjects, None);
        match self.store.charge_quotas(&quotas).await {
            Ok(Ok(_)) => {}
            Ok(Err(refusal)) => {
                self.metrics.refused(refusal.policy);
                count("limited");
                return;
            }
            Err(err) => {
                tracing::warn!(phone = %phone.masked(), error = %err, "a failed delivery could not fall back");
                count("failed");
                return;
            }
        }
        let pump_checks = self.pump_checks(&phone, None);
        let code = self.otp.generate();
        // SMS by Twilio Verify: Twilio makes the code, the store keeps its marker.
        let hash = if to == Channel::Sms && self.delivery.twilio_verify().is_some() {
            self.otp.delegated_hash(&phone)
        } else {
            self.otp.hash(&phone, &code)
        };
        // Gives back what this fallback was charged: `release_code` of a hash that is not stored
        // only refunds. The fresh code's HMAC is stored only between a successful replace and
        // the put-back after a failed send; never the Verify marker, which a newer login of
        // the same phone may hold.
        let refund_only = self.otp.hash(&phone, &code);
        let give_back = async |checks: &[crate::domain::pumping::PumpCheck]| {
            if let Err(err) = self
                .store
                .release_code(&record.p, &refund_only, &quotas)
                .await
            {
                tracing::warn!(error = %err, "a fallback's quota charges could not be given back");
            }
            self.pump_unsend(checks).await;
        };
        if self
            .pump_send(&phone, &pump_checks, &ClientInfo::default())
            .await
            .is_err()
        {
            give_back(&[]).await;
            count("limited");
            return;
        }
        let mark = with_channel(record.m, to);
        let ttl = self.otp.ttl();
        let max_attempts = self.otp.max_attempts();
        match self
            .store
            .replace_code(&record.p, &record.h, &hash, ttl, mark, max_attempts)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                give_back(&pump_checks).await;
                count("stale");
                return;
            }
            Err(err) => {
                tracing::warn!(phone = %phone.masked(), error = %err, "a failed delivery could not fall back");
                give_back(&pump_checks).await;
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
                // The fallback's own record: it names no next channel, so nothing follows it.
                let _ = self
                    .record_sent(
                        &sent,
                        SentCode {
                            channel: to,
                            phone: &phone,
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
                // The failed code works again (the receipt may have been wrong, and the user
                // must not be left without one), and the charges go back.
                match self
                    .store
                    .replace_code(&record.p, &hash, &record.h, ttl, record.m, max_attempts)
                    .await
                {
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(phone = %phone.masked(), error = %err, "a failed code could not be put back");
                    }
                }
                give_back(&pump_checks).await;
            }
        }
    }
}

/// Work started by a request that must outlive it, and finish before the process ends: the
/// fallbacks claimed by receipts (a claim cannot be made twice, so a fallback dropped with its
/// request, or with a stopping replica, would never be sent).
#[derive(Default)]
pub(crate) struct Background {
    tasks: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl Background {
    /// Runs `task` on the current runtime, kept until it ends or [`Background::close`].
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        // The ended ones leave the set here (it never holds more than the ones running).
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// At shutdown: waits for the tasks running (at most `timeout`). Whether they all ended.
    pub(crate) async fn close(&self, timeout: Duration) -> bool {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        tokio::time::timeout(timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_work_is_finished_at_shutdown_within_its_time() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let background = Background::default();
        let done = Arc::new(AtomicUsize::new(0));
        for pause in [10, 150] {
            let done = done.clone();
            background.spawn(async move {
                tokio::time::sleep(Duration::from_millis(pause)).await;
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert!(background.close(Duration::from_secs(5)).await);
        assert_eq!(done.load(Ordering::SeqCst), 2, "both ran to the end");
        // One that outlives the time given: reported, not waited for.
        background.spawn(std::future::pending());
        assert!(!background.close(Duration::from_millis(50)).await);
    }

    #[test]
    fn records_round_trip_and_name_no_number() {
        let record = SentRecord {
            p: "a".repeat(32),
            t: "00ff".into(),
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
        assert_eq!(xor(b"+919876543210", &[0; 32]).unwrap(), b"+919876543210");
        assert_eq!(xor(&[1; 33], &[0; 32]), None);
    }
}
