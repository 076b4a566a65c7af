//! The database side of a login: started before the code check (a connection checked out on
//! MySQL/MariaDB), then the statement that creates the user or returns the existing one (one on
//! PostgreSQL, for every login waiting at that moment, and on MariaDB; an insert and a select on
//! MySQL, which MariaDB runs too). Two first logins of one new number at the same moment end
//! with one user, whichever insert wins.

use chrono::{SubsecRound, Utc};
use otpgate::db::hot::HotPool;
use otpgate::db::touches::LoginTouches;
use otpgate::db::{LoginSql, MysqlServer};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, TransactionTrait};

use crate::helpers::{
    cluster_available, fresh_mariadb_database, fresh_postgres_database, mariadb_available,
};

/// Two replicas verifying the first login of one number at the same moment, then a returning
/// login, through `sql`.
async fn simultaneous_first_logins_share_one_user(db: &DatabaseConnection, sql: LoginSql) {
    let hot = HotPool::for_database(db);
    let hot = hot.as_ref();
    let touches = LoginTouches::start(db.clone(), 16, dropped());
    let phone = "+919812349999";
    // Two replicas verifying at the same moment: both have started before either finishes.
    let first = otpgate::db::login_start(db, hot, sql, phone)
        .await
        .expect("start");
    let second = otpgate::db::login_start(db, hot, sql, phone)
        .await
        .expect("start");
    let (a, b) = tokio::join!(
        otpgate::db::login_finish(db, first, phone, Utc::now(), &touches),
        otpgate::db::login_finish(db, second, phone, Utc::now(), &touches),
    );
    let ((a, a_created), (b, b_created)) = (a.expect("first"), b.expect("second"));
    assert_eq!(a.id, b.id, "one user");
    assert!(a_created != b_created, "exactly one created it");
    assert_eq!(b.phone.as_deref(), Some(phone));
    // A returning user: the same row, not created again.
    let session = otpgate::db::login_start(db, hot, sql, phone)
        .await
        .expect("start");
    // Microseconds: what PostgreSQL and `datetime(6)` keep.
    let now = Utc::now().trunc_subsecs(6);
    let (again, created) = otpgate::db::login_finish(db, session, phone, now, &touches)
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
    let session = otpgate::db::login_start(db, hot, sql, other)
        .await
        .expect("start");
    let (new, created) = otpgate::db::login_finish(db, session, other, now, &touches)
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

/// Logins arriving while the login statements are held up (here by a lock on the table) go
/// together once it is released: fewer statements than logins, every login its own answer, one
/// user per number (two logins of one number in the same moment: one creates, one finds), and
/// known numbers found, not created again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_waiting_together_share_statements_on_postgres() {
    if !cluster_available() {
        return;
    }
    let LoginPool {
        url,
        db,
        hot,
        touches,
        ..
    } = login_pool().await;
    let login = |phone: String| {
        let (db, hot, touches) = (db.clone(), &hot, &touches);
        async move {
            let session = otpgate::db::login_start(&db, Some(hot), LoginSql::Postgres, &phone)
                .await
                .expect("start");
            let (user, created) =
                otpgate::db::login_finish(&db, session, &phone, Utc::now(), touches)
                    .await
                    .expect("login");
            (phone, user, created)
        }
    };
    // Ten numbers known before.
    let known: Vec<String> = (0..10).map(|i| format!("+9198123410{i:02}")).collect();
    let mut known_ids = std::collections::HashMap::new();
    for phone in &known {
        let (_, user, created) = login(phone.clone()).await;
        assert!(created);
        known_ids.insert(phone.clone(), user.id);
    }
    // Held up: every login statement waits for the lock.
    let blocker = Database::connect(url.as_str())
        .await
        .expect("second connection");
    let lock = blocker.begin().await.expect("begin");
    lock.execute_unprepared("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let before = hot.login_statements();
    // 30 new numbers, 10 of them twice, and the 10 known ones: 50 logins.
    let new: Vec<String> = (0..30).map(|i| format!("+9198123420{i:02}")).collect();
    let phones: Vec<String> = new
        .iter()
        .chain(new.iter().take(10))
        .chain(known.iter())
        .cloned()
        .collect();
    let all = futures_util::future::join_all(phones.iter().cloned().map(login));
    let running = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        lock.commit().await.expect("unlock");
        blocker.close().await.ok();
    });
    let answers = all.await;
    running.await.expect("unlocked");
    let statements = hot.login_statements() - before;
    assert!(
        statements < 25,
        "{statements} statements for {} logins",
        answers.len()
    );
    assert_eq!(answers.len(), 50);
    let mut ids: std::collections::HashMap<&str, uuid::Uuid> = std::collections::HashMap::new();
    let mut created_count: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::new();
    for (phone, user, created) in &answers {
        assert_eq!(
            user.phone.as_deref(),
            Some(phone.as_str()),
            "its own answer"
        );
        if let Some(id) = ids.insert(phone, user.id) {
            assert_eq!(id, user.id, "one user for {phone}");
        }
        *created_count.entry(phone).or_default() += usize::from(*created);
    }
    for phone in &new {
        assert_eq!(created_count[phone.as_str()], 1, "{phone} created once");
    }
    for phone in &known {
        assert_eq!(created_count[phone.as_str()], 0, "{phone} was known");
        assert_eq!(ids[phone.as_str()], known_ids[phone]);
    }
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
                 AND TABLE_NAME IN ('users', 'identities', 'audit_events', 'event_outbox', \
                 'app_attest_keys') \
                 ORDER BY TABLE_NAME",
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
            (
                "app_attest_keys".into(),
                "InnoDB".into(),
                "utf8mb4_bin".into()
            ),
            ("audit_events".into(), "InnoDB".into(), "utf8mb4_bin".into()),
            ("event_outbox".into(), "InnoDB".into(), "utf8mb4_bin".into()),
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
            ("blocked_at".into(), "datetime(6)".into()),
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
    let session = otpgate::db::login_start(&db, None, LoginSql::Pooled, phone)
        .await
        .expect("start");
    let touches = LoginTouches::start(db.clone(), 16, dropped());
    let (user, created) = otpgate::db::login_finish(&db, session, phone, Utc::now(), &touches)
        .await
        .expect("finish");
    assert!(created && user.phone.as_deref() == Some(phone));
    // A statement for another backend is refused, not run.
    assert!(
        otpgate::db::login_start(&db, None, LoginSql::MariadbReturning, phone)
            .await
            .is_err()
    );
}

