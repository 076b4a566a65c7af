//! `/admin/v1/*`: the operator API (find, block, unblock and delete users, revoke their
//! sessions). Authenticated apart from users: `Authorization: Bearer <admin key>`, one of
//! `ADMIN_API_KEYS`; off (404) when none is configured. A user's access token never works here,
//! and an admin key never works on user routes (it is no JWT).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::auth::Bearer;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, SecurityScheme};
use uuid::Uuid;

use super::ApiTags;
use super::auth::{Identity, Session, client_info};
use super::body::Body;
use super::problem::{Fails, failures};
use crate::auth::AuthService;
use crate::auth::admin::AdminActor;
use crate::db::events::AuditFilter;
use crate::db::users::UserFilter;
use crate::db::{audit_event, user};
use crate::domain::pumping::{PumpBlock, Scope};
use crate::error::Error;

/// The admin API.
pub struct AdminApi {
    pub(crate) auth: Arc<AuthService>,
}

/// `Authorization: Bearer <admin key>` (one of `ADMIN_API_KEYS`).
#[derive(SecurityScheme)]
#[oai(ty = "bearer")]
pub struct AdminKey(Bearer);

/// The most users one page holds.
pub const PAGE_MAX: u32 = 100;
/// Users per page when `limit` is not given.
pub const PAGE_DEFAULT: u32 = 50;

/// A user as operators see them.
#[derive(Debug, Object)]
#[oai(example)]
pub struct AdminUser {
    /// User id (UUID v7).
    pub id: Uuid,
    /// Phone number in E.164, when the user has one.
    #[oai(skip_serializing_if_is_none)]
    pub phone: Option<String>,
    /// First login.
    pub created_at: DateTime<Utc>,
    /// Latest login.
    #[oai(skip_serializing_if_is_none)]
    pub last_login_at: Option<DateTime<Utc>>,
    /// When an operator blocked the user; absent when not blocked.
    #[oai(skip_serializing_if_is_none)]
    pub blocked_at: Option<DateTime<Utc>>,
}

impl From<user::Model> for AdminUser {
    fn from(u: user::Model) -> Self {
        AdminUser {
            id: u.id,
            phone: u.phone,
            created_at: u.created_at,
            last_login_at: u.last_login_at,
            blocked_at: u.blocked_at,
        }
    }
}

impl Example for AdminUser {
    fn example() -> Self {
        let at = DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default();
        AdminUser {
            id: Uuid::from_u128(0x0193_f3a0_7c1e_7d2a_9b4c_5e6f_7a8b_9c0d),
            phone: Some("+919876543210".into()),
            created_at: at,
            last_login_at: Some(at),
            blocked_at: None,
        }
    }
}

