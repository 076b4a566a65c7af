//! Ephemeral state shared by every replica: codes, resend cooldowns, rate-limit buckets, spent
//! refresh tokens, revoked sessions, login intents and the ids of webhook events already seen.
//!
//! One trait, two backends with the same semantics (TTLs included): [`redis::RedisStore`] for
//! clusters (every operation is one round trip; the ones that must be atomic are Lua scripts in
//! `lua/`) and [`memory::MemoryStore`] for a single embedded server. The conformance suite in
//! `tests/` runs against both. Quotas are GCRA buckets ([`crate::domain::quota::gcra`]): an event
//! is admitted only when every quota of the call admits it, and then charged to all of them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::pumping::{PumpBlock, PumpCheck, PumpOutcome, PumpRules, Scope};
use crate::domain::quota::{Quota, QuotaState, Refusal};
use crate::domain::secret::redact_credentials;
use crate::telemetry::Metrics;

pub mod memory;
pub mod redis;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

/// A store operation that failed; the request gets a 503 and nothing is half-done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operation did not finish within the configured timeout.
    #[error("store operation timed out")]
    Timeout,
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// Redis answered something the script does not return.
    #[error("unexpected store reply: {0}")]
    Protocol(String),
}

/// What happened to a request for a new code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueOutcome {
    /// The code is stored and replaced any earlier one; the cooldown started; every quota was
    /// charged (their states, in the order given).
    Issued(Vec<QuotaState>),
    /// The resend cooldown is still running for `retry_after`; nothing changed.
    Cooldown {
        /// Time left on the cooldown.
        retry_after: Duration,
    },
    /// A quota refused; nothing changed.
    Limited(Refusal),
    /// The phone is blocked ([`Store::set_blocked`]): cooldown and quotas were charged as
    /// for [`IssueOutcome::Issued`], but no code was stored. The caller answers as if one was
    /// sent, so the answer does not tell a blocked number from any other.
    Blocked(Vec<QuotaState>),
}

/// [`Store::pump_then_issue`] in two steps, on any store.
pub async fn pump_then_issue_in_two_steps<S: Store + ?Sized>(
    store: &S,
    checks: &[PumpCheck],
    enforce: bool,
    rules: &PumpRules,
    code: &CodeIssue<'_>,
) -> Result<(PumpOutcome, Option<IssueOutcome>), StoreError> {
    let pumped = store.pump_send(checks, enforce, rules).await?;
    if enforce && pumped.refused.is_some() {
        return Ok((pumped, None));
    }
    let issued = store
        .issue_code_marked(
            code.phone,
            code.code_hash,
            code.ttl,
            code.cooldown,
            code.quotas,
            code.mark,
            code.keep_tries_below,
        )
        .await;
    if !matches!(
        issued,
        Ok(IssueOutcome::Issued(_) | IssueOutcome::Blocked(_))
    ) {
        let window = Duration::from_millis(rules.window_ms);
        if let Err(err) = store.pump_unsend(checks, window).await {
            tracing::warn!(error = %err, "a code not stored stays counted by the pumping defence");
        }
    }
    Ok((pumped, Some(issued?)))
}

/// [`Store::move_session`] in two concurrent steps, for a store where one script cannot hold
/// both users' keys.
pub async fn move_session_in_two_steps<S: Store + ?Sized>(
    store: &S,
    from: &str,
    user: &str,
    sid: &str,
    meta: &str,
    ttl: Duration,
    max: usize,
) -> Result<SessionPut, StoreError> {
    let (dropped, put) = tokio::join!(
        store.drop_session(from, sid),
        store.put_session(user, sid, meta, ttl, max)
    );
    if let Err(err) = dropped {
        tracing::warn!(error = %err, "a session recorded with its code check was not dropped");
    }
    put
}

/// [`Store::put_session_credited`] in two steps, on any store.
#[allow(clippy::too_many_arguments)]
pub async fn put_session_credited_in_two_steps<S: Store + ?Sized>(
    store: &S,
    user: &str,
    sid: &str,
    meta: &str,
    ttl: Duration,
    max: usize,
    credit: &[PumpCheck],
    window: Duration,
) -> Result<SessionPut, StoreError> {
    let put = store.put_session(user, sid, meta, ttl, max).await?;
    if matches!(put, SessionPut::Recorded(_))
        && !credit.is_empty()
        && let Err(err) = store.pump_verified(credit, window).await
    {
        tracing::warn!(error = %err, "a verified code was not credited to the pumping defence");
    }
    Ok(put)
}

