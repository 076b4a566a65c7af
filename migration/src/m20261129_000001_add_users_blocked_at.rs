//! `users.blocked_at`: when an operator blocked the user (admin API), `NULL` when not blocked.
//! A blocked user gets no code, cannot log in or refresh, and their sessions are revoked.

use sea_orm_migration::prelude::*;

use crate::instant_null;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(instant_null(backend, Users::BlockedAt))
                    .to_owned(),
            )
            .await?;
        // Start-up reads the blocked users; operators filter by it.
        manager
            .create_index(
                Index::create()
                    .name("ix_users_blocked_at")
                    .table(Users::Table)
                    .col(Users::BlockedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_users_blocked_at")
                    .table(Users::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(Users::BlockedAt)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    BlockedAt,
}
