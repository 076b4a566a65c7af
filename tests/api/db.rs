//! The database side of a login: a connection checked out before the code check, then the
//! statement that creates the user or returns the existing one (one on PostgreSQL and MariaDB,
//! an insert and a select on MySQL, which MariaDB runs too). Two first logins of one new number
//! at the same moment end with one user, whichever insert wins.

use chrono::{SubsecRound, Utc};
use otpgate::db::{LoginSql, MysqlServer};
use sea_orm::{ConnectionTrait, DatabaseConnection};

use crate::helpers::{
    cluster_available, fresh_mariadb_database, fresh_postgres_database, mariadb_available,
};

/// Two replicas verifying the first login of one number at the same moment, then a returning
/// login, through `sql`.
async fn simultaneous_first_logins_share_one_user(db: &DatabaseConnection, sql: LoginSql) {
    let phone = "+919812349999";
    // Two replicas verifying at the same moment: both have started before either finishes.
    let first = otpgate::db::login_start(db, sql, phone)
        .await
        .expect("start");
    let second = otpgate::db::login_start(db, sql, phone)
        .await
        .expect("start");
    let (a, b) = tokio::join!(
        otpgate::db::login_finish(db, first, phone, Utc::now()),
        otpgate::db::login_finish(db, second, phone, Utc::now()),
    );
    let ((a, a_created), (b, b_created)) = (a.expect("first"), b.expect("second"));
    assert_eq!(a.id, b.id, "one user");
    assert!(a_created != b_created, "exactly one created it");
    assert_eq!(b.phone.as_deref(), Some(phone));
    // A returning user: the same row, not created again.
    let session = otpgate::db::login_start(db, sql, phone)
        .await
        .expect("start");
    // Microseconds: what PostgreSQL and `datetime(6)` keep.
    let now = Utc::now().trunc_subsecs(6);
    let (again, created) = otpgate::db::login_finish(db, session, phone, now)
        .await
        .expect("returning");
    assert_eq!((again.id, created), (a.id, false));
    assert_eq!(again.last_login_at, Some(now));
    let stored = otpgate::db::find_by_phone(db, phone)
        .await
        .expect("find")
        .expect("the user");
    assert_eq!(stored.id, a.id);
    // Instants keep their microseconds and their UTC meaning through the database.
    let created = if a_created { &a } else { &b };
    assert_eq!(stored.created_at, created.created_at);
    assert_eq!(
        stored.created_at.timestamp_subsec_micros(),
        created.created_at.timestamp_subsec_micros()
    );
    // A new number: created by this very statement, with the instant given.
    let other = "+919812348888";
    let session = otpgate::db::login_start(db, sql, other)
        .await
        .expect("start");
    let (new, created) = otpgate::db::login_finish(db, session, other, now)
        .await
        .expect("new user");
    assert!(created);
    assert_eq!((new.created_at, new.last_login_at), (now, Some(now)));
    assert_ne!(new.id, a.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_first_logins_of_one_number_share_one_user() {
    if !cluster_available() {
        return;
    }
    let (_, _, url) = fresh_postgres_database().await;
    let db = otpgate::db::connect(&url, 4).await.expect("connect");
    otpgate::db::migrate(&db).await.expect("migrate");
    assert_eq!(
        otpgate::db::login_sql(&db).await.expect("sql"),
        LoginSql::Postgres
    );
    simultaneous_first_logins_share_one_user(&db, LoginSql::Postgres).await;
}

/// MariaDB picks its one-statement `INSERT … RETURNING`; MySQL's insert-then-select (which
/// MariaDB runs too) is tested here on the same server, in a database of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_first_logins_on_mariadb_with_either_statement() {
    if !mariadb_available() {
        return;
    }
    for sql in [LoginSql::MariadbReturning, LoginSql::MysqlInsertThenSelect] {
        let database = fresh_mariadb_database().await;
        let db = otpgate::db::connect(&database.url, 4)
            .await
            .expect("connect");
        otpgate::db::migrate(&db).await.expect("migrate");
        let server = otpgate::db::mysql_server(&db).await.expect("version");
        assert!(server.mariadb && server.supported(), "{server}");
        assert_eq!(
            otpgate::db::login_sql(&db).await.expect("sql"),
            LoginSql::MariadbReturning
        );
        simultaneous_first_logins_share_one_user(&db, sql).await;
    }
}

/// The migrations make MySQL/MariaDB tables InnoDB, utf8mb4 and case-sensitive (binary
/// collation), whatever the server's and the database's defaults (latin1 on the test server),
/// with 16-byte ids and microsecond UTC instants; a second run finds nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_tables_are_utf8mb4_binary_with_portable_types() {
    if !mariadb_available() {
        return;
    }
    let database = fresh_mariadb_database().await;
    let db = otpgate::db::connect(&database.url, 2)
        .await
        .expect("connect");
    otpgate::db::migrate(&db).await.expect("migrate");
    otpgate::db::migrate(&db).await.expect("migrate again");
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::MySql,
            format!(
                "SELECT TABLE_NAME AS t, ENGINE AS e, TABLE_COLLATION AS c \
                 FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{}' \
                 AND TABLE_NAME IN ('users', 'identities') ORDER BY TABLE_NAME",
                database.name
            ),
        ))
        .await
        .expect("tables");
    let tables: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r.try_get("", "t").unwrap(),
                r.try_get("", "e").unwrap(),
                r.try_get("", "c").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tables,
        [
            ("identities".into(), "InnoDB".into(), "utf8mb4_bin".into()),
            ("users".into(), "InnoDB".into(), "utf8mb4_bin".into()),
        ]
    );
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::MySql,
            format!(
                "SELECT COLUMN_NAME AS n, COLUMN_TYPE AS t FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = '{}' AND TABLE_NAME = 'users' ORDER BY ORDINAL_POSITION",
                database.name
            ),
        ))
        .await
        .expect("columns");
    let columns: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.try_get("", "n").unwrap(), r.try_get("", "t").unwrap()))
        .collect();
    assert_eq!(
        columns,
        [
            ("id".into(), "binary(16)".into()),
            ("phone".into(), "varchar(255)".into()),
            ("created_at".into(), "datetime(6)".into()),
            ("last_login_at".into(), "datetime(6)".into()),
        ]
    );
}

