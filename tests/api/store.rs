//! One conformance suite for every store backend: the in-process map, a real standalone Redis
//! and a real Redis Cluster.

use std::sync::Arc;
use std::time::Duration;

use otpgate::config::RedisMode;
use otpgate::domain::pumping::{Network, PumpCheck, PumpOutcome, PumpReason, PumpRules, Scope};
use otpgate::domain::quota::Quota;
use otpgate::store::redis::RedisOptions;
use otpgate::store::{
    BindOutcome, ClaimOutcome, CodeIssue, IssueOutcome, RedisStore, RefreshOutcome, Store,
    VerifyOutcome,
};
use uuid::Uuid;

const MINUTE: Duration = Duration::from_secs(60);

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(std::sync::Arc::new(otpgate::store::MemoryStore::new())).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(store) = super::redis_store() {
                        super::$name(store).await
                    }
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(store) = super::redis_cluster_store() {
                        super::$name(store).await
                    }
                }
            )*
        }
    };
}

conformance!(
    issue_starts_a_cooldown_and_refuses_during_it,
    zero_cooldown_lets_a_new_code_replace_the_old,
    right_code_works_once_and_clears_the_cooldown,
    a_spent_code_is_restored_unless_a_new_one_was_issued,
    wrong_codes_count_down_then_burn,
    codes_and_cooldowns_expire,
    concurrent_verifies_succeed_once,
    refresh_rotation_grace_and_reuse,
    revocation_is_seen_and_expires,
    ping_answers,
    quotas_admit_the_limit_then_refuse_without_side_effects,
    quota_buckets_drain_over_their_window,
    verify_quotas_charge_attempts_always_and_failures_on_wrong_codes,
    intents_bind_once_and_are_claimed_once,
    concurrent_polls_claim_once,
    intents_and_seen_marks_expire,
    sessions_are_indexed_touched_and_dropped,
    revoking_a_user_cuts_off_older_sessions_only,
    sessions_are_capped_and_blocked_users_get_none,
    blocked_phones_get_no_code_but_pay_cooldown_and_quotas,
    marks_come_back_exactly,
    a_failed_code_is_replaced_only_while_live_and_unused,
    receipts_note_statuses_and_claim_one_fallback,
    delegated_checks_count_at_once_and_give_back_on_an_outage,
    pumping_refuses_without_counting_and_takes_back,
    pumping_blocks_on_low_conversion_and_lifts,
    a_send_counted_with_its_code_stores_nothing_when_refused_and_is_taken_back,
    a_credit_made_with_the_session_counts_and_not_for_a_blocked_user,
    a_session_is_put_with_a_right_code_only,
    a_session_moves_to_another_user_and_not_to_a_blocked_one,
);

fn redis_store() -> Option<Arc<dyn Store>> {
    if !crate::helpers::cluster_available() {
        return None;
    }
    let url = std::env::var("TEST_REDIS_URL").expect("TEST_REDIS_URL");
    let prefix = format!("test:{}:", Uuid::new_v4().simple());
    Some(RedisStore::new(&url, &prefix, 8, Duration::from_secs(2)).expect("redis store"))
}

fn redis_cluster_store() -> Option<Arc<dyn Store>> {
    if !crate::helpers::redis_cluster_available() {
        return None;
    }
    let urls = std::env::var("TEST_REDIS_CLUSTER_URL").expect("TEST_REDIS_CLUSTER_URL");
    let options = RedisOptions {
        mode: RedisMode::Cluster,
        urls: urls.split(',').map(str::to_string).collect(),
        sentinel_master: None,
        prefix: format!("test:{}:", Uuid::new_v4().simple()),
        connections: 1,
        timeout: Duration::from_secs(2),
    };
    Some(RedisStore::with_options(&options).expect("redis cluster store"))
}

fn key() -> String {
    format!("+91{}", Uuid::new_v4().simple())
}

async fn issue_starts_a_cooldown_and_refuses_during_it(store: Arc<dyn Store>) {
    let phone = key();
    let cooldown = Duration::from_secs(30);
    assert_eq!(
        store
            .issue_code(&phone, "h1", MINUTE, cooldown, &[])
            .await
            .unwrap(),
        IssueOutcome::Issued(vec![])
    );
    match store
        .issue_code(&phone, "h2", MINUTE, cooldown, &[])
        .await
        .unwrap()
    {
        IssueOutcome::Cooldown { retry_after } => {
            assert!(
                retry_after > Duration::from_secs(28) && retry_after <= cooldown,
                "{retry_after:?}"
            )
        }
        other => panic!("expected a cooldown, got {other:?}"),
    }
    // The refused issue did not replace the code.
    assert_verified(store.verify_code(&phone, "h1", 5, &[], &[]).await.unwrap());
}

async fn zero_cooldown_lets_a_new_code_replace_the_old(store: Arc<dyn Store>) {
    let phone = key();
    store
        .issue_code(&phone, "old", MINUTE, Duration::ZERO, &[])
        .await
        .unwrap();
    assert_eq!(
        store
            .issue_code(&phone, "new", MINUTE, Duration::ZERO, &[])
            .await
            .unwrap(),
        IssueOutcome::Issued(vec![])
    );
    assert_eq!(
        store.verify_code(&phone, "old", 5, &[], &[]).await.unwrap(),
        VerifyOutcome::Invalid { remaining: 4 }
    );
    assert_verified(store.verify_code(&phone, "new", 5, &[], &[]).await.unwrap());
}

async fn right_code_works_once_and_clears_the_cooldown(store: Arc<dyn Store>) {
    let phone = key();
    store
        .issue_code(&phone, "h", MINUTE, MINUTE, &[])
        .await
        .unwrap();
    assert_verified(store.verify_code(&phone, "h", 5, &[], &[]).await.unwrap());
    assert_eq!(
        store.verify_code(&phone, "h", 5, &[], &[]).await.unwrap(),
        VerifyOutcome::Missing
    );
    assert_eq!(
        store
            .issue_code(&phone, "h2", MINUTE, MINUTE, &[])
            .await
            .unwrap(),
        IssueOutcome::Issued(vec![])
    );
    assert_eq!(
        store.verify_code(&key(), "h", 5, &[], &[]).await.unwrap(),
        VerifyOutcome::Missing
    );
}

/// The outcome of a verify that accepted the code; panics on any other.
#[track_caller]
fn assert_verified(outcome: VerifyOutcome) {
    assert_eq!(outcome, VerifyOutcome::Verified { mark: 0 });
}

