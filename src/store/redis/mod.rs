//! The Redis store shared by every replica, on a standalone Redis, a Redis Cluster, or a primary
//! found through Sentinel (`REDIS_MODE`).
//!
//! Why this file is long: the key layout, each operation's atomicity in every mode and the
//! operations themselves are one room; splitting them would separate a script's keys from the
//! reasoning about them.
//!
//! # Keys
//!
//! Every key starts with `REDIS_KEY_PREFIX`. No key carries a phone number: a phone is named by a
//! keyed hash of it (the OTP service's `subjects`), so a dump or `MONITOR` lists no user's number.
//! Keys that one script must touch together share a hash tag, so they live in one Cluster slot:
//!
//! | key | what |
//! |---|---|
//! | `{p:<phone hash>}:otp`, `{p:…}:cd`, `{p:…}:rl:<policy>` | a phone's code, resend cooldown and per-phone quota buckets |
//! | `rl:<quota key>` | every other quota bucket (IP, number block, country, global, intents): one slot each |
//! | `{s:<session id>}:revoked`, `{s:…}:spent:<token id>` | a session's revocation and its spent refresh tokens |
//! | `intent:<id>`, `seen:<event id>` | login intents, inbound webhook events already handled |
//! | `rcpt:<channel>:<message id>` | a sent code's delivery record (its phone as the keyed hash, the code's HMAC, the next channel), until the code expires; or, for two minutes, a failure receipt that came before its record |
//! | `{pump:<scope>:<key>}`, `pump:blocks` | the SMS-pumping counters of one country, number prefix or client network (one slot each), and the index of their blocks |
//!
//! # Atomicity per operation
//!
//! On a standalone Redis (and on a Sentinel primary) every operation is still **one** round trip
//! and one script over all its keys, exactly as before. On a Cluster a script can only touch one
//! slot, so:
//!
//! - **issue_code**: the quotas outside the phone's slot are charged first, concurrently, one
//!   script each; then one script in the phone's slot checks the cooldown and the per-phone
//!   quotas and stores the code. When anything refuses, what was charged is refunded. Given up:
//!   the all-or-nothing of one script. Two concurrent sends may both be refused where one would
//!   have passed (each sees the other's charge before its refund): a refusal too many, never a
//!   send too many. If a refund itself fails, a bucket keeps at most one extra unit until its
//!   window passes.
//! - **verify_code**: the per-IP attempt quota is charged first; the code, its attempt counter
//!   and the per-phone failure quota are one script in the phone's slot, so **a right code is
//!   still accepted at most once**. When the failure quota refuses, the attempt is refunded.
//!   Given up: between the charge and its refund another verify from the same IP may see one
//!   unit less (a refusal too many, never an attempt too many).
//! - **restore_code**: the code key alone, one script in the phone's slot.
//! - **release_code**: the phone's slot (code, cooldown, per-phone units) in one script, the other
//!   refunds one call each.
//! - **charge_quotas** (intents): one call per bucket, refunded when another refuses.
//! - **spend_refresh**, **revoke_session**, **is_session_revoked**: one slot per session, so reuse
//!   detection and revocation keep their atomicity in every mode: a spent refresh token still
//!   revokes its family, and a logout holds on every replica.
//! - Intents and seen marks have one key each: unchanged.
//! - **replace_code**, **mark_code**, **refund_attempt**: the code key alone. **put_receipt**, **note_receipt**:
//!   the message's key alone, so a fallback is claimed once across replicas.
//! - **pump_send**: one script per scope on a Cluster (one slot each), concurrently; with
//!   `enforce`, a refusal by one takes back what the others counted. Blocks are indexed in
//!   `pump:blocks` by a second call, only when one is set.
//!
//! # Upgrading from the earlier key names
//!
//! Codes, cooldowns and buckets under the old names (which held the number) simply expire
//! (within an hour). Revocations and spent-token marks must not be lost: outside Cluster mode the
//! scripts also read and write the old `revoked:<sid>` and `refresh-spent:<sid>:<jti>` keys, so
//! replicas of the old and new version agree during a rolling upgrade. Left: a refresh token
//! spent on an old replica and presented to a new one within the grace window gets the new
//! version's successor (the old version's was random), so for that window one session may have
//! two chains; both end with the session.
//!
//! # Connections and recovery
//!
//! In [`link`]: the client of each mode, which calls are tried again (only those that provably
//! did not run), how a replica follows a failover, and the health task.

mod link;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use self::link::{Conn, RedisLink};
use super::{
    BindOutcome, ClaimOutcome, CodeIssue, IssueOutcome, RefreshOutcome, SessionDraft, SessionPut,
    SessionRecord, Store, StoreError, VerifyOutcome, move_session_in_two_steps,
    pump_then_issue_in_two_steps, put_session_credited_in_two_steps, ttl_ms, unix_ms,
};
use crate::config::RedisMode;
use crate::domain::pumping::{
    PumpBlock, PumpCheck, PumpOutcome, PumpReason, PumpRefusal, PumpRules, Scope,
};
use crate::domain::quota::{Quota, QuotaState, Refusal};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Standalone, cluster or sentinel.
    pub mode: RedisMode,
    /// One URL (standalone), the seed nodes (cluster) or the sentinels (sentinel).
    pub urls: Vec<String>,
    /// The primary's name (sentinel).
    pub sentinel_master: Option<String>,
    /// Prefix of every key.
    pub prefix: String,
    /// Multiplexed connections (standalone).
    pub connections: usize,
    /// Bound on one operation.
    pub timeout: Duration,
}

/// Redis-backed store: codes, cooldowns, quotas, spent refresh tokens, revocations, intents.
pub struct RedisStore {
    link: Arc<RedisLink>,
    mode: RedisMode,
    prefix: String,
    issue_code: Script,
    verify_code: Script,
    release_code: Script,
    restore_code: Script,
    spend_refresh: Script,
    charge: Script,
    refund: Script,
    create_intent: Script,
    bind_intent: Script,
    claim_intent: Script,
    unclaim_intent: Script,
    put_session: Script,
    session_stands: Script,
    revoke_user: Script,
    pump: Script,
    pump_then_issue: Script,
    session_then_credit: Script,
    verify_then_session: Script,
    replace_code: Script,
    mark_code: Script,
    receipt: Script,
}

impl RedisStore {
    /// A standalone store for `url` over `connections` multiplexed connections; `prefix`
    /// starts every key.
    pub fn new(
        url: &str,
        prefix: &str,
        connections: usize,
        timeout: Duration,
    ) -> Result<Arc<Self>, StoreError> {
        Self::with_options(&RedisOptions {
            mode: RedisMode::Standalone,
            urls: vec![url.to_string()],
            sentinel_master: None,
            prefix: prefix.to_string(),
            connections,
            timeout,
        })
    }