/// One page of users, newest first.
#[derive(Debug, Object)]
#[oai(example)]
pub struct UserPage {
    /// The users of this page.
    pub users: Vec<AdminUser>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

impl Example for UserPage {
    fn example() -> Self {
        UserPage {
            users: vec![AdminUser::example()],
            next_cursor: Some("AZPzoHwefSqbTF5veoucDQ".into()),
        }
    }
}

/// A user with identities and sessions.
#[derive(Debug, Object)]
#[oai(example)]
pub struct AdminUserDetail {
    /// The user.
    pub user: AdminUser,
    /// Linked external accounts.
    pub identities: Vec<Identity>,
    /// Sessions standing now, newest first (`current` is always false here).
    pub sessions: Vec<Session>,
}

impl Example for AdminUserDetail {
    fn example() -> Self {
        let mut sessions = super::auth::SessionList::example().sessions;
        for s in &mut sessions {
            s.current = false;
        }
        AdminUserDetail {
            user: AdminUser::example(),
            identities: Vec::new(),
            sessions,
        }
    }
}

/// One audit event.
#[derive(Debug, Object)]
#[oai(example)]
pub struct AuditEvent {
    /// Event id (UUID v7); for webhook events also the `webhook-id`.
    pub id: Uuid,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened: `otp.sent`, `otp.failed`, `captcha.failed` (`details.verdict`: `fail`,
    /// `missing`, `low_score`, `unavailable`; `details.mode`), `login.succeeded`
    /// (`details.method`: `otp`, `whatsapp_intent`, `telegram_intent`, `telegram_widget`),
    /// `token.refreshed`, `token.reused`, `session.revoked`, `sessions.revoked_all`,
    /// `user.created`, `user.blocked`, `user.unblocked`, `user.deleted`.
    pub kind: String,
    /// The user concerned, when known.
    #[oai(skip_serializing_if_is_none)]
    pub user_id: Option<Uuid>,
    /// A keyed hash of the phone number concerned (HMAC under the server's pepper; never the
    /// number): the same number always hashes the same.
    #[oai(skip_serializing_if_is_none)]
    pub phone_hash: Option<String>,
    /// The client's network, as sessions keep it (`SESSION_IP`).
    #[oai(skip_serializing_if_is_none)]
    pub ip: Option<String>,
    /// The client's `User-Agent`.
    #[oai(skip_serializing_if_is_none)]
    pub user_agent: Option<String>,
    /// The request id (`X-Request-Id`).
    #[oai(skip_serializing_if_is_none)]
    pub request_id: Option<String>,
    /// Details of the event (channel, reason, scope, session id, actor).
    pub details: serde_json::Value,
}

impl From<audit_event::Model> for AuditEvent {
    fn from(e: audit_event::Model) -> Self {
        AuditEvent {
            id: e.id,
            at: e.at,
            kind: e.kind,
            user_id: e.user_id,
            phone_hash: e.phone_hash,
            ip: e.ip,
            user_agent: e.user_agent,
            request_id: e.request_id,
            details: e.details,
        }
    }
}

impl Example for AuditEvent {
    fn example() -> Self {
        AuditEvent {
            id: Uuid::from_u128(0x0193_f3a0_7c1e_7d2a_9b4c_5e6f_7a8b_9c0e),
            at: DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default(),
            kind: "user.blocked".into(),
            user_id: Some(AdminUser::example().id),
            phone_hash: None,
            ip: Some("203.0.113.0/24".into()),
            user_agent: Some("curl/8.5.0".into()),
            request_id: Some("5f0c6d1e9a7b4c3d8e2f1a0b9c8d7e6f".into()),
            details: serde_json::json!({ "actor": "admin" }),
        }
    }
}

/// One page of audit events, newest first.
#[derive(Debug, Object)]
#[oai(example)]
pub struct AuditPage {
    /// The events of this page.
    pub events: Vec<AuditEvent>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

impl Example for AuditPage {
    fn example() -> Self {
        AuditPage {
            events: vec![AuditEvent::example()],
            next_cursor: Some("AZPzoHwefSqbTF5veoucDg".into()),
        }
    }
}

/// A page of audit events.
#[derive(ApiResponse)]
pub enum AuditReply {
    /// Events matching the filters, newest first.
    #[oai(status = 200)]
    Found(Json<AuditPage>),
}

/// A page of users.
#[derive(ApiResponse)]
pub enum UsersReply {
    /// Users matching the filters, newest first.
    #[oai(status = 200)]
    Found(Json<UserPage>),
}

/// One user.
#[derive(ApiResponse)]
pub enum UserReply {
    /// The user with identities and sessions.
    #[oai(status = 200)]
    Found(Json<AdminUserDetail>),
}

/// A user after a change.
#[derive(ApiResponse)]
pub enum ChangedReply {
    /// The user as stored now.
    #[oai(status = 200)]
    Changed(Json<AdminUser>),
}

/// Done, nothing to return.
#[derive(ApiResponse)]
pub enum DoneReply {
    /// Done on every replica.
    #[oai(status = 204)]
    Done,
}

/// What a pumping block covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum PumpingScope {
    /// A country (`key`: ISO 3166 alpha-2, `IN`).
    Country,
    /// A number prefix (`key`: `+` and digits, `+91987`).
    Prefix,
    /// A client network (`key`: an IPv4 /24 or IPv6 /48, `203.0.113.0/24`; any address in it
    /// is accepted).
    Network,
}

impl From<PumpingScope> for Scope {
    fn from(s: PumpingScope) -> Self {
        match s {
            PumpingScope::Country => Scope::Country,
            PumpingScope::Prefix => Scope::Prefix,
            PumpingScope::Network => Scope::Network,
        }
    }
}

impl From<Scope> for PumpingScope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Country => PumpingScope::Country,
            Scope::Prefix => PumpingScope::Prefix,
            Scope::Network => PumpingScope::Network,
        }
    }
}

