//! Security events: each one an audit row, and for some an outbound webhook event. A flow
//! emits with one call, `self.event(EventKind::UserBlocked).user(id).client(client).emit()`:
//! one non-blocking queue push, no await ([`crate::db::events`] writes in the background).
//!
//! The delivery tasks (three per replica, when `EVENT_WEBHOOK_URL` is set and
//! `EVENT_WEBHOOK_DELIVERY` is not off): the claimer claims due outbox rows, [`CLAIM`] at a
//! time, whenever the queue to the poster has room for them; the poster signs each the Standard
//! Webhooks way and posts it, [`IN_FLIGHT`] at once; the recorder writes the outcomes. 2xx is
//! delivered (recorded for many events by one `DELETE`), anything else is retried with
//! exponential backoff (`EVENT_WEBHOOK_RETRY_BASE_MS` doubling up to an hour) until
//! `EVENT_WEBHOOK_MAX_ATTEMPTS` or three days, then given up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sea_orm::DatabaseConnection;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

use super::AuthService;
use super::sessions::ClientInfo;
use crate::config::WebhookSettings;
use crate::db::event_outbox;
use crate::db::events::{self as store, EventLog, EventLogMetrics, EventRecord};
use crate::domain::phone::Phone;
use crate::domain::webhook::signature;
use crate::telemetry::Metrics;

/// The longest user agent an audit row keeps (characters).
const USER_AGENT_MAX: usize = 256;
/// Retries are never further apart than this.
const RETRY_CAP: Duration = Duration::from_secs(3600);
/// An event is given up this long after it happened, whatever its attempts.
const GIVE_UP_AFTER: Duration = Duration::from_secs(3 * 24 * 3600);
/// Events one replica claims at once (one statement), and records delivered at once.
const CLAIM: usize = 256;
/// Attempts one replica has in flight at once (connections to `EVENT_WEBHOOK_URL` at most).
const IN_FLIGHT: usize = 64;
/// How long a delivered event waits, at most, for others to be recorded with it.
const RECORD_EVERY: Duration = Duration::from_millis(20);
/// The longest wait between claims while the database fails.
const CLAIM_RETRY_MAX: Duration = Duration::from_secs(5);
/// How often an idle delivery task looks for due events. Events this replica writes wake it at
/// once; those of other replicas (a worker with `EVENT_WEBHOOK_DELIVERY` delivers only theirs)
/// and retries coming due wait for this. An idle claim is one index probe.
const POLL: Duration = Duration::from_millis(250);
/// How often the retention task runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// What happened. The audit `kind` is [`EventKind::as_str`]; some kinds are also webhook events
/// ([`EventKind::webhook_type`]). A new kind is a variant and a line in each match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A code was issued (sent, or withheld from a blocked number, or a test number's).
    OtpSent,
    /// A code was refused (wrong, expired, burned, rate limited).
    OtpFailed,
    /// A captcha check before a code did not pass (`details.verdict`: fail, missing, low_score,
    /// unavailable; `details.mode`: shadow or enforce). Audit only; passes are not recorded.
    CaptchaFailed,
    /// A device check before a code did not pass: Play Integrity or App Attest
    /// (`details.provider`, `verdict`, `mode`, App Attest's `app_attest_key_id`). Audit only.
    IntegrityFailed,
    /// A session was opened (`details.method`: a verified code, a login intent, the Telegram
    /// widget).
    LoginSucceeded,
    /// A refresh token was rotated.
    TokenRefreshed,
    /// A spent refresh token came back: its session is revoked.
    TokenReused,
    /// Sessions were revoked by their user (logout, `DELETE /api/auth/sessions/{id}`).
    SessionRevoked,
    /// An operator revoked every session of a user.
    SessionsRevokedAll,
    /// A user was created.
    UserCreated,
    /// An operator blocked a user.
    UserBlocked,
    /// An operator unblocked a user.
    UserUnblocked,
    /// An operator deleted a user.
    UserDeleted,
    /// A user's phone number changed (reserved).
    PhoneChanged,
    /// The pumping defence blocked a number prefix, a country or a network (`details.scope`,
    /// `key`, `mode`, `by`: conversion or admin, `minutes`).
    PumpingBlocked,
    /// Another operator action.
    AdminAction,
}

