//! What operators do through the admin API: find users, block and unblock them, delete them,
//! sign them out everywhere. Every change takes effect on every replica at once (the store's
//! per-user cut-off and phone marks).

use chrono::Utc;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::AuthService;
use super::events::EventKind;
use super::sessions::ClientInfo;
use super::sessions::SessionView;
use crate::config::admin::admin_key_hash;
use crate::db::users::{self, UserFilter};
use crate::db::{identity, user};
use crate::domain::phone::Phone;
use crate::error::Error;

/// A user as an operator sees them.
#[derive(Debug)]
pub struct UserDetail {
    /// The user.
    pub user: user::Model,
    /// Linked identities.
    pub identities: Vec<identity::Model>,
    /// Sessions standing now, newest first.
    pub sessions: Vec<SessionView>,
}

/// The operator behind an admin API call: which of `ADMIN_API_KEYS` was used, as the first 8
/// hex digits of the key's SHA-256 (`printf %s "$KEY" | sha256sum | cut -c1-8`), never the key.
#[derive(Debug, Clone)]
pub struct AdminActor {
    /// The key's fingerprint.
    pub key_id: String,
}

impl AuthService {
    /// Whether the admin API is on (`ADMIN_API_KEYS` set).
    pub fn admin_enabled(&self) -> bool {
        !self.admin_keys.is_empty()
    }

    /// Checks an admin key: its SHA-256 against every configured key's, each in constant time
    /// (all of them compared, whichever matches). The operator it names, for the audit log.
    pub fn check_admin_key(&self, presented: Option<&str>) -> Result<AdminActor, Error> {
        if !self.admin_enabled() {
            return Err(Error::NotFound);
        }
        let Some(presented) = presented else {
            return Err(Error::Unauthorized);
        };
        let hash = admin_key_hash(presented);
        let mut found = subtle::Choice::from(0);
        for key in &self.admin_keys {
            found |= key.ct_eq(&hash);
        }
        if bool::from(found) {
            Ok(AdminActor {
                key_id: hash[..4].iter().map(|b| format!("{b:02x}")).collect(),
            })
        } else {
            tracing::warn!("admin API called with a wrong key");
            Err(Error::Unauthorized)
        }
    }

    /// Users matching `filter`, newest first.
    pub async fn admin_users(&self, filter: &UserFilter) -> Result<Vec<user::Model>, Error> {
        self.db_query("admin_search_users", users::search_users(&self.db, filter))
            .await
    }

    /// Audit events matching `filter`, newest first.
    pub async fn admin_audit(
        &self,
        filter: &crate::db::events::AuditFilter,
    ) -> Result<Vec<crate::db::audit_event::Model>, Error> {
        self.db_query(
            "admin_search_audit",
            crate::db::events::search_audit(&self.db, filter),
        )
        .await
    }

    /// A user with identities and standing sessions.
    pub async fn admin_user(&self, id: Uuid) -> Result<UserDetail, Error> {
        let (user, identities) = self
            .db_query("find_user", crate::db::find_user(&self.db, id))
            .await?
            .ok_or(Error::NotFound)?;
        let sessions = self.sessions_of(id, None).await?;
        Ok(UserDetail {
            user,
            identities,
            sessions,
        })
    }

    /// Blocks user `id`: no code reaches their phone, no login or refresh works, and every
    /// session dies on every replica at once. The store's marks first (so a login in flight
    /// cannot open a session after the block), then the database's record.
    pub async fn admin_block(
        &self,
        id: Uuid,
        actor: &AdminActor,
        client: &ClientInfo,
    ) -> Result<user::Model, Error> {
        let found = self
            .db_query("find_user_by_id", crate::db::find_user_by_id(&self.db, id))
            .await?
            .ok_or(Error::NotFound)?;
        self.mark_blocked(&found, true).await?;
        self.store
            .revoke_user(&id.to_string(), self.tokens.longest_lifetime())
            .await?;
        let user = self
            .db_query(
                "admin_block",
                users::set_blocked(&self.db, id, Some(Utc::now())),
            )
            .await?
            .ok_or(Error::NotFound)?;
        self.metrics.session("revoked");
        tracing::info!(user_id = %id, "user blocked by an operator");
        self.event(EventKind::UserBlocked)
            .user(id)
            .client(client)
            .detail("actor", "admin")
            .detail("key_id", actor.key_id.as_str())
            .emit();
        Ok(user)
    }

    /// Unblocks user `id` (their old sessions stay revoked).
    pub async fn admin_unblock(
        &self,
        id: Uuid,
        actor: &AdminActor,
        client: &ClientInfo,
    ) -> Result<user::Model, Error> {
        let user = self
            .db_query("admin_unblock", users::set_blocked(&self.db, id, None))
            .await?
            .ok_or(Error::NotFound)?;
        self.mark_blocked(&user, false).await?;
        tracing::info!(user_id = %id, "user unblocked by an operator");
        self.event(EventKind::UserUnblocked)
            .user(id)
            .client(client)
            .detail("actor", "admin")
            .detail("key_id", actor.key_id.as_str())
            .emit();
        Ok(user)
    }

    /// Deletes user `id` with their identities; their sessions are revoked first.
    pub async fn admin_delete(
        &self,
        id: Uuid,
        actor: &AdminActor,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        self.delete_everywhere(id).await?;
        tracing::info!(user_id = %id, "user deleted by an operator");
        self.event(EventKind::UserDeleted)
            .user(id)
            .client(client)
            .detail("actor", "admin")
            .detail("key_id", actor.key_id.as_str())
            .emit();
        Ok(())
    }

    /// Revokes every session of user `id`, on every replica at once.
    pub async fn admin_revoke_sessions(
        &self,
        id: Uuid,
        actor: &AdminActor,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        self.db_query("find_user_by_id", crate::db::find_user_by_id(&self.db, id))
            .await?
            .ok_or(Error::NotFound)?;
        self.store
            .revoke_user(&id.to_string(), self.tokens.longest_lifetime())
            .await?;
        self.metrics.session("revoked");
        tracing::info!(user_id = %id, "sessions revoked by an operator");
        self.event(EventKind::SessionsRevokedAll)
            .user(id)
            .client(client)
            .detail("actor", "admin")
            .detail("key_id", actor.key_id.as_str())
            .detail("scope", "all")
            .emit();
        Ok(())
    }

    /// Marks (or unmarks) `user` as blocked in the store: no session of theirs stands or
    /// opens, and their phone gets no code.
    pub(super) async fn mark_blocked(
        &self,
        user: &user::Model,
        blocked: bool,
    ) -> Result<(), Error> {
        let phone = match user.phone.as_deref().map(|p| Phone::parse(p, None)) {
            Some(Ok(phone)) => Some(self.otp.subjects(&phone).phone),
            _ => None,
        };
        Ok(self
            .store
            .set_blocked(&user.id.to_string(), phone.as_deref(), blocked)
            .await?)
    }

    /// Writes the marks of every blocked user into the store (at start-up: an in-process store
    /// starts empty, a Redis may have lost them). How many.
    pub async fn restore_phone_blocks(&self) -> Result<usize, Error> {
        let blocked = self
            .db_query("blocked_users", users::blocked_users(&self.db))
            .await?;
        for (id, phone) in &blocked {
            let phone = match phone.as_deref().map(|p| Phone::parse(p, None)) {
                Some(Ok(phone)) => Some(self.otp.subjects(&phone).phone),
                _ => None,
            };
            self.store
                .set_blocked(&id.to_string(), phone.as_deref(), true)
                .await?;
        }
        Ok(blocked.len())
    }
}
