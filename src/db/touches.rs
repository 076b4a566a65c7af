//! `last_login_at` of returning users, written off the request path and in batches.
//!
//! A login queues its user's time ([`LoginTouches::record`], never waits); one background task
//! writes whatever has queued up in one statement per batch (PostgreSQL: one `UPDATE … FROM
//! UNNEST`; the other backends: one `UPDATE` per user inside one transaction). Under load the
//! batches grow, so the database sees a fraction of a statement per login. The queue is bounded:
//! when the database falls that far behind, a time is dropped (counted), never the login.
//! Rows are updated in id order (replicas writing overlapping batches wait for each other
//! instead of deadlocking; a deadlock is retried once anyway) and a time never moves back.
//! Times still queued when the server stops are written before the process ends.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, TransactionTrait};
use uuid::Uuid;

use super::batches::{BatchQueue, Batches};
use super::user;

/// Logins queued at most (then times are dropped until the writer catches up).
pub const QUEUE: usize = 8192;
/// Users written per statement at most.
const BATCH: usize = 512;

/// The queue of login times to write (cheap to clone).
#[derive(Clone)]
pub struct LoginTouches {
    queue: BatchQueue<(Uuid, DateTime<Utc>)>,
}

impl LoginTouches {
    /// Starts the writer for `db` (a task on the current runtime) with room for `capacity`
    /// logins; `dropped` counts the times a full queue turned away.
    pub fn start(db: DatabaseConnection, capacity: usize, dropped: prometheus::IntCounter) -> Self {
        let counted = dropped.clone();
        let queue = BatchQueue::start(capacity, BATCH, Duration::ZERO, dropped, |batches| {
            write_batches(db, batches, counted)
        });
        Self { queue }
    }

    /// Queues "user `id` logged in `at`". False when the queue is full (the time is dropped
    /// and counted).
    pub fn record(&self, id: Uuid, at: DateTime<Utc>) -> bool {
        self.queue.push((id, at))
    }

    /// At shutdown: the times still queued are written (for at most `timeout`). Whether the
    /// writer finished.
    pub async fn close(&self, timeout: Duration) -> bool {
        self.queue.close(timeout).await
    }
}

async fn write_batches(
    db: DatabaseConnection,
    mut batches: Batches<(Uuid, DateTime<Utc>)>,
    dropped: prometheus::IntCounter,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while batches.next(&mut batch).await {
        // One row per user: the latest time queued.
        let mut latest: HashMap<Uuid, DateTime<Utc>> = HashMap::with_capacity(batch.len());
        for (id, at) in batch.drain(..) {
            let slot = latest.entry(id).or_insert(at);
            *slot = (*slot).max(at);
        }
        let mut rows: Vec<(Uuid, DateTime<Utc>)> = latest.into_iter().collect();
        rows.sort_unstable();
        let (ids, times): (Vec<Uuid>, Vec<DateTime<Utc>>) = rows.into_iter().unzip();
        let mut result = write(&db, &ids, &times).await;
        if result.as_ref().is_err_and(is_deadlock) {
            result = write(&db, &ids, &times).await;
        }
        if let Err(err) = result {
            dropped.inc_by(ids.len() as u64);
            tracing::warn!(error = %err, users = ids.len(), "could not record last_login_at");
        }
    }
}

async fn write(
    db: &DatabaseConnection,
    ids: &[Uuid],
    times: &[DateTime<Utc>],
) -> Result<(), DbErr> {
    if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        sea_orm::sqlx::query(
            "UPDATE users SET last_login_at = GREATEST(users.last_login_at, v.at) \
             FROM UNNEST($1::uuid[], $2::timestamptz[]) AS v(id, at) \
             WHERE users.id = v.id",
        )
        .bind(ids)
        .bind(times)
        .execute(db.get_postgres_connection_pool())
        .await
        .map_err(|err| DbErr::Exec(sea_orm::RuntimeErr::SqlxError(err.into())))?;
        return Ok(());
    }
    let txn = db.begin().await?;
    for (id, at) in ids.iter().zip(times) {
        user::Entity::update_many()
            .col_expr(user::Column::LastLoginAt, Expr::value(*at))
            .filter(user::Column::Id.eq(*id))
            .filter(
                sea_orm::Condition::any()
                    .add(user::Column::LastLoginAt.is_null())
                    .add(user::Column::LastLoginAt.lt(*at)),
            )
            .exec(&txn)
            .await?;
    }
    txn.commit().await
}

/// A deadlock the database broke by failing this batch (PostgreSQL 40P01, MySQL 1213 / 40001).
fn is_deadlock(err: &DbErr) -> bool {
    let text = err.to_string();
    text.contains("40P01") || text.contains("deadlock") || text.contains("Deadlock")
}
