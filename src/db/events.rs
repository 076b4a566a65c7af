//! The audit log and the webhook outbox in SQL: the writer that records events off the request
//! path, the admin API's search, retention, and the outbox claims replicas deliver from.
//!
//! A request queues its events ([`EventLog::record`], never waits); one background task writes
//! them in batches: after the first event it waits [`LINGER`] for more (up to [`BATCH`]), then
//! writes one `INSERT` per table (on PostgreSQL one `UNNEST` statement whatever the size), in one
//! transaction when there are outbox rows (an event meant for the webhook gets its outbox row
//! with its audit row, or neither). The queue
//! is bounded: when the database falls that far behind, events are dropped and counted, never
//! the request. A batch the database refuses (twice) is dropped and counted too.
//!
//! Outbox claims: a replica takes due rows (`next_attempt_at` passed, no lease running) by
//! setting its claim id (`locked_by`) and a lease (`locked_until`). PostgreSQL claims in one
//! `UPDATE … FOR UPDATE SKIP LOCKED … RETURNING`, MySQL/MariaDB in a short transaction, so
//! replicas claiming at once take different rows; SQLite (one process) claims each row by a
//! conditional `UPDATE`. Finishing an attempt checks the claim id, so a replica whose lease ran
//! out (and whose row another replica took) changes nothing.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use tokio::sync::Notify;
use uuid::Uuid;

use super::batches::{BatchQueue, Batches};
use super::entities::{audit_event, event_outbox};

/// Events queued at most (then events are dropped until the writer catches up).
pub const QUEUE: usize = 8192;
/// Events written per statement at most. Not more: on PostgreSQL a statement of 512 took ~4 ms
/// of one core, a burst the requests sharing the box queued behind. 128 rows every 10 ms at
/// most (alternated pairs at 2,800 flows/s, 2026-11-30): flow p90 4.3–5.0 against 5.9–6.9 ms,
/// p99 10.3–12.6 against 11.4–13.1 ms, for 4–7 µs more PostgreSQL CPU per flow; 48 rows every
/// 5 ms was worse again (more statements).
const BATCH: usize = 128;
/// How long the writer lets a batch fill after its first event: under load one statement per
/// this time instead of one per wake-up (events are written this much later, never lost).
const LINGER: std::time::Duration = std::time::Duration::from_millis(10);
/// Rows the retention task deletes per statement.
const DELETE_CHUNK: u64 = 1000;

/// One event as the writer stores it.
#[derive(Debug, Clone)]
pub struct EventRecord {
    /// UUID v7: the audit row's id, the outbox row's id and the `webhook-id`.
    pub id: Uuid,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The audit kind (`otp.sent`, …).
    pub kind: &'static str,
    /// The user concerned.
    pub user_id: Option<Uuid>,
    /// A keyed hash of the phone concerned.
    pub phone_hash: Option<String>,
    /// The client's network as sessions keep it.
    pub ip: Option<String>,
    /// The client's `User-Agent` (bounded).
    pub user_agent: Option<String>,
    /// The request id.
    pub request_id: Option<String>,
    /// The event's details (a JSON object).
    pub details: serde_json::Value,
    /// For the event webhook: its type and the body to send, exactly.
    pub webhook: Option<(&'static str, String)>,
}

/// What the writer counts.
#[derive(Clone)]
pub struct EventLogMetrics {
    /// Events not written: the queue was full, or their batch failed.
    pub dropped: prometheus::IntCounter,
    /// Batches the database refused.
    pub failed_batches: prometheus::IntCounter,
}

/// The queue of events to write (cheap to clone).
#[derive(Clone)]
pub struct EventLog {
    queue: BatchQueue<EventRecord>,
}

impl EventLog {
    /// Starts the writer for `db` (a task on the current runtime) with room for `capacity`
    /// events; `outbox_written` is told whenever outbox rows were committed.
    pub fn start(
        db: DatabaseConnection,
        capacity: usize,
        metrics: EventLogMetrics,
        outbox_written: Arc<Notify>,
    ) -> Self {
        let dropped = metrics.dropped.clone();
        let queue = BatchQueue::start(capacity, BATCH, LINGER, dropped, |batches| {
            write_batches(db, batches, metrics, outbox_written)
        });
        Self { queue }
    }

