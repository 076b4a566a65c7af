//! A person who logged in at least once.

use sea_orm::entity::prelude::*;

/// One row of `users`.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    /// UUID v7 (time-ordered, so inserts stay local in the primary key index).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// E.164 phone number; `None` for a user known only through another identity.
    #[sea_orm(unique)]
    pub phone: Option<String>,
    /// When the user first logged in.
    pub created_at: DateTimeUtc,
    /// When the user last logged in.
    pub last_login_at: Option<DateTimeUtc>,
    /// When an operator blocked the user; `None` when not blocked.
    pub blocked_at: Option<DateTimeUtc>,
    /// External identities (Telegram, WhatsApp) linked to this user.
    #[sea_orm(has_many)]
    pub identities: HasMany<super::identity::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
