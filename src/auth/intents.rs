//! Login intents: login without typing a code. The app creates an intent and opens its deep
//! link; the user sends the intent's code from their own WhatsApp (or taps Start in Telegram);
//! the platform's webhook tells us who sent it, already verified; the app's poll gets tokens.
//!
//! An intent is one store entry keyed by a hash of its code, holding the hash of its poll
//! token. It is bound once (to the first sender of its code) and claimed once (by the first
//! poll after that); it expires after `INTENT_EXPIRY_SECONDS`.

use chrono::Utc;
use rand::RngExt;
use sha2::{Digest, Sha256};

use super::events::EventKind;
use super::{AuthService, LoggedIn, LoginMethod};
use crate::db;
use crate::domain::phone::Phone;
use crate::error::Error;
use crate::store::{BindOutcome, ClaimOutcome};

/// Crockford's base32 alphabet: no I, L, O or U, so a code survives being read aloud.
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters of an intent code: 16 × 5 = 80 bits of entropy.
pub const CODE_LENGTH: usize = 16;

/// Identity provider name of Telegram accounts.
pub const TELEGRAM: &str = "telegram";

/// A channel a login intent can complete on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentChannel {
    /// The user sends a prefilled WhatsApp message to the business number.
    Whatsapp,
    /// The user taps Start in the bot's chat (`/start <code>`).
    Telegram,
}

impl IntentChannel {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            IntentChannel::Whatsapp => "whatsapp",
            IntentChannel::Telegram => "telegram",
        }
    }
}

/// A new intent, as the creating app receives it.
#[derive(Debug)]
pub struct NewIntent {
    /// Public id of the intent (for polling).
    pub intent_id: String,
    /// The secret that proves the poller created the intent.
    pub poll_token: String,
    /// The link that opens WhatsApp or Telegram with the code.
    pub deep_link: String,
    /// Seconds until the intent expires.
    pub expires_in: u64,
}

/// What a poll found.
#[derive(Debug)]
pub enum PollResult {
    /// Nobody has sent the code yet.
    Pending,
    /// Bound: a new session for the sender (handed out once).
    LoggedIn(Box<LoggedIn>),
}

/// A fresh intent code from the thread-local CSPRNG.
fn generate_code() -> String {
    let mut rng = rand::rng();
    (0..CODE_LENGTH)
        .map(|_| char::from(CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())]))
        .collect()
}

/// A poll token: 256 random bits, base64url.
fn generate_poll_token() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of a poll token, hex (the token has 256 bits; no pepper needed).
fn poll_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `word` has the shape of an intent code (any case).
pub fn is_code(word: &str) -> bool {
    word.len() == CODE_LENGTH
        && word
            .bytes()
            .all(|b| CODE_ALPHABET.contains(&b.to_ascii_uppercase()))
}

/// The intent code in a free text (a WhatsApp message), if it holds one.
pub fn find_code(text: &str) -> Option<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .find(|word| is_code(word))
        .map(str::to_ascii_uppercase)
}