/// A block of the pumping defence.
#[derive(Debug, Object)]
#[oai(example)]
pub struct PumpingBlock {
    /// What it covers.
    pub scope: PumpingScope,
    /// The country, prefix or network.
    pub key: String,
    /// When it ends.
    pub blocked_until: DateTime<Utc>,
    /// Codes sent in the window when it was set.
    pub sent: u64,
    /// Codes verified in the window when it was set.
    pub verified: u64,
}

impl From<PumpBlock> for PumpingBlock {
    fn from(b: PumpBlock) -> Self {
        PumpingBlock {
            scope: b.scope.into(),
            key: b.key,
            blocked_until: DateTime::from_timestamp_millis(i64::try_from(b.until_ms).unwrap_or(0))
                .unwrap_or_default(),
            sent: b.sent,
            verified: b.verified,
        }
    }
}

impl Example for PumpingBlock {
    fn example() -> Self {
        PumpingBlock {
            scope: PumpingScope::Prefix,
            key: "+2637712".into(),
            blocked_until: DateTime::from_timestamp(1_767_229_200, 0).unwrap_or_default(),
            sent: 412,
            verified: 3,
        }
    }
}

/// The blocks standing now.
#[derive(Debug, Object)]
#[oai(example)]
pub struct PumpingBlocks {
    /// `PUMPING_MODE`: `off`, `record_only` (blocks are recorded, not enforced) or `enforce`.
    pub mode: String,
    /// The blocks, soonest to end first.
    pub blocks: Vec<PumpingBlock>,
}

impl Example for PumpingBlocks {
    fn example() -> Self {
        PumpingBlocks {
            mode: "enforce".into(),
            blocks: vec![PumpingBlock::example()],
        }
    }
}

/// A block to set.
#[derive(Debug, Object)]
#[oai(example)]
pub struct PumpingBlockRequest {
    /// What it covers.
    pub scope: PumpingScope,
    /// The country, prefix or network.
    #[oai(validator(min_length = 1, max_length = 64))]
    pub key: String,
    /// How long, in minutes (1 to 43,200, thirty days).
    #[oai(validator(minimum(value = "1"), maximum(value = "43200")))]
    pub minutes: u32,
}

impl Example for PumpingBlockRequest {
    fn example() -> Self {
        PumpingBlockRequest {
            scope: PumpingScope::Prefix,
            key: "+2637712".into(),
            minutes: 240,
        }
    }
}

/// A block to lift.
#[derive(Debug, Object)]
#[oai(example)]
pub struct PumpingLiftRequest {
    /// What it covers.
    pub scope: PumpingScope,
    /// The country, prefix or network.
    #[oai(validator(min_length = 1, max_length = 64))]
    pub key: String,
}

impl Example for PumpingLiftRequest {
    fn example() -> Self {
        PumpingLiftRequest {
            scope: PumpingScope::Prefix,
            key: "+2637712".into(),
        }
    }
}

/// The pumping blocks.
#[derive(ApiResponse)]
pub enum PumpingBlocksReply {
    /// The blocks standing now.
    #[oai(status = 200)]
    Found(Json<PumpingBlocks>),
}

