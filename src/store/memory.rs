//! The in-process store of an embedded (single-replica) server.
//!
//! Why this file is long: one implementation of every store operation, the in-process twin
//! of the Redis scripts, kept in one place like them.
//!
//! Same semantics as the Redis scripts, with one mutex over a few maps. Expired entries are
//! ignored on read and swept on writes at most every [`SWEEP_EVERY`], so memory stays bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use super::{
    BindOutcome, ClaimOutcome, IssueOutcome, RefreshOutcome, SessionPut, SessionRecord, Store,
    StoreError, VerifyOutcome,
};
use crate::domain::pumping::{
    PumpBlock, PumpCheck, PumpCounter, PumpOutcome, PumpRefusal, PumpRules, Scope,
};
use crate::domain::quota::{Quota, QuotaState, Refusal, gcra};

/// How often writes sweep expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

struct Code {
    hash: String,
    attempts: u32,
    expires: Instant,
    /// Accepted by a verify; kept (until it expires or a new code replaces it) so that
    /// `restore_code` can undo the spend.
    spent: bool,
    /// What `issue_code_marked` kept with it.
    mark: u64,
}

struct Receipt {
    /// Empty while only an early receipt's status is kept (no record yet).
    record: String,
    status: String,
    claimed: bool,
    expires: Instant,
}

/// Where a login intent stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IntentState {
    Pending,
    Bound,
    Claimed,
}

struct Intent {
    poll_hash: String,
    channel: String,
    state: IntentState,
    subject: String,
    expires: Instant,
}

struct Inner {
    codes: HashMap<String, Code>,
    cooldowns: HashMap<String, Instant>,
    /// Quota key → GCRA theoretical arrival time, in ms since `MemoryStore::epoch`.
    buckets: HashMap<String, u64>,
    /// `(sid, jti)` → (when it was spent, as an instant and in Unix ms; when the marker
    /// expires).
    spent: HashMap<(String, String), (Instant, u64, Instant)>,
    revoked: HashMap<String, Instant>,
    intents: HashMap<String, Intent>,
    /// Inbound event keys → when the mark expires.
    seen: HashMap<String, Instant>,
    /// User id → their session index (sid → record, and when the record expires).
    sessions: HashMap<String, HashMap<String, (SessionRecord, Instant)>>,
    /// User id → the cut-off of [`Store::revoke_user`] (Unix ms) and when it expires.
    cutoffs: HashMap<String, (u64, Instant)>,
    /// Phones that get no code.
    blocked: std::collections::HashSet<String>,
    /// Users whose sessions neither stand nor are recorded.
    blocked_users: std::collections::HashSet<String>,
    /// Message key → its receipt record, last status, whether its fallback was claimed, and
    /// when it expires.
    receipts: HashMap<String, Receipt>,
    /// `scope:key` → the pumping counters of that scope and when they expire (Unix ms).
    pumps: HashMap<String, (PumpCounter, u64)>,
    last_sweep: Instant,
}