    /// A store in any mode. Connections are made on first use (and by the health task), so
    /// this succeeds while Redis is down: requests get 503 and `/ready` says so until it is
    /// back. Must be called inside a Tokio runtime.
    pub fn with_options(options: &RedisOptions) -> Result<Arc<Self>, StoreError> {
        let link = RedisLink::new(options)?;
        link.spawn_health_task(options.urls.clone());
        let store = Arc::new(Self {
            link,
            mode: options.mode,
            prefix: options.prefix.clone(),
            issue_code: Script::new(concat!(
                include_str!("../lua/gcra.lua"),
                include_str!("../lua/issue_code.lua")
            )),
            verify_code: Script::new(concat!(
                include_str!("../lua/gcra.lua"),
                include_str!("../lua/ct_equal.lua"),
                include_str!("../lua/verify_code.lua")
            )),
            release_code: Script::new(concat!(
                include_str!("../lua/gcra.lua"),
                include_str!("../lua/release_code.lua")
            )),
            restore_code: Script::new(include_str!("../lua/restore_code.lua")),
            spend_refresh: Script::new(include_str!("../lua/spend_refresh.lua")),
            charge: Script::new(concat!(
                include_str!("../lua/gcra.lua"),
                include_str!("../lua/charge.lua")
            )),
            refund: Script::new(concat!(
                include_str!("../lua/gcra.lua"),
                include_str!("../lua/refund.lua")
            )),
            create_intent: Script::new(include_str!("../lua/create_intent.lua")),
            bind_intent: Script::new(include_str!("../lua/bind_intent.lua")),
            claim_intent: Script::new(concat!(
                include_str!("../lua/ct_equal.lua"),
                include_str!("../lua/claim_intent.lua")
            )),
            unclaim_intent: Script::new(include_str!("../lua/unclaim_intent.lua")),
            put_session: Script::new(include_str!("../lua/put_session.lua")),
            session_stands: Script::new(include_str!("../lua/session_stands.lua")),
            revoke_user: Script::new(include_str!("../lua/revoke_user.lua")),
            pump: Script::new(concat!(
                include_str!("../lua/gcra.lua"),
                include_str!("../lua/pump.lua")
            )),
            pump_then_issue: Script::new(concat!(
                "local function issue_main(KEYS, ARGV)\n",
                include_str!("../lua/gcra.lua"),
                include_str!("../lua/issue_code.lua"),
                "end\nlocal function pump_main(KEYS, ARGV)\n",
                include_str!("../lua/gcra.lua"),
                include_str!("../lua/pump.lua"),
                "end\n",
                include_str!("../lua/pump_then_issue.lua")
            )),
            session_then_credit: Script::new(concat!(
                "local function session_main(KEYS, ARGV)\n",
                include_str!("../lua/put_session.lua"),
                "end\nlocal function pump_main(KEYS, ARGV)\n",
                include_str!("../lua/gcra.lua"),
                include_str!("../lua/pump.lua"),
                "end\n",
                include_str!("../lua/session_then_credit.lua")
            )),
            verify_then_session: Script::new(concat!(
                "local function verify_main(KEYS, ARGV)\n",
                include_str!("../lua/gcra.lua"),
                include_str!("../lua/ct_equal.lua"),
                include_str!("../lua/verify_code.lua"),
                "end\nlocal function session_main(KEYS, ARGV)\n",
                include_str!("../lua/put_session.lua"),
                "end\n",
                include_str!("../lua/verify_then_session.lua")
            )),
            replace_code: Script::new(include_str!("../lua/replace_code.lua")),
            mark_code: Script::new(include_str!("../lua/mark_code.lua")),
            receipt: Script::new(include_str!("../lua/receipt.lua")),
        });
        Ok(store)
    }

    /// Whether one script may span unrelated keys (one node holds them all).
    fn single_node(&self) -> bool {
        self.mode != RedisMode::Cluster
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    /// `put_session.lua` for `user`, with `from`'s index as its optional third key (the entry
    /// dropped there: [`Store::move_session`]).
    async fn run_put_session(
        &self,
        user: &str,
        from: Option<&str>,
        sid: &str,
        meta: &str,
        ttl: Duration,
        max: usize,
    ) -> Result<SessionPut, StoreError> {
        let mut invocation = self.put_session.key(self.user_key(user, "sessions"));
        invocation.key(self.user_key(user, "blocked"));
        if let Some(from) = from {
            invocation.key(self.user_key(from, "sessions"));
        }
        invocation.arg(sid).arg(meta).arg(ttl_ms(ttl)).arg(max);
        let reply: Vec<redis::Value> = self.invoke_as(&invocation).await?;
        session_put(&reply)
    }

    /// `verify_code.lua`'s keys and arguments on `invocation` (a script that starts with
    /// them); the quotas in the order given, attempts first.
    #[allow(clippy::too_many_arguments)]
    fn verify_args(
        &self,
        invocation: &mut redis::ScriptInvocation<'_>,
        phone: &str,
        code_hash: &str,
        delegated: Option<&str>,
        max_attempts: u32,
        attempts: &[Quota],
        failures: &[Quota],
    ) -> Vec<Quota> {
        invocation
            .key(self.phone_key(phone, "otp"))
            .key(self.phone_key(phone, "cd"))
            .arg(code_hash)
            .arg(max_attempts)
            .arg(attempts.len())
            .arg(delegated.unwrap_or(""));
        let quotas: Vec<Quota> = attempts.iter().chain(failures).cloned().collect();
        self.add_quotas(invocation, phone, &quotas);
        quotas
    }

    /// A key of phone `subject`'s slot.
    fn phone_key(&self, subject: &str, what: &str) -> String {
        format!("{}{{p:{subject}}}:{what}", self.prefix)
    }

    /// A key of session `sid`'s slot.
    fn session_key(&self, sid: &str, what: &str) -> String {
        format!("{}{{s:{sid}}}:{what}", self.prefix)
    }

    /// A key of user `user`'s slot (their session index and cut-off).
    fn user_key(&self, user: &str, what: &str) -> String {
        format!("{}{{u:{user}}}:{what}", self.prefix)
    }

    /// The bucket of quota `q` for phone `subject`.
    fn bucket(&self, subject: &str, q: &Quota) -> String {
        if q.with_phone {
            self.phone_key(subject, &format!("rl:{}", q.key))
        } else {
            self.key("rl", &q.key)
        }
    }

    /// Adds the bucket keys and (limit, window) arguments of `quotas` to an invocation.
    fn add_quotas(
        &self,
        invocation: &mut redis::ScriptInvocation<'_>,
        subject: &str,
        quotas: &[Quota],
    ) {
        for q in quotas {
            invocation.key(self.bucket(subject, q));
        }
        for q in quotas {
            invocation.arg(q.limit).arg(ttl_ms(q.window));
        }
    }

    /// Runs `op` on a connection (see [`RedisLink::run`]).
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.link.run(op).await
    }