/// An attested App Attest key, as operators see it.
#[derive(Debug, Object)]
#[oai(example)]
pub struct AdminAppAttestKey {
    /// The key id (standard base64).
    pub key_id: String,
    /// The app id it was attested for (`TEAMID.bundle.id`).
    pub app_id: String,
    /// `production` or `development`.
    pub environment: String,
    /// The counter of the last accepted assertion (0: none yet).
    pub counter: i64,
    /// When it was attested.
    pub created_at: DateTime<Utc>,
    /// When an assertion last passed.
    #[oai(skip_serializing_if_is_none)]
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<crate::db::app_attest_key::Model> for AdminAppAttestKey {
    fn from(k: crate::db::app_attest_key::Model) -> Self {
        AdminAppAttestKey {
            key_id: k.key_id,
            app_id: k.app_id,
            environment: k.environment,
            counter: k.counter,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
        }
    }
}

impl Example for AdminAppAttestKey {
    fn example() -> Self {
        AdminAppAttestKey {
            key_id: "SC86LZmoFbL/KxWfezr7ihgEdLHK8ZrDbTwMtAkBCbM=".into(),
            app_id: "ABCDE12345.com.acme.app".into(),
            environment: "production".into(),
            counter: 12,
            created_at: DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default(),
            last_used_at: DateTime::from_timestamp(1_767_227_400, 0),
        }
    }
}

/// App Attest keys.
#[derive(Debug, Object)]
#[oai(example)]
pub struct AppAttestKeys {
    /// Newest first.
    pub keys: Vec<AdminAppAttestKey>,
}

impl Example for AppAttestKeys {
    fn example() -> Self {
        AppAttestKeys {
            keys: vec![AdminAppAttestKey::example()],
        }
    }
}

/// The keys found.
#[derive(ApiResponse)]
pub enum AppAttestKeysReply {
    /// Newest first.
    #[oai(status = 200)]
    Found(Json<AppAttestKeys>),
}

/// A key to revoke.
#[derive(Debug, Object)]
#[oai(example)]
pub struct AppAttestRevokeRequest {
    /// The key id (base64, either alphabet).
    #[oai(validator(min_length = 1, max_length = 64))]
    pub key_id: String,
}

impl Example for AppAttestRevokeRequest {
    fn example() -> Self {
        AppAttestRevokeRequest {
            key_id: AdminAppAttestKey::example().key_id,
        }
    }
}

failures! {
    /// `GET /admin/v1/app-attest/keys`.
    AppAttestListFailures { BODY = false }: [
        "unauthorized",
        "invalid_request",
        "not_found",
        "database_unavailable",
    ];
    /// `POST /admin/v1/app-attest/keys/revoke`.
    AppAttestRevokeFailures: [
        "unauthorized",
        "not_found",
        "database_unavailable",
    ];
    /// `GET /admin/v1/pumping/blocks`.
    PumpingListFailures { BODY = false }: [
        "unauthorized",
        "not_found",
        "store_unavailable",
    ];
    /// Setting and lifting pumping blocks.
    PumpingChangeFailures: [
        "unauthorized",
        "not_found",
        "store_unavailable",
    ];
    /// `GET /admin/v1/users` and `GET /admin/v1/audit`.
    ListFailures { BODY = false }: [
        "unauthorized",
        "invalid_request",
        "not_found",
        "database_unavailable",
    ];
    /// Operations on one user.
    UserFailures { BODY = false }: [
        "unauthorized",
        "not_found",
        "store_unavailable",
        "database_unavailable",
    ];
}

/// The cursor of the page after the one ending with user `id`: its id, base64url.
fn cursor_of(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn parse_cursor(text: &str) -> Result<Uuid, Error> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or_else(|| Error::InvalidRequest("`cursor` is not a cursor this API returned.".into()))
}

fn user_id(text: &str) -> Result<Uuid, Error> {
    // Not an id: no such user.
    Uuid::parse_str(text).map_err(|_| Error::NotFound)
}

fn phone_prefix(text: &str) -> Result<String, Error> {
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::InvalidRequest(
            "`phone` must be the start of an E.164 number: + and 1 to 15 digits.".into(),
        ));
    }
    Ok(format!("+{digits}"))
}

impl AdminApi {
    fn check(&self, key: &AdminKey) -> Result<AdminActor, Error> {
        self.auth.check_admin_key(Some(&key.0.token))
    }
}

