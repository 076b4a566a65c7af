//! Users and identities in SQL through SeaORM: PostgreSQL or MySQL/MariaDB in clusters, SQLite
//! when embedded.

use std::time::Duration;

use chrono::{DateTime, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseBackend,
    DatabaseConnection, DbErr, EntityTrait, QueryFilter, Set, SqlErr, TransactionTrait,
};
use uuid::Uuid;

pub mod app_attest;
pub mod batches;
pub mod entities;
pub mod events;
pub mod hot;
pub mod touches;
pub mod users;

pub use entities::{app_attest_key, audit_event, event_outbox, identity, user};

/// Opens a connection pool. SQLite gets one connection (it serialises writers anyway), WAL and a
/// busy timeout; PostgreSQL and MySQL/MariaDB get `max_connections` (sqlx sets MySQL sessions to
/// `utf8mb4` and time zone `+00:00`, so `datetime(6)` columns hold UTC). Connections are made on
/// demand, so a server with `RUN_MIGRATIONS=false` starts while its database is still coming up
/// (`/ready` says so).
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

/// The oldest servers otpgate runs on: MariaDB 10.5 brought `INSERT … RETURNING` (the login's
/// single statement); MySQL 5.7 and MariaDB 10.4 are past their end of life.
pub const MYSQL_MINIMUM: &str = "MariaDB 10.5 or MySQL 8.0";

/// A MySQL-family server, from its `VERSION()` (`10.11.6-MariaDB-0+deb12u1`, `8.0.36`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlServer {
    /// Whether it is MariaDB rather than MySQL.
    pub mariadb: bool,
    /// Major, minor, patch.
    pub version: (u32, u32, u32),
}

impl MysqlServer {
    /// Reads a `VERSION()` string; `None` when it has no `major.minor`.
    pub fn parse(version: &str) -> Option<Self> {
        let mariadb = version.to_ascii_lowercase().contains("mariadb");
        // MariaDB before 11 may prefix `5.5.5-` for old replication clients.
        let text = version.strip_prefix("5.5.5-").unwrap_or(version);
        let mut parts = text
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>().ok());
        let major = parts.next().flatten()?;
        let minor = parts.next().flatten()?;
        let patch = parts.next().flatten().unwrap_or(0);
        Some(Self {
            mariadb,
            version: (major, minor, patch),
        })
    }

    /// Whether otpgate supports it ([`MYSQL_MINIMUM`]).
    pub fn supported(&self) -> bool {
        let (major, minor, _) = self.version;
        if self.mariadb {
            (major, minor) >= (10, 5)
        } else {
            major >= 8
        }
    }

    /// The statement a login by code uses on this server: MariaDB 10.5 and newer return the
    /// row from the insert itself; MySQL has no `RETURNING`.
    pub fn login_sql(&self) -> LoginSql {
        let (major, minor, _) = self.version;
        if self.mariadb && (major, minor) >= (10, 5) {
            LoginSql::MariadbReturning
        } else {
            LoginSql::MysqlInsertThenSelect
        }
    }
}

impl std::fmt::Display for MysqlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (major, minor, patch) = self.version;
        let name = if self.mariadb { "MariaDB" } else { "MySQL" };
        write!(f, "{name} {major}.{minor}.{patch}")
    }
}

/// The MySQL or MariaDB server behind `db` (one `SELECT VERSION()`).
pub async fn mysql_server(db: &DatabaseConnection) -> Result<MysqlServer, DbErr> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            DatabaseBackend::MySql,
            "SELECT VERSION() AS version",
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("SELECT VERSION() returned no row".into()))?;
    let version: String = row.try_get("", "version")?;
    MysqlServer::parse(&version)
        .ok_or_else(|| DbErr::Custom(format!("unrecognised server version {version:?}")))
}

/// Why the database could not be opened or migrated, sorted for the operator: a mistake in the
/// configuration (the user, the password, the database name, the server's version: start-up and
/// `otpgate migrate` exit 2) or anything else (a database that does not answer: exit 1).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The server refused the user name or password.
    #[error("the server refused the user or password ({0}); check DATABASE_URL")]
    Credentials(String),
    /// The database named in the URL does not exist.
    #[error("the database does not exist ({0}); create it or fix the name in DATABASE_URL")]
    NoDatabase(String),
    /// The user may not use the database (MySQL says so also when it does not exist).
    #[error(
        "the user may not use this database, or it does not exist ({0}); grant the user access \
         to it, create it, or fix DATABASE_URL"
    )]
    NoAccess(String),
    /// No connection within the pool's timeout: the server is down or unreachable.
    #[error("no connection within 5 s: the server is down or unreachable")]
    Unreachable,
    /// The server is older than otpgate supports.
    #[error("the server is {found}; otpgate needs {MYSQL_MINIMUM} or newer")]
    TooOld {
        /// The server found.
        found: MysqlServer,
    },
    /// Anything else: a connection that broke, a failed migration.
    #[error("{0}")]
    Other(DbErr),
}

