//! `app_attest_keys`: the keys iOS apps had Apple certify (App Attest), by key id, with the
//! counter of the last accepted assertion. Not tied to a user: a key belongs to an app install.

use sea_orm_migration::{prelude::*, schema::*};

use crate::{instant, instant_null, mysql_table};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        manager
            .create_table(mysql_table(
                backend,
                Table::create()
                    .table(AppAttestKeys::Table)
                    .if_not_exists()
                    .col(string_len(AppAttestKeys::KeyId, 64).primary_key())
                    .col(string_len(AppAttestKeys::PublicKey, 130))
                    .col(string_len(AppAttestKeys::AppId, 255))
                    .col(string_len(AppAttestKeys::Environment, 16))
                    .col(big_integer(AppAttestKeys::Counter))
                    .col(instant(backend, AppAttestKeys::CreatedAt))
                    .col(instant_null(backend, AppAttestKeys::LastUsedAt))
                    .to_owned(),
            ))
            .await?;
        // Operators list the newest keys first.
        manager
            .create_index(
                Index::create()
                    .name("ix_app_attest_keys_created_at")
                    .table(AppAttestKeys::Table)
                    .col(AppAttestKeys::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AppAttestKeys::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum AppAttestKeys {
    Table,
    KeyId,
    PublicKey,
    AppId,
    Environment,
    Counter,
    CreatedAt,
    LastUsedAt,
}
