//! Users (phone optional: a Telegram-only user has none) and their external identities.
//!
//! Column types per backend (see the crate docs): UUIDs are `uuid` on PostgreSQL, `binary(16)` on
//! MySQL/MariaDB, text on SQLite; instants are `timestamptz` on PostgreSQL and `datetime(6)`
//! holding UTC on MySQL/MariaDB (the connection's time zone is `+00:00`).

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
                    .table(Users::Table)
                    .if_not_exists()
                    .col(uuid(Users::Id).primary_key())
                    .col(string_null(Users::Phone).unique_key())
                    .col(instant(backend, Users::CreatedAt))
                    .col(instant_null(backend, Users::LastLoginAt))
                    .to_owned(),
            ))
            .await?;
        manager
            .create_table(mysql_table(
                backend,
                Table::create()
                    .table(Identities::Table)
                    .if_not_exists()
                    .col(uuid(Identities::Id).primary_key())
                    .col(uuid(Identities::UserId))
                    .col(string(Identities::Provider))
                    .col(string(Identities::Subject))
                    .col(instant(backend, Identities::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_identities_user")
                            .from(Identities::Table, Identities::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            ))
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_identities_provider_subject")
                    .table(Identities::Table)
                    .col(Identities::Provider)
                    .col(Identities::Subject)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_identities_user_id")
                    .table(Identities::Table)
                    .col(Identities::UserId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Identities::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Users::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Phone,
    CreatedAt,
    LastLoginAt,
}

#[derive(DeriveIden)]
enum Identities {
    Table,
    Id,
    UserId,
    Provider,
    Subject,
    CreatedAt,
}
