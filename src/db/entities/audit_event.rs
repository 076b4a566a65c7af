//! One security event in the audit log (`audit_events`).

use sea_orm::entity::prelude::*;

/// One row of `audit_events`.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    /// UUID v7 (time-ordered: the cursor of the admin API's pages).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// When it happened.
    pub at: DateTimeUtc,
    /// What happened: `otp.sent`, `user.blocked`, …
    pub kind: String,
    /// The user concerned, when known.
    pub user_id: Option<Uuid>,
    /// A keyed hash of the phone number concerned (never the number).
    pub phone_hash: Option<String>,
    /// The client's network, as sessions keep it (`SESSION_IP`).
    pub ip: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
    /// The id of the request (`X-Request-Id`).
    pub request_id: Option<String>,
    /// What else the event says (reason, scope, session id, actor).
    pub details: Json,
}

impl ActiveModelBehavior for ActiveModel {}
