//! Users and identities in SQL (PostgreSQL in clusters, SQLite when embedded), through SeaORM.

use std::time::Duration;

use chrono::{DateTime, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DbErr, EntityTrait, QueryFilter, Set, SqlErr, TransactionTrait,
};
use uuid::Uuid;

pub mod entities;
pub mod hot;
pub mod touches;

pub use entities::{identity, user};

/// Opens a connection pool. SQLite gets one connection (it serialises writers anyway), WAL and a
/// busy timeout; PostgreSQL gets `max_connections`. Connections are made on demand, so a server
/// with `RUN_MIGRATIONS=false` starts while its database is still coming up (`/ready` says so).
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let sqlite = url.starts_with("sqlite:");
    let mut opts = ConnectOptions::new(url.to_string());
    opts.max_connections(if sqlite { 1 } else { max_connections.max(1) })
        .min_connections(0)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(true)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|o| {
            o.busy_timeout(Duration::from_secs(5))
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
        });
    Database::connect(opts).await
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

/// Checks that the database answers (readiness).
pub async fn ping(db: &DatabaseConnection) -> Result<(), DbErr> {
    db.ping().await
}

/// The user owning `phone`, if any.
pub async fn find_by_phone(
    db: &DatabaseConnection,
    phone: &str,
) -> Result<Option<user::Model>, DbErr> {
    user::Entity::find()
        .filter(user::Column::Phone.eq(phone))
        .one(db)
        .await
}

/// The database side of one login by code, started before the code is checked and finished
/// after. On PostgreSQL: one connection of the login pool ([`hot`]), taken before the code
/// check, so a database that refuses connections answers 503 without spending the code; then
/// one statement that inserts a new user or returns the existing one. On the other backends:
/// the lookup first, then the insert (or nothing), through the pool.
pub enum LoginSession {
    /// A PostgreSQL connection held for this login.
    Postgres(hot::Lease),
    /// The user found by the lookup, if any; statements go through the pool.
    Pooled(Option<user::Model>),
}

fn pg_user(row: sea_orm::sqlx::postgres::PgRow) -> Result<user::Model, DbErr> {
    use sea_orm::FromQueryResult;
    user::Model::from_query_result(&sea_orm::QueryResult::from(row), "")
}

fn pg_query_err(err: sea_orm::sqlx::Error) -> DbErr {
    if hot::is_broken_connection(&err) {
        // The connection broke under the query: the database is unavailable (503), not a bug.
        DbErr::Conn(sea_orm::RuntimeErr::SqlxError(err.into()))
    } else {
        DbErr::Query(sea_orm::RuntimeErr::SqlxError(err.into()))
    }
}

/// Starts a login for `phone` (see [`LoginSession`]): on PostgreSQL through `hot`, the login
/// pool of `db` ([`hot::HotPool::for_database`]).
pub async fn login_start(
    db: &DatabaseConnection,
    hot: Option<&hot::HotPool>,
    phone: &str,
) -> Result<LoginSession, DbErr> {
    match hot {
        Some(pool) => Ok(LoginSession::Postgres(pool.lease().await?)),
        None => Ok(LoginSession::Pooled(find_by_phone(db, phone).await?)),
    }
}