/// A login that fails after its code check puts the code back: it works again with its wrong
/// attempts and its original expiry, but never once a newer code was issued (used or not).
async fn a_spent_code_is_restored_unless_a_new_one_was_issued(store: Arc<dyn Store>) {
    let phone = key();
    store
        .issue_code(&phone, "h", MINUTE, Duration::ZERO, &[])
        .await
        .unwrap();
    assert_eq!(
        store.verify_code(&phone, "x", 3, &[], &[]).await.unwrap(),
        VerifyOutcome::Invalid { remaining: 2 }
    );
    assert_verified(store.verify_code(&phone, "h", 3, &[], &[]).await.unwrap());
    // Spent: gone for every verify, and nothing to restore under another hash.
    assert_eq!(
        store.verify_code(&phone, "h", 3, &[], &[]).await.unwrap(),
        VerifyOutcome::Missing
    );
    assert!(!store.restore_code(&phone, "x").await.unwrap());
    assert!(store.restore_code(&phone, "h").await.unwrap());
    assert!(
        !store.restore_code(&phone, "h").await.unwrap(),
        "only a spent code"
    );
    // Back with its wrong attempt counted: one more wrong try is left.
    assert_eq!(
        store.verify_code(&phone, "x", 3, &[], &[]).await.unwrap(),
        VerifyOutcome::Invalid { remaining: 1 }
    );
    assert_verified(store.verify_code(&phone, "h", 3, &[], &[]).await.unwrap());

    // A new code issued and used in between: the old one never comes back.
    store
        .issue_code(&phone, "new", MINUTE, Duration::ZERO, &[])
        .await
        .unwrap();
    assert_verified(store.verify_code(&phone, "new", 3, &[], &[]).await.unwrap());
    assert!(!store.restore_code(&phone, "h").await.unwrap());
    assert_eq!(
        store.verify_code(&phone, "h", 3, &[], &[]).await.unwrap(),
        VerifyOutcome::Missing
    );
    // Issued and not used: the old one does not come back either.
    store
        .issue_code(&phone, "newer", MINUTE, Duration::ZERO, &[])
        .await
        .unwrap();
    assert!(!store.restore_code(&phone, "new").await.unwrap());
    assert_verified(
        store
            .verify_code(&phone, "newer", 3, &[], &[])
            .await
            .unwrap(),
    );

    // A restored code keeps its original expiry: restored late, it still expires on time.
    let short = key();
    store
        .issue_code(&short, "s", Duration::from_millis(300), Duration::ZERO, &[])
        .await
        .unwrap();
    assert_verified(store.verify_code(&short, "s", 3, &[], &[]).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(store.restore_code(&short, "s").await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        store.verify_code(&short, "s", 3, &[], &[]).await.unwrap(),
        VerifyOutcome::Missing
    );
}

async fn wrong_codes_count_down_then_burn(store: Arc<dyn Store>) {
    let phone = key();
    let right = "a".repeat(64);
    let wrong = "b".repeat(64);
    store
        .issue_code(&phone, &right, MINUTE, MINUTE, &[])
        .await
        .unwrap();
    for remaining in (1..=2).rev() {
        assert_eq!(
            store
                .verify_code(&phone, &wrong, 3, &[], &[])
                .await
                .unwrap(),
            VerifyOutcome::Invalid { remaining }
        );
    }
    // A prefix or a longer string is wrong too.
    assert_eq!(
        store
            .verify_code(&phone, &right[..63], 3, &[], &[])
            .await
            .unwrap(),
        VerifyOutcome::Burned
    );
    assert_eq!(
        store
            .verify_code(&phone, &right, 3, &[], &[])
            .await
            .unwrap(),
        VerifyOutcome::Burned
    );
    // The cooldown stays, so a burned code cannot be replaced at once.
    assert!(matches!(
        store
            .issue_code(&phone, &right, MINUTE, MINUTE, &[])
            .await
            .unwrap(),
        IssueOutcome::Cooldown { .. }
    ));
}

async fn codes_and_cooldowns_expire(store: Arc<dyn Store>) {
    let phone = key();
    let short = Duration::from_millis(150);
    store
        .issue_code(&phone, "h", short, short, &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        store.verify_code(&phone, "h", 5, &[], &[]).await.unwrap(),
        VerifyOutcome::Missing
    );
    assert_eq!(
        store
            .issue_code(&phone, "h", MINUTE, short, &[])
            .await
            .unwrap(),
        IssueOutcome::Issued(vec![])
    );
}

async fn concurrent_verifies_succeed_once(store: Arc<dyn Store>) {
    let phone = key();
    store
        .issue_code(&phone, "h", MINUTE, MINUTE, &[])
        .await
        .unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let store = store.clone();
            let phone = phone.clone();
            tokio::spawn(async move { store.verify_code(&phone, "h", 5, &[], &[]).await.unwrap() })
        })
        .collect();
    let mut verified = 0;
    for task in tasks {
        match task.await.unwrap() {
            VerifyOutcome::Verified { .. } => verified += 1,
            VerifyOutcome::Missing => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(verified, 1);
}

async fn refresh_rotation_grace_and_reuse(store: Arc<dyn Store>) {
    let sid = Uuid::new_v4().to_string();
    let grace = Duration::from_millis(200);
    let ttl = Duration::from_secs(60);
    let RefreshOutcome::Rotated { spent_at_ms } =
        store.spend_refresh(&sid, "t1", grace, ttl).await.unwrap()
    else {
        panic!("first use rotates");
    };
    let wall = otpgate_now_ms();
    assert!(
        spent_at_ms.abs_diff(wall) < 5_000,
        "spent_at_ms {spent_at_ms} is the wall clock ({wall})"
    );
    // Within grace: the same spend time comes back, so the caller derives the same successor.
    assert_eq!(
        store.spend_refresh(&sid, "t1", grace, ttl).await.unwrap(),
        RefreshOutcome::Grace { spent_at_ms }
    );
    assert!(matches!(
        store.spend_refresh(&sid, "t2", grace, ttl).await.unwrap(),
        RefreshOutcome::Rotated { .. }
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        store.spend_refresh(&sid, "t1", grace, ttl).await.unwrap(),
        RefreshOutcome::Reused
    );
    assert!(store.is_session_revoked(&sid).await.unwrap());
    // Every token of the family is refused now, spent or not.
    assert_eq!(
        store.spend_refresh(&sid, "t3", grace, ttl).await.unwrap(),
        RefreshOutcome::Revoked
    );
    // Other sessions are untouched.
    let other = Uuid::new_v4().to_string();
    assert!(matches!(
        store.spend_refresh(&other, "t1", grace, ttl).await.unwrap(),
        RefreshOutcome::Rotated { .. }
    ));
}

fn otpgate_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn revocation_is_seen_and_expires(store: Arc<dyn Store>) {
    let sid = Uuid::new_v4().to_string();
    assert!(!store.is_session_revoked(&sid).await.unwrap());
    store
        .revoke_session(&sid, Duration::from_millis(150))
        .await
        .unwrap();
    assert!(store.is_session_revoked(&sid).await.unwrap());
    let grace = Duration::from_secs(1);
    assert_eq!(
        store.spend_refresh(&sid, "t", grace, MINUTE).await.unwrap(),
        RefreshOutcome::Revoked
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!store.is_session_revoked(&sid).await.unwrap());
}

fn quota(policy: &'static str, limit: u32, window: Duration) -> Quota {
    Quota {
        policy,
        key: format!("{policy}:{}", Uuid::new_v4().simple()),
        limit,
        window,
        // Per-phone policies live beside the phone's code (one slot in a Redis Cluster).
        with_phone: policy == "otp-phone" || policy == "verify-phone-failures",
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// Pumping rules of an hour's window and block, no grace, blocking below `permille`.
fn rules(permille: u32) -> PumpRules {
    PumpRules {
        window_ms: 3_600_000,
        min_permille: permille,
        cooldown_ms: 3_600_000,
        grace_ms: 0,
    }
}

async fn quotas_admit_the_limit_then_refuse_without_side_effects(store: Arc<dyn Store>) {
    let per_phone = quota("otp-phone", 2, HOUR);
    let per_ip = quota("otp-ip", 10, HOUR);
    let quotas = [per_phone.clone(), per_ip.clone()];
    let phone = key();
    for (n, hash) in ["h1", "h2"].into_iter().enumerate() {
        let IssueOutcome::Issued(states) = store
            .issue_code(&phone, hash, MINUTE, Duration::ZERO, &quotas)
            .await
            .unwrap()
        else {
            panic!("send {n} should pass");
        };
        assert_eq!(states.len(), 2);
        assert_eq!(
            states[0].remaining,
            1 - n as u32,
            "otp-phone after send {n}"
        );
        assert_eq!(states[1].remaining, 9 - n as u32, "otp-ip after send {n}");
        assert!(states[0].reset > Duration::from_secs(1700) && states[0].reset <= HOUR);
    }
    match store
        .issue_code(&phone, "h3", MINUTE, Duration::ZERO, &quotas)
        .await
        .unwrap()
    {
        IssueOutcome::Limited(refusal) => {
            assert_eq!(refusal.policy, "otp-phone");
            assert_eq!(refusal.limit, 2);
            let wait = refusal.retry_after;
            assert!(
                wait > Duration::from_secs(1700) && wait <= Duration::from_secs(1800),
                "{wait:?}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The refused send changed nothing: the second code still works, the IP was not charged.
    assert_verified(store.verify_code(&phone, "h2", 5, &[], &[]).await.unwrap());
    let IssueOutcome::Issued(states) = store
        .issue_code(
            &key(),
            "x",
            MINUTE,
            Duration::ZERO,
            std::slice::from_ref(&per_ip),
        )
        .await
        .unwrap()
    else {
        panic!("another phone from the same IP should pass");
    };
    assert_eq!(states[0].remaining, 7);
}

async fn quota_buckets_drain_over_their_window(store: Arc<dyn Store>) {
    let q = [quota("otp-phone", 2, Duration::from_millis(400))];
    let phone = key();
    for _ in 0..2 {
        assert!(matches!(
            store
                .issue_code(&phone, "h", MINUTE, Duration::ZERO, &q)
                .await
                .unwrap(),
            IssueOutcome::Issued(_)
        ));
    }
    let IssueOutcome::Limited(refusal) = store
        .issue_code(&phone, "h", MINUTE, Duration::ZERO, &q)
        .await
        .unwrap()
    else {
        panic!("the third send in the window must be refused");
    };
    assert!(
        refusal.retry_after <= Duration::from_millis(200),
        "{refusal:?}"
    );
    tokio::time::sleep(refusal.retry_after + Duration::from_millis(30)).await;
    assert!(matches!(
        store
            .issue_code(&phone, "h", MINUTE, Duration::ZERO, &q)
            .await
            .unwrap(),
        IssueOutcome::Issued(_)
    ));
}

async fn verify_quotas_charge_attempts_always_and_failures_on_wrong_codes(store: Arc<dyn Store>) {
    let attempts = [quota("verify-ip", 3, HOUR)];
    let failures = [quota("verify-phone-failures", 1, HOUR)];
    let phone = key();
    store
        .issue_code(&phone, "right", MINUTE, MINUTE, &[])
        .await
        .unwrap();
    // 1st attempt: wrong, charges both.
    assert_eq!(
        store
            .verify_code(&phone, "wrong", 5, &attempts, &failures)
            .await
            .unwrap(),
        VerifyOutcome::Invalid { remaining: 4 }
    );
    // The failure quota is full: even the right code is refused, and nothing is spent.
    match store
        .verify_code(&phone, "right", 5, &attempts, &failures)
        .await
        .unwrap()
    {
        VerifyOutcome::Limited(r) => assert_eq!(r.policy, "verify-phone-failures"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // With a fresh failure bucket the right code still works (2nd attempt charged).
    let fresh = [quota("verify-phone-failures", 1, HOUR)];
    assert_verified(
        store
            .verify_code(&phone, "right", 5, &attempts, &fresh)
            .await
            .unwrap(),
    );
    // 3rd attempt: no code; charged to attempts, not to failures.
    assert_eq!(
        store
            .verify_code(&phone, "right", 5, &attempts, &fresh)
            .await
            .unwrap(),
        VerifyOutcome::Missing
    );
    match store
        .verify_code(&phone, "right", 5, &attempts, &fresh)
        .await
        .unwrap()
    {
        VerifyOutcome::Limited(r) => assert_eq!(r.policy, "verify-ip"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn ping_answers(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
}

async fn intents_bind_once_and_are_claimed_once(store: Arc<dyn Store>) {
    let id = Uuid::new_v4().simple().to_string();
    store
        .create_intent(&id, "poll-hash", "whatsapp", MINUTE)
        .await
        .unwrap();
    assert_eq!(
        store.claim_intent(&id, "poll-hash").await.unwrap(),
        ClaimOutcome::Pending
    );
    assert_eq!(
        store.claim_intent(&id, "guess").await.unwrap(),
        ClaimOutcome::Forbidden
    );
    assert_eq!(
        store.claim_intent("nope", "poll-hash").await.unwrap(),
        ClaimOutcome::Missing
    );
    // Another channel's code, or an unknown one, binds nothing.
    assert_eq!(
        store.bind_intent(&id, "telegram", "42").await.unwrap(),
        BindOutcome::Unknown
    );
    assert_eq!(
        store.bind_intent("nope", "whatsapp", "+1").await.unwrap(),
        BindOutcome::Unknown
    );
    assert_eq!(
        store
            .bind_intent(&id, "whatsapp", "+919800000001")
            .await
            .unwrap(),
        BindOutcome::Bound
    );
    assert_eq!(
        store
            .bind_intent(&id, "whatsapp", "+919800000002")
            .await
            .unwrap(),
        BindOutcome::AlreadyBound
    );
    // A wrong poll token still changes nothing.
    assert_eq!(
        store.claim_intent(&id, "guess").await.unwrap(),
        ClaimOutcome::Forbidden
    );
    let claimed = ClaimOutcome::Claimed {
        channel: "whatsapp".into(),
        subject: "+919800000001".into(),
    };
    assert_eq!(store.claim_intent(&id, "poll-hash").await.unwrap(), claimed);
    assert_eq!(
        store.claim_intent(&id, "poll-hash").await.unwrap(),
        ClaimOutcome::Consumed
    );
    // A claim given back is claimed again, once.
    store.unclaim_intent(&id).await.unwrap();
    assert_eq!(store.claim_intent(&id, "poll-hash").await.unwrap(), claimed);
    assert_eq!(
        store.claim_intent(&id, "poll-hash").await.unwrap(),
        ClaimOutcome::Consumed
    );
}

async fn concurrent_polls_claim_once(store: Arc<dyn Store>) {
    let id = Uuid::new_v4().simple().to_string();
    store
        .create_intent(&id, "p", "telegram", MINUTE)
        .await
        .unwrap();
    store.bind_intent(&id, "telegram", "7").await.unwrap();
    let polls: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            let id = id.clone();
            tokio::spawn(async move { store.claim_intent(&id, "p").await.unwrap() })
        })
        .collect();
    let mut claimed = 0;
    for poll in polls {
        match poll.await.unwrap() {
            ClaimOutcome::Claimed { .. } => claimed += 1,
            other => assert_eq!(other, ClaimOutcome::Consumed),
        }
    }
    assert_eq!(claimed, 1);
}

async fn intents_and_seen_marks_expire(store: Arc<dyn Store>) {
    let id = Uuid::new_v4().simple().to_string();
    let short = Duration::from_millis(150);
    store
        .create_intent(&id, "p", "whatsapp", short)
        .await
        .unwrap();
    let key = format!("whatsapp:{id}");
    assert!(store.first_delivery(&key, short).await.unwrap());
    assert!(!store.first_delivery(&key, short).await.unwrap());
    store.forget_delivery(&key).await.unwrap();
    assert!(store.first_delivery(&key, short).await.unwrap());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        store.claim_intent(&id, "p").await.unwrap(),
        ClaimOutcome::Missing
    );
    assert_eq!(
        store.bind_intent(&id, "whatsapp", "+1").await.unwrap(),
        BindOutcome::Unknown
    );
    assert!(store.first_delivery(&key, short).await.unwrap());
}

async fn sessions_are_indexed_touched_and_dropped(store: Arc<dyn Store>) {
    let user = Uuid::new_v4().to_string();
    let (a, b) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    assert_eq!(store.sessions(&user, MINUTE).await.unwrap(), vec![]);
    store
        .put_session(&user, &a, r#"{"device":"a"}"#, MINUTE, 100)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    store
        .put_session(&user, &b, r#"{"device":"b"}"#, MINUTE, 100)
        .await
        .unwrap();
    let listed = store.sessions(&user, MINUTE).await.unwrap();
    // Newest first, with what was recorded.
    assert_eq!(
        listed.iter().map(|s| s.sid.as_str()).collect::<Vec<_>>(),
        [&b, &a]
    );
    assert_eq!(listed[1].meta, r#"{"device":"a"}"#);
    assert_eq!(listed[1].created_ms, listed[1].last_used_ms);
    // Another user's index is apart.
    assert_eq!(
        store
            .sessions(&Uuid::new_v4().to_string(), MINUTE)
            .await
            .unwrap(),
        vec![]
    );
    // A touch moves the last use, not the opening.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(store.session_stands(&user, &a, true, MINUTE).await.unwrap());
    let touched = store.sessions(&user, MINUTE).await.unwrap();
    let a_now = touched.iter().find(|s| s.sid == a).unwrap();
    assert_eq!(a_now.created_ms, listed[1].created_ms);
    assert!(
        a_now.last_used_ms >= listed[1].last_used_ms + 15,
        "{a_now:?}"
    );
    // Dropped once; a revoked session no longer stands.
    assert!(store.drop_session(&user, &a).await.unwrap());
    assert!(!store.drop_session(&user, &a).await.unwrap());
    store.revoke_session(&a, MINUTE).await.unwrap();
    assert!(
        !store
            .session_stands(&user, &a, false, MINUTE)
            .await
            .unwrap()
    );
    assert!(
        store
            .session_stands(&user, &b, false, MINUTE)
            .await
            .unwrap()
    );
    // A session unknown to the index (opened before it existed) stands while no cut-off does.
    assert!(
        store
            .session_stands(&user, "older", false, MINUTE)
            .await
            .unwrap()
    );
    // The index expires with its lifetime.
    let short = Duration::from_millis(150);
    let brief = Uuid::new_v4().to_string();
    store
        .put_session(&brief, "s", "{}", short, 100)
        .await
        .unwrap();
    assert_eq!(store.sessions(&brief, short).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.sessions(&brief, short).await.unwrap(), vec![]);
}

async fn revoking_a_user_cuts_off_older_sessions_only(store: Arc<dyn Store>) {
    let user = Uuid::new_v4().to_string();
    let other = Uuid::new_v4().to_string();
    store
        .put_session(&user, "s1", "{}", MINUTE, 100)
        .await
        .unwrap();
    store
        .put_session(&other, "o1", "{}", MINUTE, 100)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.revoke_user(&user, MINUTE).await.unwrap();
    assert!(
        !store
            .session_stands(&user, "s1", true, MINUTE)
            .await
            .unwrap()
    );
    // Unknown to the index while a cut-off stands: revoked too.
    assert!(
        !store
            .session_stands(&user, "older", false, MINUTE)
            .await
            .unwrap()
    );
    assert_eq!(store.sessions(&user, MINUTE).await.unwrap(), vec![]);
    assert!(
        store
            .session_stands(&other, "o1", false, MINUTE)
            .await
            .unwrap()
    );
    // A session opened after the cut-off stands.
    tokio::time::sleep(Duration::from_millis(5)).await;
    store
        .put_session(&user, "s2", "{}", MINUTE, 100)
        .await
        .unwrap();
    assert!(
        store
            .session_stands(&user, "s2", false, MINUTE)
            .await
            .unwrap()
    );
    assert_eq!(store.sessions(&user, MINUTE).await.unwrap().len(), 1);
}

async fn blocked_phones_get_no_code_but_pay_cooldown_and_quotas(store: Arc<dyn Store>) {
    let phone = key();
    let q = [quota("otp-phone", 3, MINUTE)];
    store.set_blocked("u", Some(&phone), true).await.unwrap();
    let cooldown = Duration::from_secs(30);
    match store
        .issue_code(&phone, "h1", MINUTE, cooldown, &q)
        .await
        .unwrap()
    {
        IssueOutcome::Blocked(states) => assert_eq!(states[0].remaining, 2),
        other => panic!("{other:?}"),
    }
    // No code was stored; the cooldown runs as for any number.
    assert_eq!(
        store.verify_code(&phone, "h1", 5, &[], &[]).await.unwrap(),
        VerifyOutcome::Missing
    );
    assert!(matches!(
        store
            .issue_code(&phone, "h2", MINUTE, cooldown, &q)
            .await
            .unwrap(),
        IssueOutcome::Cooldown { .. }
    ));
    // Unblocked: codes again.
    let phone = key();
    store.set_blocked("u", Some(&phone), true).await.unwrap();
    assert!(matches!(
        store
            .issue_code(&phone, "h3", MINUTE, Duration::ZERO, &[])
            .await
            .unwrap(),
        IssueOutcome::Blocked(_)
    ));
    store.set_blocked("u", Some(&phone), false).await.unwrap();
    assert!(matches!(
        store
            .issue_code(&phone, "h4", MINUTE, Duration::ZERO, &[])
            .await
            .unwrap(),
        IssueOutcome::Issued(_)
    ));
    assert_eq!(
        store.verify_code(&phone, "h4", 5, &[], &[]).await.unwrap(),
        VerifyOutcome::Verified { mark: 0 }
    );
}

async fn sessions_are_capped_and_blocked_users_get_none(store: Arc<dyn Store>) {
    use otpgate::store::SessionPut;
    let user = Uuid::new_v4().to_string();
    for sid in ["s1", "s2", "s3"] {
        assert_eq!(
            store
                .put_session(&user, sid, "{}", MINUTE, 3)
                .await
                .unwrap(),
            SessionPut::Recorded(vec![])
        );
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // The fourth pushes out the oldest, which the caller is told (to revoke it).
    assert_eq!(
        store
            .put_session(&user, "s4", "{}", MINUTE, 3)
            .await
            .unwrap(),
        SessionPut::Recorded(vec!["s1".to_string()])
    );
    let mut left: Vec<String> = store
        .sessions(&user, MINUTE)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.sid)
        .collect();
    left.sort();
    assert_eq!(left, ["s2", "s3", "s4"]);
    // A refresh of a session the index does not know (opened by an earlier version) adds it.
    assert!(
        store
            .session_stands(&user, "legacy", true, MINUTE)
            .await
            .unwrap()
    );
    assert!(
        store
            .sessions(&user, MINUTE)
            .await
            .unwrap()
            .iter()
            .any(|s| s.sid == "legacy")
    );
    // A revoked session is not brought back by a refresh attempt.
    store.revoke_session("s2", MINUTE).await.unwrap();
    assert!(store.drop_session(&user, "s2").await.unwrap());
    assert!(
        !store
            .session_stands(&user, "s2", true, MINUTE)
            .await
            .unwrap()
    );
    assert!(
        !store
            .sessions(&user, MINUTE)
            .await
            .unwrap()
            .iter()
            .any(|s| s.sid == "s2")
    );
    // Blocked: nothing stands, nothing is recorded; unblocked: sessions stand again.
    store.set_blocked(&user, None, true).await.unwrap();
    assert!(
        !store
            .session_stands(&user, "s4", false, MINUTE)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .put_session(&user, "s5", "{}", MINUTE, 3)
            .await
            .unwrap(),
        SessionPut::Blocked
    );
    assert!(
        !store
            .sessions(&user, MINUTE)
            .await
            .unwrap()
            .iter()
            .any(|s| s.sid == "s5")
    );
    store.set_blocked(&user, None, false).await.unwrap();
    assert!(
        store
            .session_stands(&user, "s4", false, MINUTE)
            .await
            .unwrap()
    );
}

/// The mark kept with a code (a client network, as the pumping defence writes it) comes back
/// unchanged when the code is verified: every bit of an IPv4 /24 and an IPv6 /48.
async fn marks_come_back_exactly(store: Arc<dyn Store>) {
    for ip in [
        "203.0.113.7",
        "10.1.2.3",
        "2001:db8:abcd:12::1",
        "ffff:ffff:ffff::1",
    ] {
        let phone = key();
        let mark = Network::of(ip.parse().unwrap()).0;
        assert!(matches!(
            store
                .issue_code_marked(&phone, "h", MINUTE, MINUTE, &[], mark, 0)
                .await
                .unwrap(),
            IssueOutcome::Issued(_)
        ));
        assert_eq!(
            store.verify_code(&phone, "h", 5, &[], &[]).await.unwrap(),
            VerifyOutcome::Verified { mark },
            "{ip}"
        );
    }
}

/// A delivery fallback's replacement: only of the live, unspent code it names; the wrong
/// attempts carry over; the new mark comes back on verify. A mark set later (the channel that
/// took the code) likewise, and never on another code.
async fn a_failed_code_is_replaced_only_while_live_and_unused(store: Arc<dyn Store>) {
    let phone = key();
    let issued = store
        .issue_code_marked(&phone, "old", MINUTE, MINUTE, &[], 7, 0)
        .await
        .unwrap();
    assert!(matches!(issued, IssueOutcome::Issued(_)));
    assert_eq!(
        store
            .verify_code(&phone, "wrong", 3, &[], &[])
            .await
            .unwrap(),
        VerifyOutcome::Invalid { remaining: 2 }
    );
    assert!(
        !store
            .replace_code(&phone, "other", "new", MINUTE, 9, 3)
            .await
            .unwrap(),
        "only the code it names"
    );
    // A mark with channel bits, as the fallback writes it (below 2^53).
    let mark = (4u64 << 50) | (2 << 48) | 0xffff_ffff_ffff;
    assert!(
        store
            .replace_code(&phone, "old", "new", MINUTE, mark, 3)
            .await
            .unwrap()
    );
    assert_eq!(
        store.verify_code(&phone, "old", 3, &[], &[]).await.unwrap(),
        VerifyOutcome::Invalid { remaining: 1 },
        "the old code is gone, and the earlier wrong try still counts"
    );
    assert_eq!(
        store.verify_code(&phone, "new", 3, &[], &[]).await.unwrap(),
        VerifyOutcome::Verified { mark },
        "the replacement's mark comes back exactly"
    );
    assert!(
        !store
            .replace_code(&phone, "new", "newer", MINUTE, 9, 3)
            .await
            .unwrap(),
        "a used code is not replaced"
    );
    assert!(
        !store
            .replace_code(&key(), "old", "new", MINUTE, 9, 3)
            .await
            .unwrap(),
        "nor a code that does not exist"
    );

    // A burned code stays burned.
    let phone = key();
    store
        .issue_code_marked(&phone, "old", MINUTE, MINUTE, &[], 7, 0)
        .await
        .unwrap();
    for _ in 0..2 {
        store
            .verify_code(&phone, "wrong", 2, &[], &[])
            .await
            .unwrap();
    }
    assert!(
        !store
            .replace_code(&phone, "old", "new", MINUTE, 9, 2)
            .await
            .unwrap()
    );
    assert_eq!(
        store.verify_code(&phone, "old", 2, &[], &[]).await.unwrap(),
        VerifyOutcome::Burned
    );

    // A blocked phone's code is not replaced.
    let phone = key();
    store
        .issue_code_marked(&phone, "old", MINUTE, MINUTE, &[], 7, 0)
        .await
        .unwrap();
    let user = Uuid::new_v4().to_string();
    store.set_blocked(&user, Some(&phone), true).await.unwrap();
    assert!(
        !store
            .replace_code(&phone, "old", "new", MINUTE, 9, 3)
            .await
            .unwrap()
    );
    store.set_blocked(&user, Some(&phone), false).await.unwrap();
    assert!(
        store
            .replace_code(&phone, "old", "new", MINUTE, 9, 3)
            .await
            .unwrap(),
        "unblocked, it is"
    );

    // The mark of another code changes nothing; of this one, it comes back.
    let phone = key();
    store
        .issue_code_marked(&phone, "h", MINUTE, MINUTE, &[], 7, 0)
        .await
        .unwrap();
    store.mark_code(&phone, "other", 11).await.unwrap();
    assert_eq!(
        store.verify_code(&phone, "h", 3, &[], &[]).await.unwrap(),
        VerifyOutcome::Verified { mark: 7 }
    );
    assert!(store.restore_code(&phone, "h").await.unwrap());
    store.mark_code(&phone, "h", 13).await.unwrap();
    assert_eq!(
        store.verify_code(&phone, "h", 3, &[], &[]).await.unwrap(),
        VerifyOutcome::Verified { mark: 13 }
    );
}

/// A code checked elsewhere (Twilio Verify's marker): spending it counts the try at once (a
/// refusal is then only a put-back); an outage gives the try back; a new issue of the same
/// marker keeps the tries; a code's own hash never matches the marker; the cooldown stays.
async fn delegated_checks_count_at_once_and_give_back_on_an_outage(store: Arc<dyn Store>) {
    let phone = key();
    store
        .issue_code_marked(&phone, "marker", MINUTE, MINUTE, &[], 3, 3)
        .await
        .unwrap();
    let check = |hash: &'static str| {
        let store = store.clone();
        let phone = phone.clone();
        async move {
            store
                .verify_code_or_delegated(&phone, hash, Some("marker"), 3, &[], &[])
                .await
                .unwrap()
        }
    };
    assert_eq!(
        check("123456-hash").await,
        VerifyOutcome::Delegated {
            mark: 3,
            remaining: 2
        }
    );
    // While it is being checked, nothing else matches it.
    assert_eq!(check("other").await, VerifyOutcome::Missing);
    // Refused: put back, the try stays counted.
    assert!(store.restore_code(&phone, "marker").await.unwrap());
    assert_eq!(
        check("x").await,
        VerifyOutcome::Delegated {
            mark: 3,
            remaining: 1
        }
    );
    // An outage: put back with the try given back.
    assert!(store.refund_attempt(&phone, "marker").await.unwrap());
    assert!(
        !store.refund_attempt(&phone, "marker").await.unwrap(),
        "only a spent code"
    );
    // A new login with the same marker keeps the tries (the resend cooldown is over: none).
    let phone2 = key();
    store
        .issue_code_marked(&phone2, "marker", MINUTE, Duration::ZERO, &[], 3, 3)
        .await
        .unwrap();
    let spend = spend_marker(&*store, &phone2, 3).await;
    assert_eq!(
        spend,
        VerifyOutcome::Delegated {
            mark: 3,
            remaining: 2
        }
    );
    assert!(store.restore_code(&phone2, "marker").await.unwrap());
    store
        .issue_code_marked(&phone2, "marker", MINUTE, Duration::ZERO, &[], 3, 3)
        .await
        .unwrap();
    assert_eq!(
        spend_marker(&*store, &phone2, 3).await,
        VerifyOutcome::Delegated {
            mark: 3,
            remaining: 1
        },
        "the earlier try still counts"
    );
    // A burned marker issued again starts afresh (Twilio's own check limit bounds guesses).
    let phone3 = key();
    for _ in 0..2 {
        store
            .issue_code_marked(&phone3, "marker", MINUTE, Duration::ZERO, &[], 3, 2)
            .await
            .unwrap();
    }
    for left in [1, 0] {
        assert_eq!(
            spend_marker(&*store, &phone3, 2).await,
            VerifyOutcome::Delegated {
                mark: 3,
                remaining: left
            }
        );
        assert!(store.restore_code(&phone3, "marker").await.unwrap());
    }
    store
        .issue_code_marked(&phone3, "marker", MINUTE, Duration::ZERO, &[], 3, 2)
        .await
        .unwrap();
    assert_eq!(
        spend_marker(&*store, &phone3, 2).await,
        VerifyOutcome::Delegated {
            mark: 3,
            remaining: 1
        }
    );
    // The cooldown of the first phone was not cleared by its checks.
    assert!(matches!(
        store
            .issue_code(&phone, "marker", MINUTE, MINUTE, &[])
            .await
            .unwrap(),
        IssueOutcome::Cooldown { .. }
    ));
    // Without a verifier the marker is just a wrong code (one try left after the refund).
    assert_eq!(
        store.verify_code(&phone, "x", 3, &[], &[]).await.unwrap(),
        VerifyOutcome::Invalid { remaining: 1 }
    );
}

/// Presents a wrong code to `phone`'s Twilio Verify marker (`marker`): what the store says.
async fn spend_marker(store: &dyn Store, phone: &str, max_attempts: u32) -> VerifyOutcome {
    store
        .verify_code_or_delegated(phone, "x", Some("marker"), max_attempts, &[], &[])
        .await
        .unwrap()
}

/// A receipt record: unknown ids are `None`; statuses are noted; however many concurrent
/// receipts ask, one claims the fallback; it expires.
async fn receipts_note_statuses_and_claim_one_fallback(store: Arc<dyn Store>) {
    let id = format!("sms:SM{}", Uuid::new_v4().simple());
    assert_eq!(
        store.note_receipt(&id, "sent", true, None).await.unwrap(),
        None
    );
    store
        .put_receipt(&id, "{\"p\":\"x\"}", Duration::from_millis(700))
        .await
        .unwrap();
    assert_eq!(
        store.note_receipt(&id, "sent", false, None).await.unwrap(),
        Some(("{\"p\":\"x\"}".to_string(), false))
    );
    let claims = futures_util::future::join_all(
        (0..8).map(|_| store.note_receipt(&id, "failed", true, None)),
    )
    .await;
    let won = claims
        .into_iter()
        .filter(|c| matches!(c, Ok(Some((_, true)))))
        .count();
    assert_eq!(won, 1, "one claim");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        store.note_receipt(&id, "failed", true, None).await.unwrap(),
        None
    );

    // A receipt before its record: kept only when asked, for as long as asked, and handed to
    // the record once (noted on it as its status).
    let id = format!("t:{}", Uuid::new_v4().simple());
    let ttl = Duration::from_secs(60);
    assert_eq!(
        store
            .note_receipt(&id, "failed", false, None)
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.put_receipt(&id, "r1", ttl).await.unwrap(), None);
    let id = format!("t:{}", Uuid::new_v4().simple());
    let early = Some(Duration::from_secs(60));
    assert_eq!(
        store
            .note_receipt(&id, "undelivered", false, early)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.put_receipt(&id, "r2", ttl).await.unwrap().as_deref(),
        Some("undelivered")
    );
    assert_eq!(
        store.note_receipt(&id, "failed", true, None).await.unwrap(),
        Some(("r2".to_string(), true)),
        "the record is there, its fallback unclaimed"
    );
    assert_eq!(
        store.put_receipt(&id, "r2", ttl).await.unwrap(),
        None,
        "handed over once"
    );
    let id = format!("t:{}", Uuid::new_v4().simple());
    store
        .note_receipt(&id, "failed", false, Some(Duration::from_millis(300)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        store.put_receipt(&id, "r3", ttl).await.unwrap(),
        None,
        "expired"
    );
}

fn pump(scope: Scope, budget: u32, min_volume: u32) -> PumpCheck {
    PumpCheck {
        scope,
        key: format!("t{}", Uuid::new_v4().simple()),
        budget,
        min_volume,
    }
}

/// A refusal in enforce counts nothing anywhere (on a Cluster, the scopes that admitted give
/// their count back); a take-back and a credit each free one place.
async fn pumping_refuses_without_counting_and_takes_back(store: Arc<dyn Store>) {
    let prefix = pump(Scope::Prefix, 2, 0);
    let net_a = pump(Scope::Network, 1, 0);
    let net_b = pump(Scope::Network, 1, 0);
    let send = |checks: Vec<PumpCheck>| {
        let store = store.clone();
        async move { store.pump_send(&checks, true, &rules(0)).await.unwrap() }
    };
    assert_eq!(
        send(vec![prefix.clone(), net_a.clone()]).await.refused,
        None
    );
    let refused = send(vec![prefix.clone(), net_a.clone()])
        .await
        .refused
        .unwrap();
    assert_eq!((refused.index, refused.reason), (1, PumpReason::OverBudget));
    assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= 2 * HOUR);
    // The prefix did not count the refused send: one place is left for network B.
    assert_eq!(
        send(vec![prefix.clone(), net_b.clone()]).await.refused,
        None
    );
    let refused = send(vec![prefix.clone(), pump(Scope::Network, 1, 0)]).await;
    assert_eq!(refused.refused.unwrap().index, 0, "the prefix is full now");
    // Taking back B's send, or crediting A's, frees a place each.
    store
        .pump_unsend(&[prefix.clone(), net_b.clone()], HOUR)
        .await
        .unwrap();
    assert_eq!(
        send(vec![prefix.clone(), net_b.clone()]).await.refused,
        None
    );
    store
        .pump_verified(&[prefix.clone(), net_a.clone()], HOUR)
        .await
        .unwrap();
    assert_eq!(
        send(vec![prefix.clone(), net_a.clone()]).await.refused,
        None
    );
    // Record only: counted and reported, not refused.
    let outcome = store
        .pump_send(&[prefix.clone(), net_a.clone()], false, &rules(0))
        .await
        .unwrap();
    assert_eq!(outcome.refused.unwrap().reason, PumpReason::OverBudget);
    // Nothing to lift: no block stood, and the counts stay.
    assert!(!store.pump_lift(Scope::Prefix, &prefix.key).await.unwrap());
    assert!(send(vec![prefix.clone()]).await.refused.is_some());
}

/// Low conversion with volume blocks (listed, with its counts, until lifted); an operator's
/// block too; a refused send leaves no block behind.
async fn pumping_blocks_on_low_conversion_and_lifts(store: Arc<dyn Store>) {
    let prefix = pump(Scope::Prefix, 0, 3);
    let country = pump(Scope::Country, 0, 0);
    let full = pump(Scope::Network, 1, 0);
    // The network refuses (its budget is spent first): the prefix is neither counted nor judged.
    store
        .pump_send(std::slice::from_ref(&full), true, &rules(500))
        .await
        .unwrap();
    for _ in 0..3 {
        let outcome = store
            .pump_send(&[prefix.clone(), full.clone()], true, &rules(500))
            .await
            .unwrap();
        assert_eq!(outcome.refused.unwrap().index, 1);
        assert!(outcome.blocked.is_empty());
    }
    assert!(
        store
            .pump_blocks()
            .await
            .unwrap()
            .iter()
            .all(|b| b.key != prefix.key)
    );
    // Three sends, one verified: 33 % < 50 % at the third.
    let checks = [prefix.clone(), country.clone()];
    assert!(
        store
            .pump_send(&checks, true, &rules(500))
            .await
            .unwrap()
            .blocked
            .is_empty()
    );
    store.pump_verified(&checks, HOUR).await.unwrap();
    assert!(
        store
            .pump_send(&checks, true, &rules(500))
            .await
            .unwrap()
            .blocked
            .is_empty()
    );
    let third = store.pump_send(&checks, true, &rules(500)).await.unwrap();
    assert_eq!(third.refused, None);
    assert_eq!(third.blocked.len(), 1);
    assert_eq!(third.blocked[0].0, 0);
    let refused = store.pump_send(&checks, true, &rules(500)).await.unwrap();
    let refusal = refused.refused.unwrap();
    assert_eq!((refusal.index, refusal.reason), (0, PumpReason::Blocked));
    assert!(refusal.retry_after > HOUR - MINUTE && refusal.retry_after <= HOUR);
    let listed = store.pump_blocks().await.unwrap();
    let block = listed.iter().find(|b| b.key == prefix.key).expect("listed");
    assert_eq!(
        (block.scope, block.sent, block.verified),
        (Scope::Prefix, 3, 1)
    );
    assert_eq!(block.until_ms, third.blocked[0].1);
    assert!(store.pump_lift(Scope::Prefix, &prefix.key).await.unwrap());
    assert!(
        store
            .pump_blocks()
            .await
            .unwrap()
            .iter()
            .all(|b| b.key != prefix.key)
    );
    // Lifted: the counts start afresh, so the next send neither waits nor blocks again.
    let after = store.pump_send(&checks, true, &rules(500)).await.unwrap();
    assert_eq!((after.refused, after.blocked.len()), (None, 0));
    // An operator's block of a scope never counted.
    let network = pump(Scope::Network, 0, 0);
    store
        .pump_block(Scope::Network, &network.key, MINUTE, HOUR)
        .await
        .unwrap();
    let refusal = store
        .pump_send(std::slice::from_ref(&network), true, &rules(500))
        .await
        .unwrap()
        .refused
        .unwrap();
    assert_eq!(refusal.reason, PumpReason::Blocked);
    assert!(refusal.retry_after <= MINUTE);
    assert!(
        store
            .pump_blocks()
            .await
            .unwrap()
            .iter()
            .any(|b| b.key == network.key)
    );
    assert!(store.pump_lift(Scope::Network, &network.key).await.unwrap());
}

/// `pump_then_issue` (one script on one node, two steps elsewhere): a refused send stores no
/// code and charges nothing; a code refused by its cooldown or a quota gives its send back.
async fn a_send_counted_with_its_code_stores_nothing_when_refused_and_is_taken_back(
    store: Arc<dyn Store>,
) {
    let prefix = pump(Scope::Prefix, 1, 0);
    let per_ip = quota("otp-ip", 5, HOUR);
    let quotas = &[per_ip][..];
    let a = &key();
    let (pumped, issued) =
        pump_then_issue(&*store, std::slice::from_ref(&prefix), true, 0, a, quotas).await;
    assert_eq!(pumped.refused, None);
    match issued {
        Some(IssueOutcome::Issued(states)) => assert_eq!(states[0].remaining, 4),
        other => panic!("{other:?}"),
    }
    // The prefix's one place is spent: B's send is refused and B gets nothing, not even a
    // cooldown or a quota charge.
    let b = &key();
    let (pumped, issued) =
        pump_then_issue(&*store, std::slice::from_ref(&prefix), true, 0, b, quotas).await;
    assert_eq!(pumped.refused.unwrap().reason, PumpReason::OverBudget);
    assert_eq!(issued, None);
    match store
        .issue_code(b, "h", MINUTE, MINUTE, quotas)
        .await
        .unwrap()
    {
        IssueOutcome::Issued(states) => assert_eq!(states[0].remaining, 3, "A's charge only"),
        other => panic!("{other:?}"),
    }
    // A's cooldown refuses its next code: a fresh scope counts the send and gives it back, so
    // its one place is still there for C.
    let fresh = pump(Scope::Network, 1, 0);
    let (pumped, issued) =
        pump_then_issue(&*store, std::slice::from_ref(&fresh), true, 0, a, quotas).await;
    assert_eq!(pumped.refused, None);
    assert!(
        matches!(issued, Some(IssueOutcome::Cooldown { .. })),
        "{issued:?}"
    );
    let c = &key();
    let (pumped, issued) =
        pump_then_issue(&*store, std::slice::from_ref(&fresh), true, 0, c, quotas).await;
    assert_eq!(pumped.refused, None, "the cooldown's send was given back");
    assert!(
        matches!(issued, Some(IssueOutcome::Issued(_))),
        "{issued:?}"
    );
    // Record only: an over-budget send is reported and the code stored all the same.
    let d = &key();
    let (pumped, issued) = pump_then_issue(&*store, &[fresh], false, 0, d, quotas).await;
    assert_eq!(pumped.refused.unwrap().reason, PumpReason::OverBudget);
    assert!(
        matches!(issued, Some(IssueOutcome::Issued(_))),
        "{issued:?}"
    );
    // Two scopes and two quotas: the second quota refuses F's code, so both scopes get the send
    // back; a conversion block set by a counted send is reported with the code.
    let prefix = pump(Scope::Prefix, 0, 2);
    let scopes = [pump(Scope::Network, 2, 0), prefix.clone()];
    let one_left = [quota("otp-ip", 9, HOUR), quota("otp-prefix", 1, HOUR)];
    let e = &key();
    let (pumped, issued) = pump_then_issue(&*store, &scopes, true, 500, e, &one_left).await;
    assert_eq!((pumped.refused, pumped.blocked.len()), (None, 0));
    assert!(
        matches!(issued, Some(IssueOutcome::Issued(ref q)) if q.len() == 2),
        "{issued:?}"
    );
    let f = &key();
    let (pumped, issued) = pump_then_issue(&*store, &scopes, true, 500, f, &one_left).await;
    match issued {
        Some(IssueOutcome::Limited(refusal)) => assert_eq!(refusal.policy, "otp-prefix"),
        other => panic!("{other:?}"),
    }
    // F's send was counted before its code was refused: the prefix had seen two sends with
    // none verified, so it is blocked (reported with the refusal, and listed), and the send
    // itself was given back: the network, with room for two, holds E's only.
    assert_eq!(pumped.refused, None);
    assert_eq!(pumped.blocked.iter().map(|b| b.0).collect::<Vec<_>>(), [1]);
    assert!(
        store
            .pump_blocks()
            .await
            .unwrap()
            .iter()
            .any(|b| b.key == prefix.key),
        "the block is listed"
    );
    let network = std::slice::from_ref(&scopes[0]);
    let send = || async {
        store
            .pump_send(network, true, &rules(0))
            .await
            .unwrap()
            .refused
    };
    assert_eq!(send().await, None, "F's send was given back");
    assert!(send().await.is_some(), "E's and this one fill it");
}

/// `pump_then_issue` of a code "h" (a minute's life and cooldown, mark 7) for `phone`.
async fn pump_then_issue(
    store: &dyn Store,
    scopes: &[PumpCheck],
    enforce: bool,
    permille: u32,
    phone: &str,
    quotas: &[Quota],
) -> (PumpOutcome, Option<IssueOutcome>) {
    let code = CodeIssue {
        phone,
        code_hash: "h",
        ttl: MINUTE,
        cooldown: MINUTE,
        quotas,
        mark: 7,
        keep_tries_below: 0,
    };
    store
        .pump_then_issue(scopes, enforce, &rules(permille), &code)
        .await
        .unwrap()
}

/// `put_session_credited` (one script on one node, two steps elsewhere): the verified code is
/// credited with the session; a blocked user gets neither.
async fn a_credit_made_with_the_session_counts_and_not_for_a_blocked_user(store: Arc<dyn Store>) {
    use otpgate::store::SessionPut;
    let net = pump(Scope::Network, 1, 0);
    let one = std::slice::from_ref(&net);
    let send = || async { store.pump_send(one, true, &rules(0)).await.unwrap().refused };
    assert_eq!(send().await, None);
    assert!(
        send().await.is_some(),
        "one unverified code spends the budget"
    );
    // A blocked user: no session, no credit.
    let blocked = Uuid::new_v4().to_string();
    store.set_blocked(&blocked, None, true).await.unwrap();
    assert_eq!(
        store
            .put_session_credited(&blocked, "b1", "{}", MINUTE, 3, one, HOUR)
            .await
            .unwrap(),
        SessionPut::Blocked
    );
    assert!(send().await.is_some(), "nothing was credited");
    // A session recorded: its code is credited, so the budget has room again.
    let user = Uuid::new_v4().to_string();
    assert_eq!(
        store
            .put_session_credited(&user, "s1", "{}", MINUTE, 3, one, HOUR)
            .await
            .unwrap(),
        SessionPut::Recorded(vec![])
    );
    assert_eq!(send().await, None, "the credit freed a place");
    assert!(
        send().await.is_some(),
        "one place only: the counts were credited, not reset"
    );
    assert!(
        store
            .sessions(&user, MINUTE)
            .await
            .unwrap()
            .iter()
            .any(|s| s.sid == "s1")
    );
    // No scopes: a plain session.
    assert_eq!(
        store
            .put_session_credited(&user, "s2", "{}", MINUTE, 3, &[], HOUR)
            .await
            .unwrap(),
        SessionPut::Recorded(vec![])
    );
}

/// `verify_code_then_session`: the check's outcome is the plain check's (quotas, marks, wrong
/// tries); the session is put with a right code only, in the same step where one node holds
/// every key (`None` elsewhere: the caller records it later), and a blocked user gets none.
async fn a_session_is_put_with_a_right_code_only(store: Arc<dyn Store>) {
    use otpgate::store::{SessionDraft, SessionPut};
    let one_step = store.pumps_with_codes();
    let attempts = [quota("verify-ip", 3, HOUR)];
    let user = Uuid::new_v4().to_string();
    let draft = |user, sid| SessionDraft {
        user,
        sid,
        meta: r#"{"device_name":"Pixel"}"#,
        ttl: MINUTE,
        max: 3,
    };
    let phone = key();
    store
        .issue_code_marked(&phone, "right", MINUTE, MINUTE, &[], 7, 0)
        .await
        .unwrap();
    // A wrong code: counted, no session.
    let check = |phone: &str, hash: &str, draft: SessionDraft<'_>| {
        let (store, phone, hash, attempts) = (
            store.clone(),
            phone.to_owned(),
            hash.to_owned(),
            attempts.clone(),
        );
        let (user, sid, meta) = (
            draft.user.to_owned(),
            draft.sid.to_owned(),
            draft.meta.to_owned(),
        );
        async move {
            let draft = SessionDraft {
                user: &user,
                sid: &sid,
                meta: &meta,
                ttl: MINUTE,
                max: 3,
            };
            store
                .verify_code_then_session(&phone, &hash, None, 5, &attempts, &[], &draft)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        check(&phone, "wrong", draft(&user, "s1")).await,
        (VerifyOutcome::Invalid { remaining: 4 }, None)
    );
    assert!(store.sessions(&user, MINUTE).await.unwrap().is_empty());
    // The right one: spent, its mark back, and the session put with it where one step does.
    let (outcome, put) = check(&phone, "right", draft(&user, "s1")).await;
    assert_eq!(outcome, VerifyOutcome::Verified { mark: 7 });
    let listed = store.sessions(&user, MINUTE).await.unwrap();
    if one_step {
        assert_eq!(put, Some(SessionPut::Recorded(vec![])));
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].sid, "s1");
        assert!(listed[0].meta.contains("Pixel"), "{listed:?}");
    } else {
        assert_eq!(put, None);
        assert!(listed.is_empty(), "{listed:?}");
    }
    // Spent: no second session.
    assert_eq!(
        check(&phone, "right", draft(&user, "s2")).await,
        (VerifyOutcome::Missing, None)
    );
    assert!(store.sessions(&user, MINUTE).await.unwrap().len() <= 1);
    // Those were the attempt quota's three: the next is refused before its code is looked at.
    let other = key();
    store
        .issue_code(&other, "right", MINUTE, MINUTE, &[])
        .await
        .unwrap();
    match check(&other, "right", draft(&user, "s3")).await {
        (VerifyOutcome::Limited(r), None) => assert_eq!(r.policy, "verify-ip"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A blocked user: the code is spent, nothing is recorded.
    let blocked = Uuid::new_v4().to_string();
    store.set_blocked(&blocked, None, true).await.unwrap();
    let phone = key();
    store
        .issue_code(&phone, "right", MINUTE, MINUTE, &[])
        .await
        .unwrap();
    let (outcome, put) = store
        .verify_code_then_session(&phone, "right", None, 5, &[], &[], &draft(&blocked, "b1"))
        .await
        .unwrap();
    assert_eq!(outcome, VerifyOutcome::Verified { mark: 0 });
    assert_eq!(put, one_step.then_some(SessionPut::Blocked));
    assert!(store.sessions(&blocked, MINUTE).await.unwrap().is_empty());
}

/// `move_session`: a session recorded for one user (the id a login proposed) is put for another
/// (the user the login opened) and dropped from the first's index; moved towards a blocked user,
/// it is dropped all the same and nothing is recorded.
async fn a_session_moves_to_another_user_and_not_to_a_blocked_one(store: Arc<dyn Store>) {
    use otpgate::store::SessionPut;
    let proposed = Uuid::new_v4().to_string();
    let user = Uuid::new_v4().to_string();
    store
        .put_session(&user, "old", "{}", MINUTE, 3)
        .await
        .unwrap();
    store
        .put_session(&proposed, "s1", "{}", MINUTE, 3)
        .await
        .unwrap();
    assert_eq!(
        store
            .move_session(
                &proposed,
                &user,
                "s1",
                r#"{"device_name":"Pixel"}"#,
                MINUTE,
                3
            )
            .await
            .unwrap(),
        SessionPut::Recorded(vec![])
    );
    assert!(store.sessions(&proposed, MINUTE).await.unwrap().is_empty());
    let mut sids: Vec<String> = store
        .sessions(&user, MINUTE)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.sid)
        .collect();
    sids.sort();
    assert_eq!(sids, ["old", "s1"]);
    // Towards a blocked user: dropped, nothing recorded.
    let blocked = Uuid::new_v4().to_string();
    store.set_blocked(&blocked, None, true).await.unwrap();
    store
        .put_session(&proposed, "s2", "{}", MINUTE, 3)
        .await
        .unwrap();
    assert_eq!(
        store
            .move_session(&proposed, &blocked, "s2", "{}", MINUTE, 3)
            .await
            .unwrap(),
        SessionPut::Blocked
    );
    assert!(store.sessions(&proposed, MINUTE).await.unwrap().is_empty());
    assert!(store.sessions(&blocked, MINUTE).await.unwrap().is_empty());
}
