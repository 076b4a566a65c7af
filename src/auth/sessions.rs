//! Sessions and devices: what a session records when it opens, the caller's list, revoking one,
//! some or all of them.
//!
//! Where sessions live: in the store (Redis), one hash per user (`{u:<id>}:sessions`, sid →
//! opened, last used, device details) that expires with the refresh token lifetime after its
//! last write, next to the user's cut-off (`{u:<id>}:cutoff`, set by "revoke all", block and
//! delete). Listing reads that one key (never a scan); revocation is a key every replica reads
//! on the next request. The database holds no sessions: they die with their refresh tokens, and
//! a login writes no extra SQL.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AuthService;
use super::events::EventKind;
use super::tokens::Claims;
use crate::config::SessionIp;
use crate::domain::net::ip_bucket;
use crate::error::Error;

/// The longest user agent a session keeps (characters).
const USER_AGENT_MAX: usize = 256;
/// The longest device name an app may send (characters).
pub const DEVICE_NAME_MAX: usize = 64;
/// The most sessions a user keeps: a login beyond it ends the oldest (bounds the index a login
/// reads, and the lists).
pub const MAX_SESSIONS: usize = 100;

/// Who opens a session: what the request says about the client.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// The client address (after trusted proxies).
    pub ip: Option<IpAddr>,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// A name the app gives the device (`device_name` at verify).
    pub device_name: Option<String>,
    /// The language the request asks the code message in (`locale` at login).
    pub locale: Option<String>,
    /// The `Accept-Language` header.
    pub accept_language: Option<String>,
    /// The request's place in `HTTP_MAX_IN_FLIGHT`, given up while a provider answers.
    pub admission: Option<crate::domain::admission::Admission>,
}

impl ClientInfo {
    /// Runs `work` (a call to an outside provider: SMS, captcha) outside the request's place in
    /// the in-flight bound, so a slow provider does not fill the bound.
    pub async fn away<F: std::future::Future>(&self, work: F) -> F::Output {
        match &self.admission {
            Some(admission) => admission.away(work).await,
            None => work.await,
        }
    }
}

/// One of a user's sessions, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// The session id (the tokens' `sid`).
    pub id: String,
    /// When it was opened.
    pub created_at: DateTime<Utc>,
    /// When its refresh token was last used (or its opening).
    pub last_used_at: DateTime<Utc>,
    /// The `User-Agent` it was opened with.
    pub user_agent: Option<String>,
    /// The client address it was opened from (truncated unless `SESSION_IP=full`).
    pub ip: Option<String>,
    /// The device name the app sent.
    pub device_name: Option<String>,
    /// Whether it is the caller's own session.
    pub current: bool,
}

/// Which sessions a logout ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutScope {
    /// The caller's session only.
    Local,
    /// Every other session of the caller.
    Others,
    /// Every session of the caller, this one included.
    Global,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ua: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<String>,
}

