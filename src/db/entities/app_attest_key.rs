//! An Apple App Attest key an iOS app had certified: its public key and the last counter one
//! of its assertions carried (each assertion must carry a higher one).

use sea_orm::entity::prelude::*;

/// One row of `app_attest_keys`.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "app_attest_keys")]
pub struct Model {
    /// The key id as the app has it: base64 (standard, padded) of SHA-256 of the public key.
    #[sea_orm(primary_key, auto_increment = false)]
    pub key_id: String,
    /// The public key: an uncompressed P-256 point, hex.
    pub public_key: String,
    /// The app id (`TEAMID.bundle.id`) it was attested for.
    pub app_id: String,
    /// `production` or `development`.
    pub environment: String,
    /// The counter of the last accepted assertion (0 after the attestation).
    pub counter: i64,
    /// When the key was attested.
    pub created_at: DateTimeUtc,
    /// When an assertion last passed.
    pub last_used_at: Option<DateTimeUtc>,
}

impl ActiveModelBehavior for ActiveModel {}