/// Finishes a login started by [`login_start`]: the user, and whether it was created now. A
/// returning user's `last_login_at` is queued on `touches` (written in the background, in
/// batches). Two replicas creating the same user at once both end up with it.
pub async fn login_finish(
    db: &DatabaseConnection,
    session: LoginSession,
    phone: &str,
    now: DateTime<Utc>,
    touches: &touches::LoginTouches,
) -> Result<(user::Model, bool), DbErr> {
    let mut conn = match session {
        LoginSession::Pooled(existing) => {
            let created = existing.is_none();
            return Ok((
                complete_login(db, existing, phone, now, touches).await?,
                created,
            ));
        }
        LoginSession::Postgres(conn) => conn,
    };
    // Inserts the user unless the phone has one (no row is written then), and returns either.
    // The existing row is read in the statement's snapshot: a row committed by another
    // replica's insert while this one waited on the unique index is read just after.
    // Safe to run twice (the lease repeats it on a fresh connection when an idle one turns
    // out broken): a user the first run created is found by the second.
    let id = crate::domain::ids::time_ordered_uuid(now.timestamp_millis().max(0) as u64);
    let row = conn
        .fetch_optional(|| {
            sea_orm::sqlx::query(
                "WITH created AS (INSERT INTO users (id, phone, created_at, last_login_at) \
                 VALUES ($1, $2, $3, $3) ON CONFLICT (phone) DO NOTHING \
                 RETURNING id, phone, created_at, last_login_at) \
                 SELECT id, phone, created_at, last_login_at, true AS created FROM created \
                 UNION ALL \
                 SELECT id, phone, created_at, last_login_at, false FROM users WHERE phone = $2",
            )
            .bind(id)
            .bind(phone)
            .bind(now)
        })
        .await?;
    let row = match row {
        Some(row) => row,
        None => conn
            .fetch_optional(|| {
                sea_orm::sqlx::query(
                    "SELECT id, phone, created_at, last_login_at, false AS created FROM users \
                     WHERE phone = $1",
                )
                .bind(phone)
            })
            .await?
            .ok_or_else(|| DbErr::RecordNotFound(format!("the user of {phone}")))?,
    };
    let created: bool = sea_orm::sqlx::Row::try_get(&row, "created").map_err(pg_query_err)?;
    let mut user = pg_user(row)?;
    if !created {
        touches.record(user.id, now);
        user.last_login_at = Some(now);
    }
    Ok((user, created))
}

/// Completes a login for `phone`: the `existing` user (from [`find_by_phone`]) gets its
/// `last_login_at` queued on `touches`, which the login does not wait for; a new user is
/// inserted (one `INSERT`). Two replicas creating the same user at once both end up with it.
pub async fn complete_login(
    db: &DatabaseConnection,
    existing: Option<user::Model>,
    phone: &str,
    now: DateTime<Utc>,
    touches: &touches::LoginTouches,
) -> Result<user::Model, DbErr> {
    if let Some(mut found) = existing {
        touches.record(found.id, now);
        found.last_login_at = Some(now);
        return Ok(found);
    }
    let new_user = user::ActiveModel {
        id: Set(crate::domain::ids::new_time_ordered_uuid()),
        phone: Set(Some(phone.to_string())),
        created_at: Set(now),
        last_login_at: Set(Some(now)),
    };
    match new_user.insert(db).await {
        Ok(created) => Ok(created),
        // Another replica created the same new user at the same moment: its insert won.
        Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            find_by_phone(db, phone).await?.ok_or(err)
        }
        Err(err) => Err(err),
    }
}

/// The Telegram chat linked to the user owning `phone`, if any (for `channel: "telegram"`).
pub async fn telegram_chat_for_phone(
    db: &DatabaseConnection,
    phone: &str,
) -> Result<Option<String>, DbErr> {
    Ok(identity::Entity::find()
        .inner_join(user::Entity)
        .filter(user::Column::Phone.eq(phone))
        .filter(identity::Column::Provider.eq("telegram"))
        .one(db)
        .await?
        .map(|i| i.subject))
}

/// The user an external identity (`telegram`, user id) belongs to, if it is linked.
pub async fn user_for_identity(
    db: &DatabaseConnection,
    provider: &str,
    subject: &str,
) -> Result<Option<user::Model>, DbErr> {
    Ok(identity::Entity::find()
        .filter(identity::Column::Provider.eq(provider))
        .filter(identity::Column::Subject.eq(subject))
        .find_also_related(user::Entity)
        .one(db)
        .await?
        .and_then(|(_, user)| user))
}

/// Logs in through an external identity: its user, or a new user without a phone that owns
/// it (one transaction: `INSERT` user + `INSERT` identity). Two replicas racing end up with the
/// same user.
pub async fn login_identity(
    db: &DatabaseConnection,
    provider: &str,
    subject: &str,
    now: DateTime<Utc>,
    touches: &touches::LoginTouches,
) -> Result<user::Model, DbErr> {
    if let Some(user) = user_for_identity(db, provider, subject).await? {
        let mut user = user;
        touches.record(user.id, now);
        user.last_login_at = Some(now);
        return Ok(user);
    }
    let txn = db.begin().await?;
    let created = user::ActiveModel {
        id: Set(crate::domain::ids::new_time_ordered_uuid()),
        phone: Set(None),
        created_at: Set(now),
        last_login_at: Set(Some(now)),
    }
    .insert(&txn)
    .await?;
    match insert_identity(&txn, created.id, provider, subject, now).await {
        Ok(()) => {
            txn.commit().await?;
            Ok(created)
        }
        Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            txn.rollback().await?;
            user_for_identity(db, provider, subject).await?.ok_or(err)
        }
        Err(err) => Err(err),
    }
}