impl SetupError {
    /// Whether this is a mistake in the configuration rather than an outage.
    pub fn is_configuration(&self) -> bool {
        !matches!(self, SetupError::Other(_) | SetupError::Unreachable)
    }
}

impl From<DbErr> for SetupError {
    fn from(err: DbErr) -> Self {
        if matches!(
            err,
            DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout)
        ) {
            return SetupError::Unreachable;
        }
        let Some(db_err) = database_error(&err) else {
            return SetupError::Other(err);
        };
        let message = db_err.message().to_string();
        if let Some(mysql) = db_err.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
            return match mysql.number() {
                // ER_ACCESS_DENIED_ERROR, ER_ACCESS_DENIED_NO_PASSWORD_ERROR
                1045 | 1698 => SetupError::Credentials(message),
                // ER_DBACCESS_DENIED_ERROR
                1044 => SetupError::NoAccess(message),
                // ER_BAD_DB_ERROR
                1049 => SetupError::NoDatabase(message),
                _ => SetupError::Other(err),
            };
        }
        match db_err.code().as_deref() {
            // invalid_password, invalid_authorization_specification
            Some("28P01" | "28000") => SetupError::Credentials(message),
            // invalid_catalog_name
            Some("3D000") => SetupError::NoDatabase(message),
            _ => SetupError::Other(err),
        }
    }
}

/// The server's own error inside a SeaORM error, if there is one.
fn database_error(err: &DbErr) -> Option<&(dyn sea_orm::sqlx::error::DatabaseError + 'static)> {
    let (DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))
    | DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
    | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e))) = err
    else {
        return None;
    };
    match &**e {
        sea_orm::sqlx::Error::Database(db_err) => Some(&**db_err),
        _ => None,
    }
}

/// Checks that the server is one otpgate supports (MySQL/MariaDB: [`MYSQL_MINIMUM`]) and applies
/// every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), SetupError> {
    if db.get_database_backend() == DatabaseBackend::MySql {
        let server = mysql_server(db).await?;
        if !server.supported() {
            return Err(SetupError::TooOld { found: server });
        }
    }
    Migrator::up(db, None).await?;
    Ok(())
}

/// An instant as a query parameter. MySQL/MariaDB: sqlx sends a `DateTime<Utc>` as a TIMESTAMP,
/// which ends in 2038 (a later bound compares as nothing); as a DATETIME (the columns' type,
/// holding UTC) it compares right. Other backends: as it is.
pub fn instant_param(db: &DatabaseConnection, at: DateTime<Utc>) -> sea_orm::Value {
    if db.get_database_backend() == DatabaseBackend::MySql {
        at.naive_utc().into()
    } else {
        at.into()
    }
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

/// How a login by code reaches the database (see [`login_start`]), chosen once per server:
/// [`login_sql`] picks it from the backend and, on MySQL/MariaDB, the server's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginSql {
    /// PostgreSQL: `WITH created AS (INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING
    /// RETURNING …) SELECT … UNION ALL SELECT …`: one statement for new and returning users,
    /// and for every login waiting at that moment ([`hot::LoginQueue`]).
    Postgres,
    /// MariaDB 10.5 and newer: `INSERT … ON DUPLICATE KEY UPDATE phone = phone RETURNING …`,
    /// which returns the new row or the existing one: one statement.
    MariadbReturning,
    /// MySQL (no `RETURNING`): `INSERT … ON DUPLICATE KEY UPDATE phone = phone`, then a
    /// `SELECT` of the phone's row on the same connection: two statements.
    MysqlInsertThenSelect,
    /// SQLite: a lookup through the pool before the code check, an insert after (for a new
    /// user).
    Pooled,
}

/// The [`LoginSql`] for `db`: one `SELECT VERSION()` on MySQL/MariaDB, nothing elsewhere.
pub async fn login_sql(db: &DatabaseConnection) -> Result<LoginSql, DbErr> {
    Ok(match db.get_database_backend() {
        DatabaseBackend::Postgres => LoginSql::Postgres,
        DatabaseBackend::MySql => mysql_server(db).await?.login_sql(),
        _ => LoginSql::Pooled,
    })
}

