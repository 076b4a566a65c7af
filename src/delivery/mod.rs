//! How a code reaches its user: one [`Sender`] per channel, one shared HTTP client.
//!
//! - `sms`: Twilio's Messages API or the team's own gateway (`SMS_PROVIDER=http`), or, in
//!   development with `SEND_OTP_VIA_SMS=false`, the `log` channel, which writes the code to the
//!   server log as the seed did;
//! - `whatsapp`: the WhatsApp Cloud API, as an authentication template or a text message;
//! - `telegram`: a bot message to the user's linked Telegram chat.
//!
//! Beside them, the other outbound provider a login calls: the captcha siteverify endpoint
//! ([`captcha`]).
//!
//! Every provider request is bounded by `DELIVERY_TIMEOUT_MS` and retried once, after a short
//! pause, on a timeout, a connection failure, a 429 or a 5xx. Provider error texts are logged
//! with phone numbers masked and never reach the client; tokens never appear in logs (URLs are
//! stripped from transport errors because Telegram's carries the bot token).

use std::sync::Arc;
use std::time::Duration;

use crate::config::DeliverySettings;
pub use crate::domain::channel::Channel;
use crate::domain::phone::Phone;

pub mod captcha;
pub mod integrity;
pub mod locale;
mod providers;

pub use captcha::{CaptchaOutage, CaptchaVerifier, Siteverify};
pub use locale::{LocaleId, Locales, SmsEncoding, sms_segments};
pub use providers::{
    HttpSmsSender, LogSender, TelegramSender, TwilioSender, TwilioVerifySender, VerifyCheck,
    WhatsappSender,
};

/// A provider refused or did not answer.
#[derive(Debug, thiserror::Error)]
#[error("{channel} delivery failed: {reason}")]
pub struct DeliveryError {
    /// The channel that failed.
    pub channel: Channel,
    /// What went wrong, already free of secrets; phones in it are masked by the caller.
    pub reason: String,
}

/// Where a code goes.
#[derive(Debug)]
pub struct Destination<'a> {
    /// The phone number.
    pub phone: &'a Phone,
    /// The Telegram chat linked to the phone, when there is one.
    pub telegram_chat: Option<&'a str>,
}

/// The message a sender delivers.
#[derive(Debug)]
pub struct OtpMessage<'a> {
    /// The code alone (WhatsApp templates take it as a parameter).
    pub code: &'a str,
    /// The full text, autofill lines included.
    pub text: &'a str,
    /// The text's locale (`pt-BR`).
    pub locale: &'a str,
}

/// What a provider said when it accepted a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    /// Its id for delivery receipts (Twilio's message SID, WhatsApp's `wamid`), when the
    /// provider reports statuses.
    pub message_id: Option<String>,
}

/// Sends a code over one channel.
#[async_trait::async_trait]
pub trait Sender: Send + Sync {
    /// The channel this sender delivers on.
    fn channel(&self) -> Channel;

    /// Delivers `message` to `to`.
    async fn send(
        &self,
        to: &Destination<'_>,
        message: &OtpMessage<'_>,
    ) -> Result<Sent, DeliveryError>;
}

/// The configured senders, the channel order and the message text.
pub struct Delivery {
    sms: Option<Arc<dyn Sender>>,
    whatsapp: Option<Arc<dyn Sender>>,
    telegram: Option<Arc<dyn Sender>>,
    whatsapp_api: Option<Arc<WhatsappSender>>,
    telegram_api: Option<Arc<TelegramSender>>,
    twilio_verify: Option<Arc<TwilioVerifySender>>,
    order: Vec<Channel>,
    locales: Locales,
    app_name: String,
    android_app_hash: Option<String>,
    webotp_domain: Option<String>,
    routing: crate::domain::routing::RoutingPolicy,
    receipt_fallback: bool,
}

/// The HTTP client of an outside API (`what` names it in an error): every request bounded by
/// `timeout`, connections kept 90 s, and no redirects (no provider API redirects; following
/// one would re-send a code or a secret elsewhere).
pub(crate) fn outbound_client(timeout: Duration, what: &str) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("otpgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("{what} HTTP client: {e}"))
}

impl Delivery {
    /// Builds the senders the settings configure, sharing one pooled HTTP client.
    pub fn from_settings(settings: &DeliverySettings) -> Result<Self, String> {
        let client = outbound_client(settings.timeout, "provider")?;
        let twilio_verify = settings.twilio_verify.clone().map(|verify| {
            Arc::new(TwilioVerifySender::new(
                client.clone(),
                verify,
                settings.android_app_hash.clone(),
            ))
        });
        let sms: Option<Arc<dyn Sender>> =
            match (&settings.twilio, &settings.http_sms, settings.log_channel) {
                _ if twilio_verify.is_some() => twilio_verify.clone().map(|v| v as Arc<dyn Sender>),
                (Some(twilio), _, _) => {
                    Some(Arc::new(TwilioSender::new(client.clone(), twilio.clone())))
                }
                (None, Some(http), _) => {
                    Some(Arc::new(HttpSmsSender::new(client.clone(), http.clone())))
                }
                (None, None, true) => Some(Arc::new(LogSender)),
                (None, None, false) => None,
            };
        let whatsapp_api = settings
            .whatsapp
            .clone()
            .map(|w| Arc::new(WhatsappSender::new(client.clone(), w)));
        let telegram_api = settings
            .telegram
            .clone()
            .map(|t| Arc::new(TelegramSender::new(client.clone(), t)));
        Ok(Self {
            sms,
            whatsapp: whatsapp_api.clone().map(|w| w as Arc<dyn Sender>),
            telegram: telegram_api.clone().map(|t| t as Arc<dyn Sender>),
            whatsapp_api,
            telegram_api,
            twilio_verify,
            order: settings.channel_order.clone(),
            locales: Locales::new(&settings.locales),
            app_name: settings.app_name.clone(),
            android_app_hash: settings.android_app_hash.clone(),
            webotp_domain: settings.webotp_domain.clone(),
            routing: settings.routing,
            receipt_fallback: settings.receipt_fallback,
        })
    }