/// A new code to store for one phone: the arguments of [`Store::issue_code_marked`].
#[derive(Debug, Clone, Copy)]
pub struct CodeIssue<'a> {
    /// The phone's store subject.
    pub phone: &'a str,
    /// The code's HMAC (hex).
    pub code_hash: &'a str,
    /// The code's lifetime.
    pub ttl: Duration,
    /// The resend cooldown (zero: none).
    pub cooldown: Duration,
    /// Quotas charged.
    pub quotas: &'a [Quota],
    /// The mark kept with the code (0: none).
    pub mark: u64,
    /// Above 0: keep the wrong tries of a live code stored in the same form while fewer.
    pub keep_tries_below: u32,
}

/// One session (refresh-token family) of a user, as the store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session id (the tokens' `sid`).
    pub sid: String,
    /// When it was opened (Unix ms, the store's clock).
    pub created_ms: u64,
    /// When its refresh token was last used, or its opening (Unix ms).
    pub last_used_ms: u64,
    /// What the domain recorded about it (JSON text: user agent, IP, device name).
    pub meta: String,
}

/// What [`Store::put_session`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionPut {
    /// Recorded; the oldest sessions beyond the cap were dropped from the index (their ids:
    /// the caller revokes them).
    Recorded(Vec<String>),
    /// The user is blocked ([`Store::set_blocked`]): nothing recorded.
    Blocked,
}

/// A session to record with a code check ([`Store::verify_code_then_session`]): what
/// [`Store::put_session`] takes.
#[derive(Debug, Clone, Copy)]
pub struct SessionDraft<'a> {
    /// The user's id.
    pub user: &'a str,
    /// The new session's id.
    pub sid: &'a str,
    /// What the client told ([`Store::put_session`]'s `meta`).
    pub meta: &'a str,
    /// The index's lifetime (the refresh token lifetime).
    pub ttl: Duration,
    /// The most sessions a user keeps.
    pub max: usize,
}

/// What happened to a presented code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// Right code: it is marked spent (usable once; [`Store::restore_code`] can undo that while
    /// no newer code replaced it) and the resend cooldown is cleared. `mark`: what
    /// [`Store::issue_code_marked`] kept with it.
    Verified {
        /// The code's mark (0 = none).
        mark: u64,
    },
    /// The stored code is the `delegated` marker ([`Store::verify_code_or_delegated`]): spent
    /// while the caller's outside check runs, and the try already counted as a wrong one would
    /// be (attempt and failure quotas), so a check cut short still counts; the cooldown stays.
    Delegated {
        /// The code's mark.
        mark: u64,
        /// Wrong tries left if the outside check refuses.
        remaining: u32,
    },
    /// Wrong code: `remaining` wrong tries are left.
    Invalid {
        /// Wrong tries left.
        remaining: u32,
    },
    /// No live code: expired, already used, or never sent.
    Missing,
    /// Too many wrong tries: the code no longer works until it expires or is replaced.
    Burned,
    /// A quota refused before the code was looked at; nothing changed.
    Limited(Refusal),
}

/// What happened to a presented refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// First use: the token is now spent, at `spent_at_ms` (Unix milliseconds).
    Rotated {
        /// When the token was spent (Unix ms): the successor is dated from it.
        spent_at_ms: u64,
    },
    /// Spent moments ago (within the grace window): a concurrent refresh, which gets the same
    /// successor as the first one (dated from the same `spent_at_ms`).
    Grace {
        /// When the token was first spent (Unix ms).
        spent_at_ms: u64,
    },
    /// Spent longer ago: reuse detected, the whole session was revoked just now.
    Reused,
    /// The session was already revoked (logout or earlier reuse).
    Revoked,
}

/// The state of a login intent, as the poll finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Nobody has sent the intent's code yet.
    Pending,
    /// Bound, and now claimed by this poll (exactly once): `channel` and the `subject` that
    /// sent the code (an E.164 phone for WhatsApp, a Telegram user id).
    Claimed {
        /// The channel the intent was created for.
        channel: String,
        /// Who sent the code.
        subject: String,
    },
    /// An earlier poll already received the tokens.
    Consumed,
    /// No such intent: never created, or expired.
    Missing,
    /// The poll token does not match; nothing changed.
    Forbidden,
}

