//! The in-process store of an embedded (single-replica) server.
//!
//! Same semantics as the Redis scripts, with one mutex over a few maps. Expired entries are
//! ignored on read and swept on writes at most every [`SWEEP_EVERY`], so memory stays bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use super::{IssueOutcome, RefreshOutcome, Store, StoreError, VerifyOutcome};

/// How often writes sweep expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

struct Code {
    hash: String,
    attempts: u32,
    expires: Instant,
}

struct Inner {
    codes: HashMap<String, Code>,
    cooldowns: HashMap<String, Instant>,
    /// `(sid, jti)` → (when it was spent, when the marker expires).
    spent: HashMap<(String, String), (Instant, Instant)>,
    revoked: HashMap<String, Instant>,
    last_sweep: Instant,
}

impl Inner {
    fn sweep(&mut self, now: Instant) {
        if now.duration_since(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        self.codes.retain(|_, c| c.expires > now);
        self.cooldowns.retain(|_, until| *until > now);
        self.spent.retain(|_, (_, until)| *until > now);
        self.revoked.retain(|_, until| *until > now);
    }
}

/// State kept in this process only: right for one replica, wrong for several.
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                codes: HashMap::new(),
                cooldowns: HashMap::new(),
                spent: HashMap::new(),
                revoked: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing them, so a poisoned lock is simply taken over.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn issue_code(
        &self,
        phone: &str,
        code_hash: &str,
        ttl: Duration,
        cooldown: Duration,
    ) -> Result<IssueOutcome, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.sweep(now);
        if let Some(until) = inner.cooldowns.get(phone)
            && *until > now
        {
            return Ok(IssueOutcome::Cooldown {
                retry_after: *until - now,
            });
        }
        inner.codes.insert(
            phone.to_string(),
            Code {
                hash: code_hash.to_string(),
                attempts: 0,
                expires: now + ttl,
            },
        );
        if cooldown.is_zero() {
            inner.cooldowns.remove(phone);
        } else {
            inner.cooldowns.insert(phone.to_string(), now + cooldown);
        }
        Ok(IssueOutcome::Issued)
    }

    async fn verify_code(
        &self,
        phone: &str,
        code_hash: &str,
        max_attempts: u32,
    ) -> Result<VerifyOutcome, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(code) = inner.codes.get_mut(phone).filter(|c| c.expires > now) else {
            return Ok(VerifyOutcome::Missing);
        };
        if code.attempts >= max_attempts {
            return Ok(VerifyOutcome::Burned);
        }
        if bool::from(code.hash.as_bytes().ct_eq(code_hash.as_bytes())) {
            inner.codes.remove(phone);
            inner.cooldowns.remove(phone);
            return Ok(VerifyOutcome::Verified);
        }
        code.attempts += 1;
        if code.attempts >= max_attempts {
            Ok(VerifyOutcome::Burned)
        } else {
            Ok(VerifyOutcome::Invalid {
                remaining: max_attempts - code.attempts,
            })
        }
    }

    async fn spend_refresh(
        &self,
        sid: &str,
        jti: &str,
        grace: Duration,
        ttl: Duration,
    ) -> Result<RefreshOutcome, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.sweep(now);
        if inner.revoked.get(sid).is_some_and(|until| *until > now) {
            return Ok(RefreshOutcome::Revoked);
        }
        let key = (sid.to_string(), jti.to_string());
        match inner.spent.get(&key) {
            Some((spent_at, until)) if *until > now => {
                if now.duration_since(*spent_at) <= grace {
                    Ok(RefreshOutcome::Grace)
                } else {
                    inner.revoked.insert(sid.to_string(), now + ttl);
                    Ok(RefreshOutcome::Reused)
                }
            }
            _ => {
                inner.spent.insert(key, (now, now + ttl));
                Ok(RefreshOutcome::Rotated)
            }
        }
    }

    async fn revoke_session(&self, sid: &str, ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.sweep(now);
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

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