/// The database side of one login by code, started before the code is checked and finished
/// after. On PostgreSQL: nothing before the check while the database answers (after a login
/// statement failed for want of it, a connection is taken first: a 503 then charges nothing);
/// after it, the login joins the login pool's queue ([`hot::LoginQueue`]), whose one statement
/// creates or finds the users of every login waiting at that moment (a database that fails it
/// answers 503, and the code goes back). On
/// MySQL/MariaDB: one pooled connection, checked out (and pinged by the pool) before the code
/// check. Then the [`LoginSql`] statement that inserts a new user or returns the existing one.
/// On SQLite: the lookup first, then the insert (or nothing), through the pool.
pub enum LoginSession {
    /// PostgreSQL: the login pool's queue, which sends the logins waiting at the same moment
    /// in one statement, and the id a user created by this login gets
    /// ([`LoginSession::proposed_user`]).
    Postgres(hot::LoginQueue, Uuid),
    /// A MySQL/MariaDB connection held for this login, and the statement to use on it.
    Mysql(
        sea_orm::sqlx::pool::PoolConnection<sea_orm::sqlx::MySql>,
        LoginSql,
    ),
    /// The user found by the lookup, if any; statements go through the pool.
    Pooled(Option<user::Model>),
}

impl LoginSession {
    /// The id the user gets when this login creates them, known before the statement runs
    /// (PostgreSQL's): the session can be recorded for it with the code check and kept when
    /// the statement creates that user. `None` where the database picks it later.
    pub fn proposed_user(&self) -> Option<Uuid> {
        match self {
            LoginSession::Postgres(_, id) => Some(*id),
            _ => None,
        }
    }
}

pub(crate) fn row_user(row: impl Into<sea_orm::QueryResult>) -> Result<user::Model, DbErr> {
    use sea_orm::FromQueryResult;
    user::Model::from_query_result(&row.into(), "")
}

pub(crate) fn query_err(err: sea_orm::sqlx::Error) -> DbErr {
    if hot::is_broken_connection(&err) {
        // The connection broke under the query: the database is unavailable (503), not a bug.
        DbErr::Conn(sea_orm::RuntimeErr::SqlxError(err.into()))
    } else {
        DbErr::Query(sea_orm::RuntimeErr::SqlxError(err.into()))
    }
}

fn acquire_err(err: sea_orm::sqlx::Error) -> DbErr {
    match err {
        sea_orm::sqlx::Error::PoolTimedOut => {
            DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout)
        }
        sea_orm::sqlx::Error::PoolClosed => {
            DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::ConnectionClosed)
        }
        other => DbErr::Conn(sea_orm::RuntimeErr::SqlxError(other.into())),
    }
}

