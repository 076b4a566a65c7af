//! The Redis store shared by every replica.
//!
//! Each operation is one round trip: `EVALSHA` of a script from `lua/` (loading it once after a
//! Redis restart), or one plain command. Every call is bounded by the configured timeout, so a
//! dead Redis yields a 503 instead of a hung request. One script touches a code, its cooldown
//! and the quota buckets of the request together, so the store needs a standalone Redis (or a
//! primary with replicas), not Redis Cluster.
//!
//! Connections are redis-rs `ConnectionManager`s: multiplexed (many requests in flight on one
//! socket) and reconnecting by themselves. A checkout pool (deadpool-redis) would add nothing but
//! a `PING` round trip on every checkout, doubling the round trips of each operation.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{
    BindOutcome, ClaimOutcome, IssueOutcome, RefreshOutcome, Store, StoreError, VerifyOutcome,
    ttl_ms,
};
use crate::ratelimit::{Quota, QuotaState, Refusal};

/// Redis-backed store: codes, cooldowns, spent refresh tokens and revocations.
pub struct RedisStore {
    connections: Vec<ConnectionManager>,
    next: AtomicUsize,
    prefix: String,
    timeout: Duration,
    issue_code: Script,
    verify_code: Script,
    release_code: Script,
    spend_refresh: Script,
    charge: Script,
    create_intent: Script,
    bind_intent: Script,
    claim_intent: Script,
    unclaim_intent: Script,
}

