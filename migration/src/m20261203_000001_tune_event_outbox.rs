//! `event_outbox`, tuned for claims under load:
//! - a given-up row's `next_attempt_at` is 9999-12-31, so the rows to claim are one range of
//!   `ix_event_outbox_next_attempt_at` with nothing filtered but the rows leased now (a claim
//!   that also filtered on `failed_at` got no index from PostgreSQL before the table's first
//!   statistics, and sorted the whole backlog per claim); the rows an earlier version gave up are
//!   moved;
//! - `ix_event_outbox_created_at` goes: nothing reads by it any more, and each outbox row paid
//!   for it on insert and on every claim;
//! - on PostgreSQL, pages keep room (`fillfactor`) so a claim's `UPDATE` of columns no index
//!   holds stays on its page (HOT) and adds no index entries.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let db = manager.get_connection();
        // The literal as each backend stores instants (SQLite: text in the form sqlx writes,
        // which compares as text).
        let never = match backend {
            DbBackend::MySql => "'9999-12-31 00:00:00'",
            DbBackend::Sqlite => "'9999-12-31T00:00:00+00:00'",
            _ => "'9999-12-31T00:00:00Z'",
        };
        db.execute_unprepared(&format!(
            "UPDATE event_outbox SET next_attempt_at = {never} WHERE failed_at IS NOT NULL"
        ))
        .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("ix_event_outbox_created_at")
                    .table(EventOutbox::Table)
                    .to_owned(),
            )
            .await?;
        if backend == DbBackend::Postgres {
            db.execute_unprepared("ALTER TABLE event_outbox SET (fillfactor = 70)")
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("ALTER TABLE event_outbox RESET (fillfactor)")
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("ix_event_outbox_created_at")
                    .table(EventOutbox::Table)
                    .col(EventOutbox::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum EventOutbox {
    Table,
    CreatedAt,
}
