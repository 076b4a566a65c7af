//! Login by message: the WhatsApp and Telegram webhooks and the Telegram Login Widget.
//!
//! Every webhook call is authenticated first (WhatsApp: `X-Hub-Signature-256`, an HMAC of the
//! raw body; Telegram: the `X-Telegram-Bot-Api-Secret-Token` given to `setWebhook`); an
//! unauthenticated call is 403 and changes nothing. An authentic delivery is answered 200
//! quickly, also when a message is not understood or a reply fails (replies go out in the
//! background), so the platforms do not retry-storm. Each event is processed once: its id is
//! marked in the store first, and unmarked again only when processing failed because the store
//! or the database is down; then the answer is 503 so the platform delivers it again.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::AuthService;
use crate::auth::intents::IntentChannel;
use crate::config::MessagingSettings;
use crate::domain::channel::Channel;
use crate::domain::secret::Secret;
use crate::error::Error;
use crate::store::{BindOutcome, Store};
use crate::telemetry::Metrics;

pub mod receipts;
pub mod telegram;
pub mod whatsapp;

/// How long event ids are remembered: the platforms retry for up to a day (Meta: with
/// decreasing frequency for up to 7 days, but the same message is then past any use).
const SEEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The inbound side: webhooks and the widget.
pub struct Messaging {
    auth: Arc<AuthService>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    settings: MessagingSettings,
    bot_token: Option<Secret>,
    twilio_callbacks: Option<receipts::TwilioCallbacks>,
}

impl Messaging {
    /// Wires the webhooks to the login domain.
    pub fn new(
        settings: &MessagingSettings,
        bot_token: Option<Secret>,
        twilio_callbacks: Option<receipts::TwilioCallbacks>,
        auth: Arc<AuthService>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            auth,
            store,
            metrics,
            settings: settings.clone(),
            bot_token,
            twilio_callbacks,
        }
    }

    /// The first steps of every webhook call: refuse it (403, counted) unless `authentic`,
    /// then parse the body. A signed body that does not parse is counted and acknowledged
    /// (`None`): redelivering it would not make it parse.
    fn authentic_body<T: serde::de::DeserializeOwned>(
        &self,
        source: &'static str,
        authentic: bool,
        body: &[u8],
    ) -> Result<Option<T>, Error> {
        if !authentic {
            self.metrics.webhook(source, "forbidden");
            tracing::warn!(
                source,
                "webhook call without a valid signature or secret refused"
            );
            return Err(Error::InvalidSignature);
        }
        match serde_json::from_slice(body) {
            Ok(parsed) => Ok(Some(parsed)),
            Err(err) => {
                self.metrics.webhook(source, "malformed");
                tracing::warn!(source, error = %err, "signed webhook body not understood");
                Ok(None)
            }
        }
    }

    /// Runs `work` for event `key` unless it was seen before. When `work` fails with a
    /// dependency error, the mark is removed so a redelivery runs it again.
    async fn once(
        &self,
        source: &'static str,
        key: &str,
        work: impl Future<Output = Result<(), Error>>,
    ) -> Result<(), Error> {
        let key = format!("{source}:{key}");
        if !self.store.first_delivery(&key, SEEN_TTL).await? {
            self.metrics.webhook(source, "duplicate");
            return Ok(());
        }
        let result = work.await;
        if let Err(err) = &result {
            self.metrics.webhook(source, "failed");
            tracing::warn!(source, code = err.code(), error = %err, "webhook event failed; the platform will redeliver it");
            if let Err(forget) = self.store.forget_delivery(&key).await {
                tracing::warn!(source, error = %forget, "could not unmark a failed webhook event");
            }
        }
        result
    }

    /// The confirmation sent after a login by message: it names the app and says how to report
    /// a login that was not the user's (the defence against reverse-OTP phishing).
    fn confirmation(&self) -> String {
        let app = self.auth.app_name();
        let report = match &self.settings.support_contact {
            Some(contact) => format!("report it at {contact}"),
            None => format!("report it to {app} support"),
        };
        format!(
            "You are now logged in to {app} on the device that asked for it. If that was not \
             you, someone may have tricked you into sending a login code: {report}. Never send \
             a login message someone else gave you."
        )
    }
}

impl Messaging {
    /// Binds the intent whose `code` arrived on `channel` from `subject` (once); the reply for
    /// the sender: the confirmation, or why nothing was bound.
    async fn bind(
        &self,
        channel: IntentChannel,
        code: &str,
        subject: &str,
    ) -> Result<String, Error> {
        let source = channel.as_str();
        Ok(match self.auth.bind_intent(channel, code, subject).await? {
            BindOutcome::Bound => {
                self.metrics.webhook(source, "intent_bound");
                tracing::info!(channel = source, "login intent bound");
                self.confirmation()
            }
            BindOutcome::AlreadyBound => {
                self.metrics.webhook(source, "intent_rebind");
                "This login link was already used. Start again in the app.".into()
            }
            BindOutcome::Unknown => {
                self.metrics.webhook(source, "intent_unknown");
                "This login link has expired. Start again in the app.".into()
            }
        })
    }
}

/// Runs `work` in the background (replies must not delay the webhook's answer).
fn background(work: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(work);
}

/// What a background reply needs: the senders and the counters.
#[derive(Clone)]
struct Replier {
    auth: Arc<AuthService>,
    metrics: Arc<Metrics>,
}

impl Messaging {
    fn replier(&self) -> Replier {
        Replier {
            auth: self.auth.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl Replier {
    /// Sends a code for `phone` over `channel` through the normal login (same limits). Returns
    /// what to tell the user when a limit refused; other failures are logged and counted.
    async fn send_code(&self, phone: &str, channel: Channel) -> Option<String> {
        match self
            .auth
            .login(
                phone,
                Some(channel),
                &crate::auth::sessions::ClientInfo::default(),
                // The user messaged us from their own account: no captcha.
                crate::auth::captcha::CaptchaInput::Exempt,
            )
            .await
        {
            Ok(mut started) => {
                self.auth.spawn_fallback(&mut started);
                None
            }
            Err(Error::RateLimited { retry_after, .. }) => Some(format!(
                "Too many codes were asked for this number. Try again in {} minute(s).",
                retry_after.div_ceil(60).max(1)
            )),
            Err(err) => {
                tracing::warn!(channel = %channel, code = err.code(), "code by message command failed");
                self.metrics.webhook(channel.as_str(), "otp_failed");
                None
            }
        }
    }

    /// Sends a WhatsApp text to `to` (digits); a failure is logged and counted.
    async fn whatsapp(&self, to: &str, text: String) {
        let Some(api) = self.auth.delivery().whatsapp_api() else {
            self.metrics.webhook("whatsapp", "reply_skipped");
            return;
        };
        if let Err(err) = api.send_text(to, &text).await {
            // Provider texts may quote the number.
            let reason = err.reason.replace(to, "…");
            tracing::warn!(reason, "WhatsApp reply failed");
            self.metrics.webhook("whatsapp", "reply_failed");
        }
    }

    /// Sends a Telegram message to `chat`; a failure is logged and counted.
    async fn telegram(&self, chat: i64, text: String, markup: Option<serde_json::Value>) {
        let Some(api) = self.auth.delivery().telegram_api() else {
            self.metrics.webhook("telegram", "reply_skipped");
            return;
        };
        if let Err(err) = api.send_message(chat, &text, markup).await {
            tracing::warn!(reason = err.reason, "Telegram reply failed");
            self.metrics.webhook("telegram", "reply_failed");
        }
    }
}
