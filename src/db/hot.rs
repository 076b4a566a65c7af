//! The login's own PostgreSQL connections, apart from SeaORM's pool.
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
//! its code goes back. A connection dropped in the middle of a statement (the request was
//! cancelled, or timed out) keeps its slot until it has drained (answered a ping, then it is
//! reused) or been closed, so the server never holds more than `max` of the login's backends.
//! An idle connection popped after [`IDLE_LIMIT`] is closed instead of reused.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgRow};
use sea_orm::sqlx::query::Query;
use sea_orm::sqlx::{Connection, Postgres};
use sea_orm::{ConnAcquireErr, DatabaseConnection, DbErr, RuntimeErr};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A connection idle for longer is closed rather than reused.
pub const IDLE_LIMIT: Duration = Duration::from_secs(120);

/// The longest a login's statement may take (server and client side).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Up to `max` connections of the login path (`DB_CONNECTIONS`), made on demand.
pub struct HotPool {
    shared: Arc<Shared>,
}

struct Shared {
    options: PgConnectOptions,
    idle: Mutex<Vec<(PgConnection, Instant)>>,
    permits: Arc<Semaphore>,
    acquire_timeout: Duration,
    connect_timeout: Duration,
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
                options: (*pool.connect_options()).clone().options([(
                    "statement_timeout",
                    STATEMENT_TIMEOUT.as_millis().to_string(),
                )]),
                idle: Mutex::new(Vec::with_capacity(max)),
                permits: Arc::new(Semaphore::new(max)),
                acquire_timeout: pool.options().get_acquire_timeout(),
                connect_timeout: pool.options().get_acquire_timeout().min(STATEMENT_TIMEOUT),
            }),
        })
    }

    /// A connection for one login: an idle one, or a new one. Waits for a free slot up to the
    /// pool's acquire timeout; a server that refuses connections is [`DbErr::Conn`] (503).
    pub async fn lease(&self) -> Result<Lease, DbErr> {
        let shared = &self.shared;
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

    /// How many connections are idle now (for tests).
    pub fn idle_connections(&self) -> usize {
        self.shared.lock_idle().len()
    }

    /// How many more connections could be handed out now (for tests).
    pub fn free_slots(&self) -> usize {
        self.shared.permits.available_permits()
    }
}

impl Shared {
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

/// One connection of the [`HotPool`], held by one login. Dropped after a statement that
/// completed, it goes back to the pool; dropped in the middle of one (the request was
/// cancelled) or after a failure, it is closed.
pub struct Lease {
    conn: Option<PgConnection>,
    reused: bool,
    healthy: bool,
    shared: Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Lease {
    /// Runs the statement `query` builds and returns its row, if any. When the connection was
    /// an idle one and it turns out broken, the statement runs once more on a new connection:
    /// the statements given here must be safe to repeat.
    pub async fn fetch_optional<'q>(
        &mut self,
        query: impl Fn() -> Query<'q, Postgres, PgArguments>,
    ) -> Result<Option<PgRow>, DbErr> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Err(DbErr::Conn(RuntimeErr::Internal(
                    "the login's connection was closed".into(),
                )));
            };
            self.healthy = false;
            let answer =
                tokio::time::timeout(STATEMENT_TIMEOUT, query().fetch_optional(&mut *conn))
                    .await
                    .map_err(|_| {
                        // Left unhealthy: drained (or closed) in the background when dropped.
                        DbErr::Conn(RuntimeErr::Internal(format!(
                            "the login's statement took longer than {STATEMENT_TIMEOUT:?}"
                        )))
                    })?;
            match answer {
                Ok(row) => {
                    self.healthy = true;
                    return Ok(row);
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
                    // cancelled for taking too long (57014) means it is overloaded: 503.
                    self.healthy = true;
                    let cancelled = matches!(&err, sea_orm::sqlx::Error::Database(db)
                        if db.code().as_deref() == Some("57014"));
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