#[test]
fn mysql_server_versions_are_read_and_judged() {
    for (version, shown, supported, sql) in [
        (
            "10.11.19-MariaDB-0+deb12u1",
            "MariaDB 10.11.19",
            true,
            LoginSql::MariadbReturning,
        ),
        (
            "5.5.5-10.6.18-MariaDB-log",
            "MariaDB 10.6.18",
            true,
            LoginSql::MariadbReturning,
        ),
        (
            "11.4.2-MariaDB",
            "MariaDB 11.4.2",
            true,
            LoginSql::MariadbReturning,
        ),
        (
            "10.4.34-MariaDB",
            "MariaDB 10.4.34",
            false,
            LoginSql::MysqlInsertThenSelect,
        ),
        (
            "8.0.36",
            "MySQL 8.0.36",
            true,
            LoginSql::MysqlInsertThenSelect,
        ),
        (
            "8.4.0-commercial",
            "MySQL 8.4.0",
            true,
            LoginSql::MysqlInsertThenSelect,
        ),
        (
            "5.7.44-log",
            "MySQL 5.7.44",
            false,
            LoginSql::MysqlInsertThenSelect,
        ),
    ] {
        let server = MysqlServer::parse(version).expect(version);
        assert_eq!(server.to_string(), shown, "{version}");
        assert_eq!(server.supported(), supported, "{version}");
        assert_eq!(server.login_sql(), sql, "{version}");
    }
    assert_eq!(MysqlServer::parse("MariaDB"), None);
}

/// The embedded backend chooses the lookup-then-insert path, without asking the database.
#[tokio::test]
async fn sqlite_logins_go_through_the_pool() {
    let file = std::env::temp_dir().join(format!("otpgate-db-{}.db", uuid::Uuid::new_v4()));
    let db = otpgate::db::connect(&format!("sqlite://{}?mode=rwc", file.display()), 1)
        .await
        .expect("connect");
    otpgate::db::migrate(&db).await.expect("migrate");
    assert_eq!(
        otpgate::db::login_sql(&db).await.expect("sql"),
        LoginSql::Pooled
    );
    let phone = "+919812347777";
    let session = otpgate::db::login_start(&db, LoginSql::Pooled, phone)
        .await
        .expect("start");
    let (user, created) = otpgate::db::login_finish(&db, session, phone, Utc::now())
        .await
        .expect("finish");
    assert!(created && user.phone.as_deref() == Some(phone));
    // A statement for another backend is refused, not run.
    assert!(
        otpgate::db::login_start(&db, LoginSql::MariadbReturning, phone)
            .await
            .is_err()
    );
}
