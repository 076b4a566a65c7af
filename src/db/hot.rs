//! The login's own PostgreSQL connections, apart from SeaORM's pool, and the queue that sends
//! the logins waiting at one moment in one statement ([`LoginQueue`]).
//!
//! SeaORM's pool (sqlx's) pings the server when a connection is checked out and again when it is
//! returned: two round trips around every statement, each one a wake-up of a PostgreSQL backend
//! and of us. A login runs one statement, so these connections are not pinged. One that broke
//! while idle (the server restarted, an administrator ended the backend) fails its statement,
//! which then runs once more on a fresh connection. A login whose statement still fails after its
//! code was spent gives the code back (`auth`), so the client's retry works: a database outage
//! answers 503 and loses nothing, as with the pings.
//!
//! A statement gets [`STATEMENT_TIMEOUT`], on the server (`statement_timeout`) and here (a
//! connection silently dropped by a firewall answers nothing): then the login answers 503 and
//! its code goes back. A connection dropped in the middle of a statement (it timed out here; a
//! cancelled request does not cancel the statement its login went out in) keeps its slot until
//! it has drained (answered a ping, then it is reused) or been closed, so the server never
//! holds more than `max` of the login's backends.
//! An idle connection popped after [`IDLE_LIMIT`] is closed instead of reused.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgRow};
use sea_orm::sqlx::query::Query;
use sea_orm::sqlx::{Connection, Postgres};
use sea_orm::{ConnAcquireErr, DatabaseConnection, DbErr, RuntimeErr};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::user;

/// A connection idle for longer is closed rather than reused.
pub const IDLE_LIMIT: Duration = Duration::from_secs(120);

/// The longest a login's statement may take (server and client side).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Up to `max` connections of the login path (`DB_CONNECTIONS`), made on demand, and the queue
/// of logins waiting for their statement ([`HotPool::logins`]).
pub struct HotPool {
    shared: Arc<Shared>,
    logins: OnceLock<LoginQueue>,
}

struct Shared {
    options: PgConnectOptions,
    idle: Mutex<Vec<(PgConnection, Instant)>>,
    permits: Arc<Semaphore>,
    max: usize,
    acquire_timeout: Duration,
    connect_timeout: Duration,
    /// Login statements sent (for tests: fewer than the logins when they went together).
    login_statements: AtomicU64,
    /// The last login statement failed for want of the database (cleared by one that ran).
    unreachable: AtomicBool,
}