impl Inner {
    fn sweep(&mut self, now: Instant, now_ms: u64) {
        if now.duration_since(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        self.codes.retain(|_, c| c.expires > now);
        self.cooldowns.retain(|_, until| *until > now);
        self.buckets.retain(|_, tat| *tat > now_ms);
        self.spent.retain(|_, (_, _, until)| *until > now);
        self.revoked.retain(|_, until| *until > now);
        self.intents.retain(|_, i| i.expires > now);
        self.seen.retain(|_, until| *until > now);
        self.receipts.retain(|_, r| r.expires > now);
        self.cutoffs.retain(|_, (_, until)| *until > now);
        let unix = super::unix_ms();
        self.pumps.retain(|_, (_, until)| *until > unix);
        self.sessions.retain(|_, index| {
            index.retain(|_, (_, until)| *until > now);
            !index.is_empty()
        });
    }

    /// The live intent `id`.
    fn intent(&mut self, id: &str, now: Instant) -> Option<&mut Intent> {
        self.intents.get_mut(id).filter(|i| i.expires > now)
    }

    /// The new arrival times if every quota admits an event at `now_ms`, else the refusal that
    /// waits longest. Nothing is charged.
    fn check(&self, quotas: &[Quota], now_ms: u64) -> Result<Vec<u64>, Refusal> {
        let mut admitted = Vec::with_capacity(quotas.len());
        let mut refusal: Option<Refusal> = None;
        for q in quotas {
            let tat = self.buckets.get(&q.key).copied().unwrap_or(0);
            match gcra::check(tat, now_ms, q.limit, window_ms(q)) {
                Ok(new_tat) => admitted.push(new_tat),
                Err(wait) => {
                    let retry_after = Duration::from_millis(wait);
                    if refusal.as_ref().is_none_or(|r| r.retry_after < retry_after) {
                        refusal = Some(Refusal {
                            policy: q.policy,
                            limit: q.limit,
                            window: q.window,
                            retry_after,
                        });
                    }
                }
            }
        }
        refusal.map_or(Ok(admitted), Err)
    }

    fn charge(&mut self, quotas: &[Quota], tats: &[u64], now_ms: u64) -> Vec<QuotaState> {
        quotas
            .iter()
            .zip(tats)
            .map(|(q, tat)| {
                self.buckets.insert(q.key.clone(), *tat);
                QuotaState {
                    remaining: gcra::remaining(*tat, now_ms, q.limit, window_ms(q)),
                    reset: Duration::from_millis(tat - now_ms),
                }
            })
            .collect()
    }
}

fn window_ms(q: &Quota) -> u64 {
    super::ttl_ms(q.window)
}

/// State kept in this process only: right for one replica, wrong for several.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    epoch: Instant,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            inner: Mutex::new(Inner {
                codes: HashMap::new(),
                cooldowns: HashMap::new(),
                buckets: HashMap::new(),
                spent: HashMap::new(),
                revoked: HashMap::new(),
                intents: HashMap::new(),
                seen: HashMap::new(),
                sessions: HashMap::new(),
                cutoffs: HashMap::new(),
                blocked: Default::default(),
                blocked_users: Default::default(),
                pumps: HashMap::new(),
                receipts: HashMap::new(),
                last_sweep: now,
            }),
            epoch: now,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing them, so a poisoned lock is simply taken over.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Now, and now in ms since the epoch (at least 1, so an absent bucket is always older).
    /// Makes the live, spent code `code_hash` of `phone` usable again (`restore_code`), with
    /// one wrong try fewer when `refund` (`refund_attempt`). Whether it did.
    fn unspend(&self, phone: &str, code_hash: &str, refund: bool) -> bool {
        let (now, _) = self.now();
        let mut inner = self.lock();
        let Some(code) = inner
            .codes
            .get_mut(phone)
            .filter(|c| c.spent && c.expires > now && c.hash == code_hash)
        else {
            return false;
        };
        code.spent = false;
        if refund {
            code.attempts = code.attempts.saturating_sub(1);
        }
        true
    }

    fn now(&self) -> (Instant, u64) {
        let now = Instant::now();
        let ms = u64::try_from(now.duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX);
        (now, ms + 1)
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
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
        let (now, now_ms) = self.now();
        let mut inner = self.lock();
        inner.sweep(now, now_ms);
        if let Some(until) = inner.cooldowns.get(phone)
            && *until > now
        {
            return Ok(IssueOutcome::Cooldown {
                retry_after: *until - now,
            });
        }
        let tats = match inner.check(quotas, now_ms) {
            Ok(tats) => tats,
            Err(refusal) => return Ok(IssueOutcome::Limited(refusal)),
        };
        let states = inner.charge(quotas, &tats, now_ms);
        if inner.blocked.contains(phone) {
            if !cooldown.is_zero() {
                inner.cooldowns.insert(phone.to_string(), now + cooldown);
            }
            return Ok(IssueOutcome::Blocked(states));
        }
        // With `keep_tries_below`, the same stored form again (Twilio Verify's marker) keeps its
        // wrong tries, unless it is burned.
        let attempts = inner
            .codes
            .get(phone)
            .filter(|c| {
                c.attempts < keep_tries_below && c.expires > now && !c.spent && c.hash == code_hash
            })
            .map_or(0, |c| c.attempts);
        inner.codes.insert(
            phone.to_string(),
            Code {
                hash: code_hash.to_string(),
                attempts,
                expires: now + ttl,
                spent: false,
                mark,
            },
        );
        if cooldown.is_zero() {
            inner.cooldowns.remove(phone);
        } else {
            inner.cooldowns.insert(phone.to_string(), now + cooldown);
        }
        Ok(IssueOutcome::Issued(states))
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
        let (now, now_ms) = self.now();
        let mut inner = self.lock();
        let attempt_tats = match inner.check(attempts, now_ms) {
            Ok(tats) => tats,
            Err(refusal) => return Ok(VerifyOutcome::Limited(refusal)),
        };
        let failure_tats = match inner.check(failures, now_ms) {
            Ok(tats) => tats,
            Err(refusal) => return Ok(VerifyOutcome::Limited(refusal)),
        };
        inner.charge(attempts, &attempt_tats, now_ms);
        let Some(code) = inner.codes.get_mut(phone).filter(|c| c.expires > now) else {
            return Ok(VerifyOutcome::Missing);
        };
        if code.spent {
            return Ok(VerifyOutcome::Missing);
        }
        if code.attempts >= max_attempts {
            return Ok(VerifyOutcome::Burned);
        }
        if bool::from(code.hash.as_bytes().ct_eq(code_hash.as_bytes())) {
            code.spent = true;
            let mark = code.mark;
            inner.cooldowns.remove(phone);
            return Ok(VerifyOutcome::Verified { mark });
        }
        if delegated.is_some_and(|marker| marker == code.hash) {
            // Counted now, whatever the outside check says; the cooldown stays.
            code.spent = true;
            code.attempts += 1;
            let (mark, remaining) = (code.mark, max_attempts.saturating_sub(code.attempts));
            inner.charge(failures, &failure_tats, now_ms);
            return Ok(VerifyOutcome::Delegated { mark, remaining });
        }
        code.attempts += 1;
        let outcome = if code.attempts >= max_attempts {
            VerifyOutcome::Burned
        } else {
            VerifyOutcome::Invalid {
                remaining: max_attempts - code.attempts,
            }
        };
        inner.charge(failures, &failure_tats, now_ms);
        Ok(outcome)
    }

    async fn restore_code(&self, phone: &str, code_hash: &str) -> Result<bool, StoreError> {
        Ok(self.unspend(phone, code_hash, false))
    }

    async fn release_code(
        &self,
        phone: &str,
        code_hash: &str,
        quotas: &[Quota],
    ) -> Result<(), StoreError> {
        let (_, now_ms) = self.now();
        let mut inner = self.lock();
        if inner.codes.get(phone).is_some_and(|c| c.hash == code_hash) {
            inner.codes.remove(phone);
            inner.cooldowns.remove(phone);
        }
        for q in quotas {
            let interval = gcra::interval_ms(q.limit, window_ms(q));
            if let Some(tat) = inner.buckets.get_mut(&q.key) {
                *tat = tat.saturating_sub(interval);
                if *tat <= now_ms {
                    inner.buckets.remove(&q.key);
                }
            }
        }
        Ok(())
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
        let (now, _) = self.now();
        let mut inner = self.lock();
        if inner.blocked.contains(phone) {
            return Ok(false);
        }
        let Some(code) = inner.codes.get_mut(phone).filter(|c| {
            !c.spent && c.expires > now && c.hash == old_hash && c.attempts < max_attempts
        }) else {
            return Ok(false);
        };
        code.hash = new_hash.to_string();
        code.expires = now + ttl;
        code.mark = mark;
        Ok(true)
    }

    async fn refund_attempt(&self, phone: &str, code_hash: &str) -> Result<bool, StoreError> {
        Ok(self.unspend(phone, code_hash, true))
    }

    async fn mark_code(&self, phone: &str, code_hash: &str, mark: u64) -> Result<(), StoreError> {
        let (now, _) = self.now();
        if let Some(code) = self
            .lock()
            .codes
            .get_mut(phone)
            .filter(|c| c.expires > now && c.hash == code_hash)
        {
            code.mark = mark;
        }
        Ok(())
    }

    async fn put_receipt(
        &self,
        key: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let (now, now_ms) = self.now();
        let mut inner = self.lock();
        inner.sweep(now, now_ms);
        let early = inner
            .receipts
            .remove(key)
            .filter(|r| r.expires > now && r.record.is_empty() && !r.status.is_empty())
            .map(|r| r.status);
        inner.receipts.insert(
            key.to_string(),
            Receipt {
                record: record.to_string(),
                status: early.clone().unwrap_or_default(),
                claimed: false,
                expires: now + ttl,
            },
        );
        Ok(early)
    }

    async fn note_receipt(
        &self,
        key: &str,
        status: &str,
        claim: bool,
        early: Option<Duration>,
    ) -> Result<Option<(String, bool)>, StoreError> {
        let (now, _) = self.now();
        let mut inner = self.lock();
        let live = inner.receipts.get(key).is_some_and(|r| r.expires > now);
        let recorded = live
            && inner
                .receipts
                .get(key)
                .is_some_and(|r| !r.record.is_empty());
        if !recorded {
            if let Some(early) = early {
                inner.receipts.insert(
                    key.to_string(),
                    Receipt {
                        record: String::new(),
                        status: status.to_string(),
                        claimed: false,
                        expires: now + early,
                    },
                );
            }
            return Ok(None);
        }
        let Some(receipt) = inner.receipts.get_mut(key) else {
            return Ok(None);
        };
        receipt.status = status.to_string();
        let claimed = claim && !receipt.claimed;
        receipt.claimed |= claimed;
        Ok(Some((receipt.record.clone(), claimed)))
    }

    async fn charge_quotas(
        &self,
        quotas: &[Quota],
    ) -> Result<Result<Vec<QuotaState>, Refusal>, StoreError> {
        let (now, now_ms) = self.now();
        let mut inner = self.lock();
        inner.sweep(now, now_ms);
        Ok(inner
            .check(quotas, now_ms)
            .map(|tats| inner.charge(quotas, &tats, now_ms)))
    }

    async fn spend_refresh(
        &self,
        sid: &str,
        jti: &str,
        grace: Duration,
        ttl: Duration,
    ) -> Result<RefreshOutcome, StoreError> {
        let (now, now_ms) = self.now();
        let mut inner = self.lock();
        inner.sweep(now, now_ms);
        if inner.revoked.get(sid).is_some_and(|until| *until > now) {
            return Ok(RefreshOutcome::Revoked);
        }
        let key = (sid.to_string(), jti.to_string());
        match inner.spent.get(&key) {
            Some((spent_at, spent_at_ms, until)) if *until > now => {
                if now.duration_since(*spent_at) <= grace {
                    Ok(RefreshOutcome::Grace {
                        spent_at_ms: *spent_at_ms,
                    })
                } else {
                    inner.revoked.insert(sid.to_string(), now + ttl);
                    Ok(RefreshOutcome::Reused)
                }
            }
            _ => {
                let spent_at_ms = crate::store::unix_ms();
                inner.spent.insert(key, (now, spent_at_ms, now + ttl));
                Ok(RefreshOutcome::Rotated { spent_at_ms })
            }
        }
    }

    async fn revoke_session(&self, sid: &str, ttl: Duration) -> Result<(), StoreError> {
        let (now, now_ms) = self.now();
        let mut inner = self.lock();
        inner.sweep(now, now_ms);
        inner.revoked.insert(sid.to_string(), now + ttl);
        Ok(())
    }

    async fn is_session_revoked(&self, sid: &str) -> Result<bool, StoreError> {
        let now = Instant::now();
        Ok(self
            .lock()
            .revoked
            .get(sid)
            .is_some_and(|until| *until > now))
    }

    async fn put_session(
        &self,
        user: &str,
        sid: &str,
        meta: &str,
        ttl: Duration,
        max: usize,
    ) -> Result<SessionPut, StoreError> {
        let (now, now_ms) = self.now();
        let at = crate::store::unix_ms();
        let mut inner = self.lock();
        inner.sweep(now, now_ms);
        if inner.blocked_users.contains(user) {
            return Ok(SessionPut::Blocked);
        }
        let index = inner.sessions.entry(user.to_string()).or_default();
        index.retain(|_, (_, until)| *until > now);
        let mut evicted = Vec::new();
        if index.len() + 1 > max {
            let mut by_age: Vec<(u64, String)> = index
                .iter()
                .map(|(sid, (r, _))| (r.created_ms, sid.clone()))
                .collect();
            by_age.sort();
            for (_, old) in by_age.into_iter().take(index.len() + 1 - max) {
                index.remove(&old);
                evicted.push(old);
            }
        }
        let record = SessionRecord {
            sid: sid.to_string(),
            created_ms: at,
            last_used_ms: at,
            meta: meta.to_string(),
        };
        index.insert(sid.to_string(), (record, now + ttl));
        Ok(SessionPut::Recorded(evicted))
    }

    async fn session_stands(
        &self,
        user: &str,
        sid: &str,
        touch: bool,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.revoked.get(sid).is_some_and(|until| *until > now)
            || inner.blocked_users.contains(user)
        {
            return Ok(false);
        }
        let cutoff = inner
            .cutoffs
            .get(user)
            .filter(|(_, until)| *until > now)
            .map(|(at, _)| *at);
        let record = inner
            .sessions
            .get_mut(user)
            .and_then(|index| index.get_mut(sid))
            .filter(|(_, until)| *until > now);
        if let Some(cutoff) = cutoff
            && record.as_ref().is_none_or(|(r, _)| r.created_ms <= cutoff)
        {
            return Ok(false);
        }
        if touch {
            let at = crate::store::unix_ms();
            match record {
                Some((record, until)) => {
                    record.last_used_ms = at;
                    *until = now + ttl;
                }
                None => {
                    // Opened by an earlier version: known from its first refresh on.
                    let record = SessionRecord {
                        sid: sid.to_string(),
                        created_ms: at,
                        last_used_ms: at,
                        meta: "{}".into(),
                    };
                    inner
                        .sessions
                        .entry(user.to_string())
                        .or_default()
                        .insert(sid.to_string(), (record, now + ttl));
                }
            }
        }
        Ok(true)
    }

    async fn sessions(&self, user: &str, ttl: Duration) -> Result<Vec<SessionRecord>, StoreError> {
        let _ = ttl; // Records expire `ttl` after their last use already.
        let now = Instant::now();
        let inner = self.lock();
        let mut found: Vec<SessionRecord> = inner
            .sessions
            .get(user)
            .into_iter()
            .flat_map(|index| index.values())
            .filter(|(_, until)| *until > now)
            .map(|(record, _)| record.clone())
            .collect();
        found.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.sid.cmp(&a.sid)));
        Ok(found)
    }

    async fn drop_session(&self, user: &str, sid: &str) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        Ok(inner
            .sessions
            .get_mut(user)
            .and_then(|index| index.remove(sid))
            .is_some_and(|(_, until)| until > now))
    }

    async fn revoke_user(&self, user: &str, ttl: Duration) -> Result<(), StoreError> {
        let (now, now_ms) = self.now();
        let mut inner = self.lock();
        inner.sweep(now, now_ms);
        inner
            .cutoffs
            .insert(user.to_string(), (crate::store::unix_ms(), now + ttl));
        inner.sessions.remove(user);
        Ok(())
    }

    async fn set_blocked(
        &self,
        user: &str,
        phone: Option<&str>,
        blocked: bool,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if blocked {
            inner.blocked_users.insert(user.to_string());
            inner.blocked.extend(phone.map(str::to_string));
        } else {
            inner.blocked_users.remove(user);
            if let Some(phone) = phone {
                inner.blocked.remove(phone);
            }
        }
        Ok(())
    }

    async fn create_intent(
        &self,
        id: &str,
        poll_hash: &str,
        channel: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let (now, now_ms) = self.now();
        let mut inner = self.lock();
        inner.sweep(now, now_ms);
        inner.intents.insert(
            id.to_string(),
            Intent {
                poll_hash: poll_hash.to_string(),
                channel: channel.to_string(),
                state: IntentState::Pending,
                subject: String::new(),
                expires: now + ttl,
            },
        );
        Ok(())
    }

    async fn bind_intent(
        &self,
        id: &str,
        channel: &str,
        subject: &str,
    ) -> Result<BindOutcome, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(intent) = inner.intent(id, now).filter(|i| i.channel == channel) else {
            return Ok(BindOutcome::Unknown);
        };
        if intent.state != IntentState::Pending {
            return Ok(BindOutcome::AlreadyBound);
        }
        intent.state = IntentState::Bound;
        intent.subject = subject.to_string();
        Ok(BindOutcome::Bound)
    }

    async fn claim_intent(&self, id: &str, poll_hash: &str) -> Result<ClaimOutcome, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(intent) = inner.intent(id, now) else {
            return Ok(ClaimOutcome::Missing);
        };
        if !bool::from(intent.poll_hash.as_bytes().ct_eq(poll_hash.as_bytes())) {
            return Ok(ClaimOutcome::Forbidden);
        }
        Ok(match intent.state {
            IntentState::Pending => ClaimOutcome::Pending,
            IntentState::Claimed => ClaimOutcome::Consumed,
            IntentState::Bound => {
                intent.state = IntentState::Claimed;
                ClaimOutcome::Claimed {
                    channel: intent.channel.clone(),
                    subject: intent.subject.clone(),
                }
            }
        })
    }

    async fn unclaim_intent(&self, id: &str) -> Result<(), StoreError> {
        let now = Instant::now();
        if let Some(intent) = self.lock().intent(id, now)
            && intent.state == IntentState::Claimed
        {
            intent.state = IntentState::Bound;
        }
        Ok(())
    }

    async fn first_delivery(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let (now, now_ms) = self.now();
        let mut inner = self.lock();
        inner.sweep(now, now_ms);
        if inner.seen.get(key).is_some_and(|until| *until > now) {
            return Ok(false);
        }
        inner.seen.insert(key.to_string(), now + ttl);
        Ok(true)
    }

    async fn forget_delivery(&self, key: &str) -> Result<(), StoreError> {
        self.lock().seen.remove(key);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn pump_send(
        &self,
        checks: &[PumpCheck],
        enforce: bool,
        rules: &PumpRules,
    ) -> Result<PumpOutcome, StoreError> {
        let now = super::unix_ms();
        let window = rules.window_ms.max(1);
        let mut inner = self.lock();
        let mut counters: Vec<PumpCounter> = checks
            .iter()
            .map(|c| {
                let mut counter = inner.pump(c.scope, &c.key, now);
                counter.roll(now, window);
                counter
            })
            .collect();
        let mut refused: Option<PumpRefusal> = None;
        for (index, (check, counter)) in checks.iter().zip(&counters).enumerate() {
            if let Err((reason, wait)) = counter.admits(check, now, window) {
                let retry_after = Duration::from_millis(wait);
                if refused.as_ref().is_none_or(|r| r.retry_after < retry_after) {
                    refused = Some(PumpRefusal {
                        index,
                        reason,
                        retry_after,
                    });
                }
            }
        }
        if enforce && refused.is_some() {
            return Ok(PumpOutcome {
                refused,
                blocked: Vec::new(),
            });
        }
        let mut blocked = Vec::new();
        for (index, (check, counter)) in checks.iter().zip(&mut counters).enumerate() {
            if counter.record_send(check, now, rules) {
                blocked.push((index, counter.blocked_until));
            }
            inner.put_pump(check.scope, &check.key, *counter, now, window);
        }
        Ok(PumpOutcome { refused, blocked })
    }

    async fn pump_unsend(&self, checks: &[PumpCheck], window: Duration) -> Result<(), StoreError> {
        self.pump_adjust(checks, window, PumpCounter::uncount);
        Ok(())
    }

    async fn pump_verified(
        &self,
        checks: &[PumpCheck],
        window: Duration,
    ) -> Result<(), StoreError> {
        self.pump_adjust(checks, window, PumpCounter::credit);
        Ok(())
    }

    async fn pump_block(
        &self,
        scope: Scope,
        key: &str,
        duration: Duration,
        window: Duration,
    ) -> Result<(), StoreError> {
        let now = super::unix_ms();
        let window = super::ttl_ms(window);
        let mut inner = self.lock();
        let mut counter = inner.pump(scope, key, now);
        counter.roll(now, window);
        (counter.blocked_sent, counter.blocked_verified) = counter.estimate(now, window);
        counter.blocked_until = now + super::ttl_ms(duration);
        inner.put_pump(scope, key, counter, now, window);
        Ok(())
    }

    async fn pump_blocks(&self) -> Result<Vec<PumpBlock>, StoreError> {
        let now = super::unix_ms();
        let inner = self.lock();
        let mut blocks: Vec<PumpBlock> = inner
            .pumps
            .iter()
            .filter(|(_, (c, _))| c.blocked_until > now)
            .filter_map(|(id, (c, _))| {
                let (scope, key) = id.split_once(':')?;
                Some(PumpBlock {
                    scope: Scope::parse(scope)?,
                    key: key.to_string(),
                    until_ms: c.blocked_until,
                    sent: c.blocked_sent,
                    verified: c.blocked_verified,
                })
            })
            .collect();
        blocks.sort_by_key(|b| b.until_ms);
        Ok(blocks)
    }

    async fn pump_lift(&self, scope: Scope, key: &str) -> Result<bool, StoreError> {
        let now = super::unix_ms();
        let mut inner = self.lock();
        let id = pump_id(scope, key);
        let stood = inner
            .pumps
            .get(&id)
            .is_some_and(|(c, until)| *until > now && c.blocked_until > now);
        if stood {
            inner.pumps.remove(&id);
        }
        Ok(stood)
    }
}