/// Starts a login for `phone` with the statement `sql` chose (see [`LoginSession`]); on
/// PostgreSQL through `hot`, the login pool of `db` ([`hot::HotPool::for_database`]).
pub async fn login_start(
    db: &DatabaseConnection,
    hot: Option<&hot::HotPool>,
    sql: LoginSql,
    phone: &str,
) -> Result<LoginSession, DbErr> {
    match (sql, db.get_database_backend(), hot) {
        (LoginSql::Postgres, DatabaseBackend::Postgres, Some(pool)) => {
            pool.check_reachable().await?;
            let id =
                crate::domain::ids::time_ordered_uuid(Utc::now().timestamp_millis().max(0) as u64);
            Ok(LoginSession::Postgres(pool.logins(), id))
        }
        (
            LoginSql::MariadbReturning | LoginSql::MysqlInsertThenSelect,
            DatabaseBackend::MySql,
            _,
        ) => Ok(LoginSession::Mysql(
            Box::pin(db.get_mysql_connection_pool().acquire())
                .await
                .map_err(acquire_err)?,
            sql,
        )),
        (LoginSql::Pooled, _, _) => Ok(LoginSession::Pooled(
            Box::pin(find_by_phone(db, phone)).await?,
        )),
        (sql, backend, _) => Err(DbErr::Custom(format!(
            "the login statement {sql:?} does not run on {backend:?}"
        ))),
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
    let (mut user, created) = match session {
        // The other backends' futures are boxed, so a PostgreSQL login's stays small.
        LoginSession::Pooled(existing) => {
            return Box::pin(complete_login(db, existing, phone, now, touches)).await;
        }
        LoginSession::Postgres(queue, id) => queue.login(id, phone, now).await?,
        LoginSession::Mysql(conn, sql) => Box::pin(mysql_login(conn, sql, phone, now)).await?,
    };
    if !created {
        touches.record(user.id, now);
        user.last_login_at = Some(now);
    }
    Ok((user, created))
}

async fn mysql_login(
    mut conn: sea_orm::sqlx::pool::PoolConnection<sea_orm::sqlx::MySql>,
    sql: LoginSql,
    phone: &str,
    now: DateTime<Utc>,
) -> Result<(user::Model, bool), DbErr> {
    // `phone = phone` changes nothing: an existing row is neither written nor given a new id,
    // but it is locked and read as committed, also when another replica's insert of the same
    // phone committed while this one waited on the unique index. The row is ours (created
    // now) exactly when it carries the id proposed here.
    const INSERT: &str = "INSERT INTO users (id, phone, created_at, last_login_at) \
        VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE phone = phone";
    const INSERT_RETURNING: &str = "INSERT INTO users (id, phone, created_at, last_login_at) \
        VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE phone = phone \
        RETURNING id, phone, created_at, last_login_at, blocked_at";
    const SELECT: &str =
        "SELECT id, phone, created_at, last_login_at, blocked_at FROM users WHERE phone = ?";
    let id = crate::domain::ids::time_ordered_uuid(now.timestamp_millis().max(0) as u64);
    let query = sea_orm::sqlx::query::<sea_orm::sqlx::MySql>;
    let row = if sql == LoginSql::MariadbReturning {
        query(INSERT_RETURNING)
            .bind(id)
            .bind(phone)
            .bind(now)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await
            .map_err(query_err)?
    } else {
        query(INSERT)
            .bind(id)
            .bind(phone)
            .bind(now)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(query_err)?;
        query(SELECT)
            .bind(phone)
            .fetch_optional(&mut *conn)
            .await
            .map_err(query_err)?
    };
    let user = row_user(row.ok_or_else(|| DbErr::RecordNotFound("the user of a login".into()))?)?;
    let created = user.id == id;
    Ok((user, created))
}

/// Completes a login for `phone`: the `existing` user (from [`find_by_phone`]) gets its
/// `last_login_at` queued on `touches`, which the login does not wait for; a new user is
/// inserted (one `INSERT`). Two replicas creating the same user at once both end up with it.
/// The user, and whether this call created it.
pub async fn complete_login(
    db: &DatabaseConnection,
    existing: Option<user::Model>,
    phone: &str,
    now: DateTime<Utc>,
    touches: &touches::LoginTouches,
) -> Result<(user::Model, bool), DbErr> {
    if let Some(mut found) = existing {
        touches.record(found.id, now);
        found.last_login_at = Some(now);
        return Ok((found, false));
    }
    let new_user = user::ActiveModel {
        id: Set(crate::domain::ids::new_time_ordered_uuid()),
        phone: Set(Some(phone.to_string())),
        created_at: Set(now),
        last_login_at: Set(Some(now)),
        blocked_at: Set(None),
    };
    match new_user.insert(db).await {
        Ok(created) => Ok((created, true)),
        // Another replica created the same new user at the same moment: its insert won.
        Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            Ok((find_by_phone(db, phone).await?.ok_or(err)?, false))
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
/// same user. The user, and whether this call created it.
pub async fn login_identity(
    db: &DatabaseConnection,
    provider: &str,
    subject: &str,
    now: DateTime<Utc>,
    touches: &touches::LoginTouches,
) -> Result<(user::Model, bool), DbErr> {
    if let Some(user) = user_for_identity(db, provider, subject).await? {
        let mut user = user;
        touches.record(user.id, now);
        user.last_login_at = Some(now);
        return Ok((user, false));
    }
    let txn = db.begin().await?;
    let created = user::ActiveModel {
        id: Set(crate::domain::ids::new_time_ordered_uuid()),
        phone: Set(None),
        created_at: Set(now),
        last_login_at: Set(Some(now)),
        blocked_at: Set(None),
    }
    .insert(&txn)
    .await?;
    match insert_identity(&txn, created.id, provider, subject, now).await {
        Ok(()) => {
            txn.commit().await?;
            Ok((created, true))
        }
        Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            txn.rollback().await?;
            Ok((
                user_for_identity(db, provider, subject).await?.ok_or(err)?,
                false,
            ))
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
/// no phone yet hands that user the phone instead, so its sessions keep their user. The user,
/// and whether this call created it.
pub async fn link_phone(
    db: &DatabaseConnection,
    provider: &str,
    subject: &str,
    phone: &str,
    now: DateTime<Utc>,
) -> Result<(user::Model, bool), DbErr> {
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
    let mut created = false;
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
                None => {
                    created = true;
                    new_phone_user(&txn, phone, now).await?
                }
            };
            let mut active: identity::ActiveModel = ident.into();
            active.user_id = Set(target.id);
            active.update(&txn).await?;
            target
        }
        (None, phone_user) => {
            let target = match phone_user {
                Some(u) => u,
                None => {
                    created = true;
                    new_phone_user(&txn, phone, now).await?
                }
            };
            insert_identity(&txn, target.id, provider, subject, now).await?;
            target
        }
    };
    txn.commit().await?;
    Ok((user, created))
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
        blocked_at: Set(None),
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
        DatabaseBackend::Postgres => "postgres",
        DatabaseBackend::MySql => "mysql",
        DatabaseBackend::Sqlite => "sqlite",
        _ => "other",
    }
}