impl HotPool {
    /// The login pool of `db` when it is PostgreSQL, with the connect options and size of
    /// SeaORM's pool; `None` for the other backends.
    pub fn for_database(db: &DatabaseConnection) -> Option<Self> {
        if db.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
            return None;
        }
        let pool = db.get_postgres_connection_pool();
        let max = pool.options().get_max_connections().max(1) as usize;
        Some(Self {
            shared: Arc::new(Shared {
                options: (*pool.connect_options()).clone().options([
                    (
                        "statement_timeout",
                        STATEMENT_TIMEOUT.as_millis().to_string(),
                    ),
                    // The login statements' plans do not depend on their arrays (a unique
                    // index on `phone` either way), but PostgreSQL kept planning them afresh
                    // (its custom plans look cheaper than the generic one): at 1,200 flows/s,
                    // 25–60 % of its CPU per statement (`loadtest/README.md`). Every statement
                    // on this pool gets the generic plan: one whose best plan depends on its
                    // values belongs on SeaORM's pool. PostgreSQL 12+ has the setting.
                    ("plan_cache_mode", "force_generic_plan".to_string()),
                ]),
                idle: Mutex::new(Vec::with_capacity(max)),
                permits: Arc::new(Semaphore::new(max)),
                max,
                login_statements: AtomicU64::new(0),
                unreachable: AtomicBool::new(false),
                acquire_timeout: pool.options().get_acquire_timeout(),
                connect_timeout: pool.options().get_acquire_timeout().min(STATEMENT_TIMEOUT),
            }),
            logins: OnceLock::new(),
        })
    }

    /// The queue of logins (started on first use, on the current runtime).
    pub fn logins(&self) -> LoginQueue {
        self.logins
            .get_or_init(|| LoginQueue::start(self.shared.clone()))
            .clone()
    }

    /// A connection: an idle one, or a new one. Waits for a free slot up to the pool's acquire
    /// timeout; a server that refuses connections is [`DbErr::Conn`] (503).
    pub async fn lease(&self) -> Result<Lease, DbErr> {
        self.shared.lease().await
    }

    /// How many connections are idle now (for tests).
    pub fn idle_connections(&self) -> usize {
        self.shared.lock_idle().len()
    }

    /// How many more connections could be handed out now (for tests).
    pub fn free_slots(&self) -> usize {
        self.shared.permits.available_permits()
    }

    /// Login statements this pool has sent so far (for tests).
    pub fn login_statements(&self) -> u64 {
        self.shared.login_statements.load(Ordering::Relaxed)
    }

    /// Before a code is checked: when the last login statement failed for want of the database,
    /// a connection is taken (and given back), so while the database stays away the login
    /// answers 503 before the code check charges anything; otherwise nothing is done.
    pub async fn check_reachable(&self) -> Result<(), DbErr> {
        if self.shared.unreachable.load(Ordering::Relaxed) {
            drop(self.shared.lease().await?);
            self.shared.unreachable.store(false, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Shared {
    async fn lease(self: &Arc<Self>) -> Result<Lease, DbErr> {
        let shared = self;
        let permit = tokio::time::timeout(
            shared.acquire_timeout,
            shared.permits.clone().acquire_owned(),
        )
        .await
        .map_err(|_| DbErr::ConnectionAcquire(ConnAcquireErr::Timeout))?
        .map_err(|_| DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed))?;
        let idle = shared.take_idle();
        let (conn, reused) = match idle {
            Some(conn) => (conn, true),
            None => (shared.connect().await?, false),
        };
        Ok(Lease {
            conn: Some(conn),
            reused,
            healthy: true,
            shared: shared.clone(),
            permit: Some(permit),
        })
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<(PgConnection, Instant)>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently used idle connection; older ones past [`IDLE_LIMIT`] are closed.
    fn take_idle(&self) -> Option<PgConnection> {
        let mut idle = self.lock_idle();
        let (conn, since) = idle.pop()?;
        if since.elapsed() <= IDLE_LIMIT {
            return Some(conn);
        }
        // This one and every one below it (older still) have sat too long.
        let stale: Vec<_> = std::iter::once(conn)
            .chain(idle.drain(..).map(|(conn, _)| conn))
            .collect();
        drop(idle);
        for conn in stale {
            close_in_background(conn);
        }
        None
    }

    async fn connect(&self) -> Result<PgConnection, DbErr> {
        match tokio::time::timeout(
            self.connect_timeout,
            PgConnection::connect_with(&self.options),
        )
        .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) => Err(DbErr::Conn(RuntimeErr::SqlxError(err.into()))),
            Err(_) => Err(DbErr::Conn(RuntimeErr::Internal(
                "connecting to the database timed out".into(),
            ))),
        }
    }
}

fn close_in_background(conn: PgConnection) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = conn.close().await;
        });
    }
}

/// A connection left in the middle of a statement: waits (holding its slot) for the server to
/// finish it and answer a ping, then reuses it; closes it when that fails or takes longer than
/// the statement could.
fn drain_in_background(shared: Arc<Shared>, mut conn: PgConnection, permit: OwnedSemaphorePermit) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let drained = tokio::time::timeout(STATEMENT_TIMEOUT * 2, conn.ping()).await;
        if matches!(drained, Ok(Ok(()))) {
            shared.lock_idle().push((conn, Instant::now()));
        } else {
            let _ = tokio::time::timeout(STATEMENT_TIMEOUT, conn.close()).await;
        }
        drop(permit);
    });
}

/// One connection of the [`HotPool`], held by one login statement. Dropped after a statement
/// that completed, it goes back to the pool; dropped in the middle of one (it timed out, or its
/// holder was cancelled), it drains in the background; after a failure, it is closed.
pub struct Lease {
    conn: Option<PgConnection>,
    reused: bool,
    healthy: bool,
    shared: Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Lease {
    /// Runs the statement `query` builds and returns its first row, if any (see
    /// [`Lease::fetch_all`]).
    pub async fn fetch_optional<'q>(
        &mut self,
        query: impl Fn() -> Query<'q, Postgres, PgArguments>,
    ) -> Result<Option<PgRow>, DbErr> {
        Ok(self.fetch_all(query).await?.into_iter().next())
    }