#[OpenApi(prefix_path = "/admin/v1", tag = "ApiTags::Admin")]
impl AdminApi {
    /// Search users
    ///
    /// Newest first, `limit` per page (default 50, at most 100); pass `next_cursor` back as
    /// `cursor` for the next page. Time filters are RFC 3339 instants: `…_after` includes the
    /// instant, `…_before` excludes it.
    #[oai(path = "/users", method = "get", operation_id = "adminListUsers")]
    #[allow(clippy::too_many_arguments)]
    async fn list_users(
        &self,
        key: AdminKey,
        /// Phones starting with this (`+91`, `+1201555`).
        phone: Query<Option<String>>,
        /// Created at or after.
        created_after: Query<Option<DateTime<Utc>>>,
        /// Created before.
        created_before: Query<Option<DateTime<Utc>>>,
        /// Last login at or after.
        last_login_after: Query<Option<DateTime<Utc>>>,
        /// Last login before.
        last_login_before: Query<Option<DateTime<Utc>>>,
        /// Only blocked (`true`) or only unblocked (`false`) users.
        blocked: Query<Option<bool>>,
        /// Users per page (1 to 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> Result<UsersReply, Fails<ListFailures>> {
        self.check(&key)?;
        let limit = limit.0.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
        let filter = UserFilter {
            phone_prefix: phone.0.as_deref().map(phone_prefix).transpose()?,
            created_from: created_after.0,
            created_to: created_before.0,
            last_login_from: last_login_after.0,
            last_login_to: last_login_before.0,
            blocked: blocked.0,
            before: cursor.0.as_deref().map(parse_cursor).transpose()?,
            // One more than a page: whether there is a next page.
            limit: u64::from(limit) + 1,
        };
        let mut users = self.auth.admin_users(&filter).await?;
        let next_cursor = if users.len() > limit as usize {
            users.truncate(limit as usize);
            users.last().map(|u| cursor_of(u.id))
        } else {
            None
        };
        Ok(UsersReply::Found(Json(UserPage {
            users: users.into_iter().map(AdminUser::from).collect(),
            next_cursor,
        })))
    }

    /// Audit log
    ///
    /// Security events, newest first, `limit` per page (default 50, at most 100); pass
    /// `next_cursor` back as `cursor` for the next page. `since` includes its instant, `until`
    /// excludes it (RFC 3339). Events are written in the background: one appears within about
    /// a second of its request.
    #[oai(path = "/audit", method = "get", operation_id = "adminListAudit")]
    #[allow(clippy::too_many_arguments)]
    async fn list_audit(
        &self,
        key: AdminKey,
        /// Only this user's events (a user id).
        user_id: Query<Option<String>>,
        /// Only events of this kind (`user.blocked`, …).
        #[oai(validator(max_length = 64))]
        kind: Query<Option<String>>,
        /// At or after this instant.
        since: Query<Option<DateTime<Utc>>>,
        /// Before this instant.
        until: Query<Option<DateTime<Utc>>>,
        /// Events per page (1 to 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> Result<AuditReply, Fails<ListFailures>> {
        self.check(&key)?;
        let limit = limit.0.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
        let user_id = user_id
            .0
            .as_deref()
            .map(|text| {
                Uuid::parse_str(text).map_err(|_| {
                    Error::InvalidRequest("`user_id` is not a user id (a UUID).".into())
                })
            })
            .transpose()?;
        let filter = AuditFilter {
            user_id,
            kind: kind.0,
            since: since.0,
            until: until.0,
            before: cursor.0.as_deref().map(parse_cursor).transpose()?,
            limit: u64::from(limit) + 1,
        };
        let mut events = self.auth.admin_audit(&filter).await?;
        let next_cursor = if events.len() > limit as usize {
            events.truncate(limit as usize);
            events.last().map(|e| cursor_of(e.id))
        } else {
            None
        };
        Ok(AuditReply::Found(Json(AuditPage {
            events: events.into_iter().map(AuditEvent::from).collect(),
            next_cursor,
        })))
    }

    /// One user
    ///
    /// With linked identities and the sessions standing now.
    #[oai(path = "/users/:id", method = "get", operation_id = "adminGetUser")]
    async fn get_user(
        &self,
        key: AdminKey,
        /// User id.
        id: Path<String>,
    ) -> Result<UserReply, Fails<UserFailures>> {
        self.check(&key)?;
        let detail = self.auth.admin_user(user_id(&id.0)?).await?;
        Ok(UserReply::Found(Json(AdminUserDetail {
            user: detail.user.into(),
            identities: detail.identities.into_iter().map(Identity::from).collect(),
            sessions: detail.sessions.into_iter().map(Session::from).collect(),
        })))
    }