impl EventKind {
    /// The audit kind.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::OtpSent => "otp.sent",
            EventKind::OtpFailed => "otp.failed",
            EventKind::CaptchaFailed => "captcha.failed",
            EventKind::IntegrityFailed => "integrity.failed",
            EventKind::LoginSucceeded => "login.succeeded",
            EventKind::TokenRefreshed => "token.refreshed",
            EventKind::TokenReused => "token.reused",
            EventKind::SessionRevoked => "session.revoked",
            EventKind::SessionsRevokedAll => "sessions.revoked_all",
            EventKind::UserCreated => "user.created",
            EventKind::UserBlocked => "user.blocked",
            EventKind::UserUnblocked => "user.unblocked",
            EventKind::UserDeleted => "user.deleted",
            EventKind::PhoneChanged => "phone.changed",
            EventKind::PumpingBlocked => "pumping.blocked",
            EventKind::AdminAction => "admin.action",
        }
    }

    /// The webhook event type, for the kinds sent to `EVENT_WEBHOOK_URL`.
    pub fn webhook_type(self) -> Option<&'static str> {
        match self {
            EventKind::UserCreated => Some("user.created"),
            EventKind::LoginSucceeded => Some("login.succeeded"),
            EventKind::OtpFailed => Some("otp.failed"),
            EventKind::SessionRevoked | EventKind::SessionsRevokedAll => Some("session.revoked"),
            EventKind::UserBlocked => Some("user.blocked"),
            EventKind::UserDeleted => Some("user.deleted"),
            EventKind::PhoneChanged => Some("phone.changed"),
            EventKind::PumpingBlocked => Some("pumping.blocked"),
            EventKind::OtpSent
            | EventKind::CaptchaFailed
            | EventKind::IntegrityFailed
            | EventKind::TokenRefreshed
            | EventKind::TokenReused
            | EventKind::UserUnblocked
            | EventKind::AdminAction => None,
        }
    }
}

/// The audit writer and whether webhook events are queued.
pub(super) struct Events {
    log: EventLog,
    webhook: bool,
}

impl Events {
    /// Starts the writer; with `webhook`, the delivery task too; with `retention`, the
    /// retention task.
    pub(super) fn start(
        db: &DatabaseConnection,
        webhook: Option<&WebhookSettings>,
        retention: Option<Duration>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let written = Arc::new(Notify::new());
        let log = EventLog::start(
            db.clone(),
            store::QUEUE,
            EventLogMetrics {
                dropped: metrics.audit_dropped.clone(),
                failed_batches: metrics.audit_batch_failures.clone(),
            },
            written.clone(),
        );
        if let Some(settings) = webhook.filter(|settings| settings.deliver) {
            tokio::spawn(deliver(
                db.clone(),
                settings.clone(),
                metrics.clone(),
                written,
            ));
        }
        if let Some(retention) = retention {
            tokio::spawn(keep_for(db.clone(), retention));
        }
        Self {
            log,
            webhook: webhook.is_some(),
        }
    }
}

impl AuthService {
    /// At shutdown, after the last request: finishes the fallbacks running in the background,
    /// then writes the audit events and login times still queued (at most `timeout` each; any
    /// queued later are dropped and counted).
    pub async fn flush_events(&self, timeout: Duration) {
        if !self.background.close(timeout).await {
            tracing::warn!("delivery fallbacks still running at shutdown were dropped");
        }
        let (events, touches) =
            tokio::join!(self.events.log.close(timeout), self.touches.close(timeout));
        if !events {
            tracing::warn!("audit events still queued at shutdown were not all written");
        }
        if !touches {
            tracing::warn!("login times still queued at shutdown were not all written");
        }
    }
}

/// An event being described; [`Event::emit`] queues it.
#[must_use = "an event does nothing until emitted"]
pub struct Event<'a> {
    auth: &'a AuthService,
    kind: EventKind,
    user_id: Option<Uuid>,
    phone_hash: Option<String>,
    client: Option<&'a ClientInfo>,
    details: Map<String, Value>,
}