async fn insert_identity(
    db: &impl ConnectionTrait,
    user_id: Uuid,
    provider: &str,
    subject: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    identity::ActiveModel {
        id: Set(crate::domain::ids::new_time_ordered_uuid()),
        user_id: Set(user_id),
        provider: Set(provider.to_string()),
        subject: Set(subject.to_string()),
        created_at: Set(now),
    }
    .insert(db)
    .await
    .map(drop)
}

/// Links `phone`, proven by the provider (a Telegram contact the user shared about
/// themselves), to identity (`provider`, `subject`), in one transaction. The phone's user is
/// the one that counts: the identity joins it (created if needed). An identity whose user has
/// no phone yet hands that user the phone instead, so its sessions keep their user.
pub async fn link_phone(
    db: &DatabaseConnection,
    provider: &str,
    subject: &str,
    phone: &str,
    now: DateTime<Utc>,
) -> Result<user::Model, DbErr> {
    let txn = db.begin().await?;
    let phone_user = user::Entity::find()
        .filter(user::Column::Phone.eq(phone))
        .one(&txn)
        .await?;
    let linked = identity::Entity::find()
        .filter(identity::Column::Provider.eq(provider))
        .filter(identity::Column::Subject.eq(subject))
        .find_also_related(user::Entity)
        .one(&txn)
        .await?;
    let user = match (linked, phone_user) {
        // Already linked to the phone's user.
        (Some((_, Some(owner))), Some(phone_user)) if owner.id == phone_user.id => phone_user,
        // A phoneless user (from the widget or /start) gets the phone.
        (Some((_, Some(owner))), None) if owner.phone.is_none() => {
            let mut active: user::ActiveModel = owner.into();
            active.phone = Set(Some(phone.to_string()));
            active.update(&txn).await?
        }
        // The identity moves to the phone's user (created when the phone is new).
        (Some((ident, _)), phone_user) => {
            let target = match phone_user {
                Some(u) => u,
                None => new_phone_user(&txn, phone, now).await?,
            };
            let mut active: identity::ActiveModel = ident.into();
            active.user_id = Set(target.id);
            active.update(&txn).await?;
            target
        }
        (None, phone_user) => {
            let target = match phone_user {
                Some(u) => u,
                None => new_phone_user(&txn, phone, now).await?,
            };
            insert_identity(&txn, target.id, provider, subject, now).await?;
            target
        }
    };
    txn.commit().await?;
    Ok(user)
}

async fn new_phone_user(
    db: &impl ConnectionTrait,
    phone: &str,
    now: DateTime<Utc>,
) -> Result<user::Model, DbErr> {
    user::ActiveModel {
        id: Set(crate::domain::ids::new_time_ordered_uuid()),
        phone: Set(Some(phone.to_string())),
        created_at: Set(now),
        last_login_at: Set(None),
    }
    .insert(db)
    .await
}

/// The user with `id` (refresh: no identities needed).
pub async fn find_user_by_id(
    db: &DatabaseConnection,
    id: Uuid,
) -> Result<Option<user::Model>, DbErr> {
    user::Entity::find_by_id(id).one(db).await
}

/// A user and their linked identities, in one query.
pub async fn find_user(
    db: &DatabaseConnection,
    id: Uuid,
) -> Result<Option<(user::Model, Vec<identity::Model>)>, DbErr> {
    let mut rows = user::Entity::find_by_id(id)
        .find_with_related(identity::Entity)
        .all(db)
        .await?;
    Ok(rows.pop())
}

/// The database backend name, for logs.
pub fn backend_name(db: &DatabaseConnection) -> &'static str {
    match db.get_database_backend() {
        sea_orm::DatabaseBackend::Postgres => "postgres",
        sea_orm::DatabaseBackend::Sqlite => "sqlite",
        _ => "other",
    }
}
