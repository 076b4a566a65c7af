//! The channels a code can travel by.

use std::fmt;

/// A delivery channel, as clients name it and as responses report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
