//! What users do to their own account: change its phone number, delete it. Both need a fresh
//! proof of the number ("sudo mode"): a session opened by a code within
//! `REAUTH_MAX_AGE_SECONDS`, so a stolen access token cannot take the account over later.

use chrono::Utc;
use uuid::Uuid;

use super::events::EventKind;
use super::sessions::{ClientInfo, LogoutScope};
use super::tokens::Claims;
use super::{AuthService, LoginStarted};
use crate::db::users::{self, PhoneChange};
use crate::db::{identity, user};
use crate::delivery::{Channel, Destination, OtpMessage};
use crate::error::Error;

impl AuthService {
    /// Fails with `reauthentication_required` unless the caller's session was opened (by a
    /// code, a message or the Telegram widget) within `REAUTH_MAX_AGE_SECONDS`.
    async fn require_recent_login(&self, claims: &Claims) -> Result<Uuid, Error> {
        let user = Uuid::parse_str(&claims.sub).map_err(|_| Error::InvalidToken)?;
        let sessions = self.sessions_of(user, Some(&claims.sid)).await?;
        let opened = sessions.iter().find(|s| s.current).map(|s| s.created_at);
        match opened {
            Some(at) if (Utc::now() - at).to_std().unwrap_or_default() <= self.reauth_max_age => {
                Ok(user)
            }
            _ => Err(Error::ReauthenticationRequired),
        }
    }

    /// Deletes the caller's account: every session revoked, then the user and identities.
    pub async fn delete_me(&self, claims: &Claims, client: &ClientInfo) -> Result<(), Error> {
        let user = self.require_recent_login(claims).await?;
        self.delete_everywhere(user).await?;
        tracing::info!(user_id = %user, "account deleted by its user");
        self.event(EventKind::UserDeleted)
            .user(user)
            .client(client)
            .detail("actor", "user")
            .emit();
        Ok(())
    }

    /// Revokes every session of user `id`, clears their number's block mark and deletes them.
    pub(super) async fn delete_everywhere(&self, id: Uuid) -> Result<(), Error> {
        let Some((user, _)) = self
            .db_query("find_user", crate::db::find_user(&self.db, id))
            .await?
        else {
            return Err(Error::NotFound);
        };
        self.store
            .revoke_user(&id.to_string(), self.tokens.longest_lifetime())
            .await?;
        // A new account for the number starts unblocked.
        self.mark_blocked(&user, false).await?;
        self.db_query("delete_user", users::delete_user(&self.db, id))
            .await?
            .ok_or(Error::NotFound)?;
        Ok(())
    }

    /// Sends a code to `new_phone`, the number the caller wants their account moved to. The
    /// answer is that of a login (the same for every number: whether it has an account is only
    /// said to whoever verifies its code).
    pub async fn start_phone_change(
        &self,
        claims: &Claims,
        new_phone: &str,
        channel: Option<Channel>,
        client: &ClientInfo,
        captcha: super::captcha::CaptchaInput<'_>,
    ) -> Result<LoginStarted, Error> {
        self.require_recent_login(claims).await?;
        self.login(new_phone, channel, client, captcha).await
    }

    /// Moves the caller's account to `new_phone` once its `code` checks out: the user's number
    /// and WhatsApp identity change, the old number is told (by SMS when configured), and the
    /// caller's other sessions are revoked when `revoke_others`. A number of another account is
    /// `phone_taken` (the code is spent: it proved the number, not a right to it).
    pub async fn finish_phone_change(
        &self,
        claims: &Claims,
        new_phone: &str,
        code: &str,
        revoke_others: bool,
        client: &ClientInfo,
    ) -> Result<(user::Model, Vec<identity::Model>), Error> {
        let user_id = self.require_recent_login(claims).await?;
        let phone = self.parse_phone(new_phone)?;
        let subjects = self.otp.subjects(&phone);
        let (attempts, failures) = self.quotas.for_verify(&subjects, client.ip);
        let spent = self
            .check_code(
                client,
                &phone,
                &subjects,
                code,
                (&attempts, &failures),
                None,
            )
            .await?;
        let mark = spent.mark();
        let old = self
            .db_query(
                "find_user_by_id",
                crate::db::find_user_by_id(&self.db, user_id),
            )
            .await;
        let changed = match old {
            Ok(Some(old)) if old.phone.as_deref() == Some(phone.as_str()) => {
                spent.keep();
                return Err(Error::InvalidField {
                    field: "phone".into(),
                    problem: "is already this account's number".into(),
                });
            }
            Ok(Some(old)) => self
                .db_query(
                    "change_phone",
                    users::change_phone(&self.db, user_id, phone.as_str()),
                )
                .await
                .map(|changed| (old, changed)),
            Ok(None) => Err(Error::InvalidToken),
            Err(err) => Err(err),
        };
        let (old, updated) = match changed {
            Ok((old, (PhoneChange::Done, Some(updated)))) => {
                spent.keep();
                // The code reached its owner.
                self.count_verified(&phone, mark);
                self.pump_credit(&phone, mark).await;
                (old, updated)
            }
            Ok((_, (PhoneChange::Taken, _))) => {
                spent.keep();
                tracing::info!(user_id = %user_id, "phone change refused: the number has an account");
                return Err(Error::PhoneTaken);
            }
            Ok(_) => {
                spent.keep();
                return Err(Error::InvalidToken);
            }
            Err(err) => {
                // Nothing changed: the code goes back, so a retry after the 503 works.
                let _ = spent.restore().await;
                return Err(err);
            }
        };
        tracing::info!(user_id = %user_id, to = %phone.masked(), "phone number changed");
        let mut event = self
            .event(EventKind::PhoneChanged)
            .user(user_id)
            .phone(&phone)
            .client(client);
        if let Some(Ok(previous)) = old.phone.as_deref().map(|p| self.parse_phone(p)) {
            event = event.detail(
                "previous_phone_hash",
                self.otp.keyed_hash("audit-phone", previous.as_str()),
            );
        }
        event.emit();
        if let Some(previous) = old.phone.as_deref() {
            self.tell_old_number(previous);
        }
        if revoke_others {
            self.logout(claims, LogoutScope::Others, client).await?;
        }
        self.db_query("find_user", crate::db::find_user(&self.db, updated.id))
            .await?
            .ok_or(Error::InvalidToken)
    }

    /// Tells the old number that the account moved, by SMS when an SMS sender is configured;
    /// in the background, best effort (a failure is logged, the change stands).
    fn tell_old_number(&self, previous: &str) {
        let Ok(phone) = self.parse_phone(previous) else {
            return;
        };
        let Some(sender) = self.delivery.sender(Channel::Sms).cloned() else {
            return;
        };
        if self.delivery.twilio_verify().is_some() {
            // Twilio Verify sends only its own codes, never a text of ours.
            tracing::info!(phone = %phone.masked(), "the old number was not told (SMS goes by Twilio Verify)");
            return;
        }
        let text = format!(
            "{}: the phone number of your account was changed. If this was not you, contact support.",
            self.app_name
        );
        tokio::spawn(async move {
            let destination = Destination {
                phone: &phone,
                telegram_chat: None,
            };
            let message = OtpMessage {
                code: "",
                text: &text,
                // The notice is written in English whatever the locales.
                locale: "en",
            };
            if let Err(err) = sender.send(&destination, &message).await {
                tracing::warn!(phone = %phone.masked(), channel = %err.channel, "could not tell the old number");
            }
        });
    }
}
