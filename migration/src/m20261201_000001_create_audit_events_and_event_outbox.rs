//! `audit_events`: every security event (codes sent and checked, tokens refreshed and reused,
//! sessions revoked, users created, blocked and deleted), kept `AUDIT_RETENTION_DAYS`. Phones
//! appear only as a keyed hash, client addresses as sessions keep them.
//!
//! `event_outbox`: events waiting for the event webhook (`EVENT_WEBHOOK_URL`), shared by the
//! replicas: one claims a due row by setting a lease (`locked_until`, `locked_by`), delivers
//! it and deletes it, or schedules the next attempt (`next_attempt_at`); an event given up is
//! kept with `failed_at`. `payload` is text, not JSON: the bytes signed are the bytes stored.

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
                    .table(AuditEvents::Table)
                    .if_not_exists()
                    .col(uuid(AuditEvents::Id).primary_key())
                    .col(instant(backend, AuditEvents::At))
                    .col(string_len(AuditEvents::Kind, 64))
                    .col(uuid_null(AuditEvents::UserId))
                    .col(string_len_null(AuditEvents::PhoneHash, 64))
                    .col(string_len_null(AuditEvents::Ip, 64))
                    .col(text_null(AuditEvents::UserAgent))
                    .col(string_len_null(AuditEvents::RequestId, 128))
                    .col(json_binary(AuditEvents::Details))
                    .to_owned(),
            ))
            .await?;
        for (name, cols) in [
            (
                "ix_audit_events_user_id_at",
                vec![AuditEvents::UserId, AuditEvents::At],
            ),
            (
                "ix_audit_events_kind_at",
                vec![AuditEvents::Kind, AuditEvents::At],
            ),
            ("ix_audit_events_at", vec![AuditEvents::At]),
        ] {
            let mut index = Index::create();
            index.name(name).table(AuditEvents::Table).if_not_exists();
            for col in cols {
                index.col(col);
            }
            manager.create_index(index.to_owned()).await?;
        }
        manager
            .create_table(mysql_table(
                backend,
                Table::create()
                    .table(EventOutbox::Table)
                    .if_not_exists()
                    .col(uuid(EventOutbox::Id).primary_key())
                    .col(string_len(EventOutbox::Kind, 64))
                    .col(text(EventOutbox::Payload))
                    .col(instant(backend, EventOutbox::CreatedAt))
                    .col(instant(backend, EventOutbox::NextAttemptAt))
                    .col(integer(EventOutbox::Attempts).default(0))
                    .col(instant_null(backend, EventOutbox::LockedUntil))
                    .col(uuid_null(EventOutbox::LockedBy))
                    .col(instant_null(backend, EventOutbox::FailedAt))
                    .col(string_len_null(EventOutbox::LastError, 255))
                    .to_owned(),
            ))
            .await?;
        for (name, col) in [
            (
                "ix_event_outbox_next_attempt_at",
                EventOutbox::NextAttemptAt,
            ),
            ("ix_event_outbox_created_at", EventOutbox::CreatedAt),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(EventOutbox::Table)
                        .col(col)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(EventOutbox::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(AuditEvents::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    At,
    Kind,
    UserId,
    PhoneHash,
    Ip,
    UserAgent,
    RequestId,
    Details,
}

#[derive(DeriveIden)]
enum EventOutbox {
    Table,
    Id,
    Kind,
    Payload,
    CreatedAt,
    NextAttemptAt,
    Attempts,
    LockedUntil,
    LockedBy,
    FailedAt,
    LastError,
}