    /// Runs `invocation` and reads its integer array.
    async fn invoke(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Vec<i64>, StoreError> {
        self.invoke_as(invocation).await
    }

    /// Runs `invocation` and reads its reply as `T`.
    async fn invoke_as<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.run(|mut conn| async move { Ok(invocation.invoke_async(&mut conn).await?) })
            .await
    }

    /// Charges `quotas` (none of them in a phone's slot) one call each, concurrently; when one
    /// refuses, refunds the others. Cluster mode only.
    async fn charge_apart(
        &self,
        subject: &str,
        quotas: &[Quota],
    ) -> Result<Result<Vec<QuotaState>, Refusal>, StoreError> {
        let calls = quotas.iter().map(|q| async move {
            let mut invocation = self.charge.prepare_invoke();
            self.add_quotas(&mut invocation, subject, std::slice::from_ref(q));
            self.invoke(&invocation).await
        });
        let replies = futures_util::future::join_all(calls).await;
        let mut states = Vec::with_capacity(quotas.len());
        let mut refused = None;
        let mut charged = Vec::new();
        let mut failure = None;
        for (q, reply) in quotas.iter().zip(replies) {
            match reply {
                Ok(reply) => match reply.as_slice() {
                    [0, pair @ ..] if pair.len() == 2 => {
                        charged.push(q.clone());
                        states.extend(quota_states(pair));
                    }
                    [2, _, wait] => {
                        let refusal = Refusal {
                            policy: q.policy,
                            limit: q.limit,
                            window: q.window,
                            retry_after: millis(*wait),
                        };
                        // The longest wait is the one to report.
                        if refused
                            .as_ref()
                            .is_none_or(|r: &Refusal| r.retry_after < refusal.retry_after)
                        {
                            refused = Some(refusal);
                        }
                    }
                    other => {
                        failure = Some(StoreError::Protocol(format!("charge returned {other:?}")));
                    }
                },
                Err(err) => failure = Some(err),
            }
        }
        if let Some(err) = failure {
            self.refund_apart(subject, &charged).await;
            return Err(err);
        }
        if let Some(refusal) = refused {
            self.refund_apart(subject, &charged).await;
            return Ok(Err(refusal));
        }
        Ok(Ok(states))
    }

