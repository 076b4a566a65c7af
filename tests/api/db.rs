//! The database side of a login on PostgreSQL: a connection checked out before the code check,
//! then one statement that creates the user or returns the existing one. Two first logins of
//! one new number at the same moment end with one user, whichever insert wins.

use chrono::Utc;

use crate::helpers::{cluster_available, fresh_postgres_database};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_first_logins_of_one_number_share_one_user() {
    if !cluster_available() {
        return;
    }
    let (_, _, url) = fresh_postgres_database().await;
    let db = otpgate::db::connect(&url, 4).await.expect("connect");
    otpgate::db::migrate(&db).await.expect("migrate");
    let phone = "+919812349999";
    // Two replicas verifying at the same moment: both have started before either finishes.
    let first = otpgate::db::login_start(&db, phone).await.expect("start");
    let second = otpgate::db::login_start(&db, phone).await.expect("start");
    let (a, b) = tokio::join!(
        otpgate::db::login_finish(&db, first, phone, Utc::now()),
        otpgate::db::login_finish(&db, second, phone, Utc::now()),
    );
    let ((a, a_created), (b, b_created)) = (a.expect("first"), b.expect("second"));
    assert_eq!(a.id, b.id, "one user");
    assert!(a_created != b_created, "exactly one created it");
    assert_eq!(b.phone.as_deref(), Some(phone));
    // A returning user: the same row, not created again, one statement.
    let session = otpgate::db::login_start(&db, phone).await.expect("start");
    let (again, created) = otpgate::db::login_finish(&db, session, phone, Utc::now())
        .await
        .expect("returning");
    assert_eq!((again.id, created), (a.id, false));
    assert!(again.last_login_at.is_some());
    let stored = otpgate::db::find_by_phone(&db, phone).await.expect("find");
    assert_eq!(stored.map(|u| u.id), Some(a.id));
}
