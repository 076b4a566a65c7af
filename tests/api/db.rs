//! The database side of a login on PostgreSQL: a connection of the login pool taken before the
//! code check, then one statement that creates the user or returns the existing one. Two first
//! logins of one new number at the same moment end with one user, whichever insert wins.

use chrono::Utc;
use otpgate::db::hot::HotPool;
use otpgate::db::touches::LoginTouches;
use sea_orm::{ConnectionTrait, Database, TransactionTrait};

use crate::helpers::{cluster_available, fresh_postgres_database};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_first_logins_of_one_number_share_one_user() {
    if !cluster_available() {
        return;
    }
    let (_, _, url) = fresh_postgres_database().await;
    let db = otpgate::db::connect(&url, 4).await.expect("connect");
    otpgate::db::migrate(&db).await.expect("migrate");
    let hot = HotPool::for_database(&db).expect("a login pool on PostgreSQL");
    let hot = Some(&hot);
    let touches = LoginTouches::start(db.clone(), 16, dropped());
    let phone = "+919812349999";
    // Two replicas verifying at the same moment: both have started before either finishes.
    let first = otpgate::db::login_start(&db, hot, phone)
        .await
        .expect("start");
    let second = otpgate::db::login_start(&db, hot, phone)
        .await
        .expect("start");
    let (a, b) = tokio::join!(
        otpgate::db::login_finish(&db, first, phone, Utc::now(), &touches),
        otpgate::db::login_finish(&db, second, phone, Utc::now(), &touches),
    );
    let ((a, a_created), (b, b_created)) = (a.expect("first"), b.expect("second"));
    assert_eq!(a.id, b.id, "one user");
    assert!(a_created != b_created, "exactly one created it");
    assert_eq!(b.phone.as_deref(), Some(phone));
    // A returning user: the same row, not created again, one statement.
    let session = otpgate::db::login_start(&db, hot, phone)
        .await
        .expect("start");
    let (again, created) = otpgate::db::login_finish(&db, session, phone, Utc::now(), &touches)
        .await
        .expect("returning");
    assert_eq!((again.id, created), (a.id, false));
    assert!(again.last_login_at.is_some());
    let stored = otpgate::db::find_by_phone(&db, phone).await.expect("find");
    assert_eq!(stored.map(|u| u.id), Some(a.id));
}

/// The login pool reuses its connections without pinging them; one that the server ended while
/// it sat idle fails its statement, which then runs again on a new connection. A lease dropped in
/// the middle of a statement (a cancelled request) is closed, not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_pool_replaces_connections_the_server_ended() {
    if !cluster_available() {
        return;
    }
    let (admin_url, name, url) = fresh_postgres_database().await;
    let db = otpgate::db::connect(&url, 4).await.expect("connect");
    otpgate::db::migrate(&db).await.expect("migrate");
    let hot = HotPool::for_database(&db).expect("a login pool on PostgreSQL");
    let touches = LoginTouches::start(db.clone(), 16, dropped());
    let login = |phone: &'static str| {
        let (db, hot, touches) = (db.clone(), &hot, &touches);
        async move {
            let session = otpgate::db::login_start(&db, Some(hot), phone)
                .await
                .expect("start");
            otpgate::db::login_finish(&db, session, phone, Utc::now(), touches).await
        }
    };
    let (first, created) = login("+919812340001").await.expect("first login");
    assert!(created);
    assert_eq!(hot.idle_connections(), 1, "the connection went back");

    // The server ends every session of the test database (as a restart would).
    let admin = Database::connect(admin_url.as_str()).await.expect("admin");
    admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await
        .expect("terminate");
    admin.close().await.ok();

    let (again, created) = login("+919812340001")
        .await
        .expect("the statement ran again on a new connection");
    assert_eq!((again.id, created), (first.id, false));
    assert_eq!(
        hot.idle_connections(),
        1,
        "the new one replaced the ended one"
    );

    // Cancelled in the middle of its statement (held up by a lock on the table): that
    // connection is not handed out again.
    let blocker = Database::connect(url.as_str())
        .await
        .expect("second connection");
    let lock = blocker.begin().await.expect("begin");
    lock.execute_unprepared("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let session = otpgate::db::login_start(&db, Some(&hot), "+919812340002")
        .await
        .expect("start");
    assert_eq!(hot.idle_connections(), 0);
    let finish = otpgate::db::login_finish(&db, session, "+919812340002", Utc::now(), &touches);
    let waited = tokio::time::timeout(std::time::Duration::from_millis(300), finish).await;
    assert!(
        waited.is_err(),
        "the statement waits for the lock: {waited:?}"
    );
    lock.commit().await.expect("unlock");
    blocker.close().await.ok();
    assert_eq!(
        hot.idle_connections(),
        0,
        "a half-used connection is closed"
    );
}

fn dropped() -> prometheus::IntCounter {
    prometheus::IntCounter::new("dropped", "test").expect("counter")
}

/// Returning users' login times reach the database in the background, in batches, on
/// PostgreSQL and on SQLite; when the queue is full a time is dropped and counted, and the
/// login does not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_times_are_written_in_batches_and_dropped_when_the_queue_is_full() {
    let mut urls = vec![format!(
        "sqlite://{}/touches-{}.db?mode=rwc",
        std::env::temp_dir().display(),
        uuid::Uuid::new_v4().simple()
    )];
    if cluster_available() {
        urls.push(fresh_postgres_database().await.2);
    }
    for url in urls {
        let db = otpgate::db::connect(&url, 4).await.expect("connect");
        otpgate::db::migrate(&db).await.expect("migrate");
        let never = LoginTouches::start(db.clone(), 64, dropped());
        let mut users = Vec::new();
        for i in 0..40 {
            let phone = format!("+9198123{i:05}");
            let user = otpgate::db::complete_login(&db, None, &phone, Utc::now(), &never)
                .await
                .expect("create");
            users.push(user);
        }
        let at = Utc::now() + chrono::Duration::minutes(5);
        let counter = dropped();
        let touches = LoginTouches::start(db.clone(), 128, counter.clone());
        for user in &users {
            assert!(touches.record(user.id, at - chrono::Duration::seconds(1)));
            assert!(touches.record(user.id, at), "room for 128");
        }
        // Every user's latest time arrives.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut written = 0;
            for user in &users {
                let stored = otpgate::db::find_user_by_id(&db, user.id)
                    .await
                    .expect("find")
                    .expect("user");
                let stored_at = stored.last_login_at.expect("a login time");
                if (stored_at - at).num_milliseconds().abs() < 1 {
                    written += 1;
                }
            }
            if written == users.len() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{url}: {written} of 40 written"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(counter.get(), 0, "nothing dropped");

        // A queue of one, flooded faster than any database: the surplus is counted, at once.
        let counter = dropped();
        let tiny = LoginTouches::start(db.clone(), 1, counter.clone());
        let started = std::time::Instant::now();
        let queued = (0..1000)
            .filter(|_| tiny.record(users[0].id, Utc::now()))
            .count();
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        assert!((1..1000).contains(&queued), "{queued} queued");
        assert_eq!(counter.get(), 1000 - queued as u64);
    }
}