/// The login pool reuses its connections without pinging them; one that the server ended while
/// it sat idle fails its statement, which then runs again on a new connection. A login whose
/// request is cancelled in the middle of its statement does not cancel the statement: its
/// connection keeps its slot until the server is done with it, then is reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_pool_replaces_connections_the_server_ended() {
    if !cluster_available() {
        return;
    }
    let LoginPool {
        admin_url,
        name,
        url,
        db,
        hot,
        touches,
    } = login_pool().await;
    let login = |phone: &'static str| {
        let (db, hot, touches) = (db.clone(), &hot, &touches);
        async move {
            let session = otpgate::db::login_start(&db, Some(hot), LoginSql::Postgres, phone)
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
    // connection keeps its slot until the server is done with it.
    let blocker = Database::connect(url.as_str())
        .await
        .expect("second connection");
    let lock = blocker.begin().await.expect("begin");
    lock.execute_unprepared("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let session = otpgate::db::login_start(&db, Some(&hot), LoginSql::Postgres, "+919812340002")
        .await
        .expect("start");
    assert_eq!(
        hot.idle_connections(),
        1,
        "nothing is taken before the statement"
    );
    let finish = otpgate::db::login_finish(&db, session, "+919812340002", Utc::now(), &touches);
    let waited = tokio::time::timeout(std::time::Duration::from_millis(300), finish).await;
    assert!(
        waited.is_err(),
        "the statement waits for the lock: {waited:?}"
    );
    // The backend is still running that statement: its slot stays taken, nothing is reused.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!((hot.idle_connections(), hot.free_slots()), (0, 3));
    lock.commit().await.expect("unlock");
    blocker.close().await.ok();
    // Once the statement is done the connection drains (answers a ping) and is reused.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while (hot.idle_connections(), hot.free_slots()) != (1, 4) {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection never drained"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (again, _) = login("+919812340001")
        .await
        .expect("a login on the drained connection");
    assert_eq!(again.id, first.id);
}

/// Once a login statement failed for want of the database, the next login reaches the database
/// before its code check (`login_start` answers the 503 then, so nothing is charged); once the
/// database is back, logins go as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_login_statement_the_next_login_checks_the_database_first() {
    if !cluster_available() {
        return;
    }
    let LoginPool {
        admin_url,
        name,
        db,
        hot,
        touches,
        ..
    } = login_pool().await;
    let admin = Database::connect(admin_url.as_str()).await.expect("admin");
    let allow = |on: bool| {
        let admin = &admin;
        let name = name.clone();
        async move {
            admin
                .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {on}"))
                .await
                .expect("alter");
            if !on {
                admin
                    .execute_unprepared(&format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = '{name}'"
                    ))
                    .await
                    .expect("terminate");
            }
        }
    };
    let phone = "+919812343001";
    allow(false).await;
    let session = otpgate::db::login_start(&db, Some(&hot), LoginSql::Postgres, phone)
        .await
        .expect("nothing failed yet: the login goes to its statement");
    let failed = otpgate::db::login_finish(&db, session, phone, Utc::now(), &touches).await;
    assert!(
        matches!(failed, Err(sea_orm::DbErr::Conn(_))),
        "a 503: {failed:?}"
    );
    let refused = otpgate::db::login_start(&db, Some(&hot), LoginSql::Postgres, phone).await;
    assert!(
        matches!(refused, Err(sea_orm::DbErr::Conn(_))),
        "refused before the code check: {:?}",
        refused.err()
    );
    allow(true).await;
    let session = otpgate::db::login_start(&db, Some(&hot), LoginSql::Postgres, phone)
        .await
        .expect("the database is back");
    let (_, created) = otpgate::db::login_finish(&db, session, phone, Utc::now(), &touches)
        .await
        .expect("login");
    assert!(created);
    admin.close().await.ok();
}

/// A fresh PostgreSQL database, migrated, with its login pool and login-time writer.
struct LoginPool {
    admin_url: String,
    name: String,
    url: String,
    db: DatabaseConnection,
    hot: HotPool,
    touches: LoginTouches,
}

async fn login_pool() -> LoginPool {
    let (admin_url, name, url) = fresh_postgres_database().await;
    let db = otpgate::db::connect(&url, 4).await.expect("connect");
    otpgate::db::migrate(&db).await.expect("migrate");
    let hot = HotPool::for_database(&db).expect("a login pool on PostgreSQL");
    let touches = LoginTouches::start(db.clone(), 16, dropped());
    LoginPool {
        admin_url,
        name,
        url,
        db,
        hot,
        touches,
    }
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
            let (user, created) =
                otpgate::db::complete_login(&db, None, &phone, Utc::now(), &never)
                    .await
                    .expect("create");
            assert!(created);
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
