//! The database side of a login on PostgreSQL: a connection of the login pool taken before the
//! code check, then one statement that creates the user or returns the existing one. Two first
//! logins of one new number at the same moment end with one user, whichever insert wins.

use chrono::Utc;
use otpgate::db::hot::HotPool;
use sea_orm::{ConnectionTrait, Database};

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
    let phone = "+919812349999";
    // Two replicas verifying at the same moment: both have started before either finishes.
    let first = otpgate::db::login_start(&db, hot, phone)
        .await
        .expect("start");
    let second = otpgate::db::login_start(&db, hot, phone)
        .await
        .expect("start");
    let (a, b) = tokio::join!(
        otpgate::db::login_finish(&db, first, phone, Utc::now()),
        otpgate::db::login_finish(&db, second, phone, Utc::now()),
    );
    let ((a, a_created), (b, b_created)) = (a.expect("first"), b.expect("second"));
    assert_eq!(a.id, b.id, "one user");
    assert!(a_created != b_created, "exactly one created it");
    assert_eq!(b.phone.as_deref(), Some(phone));
    // A returning user: the same row, not created again, one statement.
    let session = otpgate::db::login_start(&db, hot, phone)
        .await
        .expect("start");
    let (again, created) = otpgate::db::login_finish(&db, session, phone, Utc::now())
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
    let login = |phone: &'static str| {
        let (db, hot) = (db.clone(), &hot);
        async move {
            let session = otpgate::db::login_start(&db, Some(hot), phone)
                .await
                .expect("start");
            otpgate::db::login_finish(&db, session, phone, Utc::now()).await
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

    // Cancelled in the middle of its statement: that connection is not handed out again.
    let session = otpgate::db::login_start(&db, Some(&hot), "+919812340002")
        .await
        .expect("start");
    assert_eq!(hot.idle_connections(), 0);
    let finish = otpgate::db::login_finish(&db, session, "+919812340002", Utc::now());
    // Polled once (the statement is sent; its answer cannot be there yet), then dropped.
    tokio::select! {
        biased;
        _ = finish => panic!("a statement answered without waiting for the server"),
        () = std::future::ready(()) => {}
    }
    assert_eq!(
        hot.idle_connections(),
        0,
        "a half-used connection is closed"
    );
}