fn clip(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

fn instant(ms: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or_default()
}

impl AuthService {
    /// What session `sid` records about `client`, as the store keeps it (JSON).
    pub(super) fn session_meta(&self, client: &ClientInfo) -> String {
        let meta = Meta {
            ua: client
                .user_agent
                .as_deref()
                .map(|ua| clip(ua, USER_AGENT_MAX)),
            ip: self.shown_ip(client),
            device: client
                .device_name
                .as_deref()
                .map(|d| clip(d, DEVICE_NAME_MAX)),
        };
        serde_json::to_string(&meta).unwrap_or_else(|_| "{}".into())
    }

    /// The client address as sessions and the audit log keep it (`SESSION_IP`).
    pub(super) fn shown_ip(&self, client: &ClientInfo) -> Option<String> {
        match self.session_ip {
            SessionIp::Off => None,
            SessionIp::Full => client.ip.map(|ip| ip.to_canonical().to_string()),
            SessionIp::Truncated => client.ip.map(|ip| match ip.to_canonical() {
                IpAddr::V4(v4) => {
                    let [a, b, c, _] = v4.octets();
                    format!("{a}.{b}.{c}.0/24")
                }
                v6 => format!("{}/48", ip_bucket(v6, 48)),
            }),
        }
    }

    /// The sessions of user `user_id`, newest first; `current` marks the one with id `current`.
    pub(super) async fn sessions_of(
        &self,
        user_id: Uuid,
        current: Option<&str>,
    ) -> Result<Vec<SessionView>, Error> {
        let records = self
            .store
            .sessions(&user_id.to_string(), self.tokens.longest_lifetime())
            .await?;
        Ok(records
            .into_iter()
            .map(|r| {
                let meta: Meta = serde_json::from_str(&r.meta).unwrap_or(Meta {
                    ua: None,
                    ip: None,
                    device: None,
                });
                SessionView {
                    current: current == Some(r.sid.as_str()),
                    id: r.sid,
                    created_at: instant(r.created_ms),
                    last_used_at: instant(r.last_used_ms),
                    user_agent: meta.ua,
                    ip: meta.ip,
                    device_name: meta.device,
                }
            })
            .collect())
    }

    /// The caller's sessions, newest first.
    pub async fn my_sessions(&self, claims: &Claims) -> Result<Vec<SessionView>, Error> {
        self.sessions_of(user_id(claims)?, Some(&claims.sid)).await
    }

    /// Revokes session `sid` of the caller (404 when it is not one of theirs, or no longer
    /// stands).
    pub async fn revoke_my_session(
        &self,
        claims: &Claims,
        sid: &str,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        let user = user_id(claims)?;
        if !self
            .sessions_of(user, None)
            .await?
            .iter()
            .any(|s| s.id == sid)
        {
            return Err(Error::NotFound);
        }
        // Revoked first: should the second step fail, the session is dead, not hidden.
        self.store
            .revoke_session(sid, self.tokens.longest_lifetime())
            .await?;
        self.store.drop_session(&user.to_string(), sid).await?;
        self.metrics.session("revoked");
        tracing::info!(user_id = %claims.sub, "session revoked by its user");
        self.event(EventKind::SessionRevoked)
            .user(user_id(claims)?)
            .client(client)
            .detail("scope", "session")
            .detail("session_id", sid)
            .emit();
        Ok(())
    }

    /// Ends the caller's session, their other sessions, or all of them, on every replica.
    pub async fn logout(
        &self,
        claims: &Claims,
        scope: LogoutScope,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        let user = user_id(claims)?;
        let ttl = self.tokens.longest_lifetime();
        match scope {
            LogoutScope::Local => {
                self.store.revoke_session(&claims.sid, ttl).await?;
                self.store
                    .drop_session(&user.to_string(), &claims.sid)
                    .await?;
            }
            LogoutScope::Others => {
                for session in self.sessions_of(user, Some(&claims.sid)).await? {
                    if !session.current {
                        self.store.revoke_session(&session.id, ttl).await?;
                        self.store
                            .drop_session(&user.to_string(), &session.id)
                            .await?;
                    }
                }
            }
            LogoutScope::Global => self.store.revoke_user(&user.to_string(), ttl).await?,
        }
        self.metrics.session("revoked");
        tracing::info!(user_id = %claims.sub, scope = ?scope, "sessions revoked by logout");
        let scope = match scope {
            LogoutScope::Local => "local",
            LogoutScope::Others => "others",
            LogoutScope::Global => "global",
        };
        self.event(EventKind::SessionRevoked)
            .user(user)
            .client(client)
            .detail("scope", scope)
            .detail("session_id", claims.sid.as_str())
            .emit();
        Ok(())
    }
}

fn user_id(claims: &Claims) -> Result<Uuid, Error> {
    Uuid::parse_str(&claims.sub).map_err(|_| Error::InvalidToken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_drops_control_characters_and_bounds_length() {
        assert_eq!(clip("Pixel\n8\u{7}", 64), "Pixel8");
        assert_eq!(clip(&"x".repeat(300), USER_AGENT_MAX).len(), USER_AGENT_MAX);
    }
}