/// Percent-encodes `text` for a URL query value (RFC 3986 unreserved characters stay).
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl AuthService {
    /// The store id of the intent whose code is `code`.
    fn intent_id(&self, code: &str) -> String {
        let mut id = self
            .otp
            .keyed_hash("login-intent", &code.to_ascii_uppercase());
        id.truncate(32);
        id
    }

    /// The text a WhatsApp intent's link prefills: what the user sends.
    pub fn whatsapp_intent_text(&self, code: &str) -> String {
        format!("Log me in to {}. Code: {code}", self.app_name)
    }

    /// Creates a login intent for `channel`: 422 `channel_unavailable` when the channel's
    /// webhook and link settings are missing; 429 when the client's or the global intent
    /// quota refuses (`RATE_LIMIT_INTENT_*`). Two store round trips (quotas, then the intent).
    pub async fn create_intent(
        &self,
        channel: IntentChannel,
        client_ip: Option<std::net::IpAddr>,
    ) -> Result<NewIntent, Error> {
        let unavailable = || Error::ChannelUnavailable(channel.as_str().to_string());
        let m = &self.messaging;
        let code = generate_code();
        let deep_link = match channel {
            IntentChannel::Whatsapp => {
                let number = m
                    .whatsapp_business_number
                    .as_ref()
                    .ok_or_else(unavailable)?;
                if m.whatsapp_webhook_secret.is_none() {
                    return Err(unavailable());
                }
                format!(
                    "https://wa.me/{number}?text={}",
                    url_encode(&self.whatsapp_intent_text(&code))
                )
            }
            IntentChannel::Telegram => {
                let bot = m.telegram_bot_username.as_ref().ok_or_else(unavailable)?;
                if m.telegram_webhook_secret.is_none() {
                    return Err(unavailable());
                }
                format!("https://t.me/{bot}?start={code}")
            }
        };
        let quotas = self.quotas.for_intent(client_ip);
        if let Err(refusal) = self.store.charge_quotas(&quotas).await? {
            self.metrics.refused(refusal.policy);
            self.metrics.intent(channel.as_str(), "rate_limited");
            return Err(Error::from(refusal));
        }
        let intent_id = self.intent_id(&code);
        let poll_token = generate_poll_token();
        self.store
            .create_intent(
                &intent_id,
                &poll_hash(&poll_token),
                channel.as_str(),
                m.intent_ttl,
            )
            .await?;
        self.metrics.intent(channel.as_str(), "created");
        Ok(NewIntent {
            intent_id,
            poll_token,
            deep_link,
            expires_in: m.intent_ttl.as_secs(),
        })
    }

    /// Binds the intent whose code is `code` to `subject` (an E.164 phone for WhatsApp, a
    /// Telegram user id), once. One store round trip.
    pub async fn bind_intent(
        &self,
        channel: IntentChannel,
        code: &str,
        subject: &str,
    ) -> Result<BindOutcome, Error> {
        let outcome = self
            .store
            .bind_intent(&self.intent_id(code), channel.as_str(), subject)
            .await?;
        let label = match outcome {
            BindOutcome::Bound => "bound",
            BindOutcome::Unknown => "unknown",
            BindOutcome::AlreadyBound => "rebind_refused",
        };
        self.metrics.intent(channel.as_str(), label);
        Ok(outcome)
    }

    /// Polls an intent: pending, or (exactly once) a session for whoever sent its code. A
    /// wrong poll token is 403 and changes nothing; an expired intent is 410 `intent_expired`,
    /// a consumed one 410 `intent_consumed`. When the session cannot be opened (database
    /// down), the claim is given back so the next poll gets it.
    pub async fn poll_intent(
        &self,
        intent_id: &str,
        poll_token: &str,
        client: &super::sessions::ClientInfo,
    ) -> Result<PollResult, Error> {
        let (channel, subject) = match self
            .store
            .claim_intent(intent_id, &poll_hash(poll_token))
            .await?
        {
            ClaimOutcome::Pending => return Ok(PollResult::Pending),
            ClaimOutcome::Claimed { channel, subject } => (channel, subject),
            ClaimOutcome::Consumed => return Err(Error::IntentConsumed),
            ClaimOutcome::Missing => return Err(Error::IntentExpired),
            ClaimOutcome::Forbidden => {
                tracing::warn!("login intent polled with a wrong poll token");
                return Err(Error::InvalidPollToken);
            }
        };
        let (user, method) = if channel == IntentChannel::Whatsapp.as_str() {
            (self.user_for_phone(&subject).await, IntentChannel::Whatsapp)
        } else {
            (
                self.user_for_telegram(&subject).await,
                IntentChannel::Telegram,
            )
        };
        let opened = match user {
            Ok((user, created)) => {
                self.open_session(user, created, client, LoginMethod::Intent(method), &[])
                    .await
            }
            Err(err) => Err(err),
        };
        let session = match opened {
            Ok(session) => session,
            Err(err) => {
                self.store.unclaim_intent(intent_id).await?;
                return Err(err);
            }
        };
        self.metrics.intent(&channel, "claimed");
        tracing::info!(channel, user_id = %session.user.id, "login intent completed");
        Ok(PollResult::LoggedIn(Box::new(session)))
    }

    /// The user owning `phone`, created on first login (then `true`).
    async fn user_for_phone(&self, phone: &str) -> Result<(db::user::Model, bool), Error> {
        let existing = self
            .db_query("find_user_by_phone", db::find_by_phone(&self.db, phone))
            .await?;
        self.db_query(
            "create_user",
            db::complete_login(&self.db, existing, phone, Utc::now(), &self.touches),
        )
        .await
    }

    /// The user of Telegram account `telegram_id`, created (without a phone) on first login
    /// (then `true`).
    pub async fn user_for_telegram(
        &self,
        telegram_id: &str,
    ) -> Result<(db::user::Model, bool), Error> {
        self.db_query(
            "login_identity",
            db::login_identity(&self.db, TELEGRAM, telegram_id, Utc::now(), &self.touches),
        )
        .await
    }

    /// The phone linked to Telegram account `telegram_id`, if any.
    pub async fn telegram_phone(&self, telegram_id: &str) -> Result<Option<String>, Error> {
        Ok(self
            .db_query(
                "user_for_identity",
                db::user_for_identity(&self.db, TELEGRAM, telegram_id),
            )
            .await?
            .and_then(|u| u.phone))
    }

    /// Links `phone` (shared by the Telegram user about themselves) to Telegram account
    /// `telegram_id`, so codes for the phone can go to that chat. A user created for the phone
    /// here is a `user.created` (`details.method`: `telegram_contact`).
    pub async fn link_telegram_phone(
        &self,
        telegram_id: &str,
        phone: &Phone,
    ) -> Result<db::user::Model, Error> {
        let (user, created) = self
            .db_query(
                "link_phone",
                db::link_phone(&self.db, TELEGRAM, telegram_id, phone.as_str(), Utc::now()),
            )
            .await?;
        if created {
            self.event(EventKind::UserCreated)
                .user(user.id)
                .phone(phone)
                .detail("method", "telegram_contact")
                .emit();
        }
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_80_bits_and_are_found_in_text() {
        let code = generate_code();
        assert_eq!(code.len(), CODE_LENGTH);
        assert!(is_code(&code));
        assert_ne!(code, generate_code());
        let text = format!("Log me in to Acme. Code: {code}");
        assert_eq!(find_code(&text), Some(code.clone()));
        assert_eq!(find_code(&text.to_lowercase()), Some(code));
        assert_eq!(find_code("Log me in to Acme. Code: 0123456789ABCDEI"), None);
        assert_eq!(find_code("OTP"), None);
    }

    #[test]
    fn links_are_percent_encoded() {
        assert_eq!(
            url_encode("Log me in: A+B/é"),
            "Log%20me%20in%3A%20A%2BB%2F%C3%A9"
        );
        assert_eq!(poll_hash("x").len(), 64);
        let token = generate_poll_token();
        assert_eq!(token.len(), 43);
    }
}