impl AuthService {
    /// Starts describing a `kind` event.
    pub fn event(&self, kind: EventKind) -> Event<'_> {
        Event {
            auth: self,
            kind,
            user_id: None,
            phone_hash: None,
            client: None,
            details: Map::new(),
        }
    }
}

impl<'a> Event<'a> {
    /// The user concerned.
    pub fn user(mut self, id: Uuid) -> Self {
        self.user_id = Some(id);
        self
    }

    /// The phone concerned (kept as `keyed_hash("audit-phone", e164)`).
    pub fn phone(mut self, phone: &Phone) -> Self {
        self.phone_hash = Some(self.auth.otp.keyed_hash("audit-phone", phone.as_str()));
        self
    }

    /// The client that asked (network, user agent).
    pub fn client(mut self, client: &'a ClientInfo) -> Self {
        self.client = Some(client);
        self
    }

    /// A detail (never a code, token, secret or phone number).
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// Queues the event: one non-blocking push (dropped and counted when the queue is full).
    pub fn emit(self) {
        let at = Utc::now();
        let id = crate::domain::ids::time_ordered_uuid(at.timestamp_millis().max(0) as u64);
        let webhook = match self.kind.webhook_type() {
            Some(kind) if self.auth.events.webhook => {
                let mut data = Map::new();
                if let Some(user) = self.user_id {
                    data.insert("user_id".into(), user.to_string().into());
                }
                if let Some(hash) = &self.phone_hash {
                    data.insert("phone_hash".into(), hash.clone().into());
                }
                // Which admin key acted stays in the audit log, inside the trust boundary.
                data.extend(
                    self.details
                        .iter()
                        .filter(|(key, _)| key.as_str() != "key_id")
                        .map(|(key, value)| (key.clone(), value.clone())),
                );
                let body = json!({
                    "type": kind,
                    "timestamp": at.to_rfc3339_opts(SecondsFormat::Millis, true),
                    "data": data,
                });
                Some((kind, body.to_string()))
            }
            _ => None,
        };
        let client = self.client;
        self.auth.events.log.record(EventRecord {
            id,
            at,
            kind: self.kind.as_str(),
            user_id: self.user_id,
            phone_hash: self.phone_hash,
            ip: client.and_then(|c| self.auth.shown_ip(c)),
            user_agent: client.and_then(|c| c.user_agent.as_deref()).map(|ua| {
                ua.chars()
                    .filter(|c| !c.is_control())
                    .take(USER_AGENT_MAX)
                    .collect()
            }),
            request_id: crate::telemetry::current_request_id(),
            details: Value::Object(self.details),
            webhook,
        });
    }
}

/// The delay before attempt `attempts + 1` after `attempts` failed: `base` doubling, capped.
pub fn backoff(base: Duration, attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(30));
    base.saturating_mul(factor).min(RETRY_CAP)
}

/// A claimed outbox row and its claim.
struct Claimed {
    owner: Uuid,
    row: event_outbox::Model,
}

/// An attempt's result.
enum Outcome {
    Delivered,
    /// Not attempted: too little of its lease was left (another claim takes it).
    LeaseOver,
    Failed(String),
}

/// The rows this replica claimed and has not finished recording, with the end of their lease:
/// the claimer never claims them again while they are here (a row whose lease ran out during a
/// slow attempt goes to other replicas, or back to this one once the attempt is recorded).
#[derive(Clone, Default)]
struct Held(Arc<std::sync::Mutex<HashMap<Uuid, DateTime<Utc>>>>);