    /// Gives back one unit of each of `quotas`, one call each; failures are logged (a bucket then
    /// keeps one unit too many until its window passes).
    async fn refund_apart(&self, subject: &str, quotas: &[Quota]) {
        let calls = quotas.iter().map(|q| async move {
            let mut invocation = self.refund.prepare_invoke();
            self.add_quotas(&mut invocation, subject, std::slice::from_ref(q));
            (q.policy, self.invoke(&invocation).await)
        });
        for (policy, result) in futures_util::future::join_all(calls).await {
            if let Err(err) = result {
                tracing::warn!(policy, error = %err, "quota refund failed");
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
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
        let cooldown_ms = if cooldown.is_zero() {
            0
        } else {
            ttl_ms(cooldown)
        };
        // On a Cluster the quotas outside the phone's slot are charged apart, first.
        let (together, apart): (Vec<Quota>, Vec<Quota>) = if self.single_node() {
            (quotas.to_vec(), Vec::new())
        } else {
            quotas.iter().cloned().partition(|q| q.with_phone)
        };
        let apart_states = if apart.is_empty() {
            Vec::new()
        } else {
            match self.charge_apart(phone, &apart).await? {
                Ok(states) => states,
                Err(refusal) => return Ok(IssueOutcome::Limited(refusal)),
            }
        };
        let mut invocation = self.issue_code.prepare_invoke();
        invocation
            .key(self.phone_key(phone, "otp"))
            .key(self.phone_key(phone, "cd"))
            .key(self.phone_key(phone, "blocked"))
            .arg(code_hash)
            .arg(ttl_ms(ttl))
            .arg(cooldown_ms)
            .arg(mark)
            .arg(keep_tries_below);
        self.add_quotas(&mut invocation, phone, &together);
        let reply = match self.invoke(&invocation).await {
            Ok(reply) => reply,
            Err(err) => {
                self.refund_apart(phone, &apart).await;
                return Err(err);
            }
        };
        let outcome = match reply.as_slice() {
            [status @ (0 | 3), states @ ..] if states.len() == 2 * together.len() => {
                let mut together_states = quota_states(states);
                let mut apart_states = apart_states.into_iter();
                // Back in the order the quotas were given.
                let states = quotas
                    .iter()
                    .filter_map(|q| {
                        if q.with_phone || self.single_node() {
                            together_states.next()
                        } else {
                            apart_states.next()
                        }
                    })
                    .collect();
                return Ok(if *status == 0 {
                    IssueOutcome::Issued(states)
                } else {
                    IssueOutcome::Blocked(states)
                });
            }
            [1, wait] => IssueOutcome::Cooldown {
                retry_after: millis(*wait),
            },
            [2, index, wait] => IssueOutcome::Limited(refusal(&together, *index, *wait)?),
            other => {
                self.refund_apart(phone, &apart).await;
                return Err(StoreError::Protocol(format!(
                    "issue_code returned {other:?}"
                )));
            }
        };
        self.refund_apart(phone, &apart).await;
        Ok(outcome)
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
        // On a Cluster the attempt quotas outside the phone's slot are charged apart, first.
        let (attempts, apart): (Vec<Quota>, Vec<Quota>) = if self.single_node() {
            (attempts.to_vec(), Vec::new())
        } else {
            attempts.iter().cloned().partition(|q| q.with_phone)
        };
        let failures: Vec<Quota> = if self.single_node() {
            failures.to_vec()
        } else {
            // Failure quotas are charged only on a wrong code, which only the phone's script
            // knows: they must live in the phone's slot (every failure policy otpgate has is per
            // phone). One elsewhere would be skipped here.
            debug_assert!(failures.iter().all(|q| q.with_phone));
            failures.iter().filter(|q| q.with_phone).cloned().collect()
        };
        if !apart.is_empty()
            && let Err(refusal) = self.charge_apart(phone, &apart).await?
        {
            return Ok(VerifyOutcome::Limited(refusal));
        }
        let mut invocation = self.verify_code.prepare_invoke();
        let quotas = self.verify_args(
            &mut invocation,
            phone,
            code_hash,
            delegated,
            max_attempts,
            &attempts,
            &failures,
        );
        let reply = self.invoke(&invocation).await?;
        if matches!(reply.as_slice(), [4, ..]) {
            // Refused before the code was looked at: the attempt charged apart is given back,
            // so a refusal changes nothing, as in one script.
            self.refund_apart(phone, &apart).await;
        }
        verify_outcome(&reply, &quotas)
    }

    /// One node: one script, the check and then, on a right code, the session (see
    /// `verify_then_session.lua`).
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
        if !self.single_node() {
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
        let mut invocation = self.verify_then_session.prepare_invoke();
        let quotas = self.verify_args(
            &mut invocation,
            phone,
            code_hash,
            delegated,
            max_attempts,
            attempts,
            failures,
        );
        invocation
            .key(self.user_key(session.user, "sessions"))
            .key(self.user_key(session.user, "blocked"))
            .arg(session.sid)
            .arg(session.meta)
            .arg(ttl_ms(session.ttl))
            .arg(session.max);
        let reply: Vec<redis::Value> = self.invoke_as(&invocation).await?;
        // A right code's `{0, mark}` is followed by the put's reply (when it was made).
        let (check, put) = match reply.as_slice() {
            [redis::Value::Int(0), mark, put @ ..] => (vec![0, int(mark)?], put),
            all => (all.iter().map(int).collect::<Result<_, _>>()?, &[][..]),
        };
        let put = if put.is_empty() {
            None
        } else {
            Some(session_put(put)?)
        };
        Ok((verify_outcome(&check, &quotas)?, put))
    }

    async fn restore_code(&self, phone: &str, code_hash: &str) -> Result<bool, StoreError> {
        let mut invocation = self.restore_code.prepare_invoke();
        invocation.key(self.phone_key(phone, "otp")).arg(code_hash);
        let restored: i64 = self.invoke_as(&invocation).await?;
        Ok(restored == 1)
    }

    async fn release_code(
        &self,
        phone: &str,
        code_hash: &str,
        quotas: &[Quota],
    ) -> Result<(), StoreError> {
        let (together, apart): (Vec<Quota>, Vec<Quota>) = if self.single_node() {
            (quotas.to_vec(), Vec::new())
        } else {
            quotas.iter().cloned().partition(|q| q.with_phone)
        };
        let mut invocation = self.release_code.prepare_invoke();
        invocation
            .key(self.phone_key(phone, "otp"))
            .key(self.phone_key(phone, "cd"))
            .arg(code_hash);
        self.add_quotas(&mut invocation, phone, &together);
        let _: i64 = self.invoke_as(&invocation).await?;
        self.refund_apart(phone, &apart).await;
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
        let mut invocation = self.replace_code.prepare_invoke();
        invocation
            .key(self.phone_key(phone, "otp"))
            .key(self.phone_key(phone, "blocked"))
            .arg(old_hash)
            .arg(new_hash)
            .arg(ttl_ms(ttl))
            .arg(mark)
            .arg(max_attempts);
        let replaced: i64 = self.invoke_as(&invocation).await?;
        Ok(replaced == 1)
    }

    async fn refund_attempt(&self, phone: &str, code_hash: &str) -> Result<bool, StoreError> {
        let mut invocation = self.mark_code.prepare_invoke();
        invocation
            .key(self.phone_key(phone, "otp"))
            .arg(code_hash)
            .arg("refund");
        let refunded: i64 = self.invoke_as(&invocation).await?;
        Ok(refunded == 1)
    }

    async fn mark_code(&self, phone: &str, code_hash: &str, mark: u64) -> Result<(), StoreError> {
        let mut invocation = self.mark_code.prepare_invoke();
        invocation
            .key(self.phone_key(phone, "otp"))
            .arg(code_hash)
            .arg(mark);
        let _: i64 = self.invoke_as(&invocation).await?;
        Ok(())
    }

    async fn put_receipt(
        &self,
        key: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let mut invocation = self.receipt.prepare_invoke();
        invocation
            .key(self.key("rcpt", key))
            .arg("put")
            .arg(record)
            .arg(ttl_ms(ttl));
        self.invoke_as(&invocation).await
    }

    async fn note_receipt(
        &self,
        key: &str,
        status: &str,
        claim: bool,
        early: Option<Duration>,
    ) -> Result<Option<(String, bool)>, StoreError> {
        let mut invocation = self.receipt.prepare_invoke();
        invocation
            .key(self.key("rcpt", key))
            .arg("note")
            .arg(status)
            .arg(if claim { "1" } else { "0" })
            .arg(early.map_or(0, ttl_ms));
        let noted: Option<(String, i64)> = self.invoke_as(&invocation).await?;
        Ok(noted.map(|(record, claimed)| (record, claimed == 1)))
    }

    async fn charge_quotas(
        &self,
        quotas: &[Quota],
    ) -> Result<Result<Vec<QuotaState>, Refusal>, StoreError> {
        if quotas.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        if !self.single_node() {
            return self.charge_apart("", quotas).await;
        }
        let mut invocation = self.charge.prepare_invoke();
        self.add_quotas(&mut invocation, "", quotas);
        let reply = self.invoke(&invocation).await?;
        match reply.as_slice() {
            [0, states @ ..] if states.len() == 2 * quotas.len() => {
                Ok(Ok(quota_states(states).collect()))
            }
            [2, index, wait] => Ok(Err(refusal(quotas, *index, *wait)?)),
            other => Err(StoreError::Protocol(format!("charge returned {other:?}"))),
        }
    }

    async fn spend_refresh(
        &self,
        sid: &str,
        jti: &str,
        grace: Duration,
        ttl: Duration,
    ) -> Result<RefreshOutcome, StoreError> {
        let mut invocation = self.spend_refresh.prepare_invoke();
        invocation
            .key(self.session_key(sid, &format!("spent:{jti}")))
            .key(self.session_key(sid, "revoked"));
        if self.single_node() {
            // The names before hash tags, read until they expire.
            invocation
                .key(self.key("revoked", sid))
                .key(format!("{}refresh-spent:{sid}:{jti}", self.prefix));
        }
        invocation
            .arg(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX))
            .arg(ttl_ms(ttl));
        let reply = self.invoke(&invocation).await?;
        let at = |ms: i64| u64::try_from(ms).unwrap_or(0);
        match reply.as_slice() {
            [0, ms] => Ok(RefreshOutcome::Rotated {
                spent_at_ms: at(*ms),
            }),
            [1, ms] => Ok(RefreshOutcome::Grace {
                spent_at_ms: at(*ms),
            }),
            [2, _] => Ok(RefreshOutcome::Reused),
            [3, _] => Ok(RefreshOutcome::Revoked),
            other => Err(StoreError::Protocol(format!(
                "spend_refresh returned {other:?}"
            ))),
        }
    }

    async fn revoke_session(&self, sid: &str, ttl: Duration) -> Result<(), StoreError> {
        let key = self.session_key(sid, "revoked");
        // Outside Cluster mode the old name is written too, for replicas of the previous
        // version during a rolling upgrade.
        let legacy = self.single_node().then(|| self.key("revoked", sid));
        self.run(|mut conn| {
            let (key, legacy) = (key.clone(), legacy.clone());
            async move {
                let mut pipe = redis::pipe();
                pipe.cmd("SET")
                    .arg(&key)
                    .arg("logout")
                    .arg("PX")
                    .arg(ttl_ms(ttl))
                    .ignore();
                if let Some(legacy) = &legacy {
                    pipe.cmd("SET")
                        .arg(legacy)
                        .arg("logout")
                        .arg("PX")
                        .arg(ttl_ms(ttl))
                        .ignore();
                }
                let () = pipe.query_async(&mut conn).await?;
                Ok(())
            }
        })
        .await
    }

    async fn is_session_revoked(&self, sid: &str) -> Result<bool, StoreError> {
        let key = self.session_key(sid, "revoked");
        let legacy = self.single_node().then(|| self.key("revoked", sid));
        self.run(|mut conn| {
            let (key, legacy) = (key.clone(), legacy.clone());
            async move {
                let mut cmd = redis::cmd("EXISTS");
                cmd.arg(&key);
                if let Some(legacy) = &legacy {
                    cmd.arg(legacy);
                }
                let exists: i64 = cmd.query_async(&mut conn).await?;
                Ok(exists >= 1)
            }
        })
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
        self.run_put_session(user, None, sid, meta, ttl, max).await
    }

    /// One node: one script, the entry dropped and the session put (`put_session.lua`'s third
    /// key).
    async fn move_session(
        &self,
        from: &str,
        user: &str,
        sid: &str,
        meta: &str,
        ttl: Duration,
        max: usize,
    ) -> Result<SessionPut, StoreError> {
        if !self.single_node() {
            return move_session_in_two_steps(self, from, user, sid, meta, ttl, max).await;
        }
        self.run_put_session(user, Some(from), sid, meta, ttl, max)
            .await
    }

    /// One node: one script, the session and then the credit (see `session_then_credit.lua`).
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
        if !self.single_node() || credit.is_empty() {
            return put_session_credited_in_two_steps(
                self, user, sid, meta, ttl, max, credit, window,
            )
            .await;
        }
        let mut invocation = self
            .session_then_credit
            .key(self.user_key(user, "sessions"));
        invocation
            .key(self.user_key(user, "blocked"))
            .arg(sid)
            .arg(meta)
            .arg(ttl_ms(ttl))
            .arg(max)
            .arg(ttl_ms(window));
        for check in credit {
            invocation.key(self.pump_key(check.scope, &check.key));
        }
        let reply: Vec<redis::Value> = self.invoke_as(&invocation).await?;
        session_put(&reply)
    }

