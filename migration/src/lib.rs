//! Database migrations of otpgate, run by `otpgate migrate` or at start-up (`RUN_MIGRATIONS`).
//!
//! One set of migrations for PostgreSQL, MySQL/MariaDB and SQLite. Portable column types, for
//! this migration and the ones to come:
//!
//! | what | PostgreSQL | MySQL / MariaDB | SQLite |
//! |---|---|---|---|
//! | ids: `uuid(…)` | `uuid` | `binary(16)` (UUID v7: time-ordered bytes, so InnoDB's clustered primary key grows at its end) | `uuid_text` |
//! | instants: [`instant`], [`instant_null`] | `timestamptz` | `datetime(6)` holding UTC (`timestamp` would end in 2038 and depend on the session time zone) | `timestamp_with_timezone_text` |
//! | JSON: `json_binary(…)` | `jsonb` | `json` (MariaDB: `longtext` with a `JSON_VALID` check) | `jsonb_text` |
//!
//! MySQL/MariaDB tables are InnoDB, `utf8mb4` with the binary collation [`mysql_table`], so text
//! compares as on PostgreSQL (case-sensitive) whatever the server's default character set is
//! (`latin1` on many MariaDB installations).
#![forbid(unsafe_code)]

pub use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

mod m20261123_000001_create_users_and_identities;
mod m20261129_000001_add_users_blocked_at;
mod m20261201_000001_create_audit_events_and_event_outbox;
mod m20261202_000001_create_app_attest_keys;
mod m20261203_000001_tune_event_outbox;

/// A `NOT NULL` instant: `timestamptz` on PostgreSQL, `datetime(6)` (UTC) on MySQL/MariaDB.
pub fn instant<T: IntoIden>(backend: DbBackend, col: T) -> ColumnDef {
    instant_column(backend, col).not_null().take()
}

/// A nullable instant (see [`instant`]).
pub fn instant_null<T: IntoIden>(backend: DbBackend, col: T) -> ColumnDef {
    instant_column(backend, col).null().take()
}

fn instant_column<T: IntoIden>(backend: DbBackend, col: T) -> ColumnDef {
    let mut def = ColumnDef::new(col);
    match backend {
        DbBackend::MySql => def.custom(Alias::new("datetime(6)")),
        _ => def.timestamp_with_time_zone(),
    };
    def
}

/// On MySQL/MariaDB: InnoDB, `utf8mb4`, binary collation; other backends are left as they are.
pub fn mysql_table(backend: DbBackend, mut table: TableCreateStatement) -> TableCreateStatement {
    if backend == DbBackend::MySql {
        table
            .engine("InnoDB")
            .character_set("utf8mb4")
            .collate("utf8mb4_bin");
    }
    table
}

/// All migrations, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_users_and_identities::Migration),
            Box::new(m20261129_000001_add_users_blocked_at::Migration),
            Box::new(m20261201_000001_create_audit_events_and_event_outbox::Migration),
            Box::new(m20261202_000001_create_app_attest_keys::Migration),
            Box::new(m20261203_000001_tune_event_outbox::Migration),
        ]
    }
}
