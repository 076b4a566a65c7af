//! An external account linked to a user: `(provider, subject)` is unique.

use sea_orm::entity::prelude::*;

/// One row of `identities`.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "identities")]
pub struct Model {
    /// UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The user this identity belongs to.
    pub user_id: Uuid,
    /// `telegram` or `whatsapp`.
    pub provider: String,
    /// The provider's id of the account (Telegram user id, WhatsApp number).
    pub subject: String,
    /// When the identity was linked.
    pub created_at: DateTimeUtc,
    /// The owning user.
    #[sea_orm(belongs_to, from = "user_id", to = "id")]
    pub user: BelongsTo<super::user::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