fn pump_id(scope: Scope, key: &str) -> String {
    format!("{}:{key}", scope.as_str())
}

impl Inner {
    /// The live counters of `scope`/`key` (fresh ones when none).
    fn pump(&self, scope: Scope, key: &str, now: u64) -> PumpCounter {
        self.pumps
            .get(&pump_id(scope, key))
            .filter(|(_, until)| *until > now)
            .map(|(c, _)| *c)
            .unwrap_or_default()
    }

    /// Stores `counter`, kept two windows (or to its block's end, if later).
    fn put_pump(&mut self, scope: Scope, key: &str, counter: PumpCounter, now: u64, window: u64) {
        let until = (now + 2 * window).max(counter.blocked_until);
        self.pumps.insert(pump_id(scope, key), (counter, until));
    }
}

impl MemoryStore {
    /// Applies `change` to the live counters of each of `checks` (none are created).
    fn pump_adjust(
        &self,
        checks: &[PumpCheck],
        window: Duration,
        change: impl Fn(&mut PumpCounter),
    ) {
        let now = super::unix_ms();
        let window = super::ttl_ms(window);
        let mut inner = self.lock();
        for check in checks {
            let id = pump_id(check.scope, &check.key);
            if inner.pumps.get(&id).is_none_or(|(_, until)| *until <= now) {
                continue;
            }
            let mut counter = inner.pump(check.scope, &check.key, now);
            counter.roll(now, window);
            change(&mut counter);
            inner.put_pump(check.scope, &check.key, counter, now, window);
        }
    }
}