    /// Runs the statement `query` builds and returns its rows. When the connection was an idle
    /// one and it turns out broken, the statement runs once more on a new connection: the
    /// statements given here must be safe to repeat.
    pub async fn fetch_all<'q>(
        &mut self,
        query: impl Fn() -> Query<'q, Postgres, PgArguments>,
    ) -> Result<Vec<PgRow>, DbErr> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Err(DbErr::Conn(RuntimeErr::Internal(
                    "the login's connection was closed".into(),
                )));
            };
            self.healthy = false;
            let answer = tokio::time::timeout(STATEMENT_TIMEOUT, query().fetch_all(&mut *conn))
                .await
                .map_err(|_| {
                    // Left unhealthy: drained (or closed) in the background when dropped.
                    DbErr::Conn(RuntimeErr::Internal(format!(
                        "the login's statement took longer than {STATEMENT_TIMEOUT:?}"
                    )))
                })?;
            match answer {
                Ok(rows) => {
                    self.healthy = true;
                    return Ok(rows);
                }
                Err(err) if is_broken_connection(&err) => {
                    if let Some(broken) = self.conn.take() {
                        close_in_background(broken);
                    }
                    if !std::mem::replace(&mut self.reused, false) {
                        return Err(DbErr::Conn(RuntimeErr::SqlxError(err.into())));
                    }
                    self.conn = Some(self.shared.connect().await?);
                }
                Err(err) => {
                    // The server refused the statement and is ready for the next one. One it
                    // cancelled for taking too long (57014) means it is overloaded, and one it
                    // broke out of a deadlock (40P01) is worth a retry: 503 either way.
                    self.healthy = true;
                    let cancelled = matches!(&err, sea_orm::sqlx::Error::Database(db)
                        if matches!(db.code().as_deref(), Some("57014" | "40P01")));
                    let err = RuntimeErr::SqlxError(err.into());
                    return Err(if cancelled {
                        DbErr::Conn(err)
                    } else {
                        DbErr::Query(err)
                    });
                }
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (Some(conn), Some(permit)) = (self.conn.take(), self.permit.take()) else {
            return;
        };
        if self.healthy {
            self.shared.lock_idle().push((conn, Instant::now()));
        } else {
            drain_in_background(self.shared.clone(), conn, permit);
        }
    }
}