impl RedisStore {
    /// A store for `url` over `connections` multiplexed connections; `prefix` starts every key.
    /// Connections are made on first use, so this succeeds while Redis is down (requests then
    /// get 503 until it is back). Must be called inside a Tokio runtime.
    pub fn new(
        url: &str,
        prefix: &str,
        connections: usize,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        // TCP_NODELAY: requests are small and multiplexed; Nagle would hold one back until the
        // previous one is acknowledged.
        let info = redis::IntoConnectionInfo::into_connection_info(url)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(3);
        let connections = (0..connections.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            connections,
            next: AtomicUsize::new(0),
            prefix: prefix.to_string(),
            timeout,
            issue_code: Script::new(concat!(
                include_str!("lua/gcra.lua"),
                include_str!("lua/issue_code.lua")
            )),
            verify_code: Script::new(concat!(
                include_str!("lua/gcra.lua"),
                include_str!("lua/ct_equal.lua"),
                include_str!("lua/verify_code.lua")
            )),
            release_code: Script::new(concat!(
                include_str!("lua/gcra.lua"),
                include_str!("lua/release_code.lua")
            )),
            spend_refresh: Script::new(include_str!("lua/spend_refresh.lua")),
            charge: Script::new(concat!(
                include_str!("lua/gcra.lua"),
                include_str!("lua/charge.lua")
            )),
            create_intent: Script::new(include_str!("lua/create_intent.lua")),
            bind_intent: Script::new(include_str!("lua/bind_intent.lua")),
            claim_intent: Script::new(concat!(
                include_str!("lua/ct_equal.lua"),
                include_str!("lua/claim_intent.lua")
            )),
            unclaim_intent: Script::new(include_str!("lua/unclaim_intent.lua")),
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    fn token_key(&self, kind: &str, sid: &str, jti: &str) -> String {
        format!("{}{kind}:{sid}:{jti}", self.prefix)
    }

    /// Adds the bucket keys and (limit, window) arguments of `quotas` to an invocation.
    fn add_quotas(&self, invocation: &mut redis::ScriptInvocation<'_>, quotas: &[Quota]) {
        for q in quotas {
            invocation.key(self.key("rl", &q.key));
        }
        for q in quotas {
            invocation.arg(q.limit).arg(ttl_ms(q.window));
        }
    }

    /// Runs `op` on the next connection (round robin) within the timeout.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        match tokio::time::timeout(self.timeout, op(self.connections[i].clone())).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout),
        }
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
    async fn issue_code(
        &self,
        phone: &str,
        code_hash: &str,
        ttl: Duration,
        cooldown: Duration,
        quotas: &[Quota],
    ) -> Result<IssueOutcome, StoreError> {
        let cooldown_ms = if cooldown.is_zero() {
            0
        } else {
            ttl_ms(cooldown)
        };
        let mut invocation = self.issue_code.prepare_invoke();
        invocation
            .key(self.key("otp", phone))
            .key(self.key("otp-cooldown", phone))
            .arg(code_hash)
            .arg(ttl_ms(ttl))
            .arg(cooldown_ms);
        self.add_quotas(&mut invocation, quotas);
        let reply: Vec<i64> = self
            .run(|mut conn| async move { Ok(invocation.invoke_async(&mut conn).await?) })
            .await?;
        match reply.as_slice() {
            [0, states @ ..] if states.len() == 2 * quotas.len() => Ok(IssueOutcome::Issued(
                states
                    .chunks_exact(2)
                    .map(|pair| QuotaState {
                        remaining: u32::try_from(pair[0]).unwrap_or(0),
                        reset: millis(pair[1]),
                    })
                    .collect(),
            )),
            [1, wait] => Ok(IssueOutcome::Cooldown {
                retry_after: millis(*wait),
            }),
            [2, index, wait] => Ok(IssueOutcome::Limited(refusal(quotas, *index, *wait)?)),
            other => Err(StoreError::Protocol(format!(
                "issue_code returned {other:?}"
            ))),
        }
    }

    async fn verify_code(
        &self,
        phone: &str,
        code_hash: &str,
        max_attempts: u32,
        attempts: &[Quota],
        failures: &[Quota],
    ) -> Result<VerifyOutcome, StoreError> {
        let mut invocation = self.verify_code.prepare_invoke();
        invocation
            .key(self.key("otp", phone))
            .key(self.key("otp-cooldown", phone))
            .arg(code_hash)
            .arg(max_attempts)
            .arg(attempts.len());
        let quotas: Vec<Quota> = attempts.iter().chain(failures).cloned().collect();
        self.add_quotas(&mut invocation, &quotas);
        let reply: Vec<i64> = self
            .run(|mut conn| async move { Ok(invocation.invoke_async(&mut conn).await?) })
            .await?;
        match reply.as_slice() {
            [0, _] => Ok(VerifyOutcome::Verified),
            [1, remaining] => Ok(VerifyOutcome::Invalid {
                remaining: u32::try_from(*remaining).unwrap_or(0),
            }),
            [2, _] => Ok(VerifyOutcome::Missing),
            [3, _] => Ok(VerifyOutcome::Burned),
            [4, index, wait] => Ok(VerifyOutcome::Limited(refusal(&quotas, *index, *wait)?)),
            other => Err(StoreError::Protocol(format!(
                "verify_code returned {other:?}"
            ))),
        }
    }

    async fn release_code(
        &self,
        phone: &str,
        code_hash: &str,
        quotas: &[Quota],
    ) -> Result<(), StoreError> {
        let mut invocation = self.release_code.prepare_invoke();
        invocation
            .key(self.key("otp", phone))
            .key(self.key("otp-cooldown", phone))
            .arg(code_hash);
        self.add_quotas(&mut invocation, quotas);
        let _: i64 = self
            .run(|mut conn| async move { Ok(invocation.invoke_async(&mut conn).await?) })
            .await?;
        Ok(())
    }

    async fn charge_quotas(
        &self,
        quotas: &[Quota],
    ) -> Result<Result<Vec<QuotaState>, Refusal>, StoreError> {
        if quotas.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let mut invocation = self.charge.prepare_invoke();
        for q in quotas {
            invocation.key(self.key("rl", &q.key));
        }
        for q in quotas {
            invocation.arg(q.limit).arg(ttl_ms(q.window));
        }
        let reply: Vec<i64> = self
            .run(|mut conn| async move { Ok(invocation.invoke_async(&mut conn).await?) })
            .await?;
        match reply.as_slice() {
            [0, states @ ..] if states.len() == 2 * quotas.len() => Ok(Ok(states
                .chunks_exact(2)
                .map(|pair| QuotaState {
                    remaining: u32::try_from(pair[0]).unwrap_or(0),
                    reset: millis(pair[1]),
                })
                .collect())),
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
        let spent_key = self.token_key("refresh-spent", sid, jti);
        let revoked_key = self.key("revoked", sid);
        let reply: Vec<i64> = self
            .run(|mut conn| async move {
                Ok(self
                    .spend_refresh
                    .key(&spent_key)
                    .key(&revoked_key)
                    .arg(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX))
                    .arg(ttl_ms(ttl))
                    .invoke_async(&mut conn)
                    .await?)
            })
            .await?;
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
        let key = self.key("revoked", sid);
        self.run(|mut conn| async move {
            let () = redis::cmd("SET")
                .arg(&key)
                .arg("logout")
                .arg("PX")
                .arg(ttl_ms(ttl))
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    async fn is_session_revoked(&self, sid: &str) -> Result<bool, StoreError> {
        let key = self.key("revoked", sid);
        self.run(|mut conn| async move {
            let exists: i64 = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut conn)
                .await?;
            Ok(exists == 1)
        })
        .await
    }

    async fn create_intent(
        &self,
        id: &str,
        poll_hash: &str,
        channel: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.key("intent", id);
        let _: i64 = self
            .run(|mut conn| async move {
                Ok(self
                    .create_intent
                    .key(&key)
                    .arg(poll_hash)
                    .arg(channel)
                    .arg(ttl_ms(ttl))
                    .invoke_async(&mut conn)
                    .await?)
            })
            .await?;
        Ok(())
    }

    async fn bind_intent(
        &self,
        id: &str,
        channel: &str,
        subject: &str,
    ) -> Result<BindOutcome, StoreError> {
        let key = self.key("intent", id);
        let status: i64 = self
            .run(|mut conn| async move {
                Ok(self
                    .bind_intent
                    .key(&key)
                    .arg(channel)
                    .arg(subject)
                    .invoke_async(&mut conn)
                    .await?)
            })
            .await?;
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
        let key = self.key("intent", id);
        let reply: Vec<String> = self
            .run(|mut conn| async move {
                Ok(self
                    .claim_intent
                    .key(&key)
                    .arg(poll_hash)
                    .invoke_async(&mut conn)
                    .await?)
            })
            .await?;
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
        let key = self.key("intent", id);
        let _: i64 = self
            .run(|mut conn| async move {
                Ok(self
                    .unclaim_intent
                    .key(&key)
                    .invoke_async(&mut conn)
                    .await?)
            })
            .await?;
        Ok(())
    }

    async fn first_delivery(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let key = self.key("seen", key);
        self.run(|mut conn| async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms(ttl))
                .query_async(&mut conn)
                .await?;
            Ok(set.is_some())
        })
        .await
    }

    async fn forget_delivery(&self, key: &str) -> Result<(), StoreError> {
        let key = self.key("seen", key);
        self.run(|mut conn| async move {
            let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut conn| async move {
            let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
            if pong == "PONG" {
                Ok(())
            } else {
                Err(StoreError::Protocol(format!("PING answered {pong:?}")))
            }
        })
        .await
    }
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
