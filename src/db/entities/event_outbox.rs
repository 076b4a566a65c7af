//! An event waiting for the event webhook (`event_outbox`).

use sea_orm::entity::prelude::*;

/// One row of `event_outbox`.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "event_outbox")]
pub struct Model {
    /// The event id (also its audit row's id, and the `webhook-id` header).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The event type (`user.created`, …).
    pub kind: String,
    /// The JSON body, exactly as signed and sent.
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    /// When the event happened.
    pub created_at: DateTimeUtc,
    /// When the next attempt is due.
    pub next_attempt_at: DateTimeUtc,
    /// Attempts started so far.
    pub attempts: i32,
    /// Until when the replica that claimed it owns it.
    pub locked_until: Option<DateTimeUtc>,
    /// The claim that owns it (a random id per claim).
    pub locked_by: Option<Uuid>,
    /// When it was given up.
    pub failed_at: Option<DateTimeUtc>,
    /// Why the last attempt failed (status or error kind, never a body).
    pub last_error: Option<String>,
}

impl ActiveModelBehavior for ActiveModel {}