    /// At shutdown: no event is queued from now on, and what is queued is written (without
    /// waiting for a batch to fill), for at most `timeout`. Whether the writer finished.
    pub async fn close(&self, timeout: std::time::Duration) -> bool {
        self.queue.close(timeout).await
    }

    /// Queues `event`. False when the queue is full (the event is dropped and counted).
    pub fn record(&self, event: EventRecord) -> bool {
        self.queue.push(event)
    }
}

async fn write_batches(
    db: DatabaseConnection,
    mut batches: Batches<EventRecord>,
    metrics: EventLogMetrics,
    outbox_written: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while batches.next(&mut batch).await {
        let mut result = write(&db, &batch).await;
        if result.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            result = write(&db, &batch).await;
        }
        match result {
            Ok(()) => {
                if batch.iter().any(|e| e.webhook.is_some()) {
                    outbox_written.notify_one();
                }
            }
            Err(err) => {
                metrics.failed_batches.inc();
                metrics.dropped.inc_by(batch.len() as u64);
                tracing::warn!(error = %err, events = batch.len(), "could not write audit events");
            }
        }
        batch.clear();
    }
}

async fn write(db: &DatabaseConnection, batch: &[EventRecord]) -> Result<(), DbErr> {
    if batch.is_empty() {
        return Ok(());
    }
    if db.get_database_backend() == DatabaseBackend::Postgres {
        return write_unnest(db, batch).await.map_err(super::query_err);
    }
    let audit: Vec<audit_event::ActiveModel> = batch
        .iter()
        .map(|e| audit_event::ActiveModel {
            id: Set(e.id),
            at: Set(e.at),
            kind: Set(e.kind.to_string()),
            user_id: Set(e.user_id),
            phone_hash: Set(e.phone_hash.clone()),
            ip: Set(e.ip.clone()),
            user_agent: Set(e.user_agent.clone()),
            request_id: Set(e.request_id.clone()),
            details: Set(e.details.clone()),
        })
        .collect();
    let outbox: Vec<event_outbox::ActiveModel> = batch
        .iter()
        .filter_map(|e| {
            let (kind, payload) = e.webhook.as_ref()?;
            Some(event_outbox::ActiveModel {
                id: Set(e.id),
                kind: Set(kind.to_string()),
                payload: Set(payload.clone()),
                created_at: Set(e.at),
                next_attempt_at: Set(e.at),
                attempts: Set(0),
                locked_until: Set(None),
                locked_by: Set(None),
                failed_at: Set(None),
                last_error: Set(None),
            })
        })
        .collect();
    let txn = db.begin().await?;
    audit_event::Entity::insert_many(audit).exec(&txn).await?;
    if !outbox.is_empty() {
        event_outbox::Entity::insert_many(outbox).exec(&txn).await?;
    }
    txn.commit().await
}