/// Whether `err` says the connection itself is gone (as opposed to a statement the server
/// refused): an I/O or protocol failure, or the server ending the session (SQLSTATE class 08,
/// connection exception; 57P01–57P05: shutdowns, `pg_terminate_backend`, crash recovery, idle
/// session timeout; not 57014, a cancelled statement on a healthy connection).
pub fn is_broken_connection(err: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error as E;
    match err {
        E::Io(_) | E::Protocol(_) | E::Tls(_) => true,
        E::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// The most logins one statement carries.
const MAX_BATCH: usize = 64;

/// The most login statements in flight at once (fewer when the pool is smaller). While they
/// run, the logins arriving meanwhile wait and then go together, in one statement: under load a
/// statement carries many logins (one round trip, one commit), and a lone login goes at once.
/// Two rather than four (`loadtest/cluster.sh --direct`, alternated pairs, 2026-11-30): closed
/// model 6,145–6,346 against 5,728–6,000 flows/s, PostgreSQL 52–53 against 59–63 µs per flow;
/// at 2,800 flows/s PostgreSQL 134–137 against 146–148 µs and no worse p99. One was worse: a
/// statement that stalls holds every login behind it.
const MAX_IN_FLIGHT: usize = 2;

/// Creates the users of new numbers and returns those of known ones, all in one statement.
/// Rows are inserted in phone order, so two replicas' statements never wait on each other's
/// rows in a cycle. The main query's snapshot does not see the rows `created` inserts, so a
/// phone comes back once, created or found; twice only when its user lost it (deleted, or a
/// number change) while the statement ran, and then the created row is the answer
/// ([`keep_row`]).
const LOGIN_BATCH: &str = "WITH input AS (\
     SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS i(id, phone, at)), \
     created AS (INSERT INTO users (id, phone, created_at, last_login_at) \
     SELECT id, phone, at, at FROM input ORDER BY phone ON CONFLICT (phone) DO NOTHING \
     RETURNING id, phone, created_at, last_login_at, blocked_at) \
     SELECT id, phone, created_at, last_login_at, blocked_at, true AS created FROM created \
     UNION ALL \
     SELECT id, phone, created_at, last_login_at, blocked_at, false FROM users \
     WHERE phone = ANY($2)";

/// The users of phones another replica created while the batch waited on the unique index
/// (committed after the batch's snapshot was taken).
const LOGIN_LATE: &str = "SELECT id, phone, created_at, last_login_at, blocked_at, \
     false AS created FROM users WHERE phone = ANY($1)";

/// The user of a login, and whether the login created it.
pub type LoginRow = (user::Model, bool);

struct PendingLogin {
    id: Uuid,
    phone: String,
    at: DateTime<Utc>,
    /// Past this, the login is answered 503 instead of being sent (a database that answers
    /// slower than logins arrive must not grow the queue without end).
    deadline: Instant,
    reply: oneshot::Sender<Result<LoginRow, DbErr>>,
}

/// The logins waiting for their statement; one task sends them, many to a statement (cheap to
/// clone). The task ends once the pool and every clone are gone.
#[derive(Clone)]
pub struct LoginQueue {
    queue: mpsc::UnboundedSender<PendingLogin>,
    wait_limit: Duration,
}

impl LoginQueue {
    fn start(shared: Arc<Shared>) -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        let in_flight = shared.max.clamp(1, MAX_IN_FLIGHT);
        let wait_limit = shared.acquire_timeout;
        tokio::spawn(send_logins(shared, pending, in_flight));
        Self { queue, wait_limit }
    }

    /// Creates the user of `phone` (with `id`, at `at`) or returns the existing one. The
    /// statement is repeated once on a fresh connection when an idle one turns out broken (the
    /// statement is safe to repeat: a user the first run created is found by the second).
    pub async fn login(&self, id: Uuid, phone: &str, at: DateTime<Utc>) -> Result<LoginRow, DbErr> {
        let (reply, answer) = oneshot::channel();
        let pending = PendingLogin {
            id,
            phone: phone.to_string(),
            at,
            deadline: Instant::now() + self.wait_limit,
            reply,
        };
        let gone = || DbErr::Conn(RuntimeErr::Internal("the login queue has stopped".into()));
        self.queue.send(pending).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Takes logins off the queue, as many as are waiting (one per phone, up to [`MAX_BATCH`]),
/// whenever fewer than `in_flight` statements are running.
async fn send_logins(
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<PendingLogin>,
    in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut waiting: Vec<PendingLogin> = Vec::new();
    loop {
        if waiting.is_empty() && queue.recv_many(&mut waiting, MAX_BATCH).await == 0 {
            return;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        while let Ok(pending) = queue.try_recv() {
            waiting.push(pending);
        }
        // One that waited too long is a 503; a cancelled request's login is not sent.
        let now = Instant::now();
        let (late, current): (Vec<_>, Vec<_>) = waiting
            .drain(..)
            .partition(|pending| pending.deadline <= now);
        for pending in late {
            let _ = pending
                .reply
                .send(Err(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)));
        }
        waiting = current;
        waiting.retain(|pending| !pending.reply.is_closed());
        let batch = take_batch(&mut waiting);
        if batch.is_empty() {
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            run_batch(&shared, batch).await;
            drop(slot);
        });
    }
}

/// Up to [`MAX_BATCH`] logins of distinct phones, in phone order; the rest stay for the next
/// statement (a second login of one phone may run beside the first one's statement: it waits on
/// the unique index, then finds the user the first one created through [`LOGIN_LATE`]).
fn take_batch(waiting: &mut Vec<PendingLogin>) -> Vec<PendingLogin> {
    let mut phones = HashSet::new();
    let mut batch = Vec::new();
    let mut rest = Vec::new();
    for pending in waiting.drain(..) {
        if batch.len() < MAX_BATCH && phones.insert(pending.phone.clone()) {
            batch.push(pending);
        } else {
            rest.push(pending);
        }
    }
    *waiting = rest;
    batch.sort_by(|a, b| a.phone.cmp(&b.phone));
    batch
}

async fn run_batch(shared: &Arc<Shared>, batch: Vec<PendingLogin>) {
    let rows = batch_rows(shared, &batch).await;
    let unreachable = matches!(&rows, Err(DbErr::Conn(_) | DbErr::ConnectionAcquire(_)));
    shared.unreachable.store(unreachable, Ordering::Relaxed);
    match rows {
        Ok(mut rows) => {
            for pending in batch {
                // The number stays out of the error (it is logged with a 500).
                let row = rows
                    .remove(&pending.phone)
                    .ok_or_else(|| DbErr::RecordNotFound("the user of a login".into()));
                let _ = pending.reply.send(row);
            }
        }
        Err(err) => {
            for pending in batch {
                let _ = pending.reply.send(Err(copy_err(&err)));
            }
        }
    }
}

async fn batch_rows(
    shared: &Arc<Shared>,
    batch: &[PendingLogin],
) -> Result<HashMap<String, LoginRow>, DbErr> {
    let mut lease = shared.lease().await?;
    let ids: Vec<Uuid> = batch.iter().map(|p| p.id).collect();
    let phones: Vec<&str> = batch.iter().map(|p| p.phone.as_str()).collect();
    let ats: Vec<DateTime<Utc>> = batch.iter().map(|p| p.at).collect();
    shared.login_statements.fetch_add(1, Ordering::Relaxed);
    let rows = lease
        .fetch_all(|| {
            sea_orm::sqlx::query(LOGIN_BATCH)
                .bind(&ids)
                .bind(&phones)
                .bind(&ats)
        })
        .await?;
    let mut found = HashMap::with_capacity(batch.len());
    for row in rows {
        keep_row(&mut found, login_row(row)?);
    }
    let late: Vec<&str> = phones
        .iter()
        .copied()
        .filter(|phone| !found.contains_key(*phone))
        .collect();
    if !late.is_empty() {
        let rows = lease
            .fetch_all(|| sea_orm::sqlx::query(LOGIN_LATE).bind(&late))
            .await?;
        for row in rows {
            keep_row(&mut found, login_row(row)?);
        }
    }
    Ok(found)
}

/// Keeps the row of a phone, the created one when there are two: the statement's snapshot may
/// still show a user who had the phone and lost it (deleted, or moved to another number) while
/// the insert, which sees committed rows, created the phone's new user.
fn keep_row(found: &mut HashMap<String, LoginRow>, row: LoginRow) {
    let phone = row.0.phone.clone().unwrap_or_default();
    match found.get(&phone) {
        Some((_, true)) => {}
        _ => {
            found.insert(phone, row);
        }
    }
}

fn login_row(row: PgRow) -> Result<LoginRow, DbErr> {
    let created: bool = sea_orm::sqlx::Row::try_get(&row, "created").map_err(super::query_err)?;
    Ok((super::row_user(row)?, created))
}

/// The failure of a batch, for each of its logins (of the same class: a connection-level one
/// stays a 503).
fn copy_err(err: &DbErr) -> DbErr {
    let text = || RuntimeErr::Internal(err.to_string());
    match err {
        DbErr::ConnectionAcquire(acquire) => DbErr::ConnectionAcquire(*acquire),
        DbErr::Conn(_) => DbErr::Conn(text()),
        DbErr::RecordNotFound(what) => DbErr::RecordNotFound(what.clone()),
        _ => DbErr::Query(text()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: u128, phone: &str) -> user::Model {
        user::Model {
            id: Uuid::from_u128(id),
            phone: Some(phone.to_string()),
            created_at: Utc::now(),
            last_login_at: None,
            blocked_at: None,
        }
    }

    #[test]
    fn a_phone_returned_twice_is_answered_with_the_user_created_now() {
        for created_first in [true, false] {
            let mut found = HashMap::new();
            let rows = [(user(1, "+911"), true), (user(2, "+911"), false)];
            let order: Vec<_> = if created_first {
                rows.into_iter().collect()
            } else {
                rows.into_iter().rev().collect()
            };
            for row in order {
                keep_row(&mut found, row);
            }
            keep_row(&mut found, (user(3, "+912"), false));
            assert_eq!(found["+911"].0.id, Uuid::from_u128(1));
            assert!(found["+911"].1);
            assert_eq!(
                (found["+912"].0.id, found["+912"].1),
                (Uuid::from_u128(3), false)
            );
        }
    }
}