    /// The sender of a requested channel, when configured.
    pub fn sender(&self, channel: Channel) -> Option<&Arc<dyn Sender>> {
        match channel {
            Channel::Sms | Channel::Log => self.sms.as_ref(),
            Channel::Whatsapp => self.whatsapp.as_ref(),
            Channel::Telegram => self.telegram.as_ref(),
        }
    }

    /// The WhatsApp Cloud API client, for replies to inbound messages.
    pub fn whatsapp_api(&self) -> Option<&Arc<WhatsappSender>> {
        self.whatsapp_api.as_ref()
    }

    /// Twilio Verify, when it sends (and checks) the SMS codes (`SMS_PROVIDER=twilio_verify`).
    pub fn twilio_verify(&self) -> Option<&Arc<TwilioVerifySender>> {
        self.twilio_verify.as_ref()
    }

    /// The Telegram Bot API client, for replies to bot messages.
    pub fn telegram_api(&self) -> Option<&Arc<TelegramSender>> {
        self.telegram_api.as_ref()
    }

    /// The channels to try, in order: the requested one (or the first configured channel of
    /// `OTP_CHANNEL_ORDER`), then the other configured channels of the order as fallbacks.
    /// `None` when the requested channel is not configured.
    pub fn plan(&self, requested: Option<Channel>) -> Option<Vec<Channel>> {
        let configured: Vec<Channel> = self
            .order
            .iter()
            .copied()
            .filter(|c| self.sender(*c).is_some())
            .collect();
        let first = match requested {
            Some(channel) => {
                self.sender(channel)?;
                channel
            }
            None => *configured.first()?,
        };
        let mut plan = vec![first];
        plan.extend(configured.into_iter().filter(|c| *c != first));
        Some(plan)
    }

    /// How a login without a requested channel picks its first one (`OTP_ROUTING*`).
    pub fn routing(&self) -> &crate::domain::routing::RoutingPolicy {
        &self.routing
    }

    /// Whether a failed delivery receipt sends a new code by the next channel
    /// (`OTP_RECEIPT_FALLBACK`).
    pub fn receipt_fallback(&self) -> bool {
        self.receipt_fallback
    }

    /// The message languages ([`Locales`]).
    pub fn locales(&self) -> &Locales {
        &self.locales
    }

    /// The text of a code message in `locale`: its template, then the SMS Retriever hash line,
    /// then the WebOTP line (which must be the last line).
    pub fn render(&self, code: &str, minutes: u64, locale: LocaleId) -> String {
        let mut text = self
            .locales
            .template(locale)
            .replace("{code}", code)
            .replace("{minutes}", &minutes.to_string())
            .replace("{app}", &self.app_name);
        if let Some(hash) = &self.android_app_hash {
            text.push_str("\n\n");
            text.push_str(hash);
        }
        if let Some(domain) = &self.webotp_domain {
            text.push_str(&format!("\n\n@{domain} #{code}"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(pairs: &[(&str, &str)]) -> Delivery {
        let settings = crate::config::settings_from(pairs).unwrap();
        Delivery::from_settings(&settings.delivery).unwrap()
    }

    const WHATSAPP: [(&str, &str); 2] = [
        ("WHATSAPP_ACCESS_TOKEN", "t"),
        ("WHATSAPP_PHONE_NUMBER_ID", "123"),
    ];

    #[test]
    fn plans_follow_the_channel_order() {
        let d = delivery(&[]);
        assert_eq!(d.plan(None), Some(vec![Channel::Sms]));
        assert_eq!(d.plan(Some(Channel::Whatsapp)), None);
        assert_eq!(d.plan(Some(Channel::Telegram)), None);

        let mut pairs = WHATSAPP.to_vec();
        pairs.push(("OTP_CHANNEL_ORDER", "whatsapp,sms"));
        let d = delivery(&pairs);
        assert_eq!(d.plan(None), Some(vec![Channel::Whatsapp, Channel::Sms]));
        assert_eq!(
            d.plan(Some(Channel::Sms)),
            Some(vec![Channel::Sms, Channel::Whatsapp])
        );
        // A configured channel missing from the order may be asked for, without fallbacks
        // beyond the order.
        pairs.push(("TELEGRAM_BOT_TOKEN", "1:abc"));
        let d = delivery(&pairs);
        assert_eq!(
            d.plan(Some(Channel::Telegram)),
            Some(vec![Channel::Telegram, Channel::Whatsapp, Channel::Sms])
        );
    }

    #[test]
    fn messages_carry_autofill_lines_last() {
        let d = delivery(&[
            ("APP_NAME", "Acme"),
            ("OTP_ANDROID_APP_HASH", "FA+9qCX9VSu"),
            ("OTP_WEBOTP_DOMAIN", "acme.example"),
        ]);
        let text = d.render("123456", 5, d.locales().default_locale());
        assert!(
            text.starts_with("123456 is your Acme verification code. It expires in 5 minutes.")
        );
        assert!(text.contains("\n\nFA+9qCX9VSu\n\n"));
        assert!(text.ends_with("\n@acme.example #123456"), "{text}");
        let d = delivery(&[("OTP_MESSAGE_TEMPLATE", "Code {code} for {app}")]);
        let plain = d.render("42", 5, d.locales().default_locale());
        assert_eq!(plain, "Code 42 for otpgate");
    }
}