/// PostgreSQL: each table's rows as one array per column, in one statement whatever the batch
/// size (one prepared statement, no SQL text built per batch, no row-by-row parameters). A batch
/// without webhook events is that one statement (atomic on its own); with them, the outbox rows
/// go in the same transaction.
async fn write_unnest(
    db: &DatabaseConnection,
    batch: &[EventRecord],
) -> Result<(), sea_orm::sqlx::Error> {
    let hooks: Vec<(&EventRecord, &str, &str)> = batch
        .iter()
        .filter_map(|e| {
            e.webhook
                .as_ref()
                .map(|(kind, body)| (e, *kind, body.as_str()))
        })
        .collect();
    let audit = sea_orm::sqlx::query(
        "INSERT INTO audit_events \
           (id, at, kind, user_id, phone_hash, ip, user_agent, request_id, details) \
         SELECT id, at, kind, user_id, phone_hash, ip, user_agent, request_id, details::jsonb \
         FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::uuid[], $5::text[], \
                     $6::text[], $7::text[], $8::text[], $9::text[]) \
           AS r(id, at, kind, user_id, phone_hash, ip, user_agent, request_id, details)",
    )
    .bind(batch.iter().map(|e| e.id).collect::<Vec<_>>())
    .bind(batch.iter().map(|e| e.at).collect::<Vec<_>>())
    .bind(batch.iter().map(|e| e.kind).collect::<Vec<_>>())
    .bind(batch.iter().map(|e| e.user_id).collect::<Vec<_>>())
    .bind(column(batch, |e| e.phone_hash.as_deref()))
    .bind(column(batch, |e| e.ip.as_deref()))
    .bind(column(batch, |e| e.user_agent.as_deref()))
    .bind(column(batch, |e| e.request_id.as_deref()))
    .bind(
        batch
            .iter()
            .map(|e| e.details.to_string())
            .collect::<Vec<_>>(),
    );
    let pool = db.get_postgres_connection_pool();
    if hooks.is_empty() {
        return audit.execute(pool).await.map(drop);
    }
    let mut txn = pool.begin().await?;
    audit.execute(&mut *txn).await?;
    sea_orm::sqlx::query(
        "INSERT INTO event_outbox (id, kind, payload, created_at, next_attempt_at, attempts) \
         SELECT id, kind, payload, at, at, 0 \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[]) \
           AS r(id, kind, payload, at)",
    )
    .bind(hooks.iter().map(|(e, _, _)| e.id).collect::<Vec<_>>())
    .bind(hooks.iter().map(|(_, kind, _)| *kind).collect::<Vec<_>>())
    .bind(hooks.iter().map(|(_, _, body)| *body).collect::<Vec<_>>())
    .bind(hooks.iter().map(|(e, _, _)| e.at).collect::<Vec<_>>())
    .execute(&mut *txn)
    .await?;
    txn.commit().await
}

fn column<'a>(
    batch: &'a [EventRecord],
    field: impl Fn(&'a EventRecord) -> Option<&'a str>,
) -> Vec<Option<&'a str>> {
    batch.iter().map(field).collect()
}

/// Which audit events a search returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this user's.
    pub user_id: Option<Uuid>,
    /// Only this kind.
    pub kind: Option<String>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
    /// Older than this id (the cursor).
    pub before: Option<Uuid>,
    /// At most this many.
    pub limit: u64,
}

/// The audit events `filter` selects, newest first (by id: UUID v7, so by time).
pub async fn search_audit(
    db: &DatabaseConnection,
    filter: &AuditFilter,
) -> Result<Vec<audit_event::Model>, DbErr> {
    let mut query = audit_event::Entity::find();
    if let Some(user) = filter.user_id {
        query = query.filter(audit_event::Column::UserId.eq(user));
    }
    if let Some(kind) = &filter.kind {
        query = query.filter(audit_event::Column::Kind.eq(kind.as_str()));
    }
    let instant = |at| super::instant_param(db, at);
    if let Some(at) = filter.since {
        query = query.filter(audit_event::Column::At.gte(instant(at)));
    }
    if let Some(at) = filter.until {
        query = query.filter(audit_event::Column::At.lt(instant(at)));
    }
    if let Some(before) = filter.before {
        query = query.filter(audit_event::Column::Id.lt(before));
    }
    query
        .order_by_desc(audit_event::Column::Id)
        .limit(filter.limit)
        .all(db)
        .await
}

