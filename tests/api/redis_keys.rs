//! What Redis holds: no key names a phone number, and the revocations and spent refresh-token
//! marks of the earlier key names still count after an upgrade.

use std::time::Duration;

use otpgate::store::{RedisStore, RefreshOutcome, Store};
use uuid::Uuid;

use crate::helpers::{Backend, cluster_available, field, spawn_app_with, unique_phone};

async fn redis() -> redis::aio::MultiplexedConnection {
    let url = std::env::var("TEST_REDIS_URL").expect("TEST_REDIS_URL");
    redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connection")
}

/// The users whose session index Redis holds under `prefix`, sorted.
pub(crate) async fn session_index_owners(prefix: &str) -> Vec<String> {
    let mut owners: Vec<String> = keys(prefix)
        .await
        .iter()
        .filter(|k| k.ends_with(":sessions"))
        .map(|k| {
            let tag = k.split("{u:").nth(1).expect("a user's hash tag");
            tag.split('}').next().expect("the tag's end").to_string()
        })
        .collect();
    owners.sort();
    owners
}

async fn keys(prefix: &str) -> Vec<String> {
    let mut conn = redis().await;
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_names_a_phone_number() {
    if !cluster_available() {
        return;
    }
    let prefix = format!("keys:{}:", Uuid::new_v4().simple());
    // With the pumping defence counting too (its keys name number prefixes), at the longest
    // prefix it allows.
    let app = spawn_app_with(
        Backend::Cluster,
        &[
            ("REDIS_KEY_PREFIX", &prefix),
            ("PUMPING_MODE", "record_only"),
            ("PUMPING_PREFIX_DIGITS", "12"),
        ],
    )
    .await;
    let phone = unique_phone();
    let code = app.login_code(&app.a, &phone).await;
    // A wrong code first, so the failure bucket exists too.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(app.verify(&app.b, &phone, wrong).await.status, 400);
    let second = unique_phone();
    app.login_code(&app.b, &second).await;
    let session = app.sign_in(&unique_phone()).await;
    app.logout(&app.a, field(&session, "access_token")).await;
    let found = keys(&prefix).await;
    assert!(found.len() >= 5, "{found:?}");
    for p in [&phone, &second] {
        let digits = p.trim_start_matches('+');
        let national = &digits[2..];
        let block = &digits[..digits.len() - 4];
        for key in &found {
            assert!(
                !key.contains(digits) && !key.contains(national) && !key.contains(block),
                "{key} names {p}"
            );
        }
    }
    assert!(
        found.iter().any(|k| k.contains("{pump:prefix:+91")),
        "{found:?}"
    );
    // A phone's code and cooldown share one hash tag (one Cluster slot).
    assert!(
        found
            .iter()
            .any(|k| k.contains("{p:") && k.ends_with(":otp")),
        "{found:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earlier_key_names_still_count_after_an_upgrade() {
    if !cluster_available() {
        return;
    }
    let url = std::env::var("TEST_REDIS_URL").expect("TEST_REDIS_URL");
    let prefix = format!("legacy:{}:", Uuid::new_v4().simple());
    let store = RedisStore::new(&url, &prefix, 1, Duration::from_secs(2)).expect("store");
    let mut conn = redis().await;
    let minute = Duration::from_secs(60);
    // A logout written by the previous version.
    let revoked = Uuid::new_v4().to_string();
    let () = redis::cmd("SET")
        .arg(format!("{prefix}revoked:{revoked}"))
        .arg("logout")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .expect("SET");
    assert!(store.is_session_revoked(&revoked).await.expect("revoked"));
    assert_eq!(
        store
            .spend_refresh(&revoked, "t1", Duration::from_secs(1), minute)
            .await
            .expect("spend"),
        RefreshOutcome::Revoked
    );
    // A refresh token the previous version saw spent a minute ago: presenting it again is reuse.
    let spent = Uuid::new_v4().to_string();
    let long_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
        - 60_000;
    let () = redis::cmd("SET")
        .arg(format!("{prefix}refresh-spent:{spent}:t1"))
        .arg(long_ago)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .expect("SET");
    assert_eq!(
        store
            .spend_refresh(&spent, "t1", Duration::from_secs(1), minute)
            .await
            .expect("spend"),
        RefreshOutcome::Reused
    );
    assert!(store.is_session_revoked(&spent).await.expect("revoked"));
    // A logout by this version is written under both names, for old replicas mid-upgrade.
    let fresh = Uuid::new_v4().to_string();
    store.revoke_session(&fresh, minute).await.expect("revoke");
    let old_name: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}revoked:{fresh}"))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(old_name, 1);
}

/// A login on PostgreSQL records its session with the code check, under the id a new user
/// would get; a returning user's login drops that entry at once and records its own. So every
/// session index in Redis is a real user's, and each of them lists exactly their sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_index_is_a_users() {
    if !cluster_available() {
        return;
    }
    let prefix = format!("keys:{}:", Uuid::new_v4().simple());
    let app = spawn_app_with(Backend::Cluster, &[("REDIS_KEY_PREFIX", &prefix)]).await;
    let phone = unique_phone();
    let first = app.sign_in(&phone).await;
    let again = app.sign_in(&phone).await;
    let third = app.sign_in(&phone).await;
    let other = app.sign_in(&unique_phone()).await;
    let id = |tokens: &serde_json::Value| tokens["user"]["id"].as_str().expect("id").to_string();
    assert_eq!(id(&first), id(&again));
    assert_eq!(id(&first), id(&third));
    let mut users = vec![id(&first), id(&other)];
    users.sort();
    assert_eq!(session_index_owners(&prefix).await, users);
    // The sign-ups' sessions were put with their code checks; the returning user's two were
    // moved to them (counted as puts), on the replica that verified.
    let metrics = crate::observability::metrics_text(&app, &app.b).await;
    let puts = crate::observability::sample(
        &metrics,
        "otpgate_store_operation_duration_seconds_count{op=\"put_session\"}",
    );
    assert_eq!(puts, 2.0, "{metrics}");
    let mut conn = redis().await;
    let returning: usize = redis::cmd("HLEN")
        .arg(format!("{prefix}{{u:{}}}:sessions", id(&first)))
        .query_async(&mut conn)
        .await
        .expect("HLEN");
    assert_eq!(returning, 3, "one session per login");
}