impl Held {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, DateTime<Utc>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The held rows whose lease ended by `now`: a claim could take them again.
    fn expired(&self, now: DateTime<Utc>) -> Vec<Uuid> {
        let map = self.map();
        map.iter()
            .filter(|(_, until)| **until <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    fn hold(&self, rows: &[event_outbox::Model], until: DateTime<Utc>) {
        let mut map = self.map();
        map.extend(rows.iter().map(|row| (row.id, until)));
    }

    fn forget(&self, ids: impl IntoIterator<Item = Uuid>) {
        let mut map = self.map();
        for id in ids {
            map.remove(&id);
        }
    }
}

/// The delivery tasks: the claimer feeds claimed rows to the poster, which posts them and hands
/// each outcome to the recorder, which writes it (the poster never waits for the database).
async fn deliver(
    db: DatabaseConnection,
    settings: WebhookSettings,
    metrics: Arc<Metrics>,
    written: Arc<Notify>,
) {
    let client = reqwest::Client::builder()
        .timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let url = reqwest::Url::parse(&settings.url);
    let (client, url) = match (client, url) {
        (Ok(client), Ok(url)) => (client, url),
        (Err(err), _) => {
            tracing::error!(error = %err, "event webhook: no HTTP client; events are not delivered");
            return;
        }
        (_, Err(err)) => {
            tracing::error!(error = %err, "event webhook: EVENT_WEBHOOK_URL is not a URL; events are not delivered");
            return;
        }
    };
    let held = Held::default();
    // Room for two claims: the next one is made while the last one is being posted.
    let (queue, claimed) = tokio::sync::mpsc::channel(2 * CLAIM);
    let (outcomes, to_record) = tokio::sync::mpsc::channel(2 * CLAIM);
    tokio::spawn(claim(
        db.clone(),
        settings.lease,
        metrics.clone(),
        written,
        held.clone(),
        queue,
    ));
    tokio::spawn(record(db, settings.clone(), metrics, held, to_record));
    let target = Target {
        client,
        url,
        // An attempt starts only with this much of its lease left: one that could outlast it
        // would be posted again by whoever claims the row next.
        lease_margin: chrono::Duration::from_std(settings.timeout.min(settings.lease / 2))
            .unwrap_or(chrono::Duration::seconds(10)),
        settings,
    };
    post(&target, claimed, outcomes).await;
}

/// The claimer: claims due events (a new claim id each time) when the queue has room for a
/// whole claim, sets the lag (how late the earliest due event claimed was; 0 when none is
/// due), and waits for new events or [`POLL`] when it found fewer than a whole claim. While the
/// database fails, it waits longer each time, up to [`CLAIM_RETRY_MAX`].
async fn claim(
    db: DatabaseConnection,
    lease: Duration,
    metrics: Arc<Metrics>,
    written: Arc<Notify>,
    held: Held,
    queue: tokio::sync::mpsc::Sender<Claimed>,
) {
    let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
    let mut pause = POLL;
    loop {
        let Ok(room) = queue.reserve_many(CLAIM).await else {
            return; // the poster is gone
        };
        let now = Utc::now();
        let owner = crate::domain::ids::random_uuid();
        let exclude = held.expired(now);
        let claimed =
            store::claim_outbox(&db, now, now + lease, owner, CLAIM as u64, &exclude).await;
        let rows = match claimed {
            Ok(rows) => rows,
            Err(err) => {
                if pause == POLL {
                    tracing::warn!(error = %err, "event webhook: could not claim events");
                }
                drop(room);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(CLAIM_RETRY_MAX);
                continue;
            }
        };
        pause = POLL;
        let earliest = rows.iter().map(|row| row.next_attempt_at).min();
        metrics.webhook_lag.set(earliest.map_or(0.0, |at| {
            (now - at).num_milliseconds().max(0) as f64 / 1000.0
        }));
        held.hold(&rows, now + lease);
        let whole = rows.len() == CLAIM;
        for (permit, row) in room.zip(rows) {
            permit.send(Claimed { owner, row });
        }
        if !whole {
            let _ = tokio::time::timeout(POLL, written.notified()).await;
        }
    }
}

/// The poster: [`IN_FLIGHT`] attempts at once, each outcome handed to the recorder.
async fn post(
    target: &Target,
    claimed: tokio::sync::mpsc::Receiver<Claimed>,
    outcomes: tokio::sync::mpsc::Sender<(Claimed, Outcome)>,
) {
    use futures_util::StreamExt as _;
    let attempts = futures_util::stream::unfold(claimed, |mut claimed| async move {
        let next = claimed.recv().await?;
        Some((next, claimed))
    })
    .map(|mut claimed| async move {
        let outcome = attempt(target, &mut claimed.row).await;
        (claimed, outcome)
    })
    .buffer_unordered(IN_FLIGHT);
    let mut attempts = std::pin::pin!(attempts);
    while let Some(done) = attempts.next().await {
        if outcomes.send(done).await.is_err() {
            return; // the recorder is gone
        }
    }
}

/// The recorder: delivered events are deleted together (one statement per claim among them),
/// at the latest [`RECORD_EVERY`] after the first; failures scheduled or given up; released
/// rows made due again. A row is forgotten by [`Held`] once its outcome is written (or failed
/// to be: its lease then ends and it is claimed again, at least once).
async fn record(
    db: DatabaseConnection,
    settings: WebhookSettings,
    metrics: Arc<Metrics>,
    held: Held,
    mut outcomes: tokio::sync::mpsc::Receiver<(Claimed, Outcome)>,
) {
    let mut delivered: Vec<(Uuid, Uuid)> = Vec::with_capacity(CLAIM);
    let mut record_by: Option<tokio::time::Instant> = None;
    loop {
        let next = match record_by {
            Some(at) => match tokio::time::timeout_at(at, outcomes.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    record_delivered(&db, &held, &mut delivered).await;
                    record_by = None;
                    continue;
                }
            },
            None => outcomes.recv().await,
        };
        let Some((Claimed { owner, row }, outcome)) = next else {
            record_delivered(&db, &held, &mut delivered).await;
            return;
        };
        match outcome {
            Outcome::Delivered => {
                metrics
                    .webhook_deliveries
                    .with_label_values(&["delivered"])
                    .inc();
                delivered.push((owner, row.id));
                if delivered.len() >= CLAIM {
                    record_delivered(&db, &held, &mut delivered).await;
                    record_by = None;
                } else if record_by.is_none() {
                    record_by = Some(tokio::time::Instant::now() + RECORD_EVERY);
                }
            }
            Outcome::LeaseOver => {
                tracing::debug!(event = %row.id, "event webhook: too little lease left to attempt");
                if let Err(err) = store::outbox_release(&db, row.id, owner).await {
                    tracing::warn!(error = %err, event = %row.id, "event webhook: claim not released");
                }
                held.forget([row.id]);
            }
            Outcome::Failed(error) => {
                let id = row.id;
                failed(&db, &settings, &metrics, owner, row, error).await;
                held.forget([id]);
            }
        }
    }
}

/// Records delivered events: one `DELETE` per claim among them (usually one or two).
async fn record_delivered(db: &DatabaseConnection, held: &Held, delivered: &mut Vec<(Uuid, Uuid)>) {
    delivered.sort_unstable();
    for chunk in delivered.chunk_by(|a, b| a.0 == b.0) {
        let ids: Vec<Uuid> = chunk.iter().map(|(_, id)| *id).collect();
        if let Err(err) = store::outbox_delivered(db, chunk[0].0, ids).await {
            // Delivered, not recorded: delivered again after the lease (at least once).
            tracing::warn!(error = %err, events = chunk.len(), "event webhook: deliveries not recorded");
        }
    }
    held.forget(delivered.drain(..).map(|(_, id)| id));
}

/// Where events go: the client, the URL parsed once, the settings.
struct Target {
    client: reqwest::Client,
    url: reqwest::Url,
    lease_margin: chrono::Duration,
    settings: WebhookSettings,
}

/// One attempt at event `row`, unless too little of its lease is left (its payload is sent,
/// not copied: after the attempt only its id, kind and times are read).
async fn attempt(target: &Target, row: &mut event_outbox::Model) -> Outcome {
    let now = Utc::now();
    if row
        .locked_until
        .is_some_and(|until| until - target.lease_margin <= now)
    {
        return Outcome::LeaseOver;
    }
    let timestamp = now.timestamp();
    let id = row.id.to_string();
    let signed = signature(&target.settings.key, &id, timestamp, row.payload.as_bytes());
    let sent = target
        .client
        .post(target.url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp)
        .header("webhook-signature", signed)
        .body(std::mem::take(&mut row.payload))
        .send()
        .await;
    match sent {
        Ok(resp) if resp.status().is_success() => Outcome::Delivered,
        Ok(resp) => Outcome::Failed(format!("HTTP {}", resp.status().as_u16())),
        Err(err) if err.is_timeout() => Outcome::Failed("timeout".to_string()),
        Err(err) if err.is_connect() => Outcome::Failed("connection failed".to_string()),
        Err(_) => Outcome::Failed("request failed".to_string()),
    }
}

/// A failed attempt: the next one scheduled, or the event given up.
async fn failed(
    db: &DatabaseConnection,
    settings: &WebhookSettings,
    metrics: &Metrics,
    owner: Uuid,
    row: event_outbox::Model,
    error: String,
) {
    let attempts = u32::try_from(row.attempts).unwrap_or(u32::MAX);
    let next = Utc::now()
        + chrono::Duration::from_std(backoff(settings.retry_base, attempts))
            .unwrap_or(chrono::Duration::hours(1));
    let too_old =
        chrono::Duration::from_std(GIVE_UP_AFTER).is_ok_and(|limit| next - row.created_at > limit);
    let give_up = attempts >= settings.max_attempts || too_old;
    let outcome = if give_up { "gave_up" } else { "failed_attempt" };
    metrics
        .webhook_deliveries
        .with_label_values(&[outcome])
        .inc();
    if give_up {
        tracing::warn!(event = %row.id, kind = row.kind, attempts, error, "event webhook: given up");
    } else {
        tracing::info!(event = %row.id, kind = row.kind, attempts, error, "event webhook: attempt failed");
    }
    let next = (!give_up).then_some(next);
    if let Err(err) = store::outbox_failed(db, row.id, owner, next, &error).await {
        tracing::warn!(error = %err, event = %row.id, "event webhook: attempt not recorded");
    }
}

/// The retention task: every hour, deletes audit events older than `retention`.
async fn keep_for(db: DatabaseConnection, retention: Duration) {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(90));
    loop {
        // Not at start-up (the first requests come first), then hourly.
        tokio::time::sleep(RETENTION_EVERY).await;
        match store::delete_before(&db, Utc::now() - retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "audit events past their retention deleted"),
            Err(err) => tracing::warn!(error = %err, "audit retention: delete failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_an_hour() {
        let base = Duration::from_secs(5);
        assert_eq!(backoff(base, 1), Duration::from_secs(5));
        assert_eq!(backoff(base, 2), Duration::from_secs(10));
        assert_eq!(backoff(base, 3), Duration::from_secs(20));
        assert_eq!(backoff(base, 12), RETRY_CAP);
        assert_eq!(backoff(base, 1000), RETRY_CAP);
    }

    #[test]
    fn kinds_are_distinct_and_some_go_to_the_webhook() {
        let all = [
            EventKind::OtpSent,
            EventKind::OtpFailed,
            EventKind::CaptchaFailed,
            EventKind::LoginSucceeded,
            EventKind::TokenRefreshed,
            EventKind::TokenReused,
            EventKind::SessionRevoked,
            EventKind::SessionsRevokedAll,
            EventKind::UserCreated,
            EventKind::UserBlocked,
            EventKind::UserUnblocked,
            EventKind::UserDeleted,
            EventKind::PhoneChanged,
            EventKind::AdminAction,
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), all.len());
        let hooks: std::collections::HashSet<_> =
            all.iter().filter_map(|k| k.webhook_type()).collect();
        for t in [
            "user.created",
            "login.succeeded",
            "otp.failed",
            "session.revoked",
            "user.blocked",
            "user.deleted",
            "phone.changed",
        ] {
            assert!(hooks.contains(t), "{t}");
        }
        assert_eq!(hooks.len(), 7);
        assert_eq!(EventKind::CaptchaFailed.as_str(), "captcha.failed");
        assert_eq!(EventKind::CaptchaFailed.webhook_type(), None);
    }
}