/// Deletes audit events from before `cutoff`, [`DELETE_CHUNK`] rows per statement (so no
/// statement holds locks for long), and outbox events given up before it. How many audit rows.
pub async fn delete_before(db: &DatabaseConnection, cutoff: DateTime<Utc>) -> Result<u64, DbErr> {
    let mut deleted = 0;
    loop {
        let ids: Vec<Uuid> = audit_event::Entity::find()
            .select_only()
            .column(audit_event::Column::Id)
            .filter(audit_event::Column::At.lt(cutoff))
            .limit(DELETE_CHUNK)
            .into_tuple()
            .all(db)
            .await?;
        if ids.is_empty() {
            break;
        }
        let chunk = ids.len() as u64;
        deleted += audit_event::Entity::delete_many()
            .filter(audit_event::Column::Id.is_in(ids))
            .exec(db)
            .await?
            .rows_affected;
        if chunk < DELETE_CHUNK {
            break;
        }
        tokio::task::yield_now().await;
    }
    event_outbox::Entity::delete_many()
        .filter(event_outbox::Column::FailedAt.lt(cutoff))
        .exec(db)
        .await?;
    Ok(deleted)
}

/// The `next_attempt_at` of an event given up: never due (it stays, with `failed_at`, until
/// retention; setting `failed_at` back to `NULL` and `next_attempt_at` to now sends it again).
pub fn never_due() -> DateTime<Utc> {
    // 9999-12-31T00:00:00Z: the last day MySQL/MariaDB's `datetime` holds.
    DateTime::from_timestamp(253_402_214_400, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Outbox rows due now, not leased, and not in `exclude`. A given-up row's `next_attempt_at`
/// is [`never_due`], so one range of one index holds every row to claim: whatever the table's
/// statistics say, a claim reads that range from its start and never sorts the table (only the
/// rows leased now, at most a few hundred per replica, are read and passed over).
fn due(now: DateTime<Utc>, exclude: &[Uuid]) -> Condition {
    let mut due = Condition::all()
        .add(event_outbox::Column::NextAttemptAt.lte(now))
        .add(
            Condition::any()
                .add(event_outbox::Column::LockedUntil.is_null())
                .add(event_outbox::Column::LockedUntil.lte(now)),
        );
    if !exclude.is_empty() {
        due = due.add(event_outbox::Column::Id.is_not_in(exclude.iter().copied()));
    }
    due
}

/// Claims up to `limit` due outbox rows, oldest due first, for the claim `owner` (a new id per
/// claim) until `lease_until` (each claim counts as an attempt; a row not finished by then is
/// due again); never the rows of `exclude` (those the caller still attempts though their lease
/// ran out). The rows claimed, oldest first.
pub async fn claim_outbox(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    owner: Uuid,
    limit: u64,
    exclude: &[Uuid],
) -> Result<Vec<event_outbox::Model>, DbErr> {
    match db.get_database_backend() {
        DatabaseBackend::Postgres => {
            return claim_postgres(db, now, lease_until, owner, limit, exclude).await;
        }
        DatabaseBackend::MySql => {
            match claim_skip_locked(db, now, lease_until, owner, limit, exclude).await {
                Ok(rows) => return Ok(rows),
                // A server without SKIP LOCKED (MariaDB 10.5): the conditional claim below.
                Err(err) if err.to_string().to_ascii_lowercase().contains("syntax") => {}
                Err(err) => return Err(err),
            }
        }
        _ => {}
    }
    let candidates: Vec<Uuid> = event_outbox::Entity::find()
        .select_only()
        .column(event_outbox::Column::Id)
        .filter(due(now, exclude))
        .order_by_asc(event_outbox::Column::NextAttemptAt)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?;
    let mut claimed = Vec::with_capacity(candidates.len());
    for id in candidates {
        let taken = lease(event_outbox::Entity::update_many(), lease_until, owner)
            .filter(event_outbox::Column::Id.eq(id))
            .filter(due(now, exclude))
            .exec(db)
            .await?;
        if taken.rows_affected == 1 {
            claimed.push(id);
        }
    }
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    claimed_rows(db, claimed, owner).await
}

/// PostgreSQL: one statement, the rows locked `SKIP LOCKED` (replicas claiming at once take
/// different rows), leased and returned.
async fn claim_postgres(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    owner: Uuid,
    limit: u64,
    exclude: &[Uuid],
) -> Result<Vec<event_outbox::Model>, DbErr> {
    let mut values: Vec<sea_orm::Value> = vec![
        now.into(),
        lease_until.into(),
        owner.into(),
        i64::try_from(limit).unwrap_or(i64::MAX).into(),
    ];
    // Usually empty: the same statement text every time (prepared once per connection).
    let mut excluded = String::new();
    for id in exclude {
        values.push((*id).into());
        let sep = if excluded.is_empty() { "" } else { ", " };
        excluded.push_str(&format!("{sep}${}", values.len()));
    }
    if !excluded.is_empty() {
        excluded = format!("AND id NOT IN ({excluded}) ");
    }
    let claim = sea_orm::Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        format!(
            "UPDATE event_outbox AS o \
             SET locked_until = $2, locked_by = $3, attempts = o.attempts + 1 \
             FROM (SELECT id FROM event_outbox \
                   WHERE next_attempt_at <= $1 AND (locked_until IS NULL OR locked_until <= $1) \
                   {excluded}\
                   ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED) AS due \
             WHERE o.id = due.id \
             RETURNING o.id, o.kind, o.payload, o.created_at, o.next_attempt_at, o.attempts, \
                       o.locked_until, o.locked_by, o.failed_at, o.last_error"
        ),
        values,
    );
    let mut rows = event_outbox::Entity::find()
        .from_raw_sql(claim)
        .all(db)
        .await?;
    rows.sort_by_key(|row| row.created_at);
    Ok(rows)
}

/// MySQL/MariaDB: the rows selected `FOR UPDATE SKIP LOCKED`, leased and read in one short
/// transaction.
async fn claim_skip_locked(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    owner: Uuid,
    limit: u64,
    exclude: &[Uuid],
) -> Result<Vec<event_outbox::Model>, DbErr> {
    let txn = db.begin().await?;
    let ids: Vec<Uuid> = event_outbox::Entity::find()
        .select_only()
        .column(event_outbox::Column::Id)
        .filter(due(now, exclude))
        .order_by_asc(event_outbox::Column::NextAttemptAt)
        .limit(limit)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .into_tuple()
        .all(&txn)
        .await?;
    if ids.is_empty() {
        txn.commit().await?;
        return Ok(Vec::new());
    }
    lease(event_outbox::Entity::update_many(), lease_until, owner)
        .filter(event_outbox::Column::Id.is_in(ids.clone()))
        .exec(&txn)
        .await?;
    let rows = claimed_rows(&txn, ids, owner).await?;
    txn.commit().await?;
    Ok(rows)
}

fn lease(
    update: sea_orm::UpdateMany<event_outbox::Entity>,
    lease_until: DateTime<Utc>,
    owner: Uuid,
) -> sea_orm::UpdateMany<event_outbox::Entity> {
    update
        .col_expr(event_outbox::Column::LockedUntil, Expr::value(lease_until))
        .col_expr(event_outbox::Column::LockedBy, Expr::value(owner))
        .col_expr(
            event_outbox::Column::Attempts,
            Expr::col(event_outbox::Column::Attempts).add(1),
        )
}

async fn claimed_rows(
    db: &impl ConnectionTrait,
    ids: Vec<Uuid>,
    owner: Uuid,
) -> Result<Vec<event_outbox::Model>, DbErr> {
    event_outbox::Entity::find()
        .filter(event_outbox::Column::Id.is_in(ids))
        .filter(event_outbox::Column::LockedBy.eq(owner))
        .order_by_asc(event_outbox::Column::CreatedAt)
        .all(db)
        .await
}

/// Events `ids`, claimed by `owner`, were delivered: their rows go, in one statement (a row
/// whose claim ran out and was taken by another claim stays).
pub async fn outbox_delivered(
    db: &DatabaseConnection,
    owner: Uuid,
    ids: Vec<Uuid>,
) -> Result<(), DbErr> {
    if ids.is_empty() {
        return Ok(());
    }
    event_outbox::Entity::delete_many()
        .filter(event_outbox::Column::Id.is_in(ids))
        .filter(event_outbox::Column::LockedBy.eq(owner))
        .exec(db)
        .await
        .map(drop)
}

/// Event `id`, claimed by `owner`, was not attempted (too little of its lease was left): it is
/// due again at once, its claim not counted as an attempt.
pub async fn outbox_release(db: &DatabaseConnection, id: Uuid, owner: Uuid) -> Result<(), DbErr> {
    event_outbox::Entity::update_many()
        .col_expr(
            event_outbox::Column::Attempts,
            Expr::col(event_outbox::Column::Attempts).sub(1),
        )
        .col_expr(
            event_outbox::Column::LockedUntil,
            Expr::value(None::<DateTime<Utc>>),
        )
        .col_expr(event_outbox::Column::LockedBy, Expr::value(None::<Uuid>))
        .filter(event_outbox::Column::Id.eq(id))
        .filter(event_outbox::Column::LockedBy.eq(owner))
        .exec(db)
        .await
        .map(drop)
}

/// Event `id`, claimed by `owner`, failed this attempt: next at `next` (or, with `next` = `None`,
/// given up now).
pub async fn outbox_failed(
    db: &DatabaseConnection,
    id: Uuid,
    owner: Uuid,
    next: Option<DateTime<Utc>>,
    error: &str,
) -> Result<(), DbErr> {
    let mut update = event_outbox::Entity::update_many()
        .col_expr(
            event_outbox::Column::LockedUntil,
            Expr::value(None::<DateTime<Utc>>),
        )
        .col_expr(event_outbox::Column::LockedBy, Expr::value(None::<Uuid>))
        .col_expr(
            event_outbox::Column::LastError,
            Expr::value(error.chars().take(255).collect::<String>()),
        );
    update = match next {
        Some(at) => update.col_expr(event_outbox::Column::NextAttemptAt, Expr::value(at)),
        None => update
            .col_expr(event_outbox::Column::FailedAt, Expr::value(Utc::now()))
            .col_expr(
                event_outbox::Column::NextAttemptAt,
                Expr::value(super::instant_param(db, never_due())),
            ),
    };
    update
        .filter(event_outbox::Column::Id.eq(id))
        .filter(event_outbox::Column::LockedBy.eq(owner))
        .exec(db)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at: DateTime<Utc>, webhook: bool) -> EventRecord {
        EventRecord {
            id: crate::domain::ids::new_time_ordered_uuid(),
            at,
            kind: "otp.sent",
            user_id: None,
            phone_hash: Some("ab".repeat(32)),
            ip: None,
            user_agent: None,
            request_id: None,
            details: serde_json::json!({ "outcome": "sent" }),
            webhook: webhook.then(|| ("user.created", "{}".to_string())),
        }
    }

    async fn database() -> (DatabaseConnection, std::path::PathBuf) {
        let file = std::env::temp_dir().join(format!("otpgate-events-{}.db", Uuid::new_v4()));
        let db = crate::db::connect(&format!("sqlite://{}?mode=rwc", file.display()), 1)
            .await
            .unwrap();
        crate::db::migrate(&db).await.unwrap();
        (db, file)
    }

    #[tokio::test]
    async fn retention_deletes_only_old_rows_in_chunks() {
        let (db, file) = database().await;
        let now = Utc::now();
        let old: Vec<_> = (0..2100)
            .map(|_| record(now - chrono::Duration::days(100), false))
            .collect();
        for batch in old.chunks(BATCH) {
            write(&db, batch).await.unwrap();
        }
        write(&db, &[record(now, false)]).await.unwrap();
        let deleted = delete_before(&db, now - chrono::Duration::days(90))
            .await
            .unwrap();
        assert_eq!(deleted, 2100, "more than two chunks");
        let left = search_audit(
            &db,
            &AuditFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].at.timestamp_millis(), now.timestamp_millis());
        std::fs::remove_file(file).ok();
    }

    #[tokio::test]
    async fn claims_are_exclusive_until_the_lease_ends() {
        let (db, file) = database().await;
        let now = Utc::now();
        let events: Vec<_> = (0..3).map(|_| record(now, true)).collect();
        write(&db, &events).await.unwrap();
        let lease = now + chrono::Duration::seconds(30);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let first = claim_outbox(&db, now, lease, a, 2, &[]).await.unwrap();
        let second = claim_outbox(&db, now, lease, b, 2, &[]).await.unwrap();
        assert_eq!((first.len(), second.len()), (2, 1));
        assert!(
            first
                .iter()
                .all(|r| r.attempts == 1 && r.locked_by == Some(a))
        );
        assert!(
            claim_outbox(&db, now, lease, c, 5, &[])
                .await
                .unwrap()
                .is_empty()
        );
        // A stale owner changes nothing; the owner schedules the retry.
        let row = &second[0];
        outbox_failed(&db, row.id, a, None, "HTTP 500")
            .await
            .unwrap();
        outbox_delivered(&db, a, vec![row.id]).await.unwrap();
        outbox_failed(&db, row.id, b, Some(now), "HTTP 500")
            .await
            .unwrap();
        let again = claim_outbox(&db, now, lease, c, 5, &[]).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id, again[0].attempts), (row.id, 2));
        // After the lease, every row is claimable again, oldest first.
        let later = lease + chrono::Duration::seconds(1);
        let retaken = claim_outbox(&db, later, later + chrono::Duration::seconds(30), b, 5, &[])
            .await
            .unwrap();
        assert_eq!(retaken.len(), 3);
        assert!(
            retaken
                .windows(2)
                .all(|w| w[0].created_at <= w[1].created_at)
        );
        // Past the lease, rows the caller still attempts (`exclude`) are not taken again.
        let much_later = later + chrono::Duration::seconds(60);
        let all: Vec<Uuid> = retaken.iter().map(|r| r.id).collect();
        let lease_then = much_later + chrono::Duration::seconds(30);
        let none = claim_outbox(&db, much_later, lease_then, c, 5, &all).await;
        assert!(none.unwrap().is_empty());
        // A released row is due at once (B's lease still running), its claim not counted.
        outbox_release(&db, retaken[2].id, a).await.unwrap();
        outbox_release(&db, retaken[2].id, b).await.unwrap();
        let lease_c = later + chrono::Duration::seconds(30);
        let released = claim_outbox(&db, later, lease_c, c, 5, &[]).await.unwrap();
        assert_eq!(released.len(), 1);
        assert_eq!(
            (released[0].id, released[0].attempts),
            (retaken[2].id, retaken[2].attempts)
        );
        // Delivered rows go (one statement; another claim's row stays); a given-up row stays
        // but is never due again.
        outbox_delivered(&db, c, vec![retaken[0].id, retaken[1].id])
            .await
            .unwrap();
        assert_eq!(
            event_outbox::Entity::find().all(&db).await.unwrap().len(),
            3
        );
        outbox_delivered(&db, b, vec![retaken[0].id, retaken[1].id])
            .await
            .unwrap();
        outbox_failed(&db, released[0].id, c, None, "timeout")
            .await
            .unwrap();
        let left = event_outbox::Entity::find().all(&db).await.unwrap();
        assert_eq!(left.len(), 1);
        assert!(left[0].failed_at.is_some());
        // Stored as the migration that moved earlier given-up rows writes it.
        let raw = db
            .query_one_raw(sea_orm::Statement::from_string(
                DatabaseBackend::Sqlite,
                "SELECT next_attempt_at FROM event_outbox",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            raw.try_get::<String>("", "next_attempt_at").unwrap(),
            "9999-12-31T00:00:00+00:00"
        );
        let far = later + chrono::Duration::days(365 * 100);
        assert!(
            claim_outbox(&db, far, far + chrono::Duration::seconds(30), c, 5, &[])
                .await
                .unwrap()
                .is_empty()
        );
        std::fs::remove_file(file).ok();
    }
}