    async fn session_stands(
        &self,
        user: &str,
        sid: &str,
        touch: bool,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut invocation = self.session_stands.key(self.user_key(user, "sessions"));
        invocation
            .key(self.user_key(user, "cutoff"))
            .key(self.user_key(user, "blocked"))
            .arg(sid)
            .arg(if touch { "1" } else { "0" })
            .arg(ttl_ms(ttl));
        // The session's own mark lives in its slot, the user's cut-off in the user's: two
        // calls. At once for a check; one after the other for a touch, which may add the
        // session to the index and must not bring back a revoked one.
        if touch {
            if self.is_session_revoked(sid).await? {
                return Ok(false);
            }
            return Ok(self.invoke_as::<i64>(&invocation).await? == 1);
        }
        let (revoked, stands) = futures_util::future::try_join(
            self.is_session_revoked(sid),
            self.invoke_as::<i64>(&invocation),
        )
        .await?;
        Ok(!revoked && stands == 1)
    }

    async fn sessions(&self, user: &str, ttl: Duration) -> Result<Vec<SessionRecord>, StoreError> {
        let key = self.user_key(user, "sessions");
        let all: Vec<(String, String)> = self
            .run(|mut conn| {
                let key = key.clone();
                async move {
                    Ok(redis::cmd("HGETALL")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await?)
                }
            })
            .await?;
        let oldest = crate::store::unix_ms().saturating_sub(ttl_ms(ttl));
        let mut found: Vec<SessionRecord> = all
            .into_iter()
            .filter_map(|(sid, value)| {
                let mut parts = value.splitn(3, ' ');
                let created_ms = parts.next()?.parse().ok()?;
                let last_used_ms = parts.next()?.parse().ok()?;
                let meta = parts.next()?.to_string();
                Some(SessionRecord {
                    sid,
                    created_ms,
                    last_used_ms,
                    meta,
                })
            })
            .filter(|s| s.last_used_ms >= oldest)
            .collect();
        found.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.sid.cmp(&a.sid)));
        Ok(found)
    }

    async fn drop_session(&self, user: &str, sid: &str) -> Result<bool, StoreError> {
        let key = self.user_key(user, "sessions");
        let removed: i64 = self
            .run(|mut conn| {
                let key = key.clone();
                async move {
                    Ok(redis::cmd("HDEL")
                        .arg(&key)
                        .arg(sid)
                        .query_async(&mut conn)
                        .await?)
                }
            })
            .await?;
        Ok(removed == 1)
    }

    async fn revoke_user(&self, user: &str, ttl: Duration) -> Result<(), StoreError> {
        let mut invocation = self.revoke_user.key(self.user_key(user, "sessions"));
        invocation
            .key(self.user_key(user, "cutoff"))
            .arg(ttl_ms(ttl));
        let _: i64 = self.invoke_as(&invocation).await?;
        Ok(())
    }

    async fn set_blocked(
        &self,
        user: &str,
        phone: Option<&str>,
        blocked: bool,
    ) -> Result<(), StoreError> {
        // The user's mark lives in the user's slot, the phone's in the phone's: one command
        // each, at once.
        let keys: Vec<String> = std::iter::once(self.user_key(user, "blocked"))
            .chain(phone.map(|p| self.phone_key(p, "blocked")))
            .collect();
        let calls = keys.iter().map(|key| {
            self.run(move |mut conn| async move {
                let mut cmd = if blocked {
                    redis::cmd("SET")
                } else {
                    redis::cmd("DEL")
                };
                cmd.arg(key);
                if blocked {
                    cmd.arg("1");
                }
                let _: redis::Value = cmd.query_async(&mut conn).await?;
                Ok(())
            })
        });
        futures_util::future::try_join_all(calls).await?;
        Ok(())
    }

    async fn create_intent(
        &self,
        id: &str,
        poll_hash: &str,
        channel: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut invocation = self.create_intent.key(self.key("intent", id));
        invocation.arg(poll_hash).arg(channel).arg(ttl_ms(ttl));
        let _: i64 = self.invoke_as(&invocation).await?;
        Ok(())
    }

    async fn bind_intent(
        &self,
        id: &str,
        channel: &str,
        subject: &str,
    ) -> Result<BindOutcome, StoreError> {
        let mut invocation = self.bind_intent.key(self.key("intent", id));
        invocation.arg(channel).arg(subject);
        let status: i64 = self.invoke_as(&invocation).await?;
        match status {
            0 => Ok(BindOutcome::Bound),
            1 => Ok(BindOutcome::Unknown),
            2 => Ok(BindOutcome::AlreadyBound),
            other => Err(StoreError::Protocol(format!(
                "bind_intent returned {other}"
            ))),
        }
    }

    async fn claim_intent(&self, id: &str, poll_hash: &str) -> Result<ClaimOutcome, StoreError> {
        let mut invocation = self.claim_intent.key(self.key("intent", id));
        invocation.arg(poll_hash);
        let reply: Vec<String> = self.invoke_as(&invocation).await?;
        match reply.as_slice() {
            [s] if s == "pending" => Ok(ClaimOutcome::Pending),
            [s, channel, subject] if s == "claimed" => Ok(ClaimOutcome::Claimed {
                channel: channel.clone(),
                subject: subject.clone(),
            }),
            [s] if s == "consumed" => Ok(ClaimOutcome::Consumed),
            [s] if s == "missing" => Ok(ClaimOutcome::Missing),
            [s] if s == "forbidden" => Ok(ClaimOutcome::Forbidden),
            other => Err(StoreError::Protocol(format!(
                "claim_intent returned {other:?}"
            ))),
        }
    }

    async fn unclaim_intent(&self, id: &str) -> Result<(), StoreError> {
        let invocation = self.unclaim_intent.key(self.key("intent", id));
        let _: i64 = self.invoke_as(&invocation).await?;
        Ok(())
    }

    async fn first_delivery(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let key = self.key("seen", key);
        self.run(|mut conn| {
            let key = key.clone();
            async move {
                let set: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms(ttl))
                    .query_async(&mut conn)
                    .await?;
                Ok(set.is_some())
            }
        })
        .await
    }

    async fn forget_delivery(&self, key: &str) -> Result<(), StoreError> {
        let key = self.key("seen", key);
        self.run(|mut conn| {
            let key = key.clone();
            async move {
                let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
                Ok(())
            }
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.link.ping_all().await
    }

    async fn pump_send(
        &self,
        checks: &[PumpCheck],
        enforce: bool,
        rules: &PumpRules,
    ) -> Result<PumpOutcome, StoreError> {
        let args = rules;
        let outcome = if self.single_node() || checks.len() <= 1 {
            self.pump_send_together(checks, enforce, args).await?
        } else {
            self.pump_send_apart(checks, enforce, args).await?
        };
        self.index_blocks(checks, &outcome).await;
        Ok(outcome)
    }

    fn pumps_with_codes(&self) -> bool {
        self.single_node()
    }

    /// One node: one script, the send and then the code (see `pump_then_issue.lua`).
    async fn pump_then_issue(
        &self,
        checks: &[PumpCheck],
        enforce: bool,
        rules: &PumpRules,
        code: &CodeIssue<'_>,
    ) -> Result<(PumpOutcome, Option<IssueOutcome>), StoreError> {
        if !self.single_node() || checks.is_empty() {
            return pump_then_issue_in_two_steps(self, checks, enforce, rules, code).await;
        }
        let phone = code.phone;
        let mut invocation = self.pump_then_issue.prepare_invoke();
        invocation
            .arg(3 + code.quotas.len())
            .arg(5 + 2 * code.quotas.len())
            .key(self.phone_key(phone, "otp"))
            .key(self.phone_key(phone, "cd"))
            .key(self.phone_key(phone, "blocked"))
            .arg(code.code_hash)
            .arg(ttl_ms(code.ttl))
            .arg(if code.cooldown.is_zero() {
                0
            } else {
                ttl_ms(code.cooldown)
            })
            .arg(code.mark)
            .arg(code.keep_tries_below);
        self.add_quotas(&mut invocation, phone, code.quotas);
        self.add_pump_op(&mut invocation, "send", checks, enforce, rules);
        let reply = self.invoke(&invocation).await?;
        let bad = || StoreError::Protocol(format!("pump_then_issue returned {reply:?}"));
        let (n, rest) = reply.split_first().ok_or_else(bad)?;
        let n = usize::try_from(*n)
            .ok()
            .filter(|n| *n <= rest.len())
            .ok_or_else(bad)?;
        let (pumped, issued) = rest.split_at(n);
        let pumped = pump_send_outcome(pumped, checks.len(), enforce)?;
        self.index_blocks(checks, &pumped).await;
        let issued = if issued.is_empty() && enforce && pumped.refused.is_some() {
            None
        } else {
            Some(issue_outcome(issued, code.quotas)?)
        };
        Ok((pumped, issued))
    }

    async fn pump_unsend(&self, checks: &[PumpCheck], window: Duration) -> Result<(), StoreError> {
        self.pump_op("unsend", checks, window).await
    }

    async fn pump_verified(
        &self,
        checks: &[PumpCheck],
        window: Duration,
    ) -> Result<(), StoreError> {
        self.pump_op("verified", checks, window).await
    }

    async fn pump_block(
        &self,
        scope: Scope,
        key: &str,
        duration: Duration,
        window: Duration,
    ) -> Result<(), StoreError> {
        let mut invocation = self.pump.prepare_invoke();
        invocation
            .key(self.pump_key(scope, key))
            .arg("block")
            .arg(ttl_ms(window))
            .arg(ttl_ms(duration));
        let until: i64 = self.invoke_as(&invocation).await?;
        self.index_block(scope, key, u64::try_from(until).unwrap_or(0))
            .await
    }

    async fn pump_blocks(&self) -> Result<Vec<PumpBlock>, StoreError> {
        let index = self.key("pump", "blocks");
        let now = unix_ms();
        let ids: Vec<String> = self
            .run(|mut conn| {
                let index = index.clone();
                async move {
                    let _: () = redis::cmd("ZREMRANGEBYSCORE")
                        .arg(&index)
                        .arg("-inf")
                        .arg(now)
                        .query_async(&mut conn)
                        .await?;
                    Ok(redis::cmd("ZRANGE")
                        .arg(&index)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await?)
                }
            })
            .await?;
        let reads = ids.iter().filter_map(|id| {
            let (scope, key) = id.split_once(':')?;
            let scope = Scope::parse(scope)?;
            let hash = self.pump_key(scope, key);
            Some(async move {
                let fields: Vec<Option<u64>> = self
                    .run(|mut conn| {
                        let hash = hash.clone();
                        async move {
                            Ok(redis::cmd("HMGET")
                                .arg(hash)
                                .arg("b")
                                .arg("bs")
                                .arg("bv")
                                .query_async(&mut conn)
                                .await?)
                        }
                    })
                    .await?;
                Ok::<_, StoreError>(match fields.as_slice() {
                    [Some(until), sent, verified] if *until > now => Some(PumpBlock {
                        scope,
                        key: key.to_string(),
                        until_ms: *until,
                        sent: sent.unwrap_or(0),
                        verified: verified.unwrap_or(0),
                    }),
                    _ => None,
                })
            })
        });
        let mut blocks = Vec::new();
        for read in futures_util::future::join_all(reads).await {
            blocks.extend(read?);
        }
        blocks.sort_by_key(|b| b.until_ms);
        Ok(blocks)
    }

    async fn pump_lift(&self, scope: Scope, key: &str) -> Result<bool, StoreError> {
        let mut invocation = self.pump.prepare_invoke();
        invocation.key(self.pump_key(scope, key)).arg("lift").arg(1);
        let stood: i64 = self.invoke_as(&invocation).await?;
        let index = self.key("pump", "blocks");
        let member = format!("{}:{key}", scope.as_str());
        self.run(|mut conn| {
            let (index, member) = (index.clone(), member.clone());
            async move {
                let _: () = redis::cmd("ZREM")
                    .arg(index)
                    .arg(member)
                    .query_async(&mut conn)
                    .await?;
                Ok(())
            }
        })
        .await?;
        Ok(stood == 1)
    }
}

impl RedisStore {
    /// The hash of one pumping scope: its own slot.
    fn pump_key(&self, scope: Scope, key: &str) -> String {
        format!("{}{{pump:{}:{key}}}", self.prefix, scope.as_str())
    }

    /// One `send` script over all of `checks` (they share a node), judging conversion too.
    async fn pump_send_together(
        &self,
        checks: &[PumpCheck],
        enforce: bool,
        args: &PumpRules,
    ) -> Result<PumpOutcome, StoreError> {
        if checks.is_empty() {
            return Ok(PumpOutcome::default());
        }
        let reply = self.pump_script("send", checks, enforce, args).await?;
        pump_send_outcome(&reply, checks.len(), enforce)
    }

    /// On a Cluster (one slot per scope): one script per scope, concurrently. With `enforce`,
    /// sends are counted without judging conversion; when a scope refuses, the others' counts
    /// are taken back (a refusal too many under a race, never a send too many), else the
    /// scopes are judged in a second step, so a refused send never leaves a block.
    async fn pump_send_apart(
        &self,
        checks: &[PumpCheck],
        enforce: bool,
        args: &PumpRules,
    ) -> Result<PumpOutcome, StoreError> {
        let calls = checks.iter().map(|check| {
            let mut one = check.clone();
            if enforce {
                one.min_volume = 0;
            }
            async move {
                self.pump_send_together(std::slice::from_ref(&one), enforce, args)
                    .await
            }
        });
        let replies = futures_util::future::join_all(calls).await;
        let mut outcome = PumpOutcome::default();
        let mut counted = Vec::new();
        let mut failure = None;
        for (index, (check, reply)) in checks.iter().zip(replies).enumerate() {
            match reply {
                Ok(one) => {
                    if let Some(refusal) = one.refused {
                        if outcome
                            .refused
                            .as_ref()
                            .is_none_or(|r| r.retry_after < refusal.retry_after)
                        {
                            outcome.refused = Some(PumpRefusal { index, ..refusal });
                        }
                        if enforce {
                            continue;
                        }
                    }
                    counted.push(check.clone());
                    outcome
                        .blocked
                        .extend(one.blocked.into_iter().map(|(_, until)| (index, until)));
                }
                Err(err) => failure = Some(err),
            }
        }
        if failure.is_some() || enforce && outcome.refused.is_some() {
            if let Err(err) = self
                .pump_op("unsend", &counted, Duration::from_millis(args.window_ms))
                .await
            {
                tracing::warn!(error = %err, "pumping counts could not be taken back");
            }
            return match failure {
                Some(err) => Err(err),
                None => Ok(PumpOutcome {
                    refused: outcome.refused,
                    blocked: Vec::new(),
                }),
            };
        }
        if enforce {
            let judged = checks
                .iter()
                .enumerate()
                .filter(|(_, c)| c.min_volume > 0)
                .map(|(index, check)| async move {
                    let reply = self
                        .pump_script("judge", std::slice::from_ref(check), false, args)
                        .await;
                    (index, reply)
                });
            for (index, reply) in futures_util::future::join_all(judged).await {
                match reply {
                    Ok(ends) => outcome.blocked.extend(
                        block_ends(&ends)
                            .into_iter()
                            .map(|(_, until)| (index, until)),
                    ),
                    // The send stands; the next one judges again.
                    Err(err) => tracing::warn!(error = %err, "pumping conversion not judged"),
                }
            }
        }
        Ok(outcome)
    }

    /// Runs pump.lua's `op` (`send` or `judge`) over `checks`.
    async fn pump_script(
        &self,
        op: &'static str,
        checks: &[PumpCheck],
        enforce: bool,
        args: &PumpRules,
    ) -> Result<Vec<i64>, StoreError> {
        let mut invocation = self.pump.prepare_invoke();
        self.add_pump_op(&mut invocation, op, checks, enforce, args);
        self.invoke(&invocation).await
    }

    /// The keys and arguments of a pump `op` (`send` or `judge`) over `checks`.
    fn add_pump_op(
        &self,
        invocation: &mut redis::ScriptInvocation<'_>,
        op: &str,
        checks: &[PumpCheck],
        enforce: bool,
        args: &PumpRules,
    ) {
        for check in checks {
            invocation.key(self.pump_key(check.scope, &check.key));
        }
        invocation
            .arg(op)
            .arg(args.window_ms.max(1))
            .arg(if enforce { 1 } else { 0 })
            .arg(args.min_permille)
            .arg(args.cooldown_ms.max(1))
            .arg(args.grace_ms);
        for check in checks {
            invocation.arg(check.budget).arg(check.min_volume);
        }
    }

    /// Lists the blocks a send set (they stand in their hashes already).
    async fn index_blocks(&self, checks: &[PumpCheck], outcome: &PumpOutcome) {
        for &(index, until) in &outcome.blocked {
            let Some(check) = checks.get(index) else {
                continue;
            };
            if let Err(err) = self.index_block(check.scope, &check.key, until).await {
                tracing::warn!(scope = check.scope.as_str(), error = %err, "a pumping block is not listed");
            }
        }
    }

    /// `unsend` or `verified` on each of `checks`: one script when they share a node, else one
    /// each, concurrently.
    async fn pump_op(
        &self,
        op: &'static str,
        checks: &[PumpCheck],
        window: Duration,
    ) -> Result<(), StoreError> {
        let groups: Vec<&[PumpCheck]> = if self.single_node() {
            vec![checks]
        } else {
            checks.chunks(1).collect()
        };
        let calls = groups.into_iter().filter(|g| !g.is_empty()).map(|group| {
            let mut invocation = self.pump.prepare_invoke();
            for check in group {
                invocation.key(self.pump_key(check.scope, &check.key));
            }
            invocation.arg(op).arg(ttl_ms(window));
            async move { self.invoke_as::<i64>(&invocation).await.map(drop) }
        });
        for result in futures_util::future::join_all(calls).await {
            result?;
        }
        Ok(())
    }

    /// Lists a block for [`Store::pump_blocks`] until `until_ms` (the list drops ended blocks
    /// and lives as long as its latest).
    async fn index_block(&self, scope: Scope, key: &str, until_ms: u64) -> Result<(), StoreError> {
        let mut invocation = self.pump.prepare_invoke();
        invocation
            .key(self.key("pump", "blocks"))
            .arg("index")
            .arg(1)
            .arg(format!("{}:{key}", scope.as_str()))
            .arg(until_ms);
        self.invoke_as::<i64>(&invocation).await.map(drop)
    }
}

/// A `verify_code` reply (the check's part of a `verify_then_session` one) as an outcome;
/// `quotas` in the order the script was given them.
fn verify_outcome(reply: &[i64], quotas: &[Quota]) -> Result<VerifyOutcome, StoreError> {
    match reply {
        [0, mark] => Ok(VerifyOutcome::Verified {
            mark: u64::try_from(*mark).unwrap_or(0),
        }),
        [1, remaining] => Ok(VerifyOutcome::Invalid {
            remaining: u32::try_from(*remaining).unwrap_or(0),
        }),
        [2, _] => Ok(VerifyOutcome::Missing),
        [3, _] => Ok(VerifyOutcome::Burned),
        [4, index, wait] => Ok(VerifyOutcome::Limited(refusal(quotas, *index, *wait)?)),
        [5, mark, remaining] => Ok(VerifyOutcome::Delegated {
            mark: u64::try_from(*mark).unwrap_or(0),
            remaining: u32::try_from(*remaining).unwrap_or(0),
        }),
        other => Err(StoreError::Protocol(format!(
            "verify_code returned {other:?}"
        ))),
    }
}

/// An integer of a script's reply.
fn int(value: &redis::Value) -> Result<i64, StoreError> {
    match value {
        redis::Value::Int(n) => Ok(*n),
        other => Err(StoreError::Protocol(format!(
            "an integer was expected, not {other:?}"
        ))),
    }
}

/// What put_session's reply says.
fn session_put(reply: &[redis::Value]) -> Result<SessionPut, StoreError> {
    match reply.split_first() {
        Some((redis::Value::Int(0), evicted)) => Ok(SessionPut::Recorded(
            evicted
                .iter()
                .map(|v| redis::from_redis_value::<String>(v.clone()))
                .collect::<Result<_, _>>()
                .map_err(|e| StoreError::Protocol(format!("put_session: {e}")))?,
        )),
        Some((redis::Value::Int(1), [])) => Ok(SessionPut::Blocked),
        _ => Err(StoreError::Protocol(format!(
            "put_session returned {reply:?}"
        ))),
    }
}

/// The outcome of a pump `send` over `checks` scopes from its reply.
fn pump_send_outcome(
    reply: &[i64],
    checks: usize,
    enforce: bool,
) -> Result<PumpOutcome, StoreError> {
    let bad = || StoreError::Protocol(format!("pump send returned {reply:?}"));
    let [refused, reason, wait, blocked @ ..] = reply else {
        return Err(bad());
    };
    let refused = match (*refused, *reason) {
        (0, _) => None,
        (i, reason @ (1 | 2)) if i >= 1 && (i as usize) <= checks => Some(PumpRefusal {
            index: i as usize - 1,
            reason: if reason == 1 {
                PumpReason::OverBudget
            } else {
                PumpReason::Blocked
            },
            retry_after: millis(*wait),
        }),
        _ => return Err(bad()),
    };
    let counted = !(enforce && refused.is_some());
    if counted && blocked.len() != checks || !counted && !blocked.is_empty() {
        return Err(bad());
    }
    Ok(PumpOutcome {
        refused,
        blocked: block_ends(blocked),
    })
}

/// The outcome of issue_code on one node (every quota charged in the script) from its reply.
fn issue_outcome(reply: &[i64], quotas: &[Quota]) -> Result<IssueOutcome, StoreError> {
    Ok(match reply {
        [status @ (0 | 3), states @ ..] if states.len() == 2 * quotas.len() => {
            let states = quota_states(states).collect();
            if *status == 0 {
                IssueOutcome::Issued(states)
            } else {
                IssueOutcome::Blocked(states)
            }
        }
        [1, wait] => IssueOutcome::Cooldown {
            retry_after: millis(*wait),
        },
        [2, index, wait] => IssueOutcome::Limited(refusal(quotas, *index, *wait)?),
        other => {
            return Err(StoreError::Protocol(format!(
                "issue_code returned {other:?}"
            )));
        }
    })
}

/// The `(index, block end)` of the keys a pump script blocked (a nonzero end).
fn block_ends(ends: &[i64]) -> Vec<(usize, u64)> {
    ends.iter()
        .enumerate()
        .filter_map(|(i, end)| u64::try_from(*end).ok().filter(|e| *e > 0).map(|e| (i, e)))
        .collect()
}

/// The states a script returns as `remaining, reset_ms` pairs, one per quota, in order.
fn quota_states(pairs: &[i64]) -> impl Iterator<Item = QuotaState> + '_ {
    pairs.chunks_exact(2).map(|pair| QuotaState {
        remaining: u32::try_from(pair[0]).unwrap_or(0),
        reset: millis(pair[1]),
    })
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The refusal of quota `index` (1-based, as the scripts count).
fn refusal(quotas: &[Quota], index: i64, wait_ms: i64) -> Result<Refusal, StoreError> {
    let q = usize::try_from(index)
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| quotas.get(i))
        .ok_or_else(|| StoreError::Protocol(format!("quota index {index} out of range")))?;
    Ok(Refusal {
        policy: q.policy,
        limit: q.limit,
        window: q.window,
        retry_after: millis(wait_ms),
    })
}
