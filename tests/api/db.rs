//! The database side of a login on PostgreSQL, where one connection serves the lookup before
//! the code check and the insert after it: two first logins of one new number at the same
//! moment end with one user, whichever insert wins.

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
    // Both lookups see no user, as two replicas verifying at the same moment would.
    let (first, none_a) = otpgate::db::login_lookup(&db, phone).await.expect("lookup");
    let (second, none_b) = otpgate::db::login_lookup(&db, phone).await.expect("lookup");
    assert!(none_a.is_none() && none_b.is_none());
    let a = otpgate::db::login_finish(&db, first, None, phone, Utc::now())
        .await
        .expect("the first insert");
    let b = otpgate::db::login_finish(&db, second, None, phone, Utc::now())
        .await
        .expect("the conflicting insert finds the winner");
    assert_eq!(a.id, b.id);
    assert_eq!(b.phone.as_deref(), Some(phone));
    // A returning user: found by the lookup, no second row.
    let (session, found) = otpgate::db::login_lookup(&db, phone).await.expect("lookup");
    let found = found.expect("the user");
    assert_eq!(found.id, a.id);
    let again = otpgate::db::login_finish(&db, session, Some(found), phone, Utc::now())
        .await
        .expect("touch");
    assert_eq!(again.id, a.id);
}