/// What happened when an inbound message presented an intent code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindOutcome {
    /// The intent is now bound to the sender.
    Bound,
    /// No live intent of this channel has this id.
    Unknown,
    /// The intent was bound before (one binding per intent); nothing changed.
    AlreadyBound,
}

/// Everything ephemeral and shared. Keys are plain strings (E.164 phones, session and token
/// ids); backends add their own prefixes.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores `code_hash` for `phone` for `ttl`, replacing any earlier code and starting a
    /// `cooldown` (zero = none), unless a cooldown is already running or one of `quotas`
    /// refuses; all in one atomic step. `mark` is kept with the code and handed back by
    /// [`Store::verify_code`] when the code is verified (the pumping defence's
    /// [`crate::domain::pumping::PumpingPolicy::mark`]; 0 = nothing). With `keep_tries_below`
    /// above 0, a live, unspent code stored in the same form keeps its wrong tries while they
    /// are fewer than that (Twilio Verify's marker: Twilio re-sends the same pending code; a
    /// burned one starts afresh, Twilio's own check limit then bounding the guesses).
    #[allow(clippy::too_many_arguments)]
    async fn issue_code_marked(
        &self,
        phone: &str,
        code_hash: &str,
        ttl: Duration,
        cooldown: Duration,
        quotas: &[Quota],
        mark: u64,
        keep_tries_below: u32,
    ) -> Result<IssueOutcome, StoreError>;

    /// [`Store::issue_code_marked`] without a mark.
    async fn issue_code(
        &self,
        phone: &str,
        code_hash: &str,
        ttl: Duration,
        cooldown: Duration,
        quotas: &[Quota],
    ) -> Result<IssueOutcome, StoreError> {
        self.issue_code_marked(phone, code_hash, ttl, cooldown, quotas, 0, 0)
            .await
    }

    /// Checks `code_hash` against the live code of `phone`, atomically: a right code works
    /// once, however many replicas receive it at the same moment. First every quota of
    /// `attempts` and `failures` must admit the attempt; `attempts` are then charged, and
    /// `failures` too when the code is wrong.
    async fn verify_code(
        &self,
        phone: &str,
        code_hash: &str,
        max_attempts: u32,
        attempts: &[Quota],
        failures: &[Quota],
    ) -> Result<VerifyOutcome, StoreError> {
        self.verify_code_or_delegated(phone, code_hash, None, max_attempts, attempts, failures)
            .await
    }

    /// [`Store::verify_code`], where a stored code equal to `delegated` (the marker of a code
    /// an outside service made and checks: Twilio Verify) is spent and its try counted, and
    /// answered [`VerifyOutcome::Delegated`]: the caller asks that service, and on a wrong code
    /// puts it back ([`Store::restore_code`]); when the service did not answer, it puts it back
    /// with the try given back ([`Store::refund_attempt`]).
    async fn verify_code_or_delegated(
        &self,
        phone: &str,
        code_hash: &str,
        delegated: Option<&str>,
        max_attempts: u32,
        attempts: &[Quota],
        failures: &[Quota],
    ) -> Result<VerifyOutcome, StoreError>;

    /// [`Store::verify_code_or_delegated`] and, when the code is right
    /// ([`VerifyOutcome::Verified`]), [`Store::put_session`] of `session` in the same step,
    /// where one node holds every key ([`Store::pumps_with_codes`]): a login whose user is
    /// known (or proposed) before the code check saves a round trip after it. The put's reply is
    /// `Some` when the session was put with the check; `None` when it was not (here, and for
    /// every other outcome): the caller records it later. A put that fails in the step leaves
    /// the check's outcome standing and answers `None`.
    #[allow(clippy::too_many_arguments)]
    async fn verify_code_then_session(
        &self,
        phone: &str,
        code_hash: &str,
        delegated: Option<&str>,
        max_attempts: u32,
        attempts: &[Quota],
        failures: &[Quota],
        session: &SessionDraft<'_>,
    ) -> Result<(VerifyOutcome, Option<SessionPut>), StoreError> {
        let _ = session;
        let outcome = self
            .verify_code_or_delegated(
                phone,
                code_hash,
                delegated,
                max_attempts,
                attempts,
                failures,
            )
            .await?;
        Ok((outcome, None))
    }

    /// Undoes an issue whose code could not be delivered: removes the code (when it is still
    /// `code_hash`) and its cooldown, and gives back the units `quotas` were charged.
    async fn release_code(
        &self,
        phone: &str,
        code_hash: &str,
        quotas: &[Quota],
    ) -> Result<(), StoreError>;

    /// Makes the code `code_hash`, which `verify_code` just spent for a login that could not
    /// finish (the database failed after the code check), usable again: with the attempts it had
    /// and its original expiry, and only while it is still the phone's last code (a code issued
    /// since, used or not, replaced it for good). The resend cooldown is not restored. Whether
    /// the code was put back.
    async fn restore_code(&self, phone: &str, code_hash: &str) -> Result<bool, StoreError>;

    /// Replaces the live, unspent code `old_hash` of `phone` by `new_hash` for `ttl`, with
    /// `mark`, keeping its wrong attempts (a failed delivery's fallback). Whether it did: not
    /// when the code was verified, replaced by a newer one, expired, burned (`max_attempts`
    /// wrong tries), or the phone is blocked ([`Store::set_blocked`]).
    async fn replace_code(
        &self,
        phone: &str,
        old_hash: &str,
        new_hash: &str,
        ttl: Duration,
        mark: u64,
        max_attempts: u32,
    ) -> Result<bool, StoreError>;

    /// Puts back the spent code `code_hash` of `phone` (a delegated check that got no answer)
    /// with one wrong try fewer. Whether it did.
    async fn refund_attempt(&self, phone: &str, code_hash: &str) -> Result<bool, StoreError>;

    /// Sets the mark of `phone`'s code while it is still `code_hash` (its expiry unchanged).
    async fn mark_code(&self, phone: &str, code_hash: &str, mark: u64) -> Result<(), StoreError>;

    /// Keeps `record` (the domain's text) for message `key` that a provider accepted, for
    /// `ttl`: its delivery receipts find it there. Returns the status of a receipt that came
    /// first (kept by [`Store::note_receipt`] with `early`), now noted on the record.
    async fn put_receipt(
        &self,
        key: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError>;

    /// Notes `status` on message `key` (its expiry unchanged): its record and whether this call
    /// claimed its fallback (asked with `claim`; once per message, however many replicas and
    /// repeated receipts ask). `None` for an unknown or expired message; with `early`, a
    /// message not recorded yet (its receipt overtook the send's own answer) keeps `status`
    /// that long for [`Store::put_receipt`].
    async fn note_receipt(
        &self,
        key: &str,
        status: &str,
        claim: bool,
        early: Option<Duration>,
    ) -> Result<Option<(String, bool)>, StoreError>;

    /// Charges one event to every quota of `quotas`, atomically: all are charged (their states,
    /// in order) or, when one refuses, none.
    async fn charge_quotas(
        &self,
        quotas: &[Quota],
    ) -> Result<Result<Vec<QuotaState>, Refusal>, StoreError>;

    /// Spends refresh token `jti` of session `sid`; reuse after `grace` revokes the session
    /// for `ttl`.
    async fn spend_refresh(
        &self,
        sid: &str,
        jti: &str,
        grace: Duration,
        ttl: Duration,
    ) -> Result<RefreshOutcome, StoreError>;

    /// Revokes session `sid` (all its tokens) for `ttl`.
    async fn revoke_session(&self, sid: &str, ttl: Duration) -> Result<(), StoreError>;

    /// Whether session `sid` was revoked.
    async fn is_session_revoked(&self, sid: &str) -> Result<bool, StoreError>;

    /// Records session `sid` of `user` (opened now, last used now, `meta`) in the user's
    /// session index, which lives `ttl` (the refresh token lifetime) after its last write;
    /// sessions unused for `ttl` are dropped from it, and beyond `max` sessions the oldest. A
    /// blocked user gets nothing recorded.
    async fn put_session(
        &self,
        user: &str,
        sid: &str,
        meta: &str,
        ttl: Duration,
        max: usize,
    ) -> Result<SessionPut, StoreError>;

    /// [`Store::put_session`] of `sid` for `user`, and `sid` dropped from `from`'s index: a
    /// session recorded with the code check ([`Store::verify_code_then_session`]) for the user
    /// a login proposed, when the login opened another's (a returning user). The drop happens
    /// whatever the put answers. One step where one node holds every key
    /// ([`Store::pumps_with_codes`]); two concurrent ones here (a failed drop is logged: the
    /// entry lapses with its index, and its id was never handed out).
    #[allow(clippy::too_many_arguments)]
    async fn move_session(
        &self,
        from: &str,
        user: &str,
        sid: &str,
        meta: &str,
        ttl: Duration,
        max: usize,
    ) -> Result<SessionPut, StoreError> {
        move_session_in_two_steps(self, from, user, sid, meta, ttl, max).await
    }

    /// [`Store::put_session`] and then, when the session was recorded, [`Store::pump_verified`]
    /// over `credit` (the login's verified code, in the pumping `window`); a failed credit is
    /// logged, the session stands. Two steps here; one on a store where one node holds every
    /// key ([`Store::pumps_with_codes`]).
    #[allow(clippy::too_many_arguments)]
    async fn put_session_credited(
        &self,
        user: &str,
        sid: &str,
        meta: &str,
        ttl: Duration,
        max: usize,
        credit: &[PumpCheck],
        window: Duration,
    ) -> Result<SessionPut, StoreError> {
        put_session_credited_in_two_steps(self, user, sid, meta, ttl, max, credit, window).await
    }

    /// Whether session `sid` of `user` still stands: not revoked by itself
    /// ([`Store::revoke_session`]), nor by [`Store::revoke_user`] (a session opened before the
    /// user's cut-off), nor by a block. With `touch`, a standing session's last use becomes now
    /// (a refresh; a session the index does not know is added to it) and the index lives `ttl`
    /// more.
    async fn session_stands(
        &self,
        user: &str,
        sid: &str,
        touch: bool,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// The sessions of `user` used within `ttl`, newest first. One key; never a scan.
    async fn sessions(&self, user: &str, ttl: Duration) -> Result<Vec<SessionRecord>, StoreError>;

    /// Removes session `sid` from `user`'s index; whether it was there. (Revoke it with
    /// [`Store::revoke_session`].)
    async fn drop_session(&self, user: &str, sid: &str) -> Result<bool, StoreError>;

    /// Revokes every session `user` opened until now, on every replica at once: a cut-off that
    /// lives `ttl` (the longest token lifetime), and the session index emptied.
    async fn revoke_user(&self, user: &str, ttl: Duration) -> Result<(), StoreError>;

    /// Blocks (or unblocks) `user` and, when given, codes to their `phone`: no session of the
    /// user stands or is recorded, and [`Store::issue_code`] stores no code for the phone
    /// ([`IssueOutcome::Blocked`]). No expiry: the database's `blocked_at` is the record, and
    /// start-up writes these marks again from it.
    async fn set_blocked(
        &self,
        user: &str,
        phone: Option<&str>,
        blocked: bool,
    ) -> Result<(), StoreError>;

    /// Stores a pending login intent `id` for `channel` whose poll token hashes to
    /// `poll_hash`, for `ttl`.
    async fn create_intent(
        &self,
        id: &str,
        poll_hash: &str,
        channel: &str,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Binds pending intent `id` of `channel` to `subject`, once.
    async fn bind_intent(
        &self,
        id: &str,
        channel: &str,
        subject: &str,
    ) -> Result<BindOutcome, StoreError>;

    /// Polls intent `id` with the hash of its poll token: a bound intent is claimed, atomically,
    /// so exactly one poll receives it.
    async fn claim_intent(&self, id: &str, poll_hash: &str) -> Result<ClaimOutcome, StoreError>;

    /// Gives a claim back (the session could not be opened), so the next poll claims it again.
    async fn unclaim_intent(&self, id: &str) -> Result<(), StoreError>;

    /// Marks inbound event `key` (a webhook message or update id) as seen for `ttl`; `true` the
    /// first time, `false` for a repeated delivery.
    async fn first_delivery(&self, key: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Forgets event `key`, so a redelivery is processed (its processing failed).
    async fn forget_delivery(&self, key: &str) -> Result<(), StoreError>;

    /// Checks that the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Counts one code sent in each scope of `checks`, in the sliding window of `rules`,
    /// unless, with `enforce`, one of them is blocked or has its budget of unverified codes
    /// spent (then nothing is counted). A scope whose conversion (verified / sent) falls below
    /// the rules' minimum with its volume reached is blocked for their cooldown, and listed for
    /// [`Store::pump_blocks`].
    async fn pump_send(
        &self,
        checks: &[PumpCheck],
        enforce: bool,
        rules: &PumpRules,
    ) -> Result<PumpOutcome, StoreError>;

    /// Whether one node holds every key, so that [`Store::pump_then_issue`],
    /// [`Store::put_session_credited`] and [`Store::verify_code_then_session`] take one step.
    /// Where they do not, the caller takes the two steps itself, as it does on a Cluster.
    fn pumps_with_codes(&self) -> bool {
        false
    }

    /// [`Store::pump_send`] over `checks` and then, unless `enforce` refused the send,
    /// [`Store::issue_code_marked`] of `code`; a send whose code a cooldown or quota refused is
    /// taken back (`rules.window_ms`). Returns the send's outcome and the code's (`None` when the
    /// send was refused: no code stored, no quota charged). Done in the two steps here; a store
    /// where one node holds every key takes one ([`Store::pumps_with_codes`]).
    async fn pump_then_issue(
        &self,
        checks: &[PumpCheck],
        enforce: bool,
        rules: &PumpRules,
        code: &CodeIssue<'_>,
    ) -> Result<(PumpOutcome, Option<IssueOutcome>), StoreError> {
        pump_then_issue_in_two_steps(self, checks, enforce, rules, code).await
    }

    /// Takes back one send counted by [`Store::pump_send`] (the code was not delivered).
    async fn pump_unsend(&self, checks: &[PumpCheck], window: Duration) -> Result<(), StoreError>;

    /// Counts one verified code in each scope of `checks`.
    async fn pump_verified(&self, checks: &[PumpCheck], window: Duration)
    -> Result<(), StoreError>;

    /// Blocks `scope`/`key` for `duration` (an operator's block), keeping its counts.
    async fn pump_block(
        &self,
        scope: Scope,
        key: &str,
        duration: Duration,
        window: Duration,
    ) -> Result<(), StoreError>;

    /// The blocks standing now.
    async fn pump_blocks(&self) -> Result<Vec<PumpBlock>, StoreError>;

    /// Lifts the block on `scope`/`key` and forgets its counts; whether one stood.
    async fn pump_lift(&self, scope: Scope, key: &str) -> Result<bool, StoreError>;
}

/// The wall clock in Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds of a duration for TTL arguments, at least 1 so a key never lives forever.
pub(crate) fn ttl_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A store that times every operation and counts failures (`otpgate_store_*` metrics).
pub struct Metered {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Metered {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    async fn timed<T>(
        &self,
        op: &str,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let metrics = &self.metrics;
        Metrics::timed(&metrics.store_duration, op, work, |err| {
            metrics.store_errors.with_label_values(&[op]).inc();
            let error = redact_credentials(&err.to_string());
            tracing::warn!(op, error, "store operation failed");
        })
        .await
    }
}

#[async_trait::async_trait]
impl Store for Metered {
    #[allow(clippy::too_many_arguments)]
    async fn issue_code_marked(
        &self,
        phone: &str,
        code_hash: &str,
        ttl: Duration,
        cooldown: Duration,
        quotas: &[Quota],
        mark: u64,
        keep_tries_below: u32,
    ) -> Result<IssueOutcome, StoreError> {
        self.timed(
            "issue_code",
            self.inner.issue_code_marked(
                phone,
                code_hash,
                ttl,
                cooldown,
                quotas,
                mark,
                keep_tries_below,
            ),
        )
        .await
    }

    async fn verify_code_or_delegated(
        &self,
        phone: &str,
        code_hash: &str,
        delegated: Option<&str>,
        max_attempts: u32,
        attempts: &[Quota],
        failures: &[Quota],
    ) -> Result<VerifyOutcome, StoreError> {
        self.timed(
            "verify_code",
            self.inner.verify_code_or_delegated(
                phone,
                code_hash,
                delegated,
                max_attempts,
                attempts,
                failures,
            ),
        )
        .await
    }

    async fn release_code(
        &self,
        phone: &str,
        code_hash: &str,
        quotas: &[Quota],
    ) -> Result<(), StoreError> {
        self.timed(
            "release_code",
            self.inner.release_code(phone, code_hash, quotas),
        )
        .await
    }

    async fn restore_code(&self, phone: &str, code_hash: &str) -> Result<bool, StoreError> {
        self.timed("restore_code", self.inner.restore_code(phone, code_hash))
            .await
    }

    async fn replace_code(
        &self,
        phone: &str,
        old_hash: &str,
        new_hash: &str,
        ttl: Duration,
        mark: u64,
        max_attempts: u32,
    ) -> Result<bool, StoreError> {
        self.timed(
            "replace_code",
            self.inner
                .replace_code(phone, old_hash, new_hash, ttl, mark, max_attempts),
        )
        .await
    }

    async fn refund_attempt(&self, phone: &str, code_hash: &str) -> Result<bool, StoreError> {
        self.timed(
            "refund_attempt",
            self.inner.refund_attempt(phone, code_hash),
        )
        .await
    }

    async fn mark_code(&self, phone: &str, code_hash: &str, mark: u64) -> Result<(), StoreError> {
        self.timed("mark_code", self.inner.mark_code(phone, code_hash, mark))
            .await
    }

    async fn put_receipt(
        &self,
        key: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        self.timed("put_receipt", self.inner.put_receipt(key, record, ttl))
            .await
    }

    async fn note_receipt(
        &self,
        key: &str,
        status: &str,
        claim: bool,
        early: Option<Duration>,
    ) -> Result<Option<(String, bool)>, StoreError> {
        self.timed(
            "note_receipt",
            self.inner.note_receipt(key, status, claim, early),
        )
        .await
    }

    async fn charge_quotas(
        &self,
        quotas: &[Quota],
    ) -> Result<Result<Vec<QuotaState>, Refusal>, StoreError> {
        self.timed("charge_quotas", self.inner.charge_quotas(quotas))
            .await
    }

    async fn spend_refresh(
        &self,
        sid: &str,
        jti: &str,
        grace: Duration,
        ttl: Duration,
    ) -> Result<RefreshOutcome, StoreError> {
        self.timed(
            "spend_refresh",
            self.inner.spend_refresh(sid, jti, grace, ttl),
        )
        .await
    }

    async fn revoke_session(&self, sid: &str, ttl: Duration) -> Result<(), StoreError> {
        self.timed("revoke_session", self.inner.revoke_session(sid, ttl))
            .await
    }

    async fn is_session_revoked(&self, sid: &str) -> Result<bool, StoreError> {
        self.timed("is_session_revoked", self.inner.is_session_revoked(sid))
            .await
    }

    async fn verify_code_then_session(
        &self,
        phone: &str,
        code_hash: &str,
        delegated: Option<&str>,
        max_attempts: u32,
        attempts: &[Quota],
        failures: &[Quota],
        session: &SessionDraft<'_>,
    ) -> Result<(VerifyOutcome, Option<SessionPut>), StoreError> {
        if !self.inner.pumps_with_codes() {
            // The check alone, timed and counted as such; the caller records the session.
            let outcome = self
                .verify_code_or_delegated(
                    phone,
                    code_hash,
                    delegated,
                    max_attempts,
                    attempts,
                    failures,
                )
                .await?;
            return Ok((outcome, None));
        }
        // Still the code check to whoever watches the store's latency; with the session's
        // put inside it.
        self.timed(
            "verify_code",
            self.inner.verify_code_then_session(
                phone,
                code_hash,
                delegated,
                max_attempts,
                attempts,
                failures,
                session,
            ),
        )
        .await
    }

    async fn put_session(
        &self,
        user: &str,
        sid: &str,
        meta: &str,
        ttl: Duration,
        max: usize,
    ) -> Result<SessionPut, StoreError> {
        self.timed(
            "put_session",
            self.inner.put_session(user, sid, meta, ttl, max),
        )
        .await
    }

    async fn move_session(
        &self,
        from: &str,
        user: &str,
        sid: &str,
        meta: &str,
        ttl: Duration,
        max: usize,
    ) -> Result<SessionPut, StoreError> {
        if !self.inner.pumps_with_codes() {
            // Each step timed and counted under its own name.
            return move_session_in_two_steps(self, from, user, sid, meta, ttl, max).await;
        }
        self.timed(
            "put_session",
            self.inner.move_session(from, user, sid, meta, ttl, max),
        )
        .await
    }

    async fn put_session_credited(
        &self,
        user: &str,
        sid: &str,
        meta: &str,
        ttl: Duration,
        max: usize,
        credit: &[PumpCheck],
        window: Duration,
    ) -> Result<SessionPut, StoreError> {
        if credit.is_empty() || !self.inner.pumps_with_codes() {
            // Each step timed and counted under its own name.
            return put_session_credited_in_two_steps(
                self, user, sid, meta, ttl, max, credit, window,
            )
            .await;
        }
        self.timed(
            "put_session_credited",
            self.inner
                .put_session_credited(user, sid, meta, ttl, max, credit, window),
        )
        .await
    }

    async fn session_stands(
        &self,
        user: &str,
        sid: &str,
        touch: bool,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.timed(
            "session_stands",
            self.inner.session_stands(user, sid, touch, ttl),
        )
        .await
    }

    async fn sessions(&self, user: &str, ttl: Duration) -> Result<Vec<SessionRecord>, StoreError> {
        self.timed("sessions", self.inner.sessions(user, ttl)).await
    }

    async fn drop_session(&self, user: &str, sid: &str) -> Result<bool, StoreError> {
        self.timed("drop_session", self.inner.drop_session(user, sid))
            .await
    }

    async fn revoke_user(&self, user: &str, ttl: Duration) -> Result<(), StoreError> {
        self.timed("revoke_user", self.inner.revoke_user(user, ttl))
            .await
    }

    async fn set_blocked(
        &self,
        user: &str,
        phone: Option<&str>,
        blocked: bool,
    ) -> Result<(), StoreError> {
        self.timed("set_blocked", self.inner.set_blocked(user, phone, blocked))
            .await
    }

    async fn create_intent(
        &self,
        id: &str,
        poll_hash: &str,
        channel: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.timed(
            "create_intent",
            self.inner.create_intent(id, poll_hash, channel, ttl),
        )
        .await
    }

    async fn bind_intent(
        &self,
        id: &str,
        channel: &str,
        subject: &str,
    ) -> Result<BindOutcome, StoreError> {
        self.timed("bind_intent", self.inner.bind_intent(id, channel, subject))
            .await
    }

    async fn claim_intent(&self, id: &str, poll_hash: &str) -> Result<ClaimOutcome, StoreError> {
        self.timed("claim_intent", self.inner.claim_intent(id, poll_hash))
            .await
    }

    async fn unclaim_intent(&self, id: &str) -> Result<(), StoreError> {
        self.timed("unclaim_intent", self.inner.unclaim_intent(id))
            .await
    }

    async fn first_delivery(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.timed("first_delivery", self.inner.first_delivery(key, ttl))
            .await
    }

    async fn forget_delivery(&self, key: &str) -> Result<(), StoreError> {
        self.timed("forget_delivery", self.inner.forget_delivery(key))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }

    async fn pump_send(
        &self,
        checks: &[PumpCheck],
        enforce: bool,
        rules: &PumpRules,
    ) -> Result<PumpOutcome, StoreError> {
        self.timed("pump_send", self.inner.pump_send(checks, enforce, rules))
            .await
    }

    fn pumps_with_codes(&self) -> bool {
        self.inner.pumps_with_codes()
    }

    async fn pump_then_issue(
        &self,
        checks: &[PumpCheck],
        enforce: bool,
        rules: &PumpRules,
        code: &CodeIssue<'_>,
    ) -> Result<(PumpOutcome, Option<IssueOutcome>), StoreError> {
        if checks.is_empty() || !self.inner.pumps_with_codes() {
            // Each step timed and counted under its own name.
            return pump_then_issue_in_two_steps(self, checks, enforce, rules, code).await;
        }
        self.timed(
            "pump_then_issue",
            self.inner.pump_then_issue(checks, enforce, rules, code),
        )
        .await
    }

    async fn pump_unsend(&self, checks: &[PumpCheck], window: Duration) -> Result<(), StoreError> {
        self.timed("pump_unsend", self.inner.pump_unsend(checks, window))
            .await
    }

    async fn pump_verified(
        &self,
        checks: &[PumpCheck],
        window: Duration,
    ) -> Result<(), StoreError> {
        self.timed("pump_verified", self.inner.pump_verified(checks, window))
            .await
    }

    async fn pump_block(
        &self,
        scope: Scope,
        key: &str,
        duration: Duration,
        window: Duration,
    ) -> Result<(), StoreError> {
        self.timed(
            "pump_block",
            self.inner.pump_block(scope, key, duration, window),
        )
        .await
    }

    async fn pump_blocks(&self) -> Result<Vec<PumpBlock>, StoreError> {
        self.timed("pump_blocks", self.inner.pump_blocks()).await
    }

    async fn pump_lift(&self, scope: Scope, key: &str) -> Result<bool, StoreError> {
        self.timed("pump_lift", self.inner.pump_lift(scope, key))
            .await
    }
}