    /// Block a user
    ///
    /// No code reaches their phone (logins are answered as usual, nothing is sent), verify and
    /// refresh answer `user_blocked`, and every session dies on every replica at once.
    #[oai(
        path = "/users/:id/block",
        method = "post",
        operation_id = "adminBlockUser"
    )]
    async fn block(
        &self,
        req: &Request,
        key: AdminKey,
        /// User id.
        id: Path<String>,
    ) -> Result<ChangedReply, Fails<UserFailures>> {
        let actor = self.check(&key)?;
        let user = self
            .auth
            .admin_block(user_id(&id.0)?, &actor, &client_info(req, None))
            .await?;
        Ok(ChangedReply::Changed(Json(user.into())))
    }

    /// Unblock a user
    ///
    /// Codes and logins work again; sessions revoked by the block stay revoked.
    #[oai(
        path = "/users/:id/unblock",
        method = "post",
        operation_id = "adminUnblockUser"
    )]
    async fn unblock(
        &self,
        req: &Request,
        key: AdminKey,
        /// User id.
        id: Path<String>,
    ) -> Result<ChangedReply, Fails<UserFailures>> {
        let actor = self.check(&key)?;
        let user = self
            .auth
            .admin_unblock(user_id(&id.0)?, &actor, &client_info(req, None))
            .await?;
        Ok(ChangedReply::Changed(Json(user.into())))
    }

    /// Delete a user
    ///
    /// Revokes every session, then removes the user and their identities. A later login with
    /// the same number creates a new user.
    #[oai(
        path = "/users/:id",
        method = "delete",
        operation_id = "adminDeleteUser"
    )]
    async fn delete_user(
        &self,
        req: &Request,
        key: AdminKey,
        /// User id.
        id: Path<String>,
    ) -> Result<DoneReply, Fails<UserFailures>> {
        let actor = self.check(&key)?;
        self.auth
            .admin_delete(user_id(&id.0)?, &actor, &client_info(req, None))
            .await?;
        Ok(DoneReply::Done)
    }

    /// Revoke all sessions of a user
    ///
    /// Every access and refresh token the user holds is refused on every replica from the next
    /// request on. The user can log in again.
    #[oai(
        path = "/users/:id/sessions",
        method = "delete",
        operation_id = "adminRevokeSessions"
    )]
    async fn revoke_sessions(
        &self,
        req: &Request,
        key: AdminKey,
        /// User id.
        id: Path<String>,
    ) -> Result<DoneReply, Fails<UserFailures>> {
        let actor = self.check(&key)?;
        self.auth
            .admin_revoke_sessions(user_id(&id.0)?, &actor, &client_info(req, None))
            .await?;
        Ok(DoneReply::Done)
    }

    /// Pumping blocks
    ///
    /// The number prefixes, countries and networks the SMS-pumping defence blocks now: set
    /// when their conversion (codes verified / codes sent) fell below `PUMPING_MIN_CONVERSION`
    /// with enough volume, or by an operator. With `PUMPING_MODE=record_only` they are listed
    /// but not enforced.
    #[oai(
        path = "/pumping/blocks",
        method = "get",
        operation_id = "adminListPumpingBlocks"
    )]
    async fn pumping_blocks(
        &self,
        key: AdminKey,
    ) -> Result<PumpingBlocksReply, Fails<PumpingListFailures>> {
        self.check(&key)?;
        let blocks = self.auth.pumping_blocks().await?;
        Ok(PumpingBlocksReply::Found(Json(PumpingBlocks {
            mode: self.auth.pumping().mode.as_str().to_string(),
            blocks: blocks.into_iter().map(PumpingBlock::from).collect(),
        })))
    }

    /// Block a prefix, country or network
    ///
    /// No code goes to that prefix or country, or to requests from that network, for
    /// `minutes`, on every replica (with `PUMPING_MODE=enforce`; `record_only` lists it only).
    /// Its counts are kept; a block already standing is replaced.
    #[oai(
        path = "/pumping/blocks",
        method = "post",
        operation_id = "adminBlockPumping"
    )]
    async fn pumping_block(
        &self,
        req: &Request,
        key: AdminKey,
        body: Body<PumpingBlockRequest>,
    ) -> Result<DoneReply, Fails<PumpingChangeFailures>> {
        let actor = self.check(&key)?;
        self.auth
            .pumping_block(
                &actor,
                &client_info(req, None),
                body.scope.into(),
                &body.key,
                std::time::Duration::from_secs(60 * u64::from(body.minutes)),
            )
            .await?;
        Ok(DoneReply::Done)
    }

    /// List App Attest keys
    ///
    /// The keys iOS apps attested (Apple App Attest), newest first, at most `limit` (default
    /// 50, at most 100); with `key_id`, that key only.
    #[oai(
        path = "/app-attest/keys",
        method = "get",
        operation_id = "adminListAppAttestKeys"
    )]
    async fn app_attest_keys(
        &self,
        key: AdminKey,
        /// One key id (base64, either alphabet).
        key_id: Query<Option<String>>,
        /// Keys to list (1 to 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<u32>>,
    ) -> Result<AppAttestKeysReply, Fails<AppAttestListFailures>> {
        self.check(&key)?;
        let limit = limit.0.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
        let keys = self
            .auth
            .admin_app_attest_keys(key_id.0.as_deref(), u64::from(limit))
            .await?;
        Ok(AppAttestKeysReply::Found(Json(AppAttestKeys {
            keys: keys.into_iter().map(AdminAppAttestKey::from).collect(),
        })))
    }

    /// Revoke an App Attest key
    ///
    /// With `APP_ATTEST_MODE=enforce`, its assertions are refused from now on, on every replica
    /// (403 `attestation_failed`: the
    /// app attests a new key, which a device farm's cloned install cannot do without a genuine
    /// device). 404 when there is no such key.
    #[oai(
        path = "/app-attest/keys/revoke",
        method = "post",
        operation_id = "adminRevokeAppAttestKey"
    )]
    async fn revoke_app_attest_key(
        &self,
        req: &Request,
        key: AdminKey,
        body: Body<AppAttestRevokeRequest>,
    ) -> Result<DoneReply, Fails<AppAttestRevokeFailures>> {
        let actor = self.check(&key)?;
        self.auth
            .admin_revoke_app_attest_key(&body.key_id, &actor, &client_info(req, None))
            .await?;
        Ok(DoneReply::Done)
    }

    /// Lift a pumping block
    ///
    /// Codes flow again at once on every replica, and the scope's counts start afresh (so a
    /// low conversion does not block it again at the next send). 404 when no block stands.
    #[oai(
        path = "/pumping/blocks/lift",
        method = "post",
        operation_id = "adminLiftPumping"
    )]
    async fn pumping_lift(
        &self,
        req: &Request,
        key: AdminKey,
        body: Body<PumpingLiftRequest>,
    ) -> Result<DoneReply, Fails<PumpingChangeFailures>> {
        let actor = self.check(&key)?;
        self.auth
            .pumping_lift(
                &actor,
                &client_info(req, None),
                body.scope.into(),
                &body.key,
            )
            .await?;
        Ok(DoneReply::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let id = Uuid::now_v7();
        assert_eq!(parse_cursor(&cursor_of(id)).unwrap(), id);
        for bad in ["", "!!", "AAAA", &"A".repeat(40)] {
            assert_eq!(parse_cursor(bad).unwrap_err().code(), "invalid_request");
        }
    }

    #[test]
    fn phone_prefixes_are_plus_and_digits() {
        assert_eq!(phone_prefix("91").unwrap(), "+91");
        assert_eq!(phone_prefix("+1201").unwrap(), "+1201");
        for bad in ["", "+", "+9%", "+1_", "abc", &"1".repeat(16)] {
            assert!(phone_prefix(bad).is_err(), "{bad}");
        }
    }
}
