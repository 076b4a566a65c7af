//! How a code reaches its user: one [`Sender`] per channel.
//!
//! This build has the development `log` channel only: the code is written to the server log so
//! a newcomer can log in without any provider account. Production refuses to start with it as
//! the only channel (see `config`).

use std::fmt;
use std::sync::Arc;

use crate::auth::phone::Phone;

/// A delivery channel, as clients name it and as responses report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// SMS (Twilio).
    Sms,
    /// WhatsApp Cloud API.
    Whatsapp,
    /// Telegram bot message.
    Telegram,
    /// Development only: written to the server log.
    Log,
}

impl Channel {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Whatsapp => "whatsapp",
            Channel::Telegram => "telegram",
            Channel::Log => "log",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider refused or did not answer.
#[derive(Debug, thiserror::Error)]
#[error("{channel} delivery failed: {reason}")]
pub struct DeliveryError {
    /// The channel that failed.
    pub channel: Channel,
    /// What went wrong (already free of secrets and codes).
    pub reason: String,
}

/// The message a sender delivers.
#[derive(Debug)]
pub struct OtpMessage<'a> {
    /// The code.
    pub code: &'a str,
    /// Minutes until the code expires.
    pub minutes: u64,
}

/// Sends a code over one channel.
#[async_trait::async_trait]
pub trait Sender: Send + Sync {
    /// The channel this sender delivers on.
    fn channel(&self) -> Channel;

    /// Delivers `message` to `phone`.
    async fn send(&self, phone: &Phone, message: &OtpMessage<'_>) -> Result<(), DeliveryError>;
}

/// Development delivery: the code goes to the log, with the phone masked.
pub struct LogSender;

#[async_trait::async_trait]
impl Sender for LogSender {
    fn channel(&self) -> Channel {
        Channel::Log
    }

    async fn send(&self, phone: &Phone, message: &OtpMessage<'_>) -> Result<(), DeliveryError> {
        tracing::info!(
            phone = %phone.masked(),
            code = message.code,
            expires_in_minutes = message.minutes,
            "development delivery (log channel): one-time code"
        );
        Ok(())
    }
}

/// Picks the sender for a requested channel.
pub struct Delivery {
    sms: Arc<dyn Sender>,
}

impl Delivery {
    /// The senders of this build: `sms` (and the default) go to the log channel, as the seed
    /// does with `SEND_OTP_VIA_SMS=false`.
    pub fn development() -> Self {
        Self {
            sms: Arc::new(LogSender),
        }
    }

    /// The sender for `requested` (`None` = the default channel), or `None` when that channel
    /// is not configured.
    pub fn sender_for(&self, requested: Option<Channel>) -> Option<&Arc<dyn Sender>> {
        match requested {
            None | Some(Channel::Sms) => Some(&self.sms),
            Some(_) => None,
        }
    }
}
