//! `spawn_app` and friends: apps on port 0, a fresh SQLite file, PostgreSQL database or MariaDB
//! database (with a user of its own) per app pair, a fresh Redis key prefix per test.

use std::collections::HashMap;
use std::sync::LazyLock;

use otpgate::app::Application;
use otpgate::config::Settings;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use uuid::Uuid;

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var("TEST_LOG").is_ok() {
        let settings = Settings::from_lookup(|k| (k == "LOG_LEVEL").then(|| "debug".into()))
            .expect("settings");
        otpgate::telemetry::init(&settings.server.log_level, settings.server.log_format);
    }
});

/// Where the shared state of a test app lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In-process store + SQLite: one instance (both handles point at it).
    Embedded,
    /// Real Redis + PostgreSQL: two instances sharing them.
    Cluster,
    /// A real 6-node Redis Cluster (`REDIS_MODE=cluster`) + PostgreSQL: two instances.
    RedisCluster,
    /// Real Redis + MariaDB (`mysql://`): two instances sharing them.
    Mariadb,
}

impl Backend {
    /// Whether two app instances share real servers.
    pub fn shared(self) -> bool {
        self != Backend::Embedded
    }
}

/// Whether the real backends and the checking tools are required rather than optional: under
/// `OTPGATE_REQUIRE_BACKENDS` (set by scripts/test.sh) or `CI`, a missing one fails the test
/// instead of skipping it.
pub fn backends_required() -> bool {
    std::env::var_os("OTPGATE_REQUIRE_BACKENDS").is_some() || std::env::var_os("CI").is_some()
}

/// The Redis Cluster variant when `TEST_REDIS_CLUSTER_URL` (the seed nodes) is set; required,
/// like the others, under `OTPGATE_REQUIRE_BACKENDS` or `CI`.
pub fn redis_cluster_available() -> bool {
    if std::env::var("TEST_REDIS_CLUSTER_URL").is_err() {
        if backends_required() {
            panic!(
                "TEST_REDIS_CLUSTER_URL must be set (run scripts/test.sh, which starts a Redis \
                 Cluster)"
            );
        }
        eprintln!("skipping the Redis Cluster variant: run scripts/test.sh to include it");
        return false;
    }
    cluster_available()
}

/// The cluster backend when its servers are configured. Missing servers fail the test when
/// `OTPGATE_REQUIRE_BACKENDS` or `CI` is set, so CI cannot skip them silently.
pub fn cluster_available() -> bool {
    let configured =
        std::env::var("TEST_REDIS_URL").is_ok() && std::env::var("TEST_POSTGRES_URL").is_ok();
    if !configured {
        if backends_required() {
            panic!(
                "TEST_REDIS_URL and TEST_POSTGRES_URL must be set (run scripts/test.sh, which \
                 starts redis-server and PostgreSQL)"
            );
        }
        eprintln!("skipping the Redis + PostgreSQL variant: run scripts/test.sh to include it");
    }
    configured
}

/// The MariaDB variant when `TEST_MARIADB_URL` (an admin URL) and `TEST_REDIS_URL` are set;
/// required, like the others, under `OTPGATE_REQUIRE_BACKENDS` or `CI`.
pub fn mariadb_available() -> bool {
    let configured =
        std::env::var("TEST_MARIADB_URL").is_ok() && std::env::var("TEST_REDIS_URL").is_ok();
    if !configured {
        if backends_required() {
            panic!(
                "TEST_MARIADB_URL and TEST_REDIS_URL must be set (run scripts/test.sh, which \
                 starts MariaDB and redis-server)"
            );
        }
        eprintln!("skipping the Redis + MariaDB variant: run scripts/test.sh to include it");
    }
    configured
}

/// Runs each named scenario `async fn name(backend: Backend)` on every backend: embedded,
/// standalone Redis + PostgreSQL, Redis Cluster + PostgreSQL, standalone Redis + MariaDB.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Embedded).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::helpers::cluster_available() {
                        super::$name($crate::helpers::Backend::Cluster).await
                    }
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::helpers::redis_cluster_available() {
                        super::$name($crate::helpers::Backend::RedisCluster).await
                    }
                }
            )*
        }
        mod mariadb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::helpers::mariadb_available() {
                        super::$name($crate::helpers::Backend::Mariadb).await
                    }
                }
            )*
        }
    };
}

/// Runs each named scenario `async fn name(backend: Backend)` on the SQL servers the tests can
/// take away (two instances each, standalone Redis): `sql::postgres::name`, `sql::mariadb::name`.
#[macro_export]
macro_rules! on_sql_servers {
    ($($name:ident),* $(,)?) => {
        mod sql {
            mod postgres {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        if $crate::helpers::cluster_available() {
                            super::super::$name($crate::helpers::Backend::Cluster).await
                        }
                    }
                )*
            }
            mod mariadb {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        if $crate::helpers::mariadb_available() {
                            super::super::$name($crate::helpers::Backend::Mariadb).await
                        }
                    }
                )*
            }
        }
    };
}

/// Two handles on the app (two instances on the cluster backend, one on embedded).
pub struct TestApp {
    /// Base URL of instance A.
    pub a: String,
    /// Base URL of instance B.
    pub b: String,
    /// The HTTP client.
    pub client: reqwest::Client,
    /// The PostgreSQL database of a cluster app (admin URL, database name).
    pub postgres: Option<(String, String)>,
    /// The MariaDB database of a MariaDB app.
    pub mariadb: Option<MariadbDatabase>,
    /// Base URL of instance A's metrics listener, when `METRICS_PORT` is set.
    pub metrics: Option<String>,
    /// The database URL the instances share.
    pub database_url: String,
    /// The settings instance B started with (for more replicas).
    pub env: HashMap<String, String>,
}

/// A valid Indian mobile number (`+91 9…`) that no other test uses.
pub fn unique_phone() -> String {
    format!("+919{:09}", Uuid::new_v4().as_u128() % 1_000_000_000)
}

/// Starts the app with default test settings plus `overrides`.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &[]).await
}

/// Starts the app with `overrides` on top of the test defaults.
pub async fn spawn_app_with(backend: Backend, overrides: &[(&str, &str)]) -> TestApp {
    LazyLock::force(&TRACING);
    let mut env: HashMap<String, String> = HashMap::from([
        ("HOST".into(), "127.0.0.1".into()),
        ("PORT".into(), "0".into()),
        ("EXPOSE_OTP".into(), "true".into()),
        (
            "JWT_SECRET_KEY".into(),
            "test-secret-test-secret-test-secret".into(),
        ),
        ("SHUTDOWN_GRACE_SECONDS".into(), "1".into()),
    ]);
    let mut postgres = None;
    let mut mariadb = None;
    match backend {
        Backend::Embedded => {
            let file = std::env::temp_dir().join(format!("otpgate-test-{}.db", Uuid::new_v4()));
            env.insert(
                "DATABASE_URL".into(),
                format!("sqlite://{}?mode=rwc", file.display()),
            );
        }
        Backend::Cluster | Backend::RedisCluster => {
            if backend == Backend::RedisCluster {
                env.insert("REDIS_MODE".into(), "cluster".into());
                env.insert(
                    "REDIS_URL".into(),
                    std::env::var("TEST_REDIS_CLUSTER_URL").expect("TEST_REDIS_CLUSTER_URL"),
                );
            } else {
                env.insert(
                    "REDIS_URL".into(),
                    std::env::var("TEST_REDIS_URL").expect("TEST_REDIS_URL"),
                );
            }
            env.insert(
                "REDIS_KEY_PREFIX".into(),
                format!("test:{}:", Uuid::new_v4().simple()),
            );
            let (admin_url, name, url) = fresh_postgres_database().await;
            env.insert("DATABASE_URL".into(), url);
            postgres = Some((admin_url, name));
            env.insert("DATABASE_MAX_CONNECTIONS".into(), "4".into());
        }
        Backend::Mariadb => {
            env.insert(
                "REDIS_URL".into(),
                std::env::var("TEST_REDIS_URL").expect("TEST_REDIS_URL"),
            );
            env.insert(
                "REDIS_KEY_PREFIX".into(),
                format!("test:{}:", Uuid::new_v4().simple()),
            );
            let database = fresh_mariadb_database().await;
            env.insert("DATABASE_URL".into(), database.url.clone());
            env.insert("DATABASE_MAX_CONNECTIONS".into(), "4".into());
            mariadb = Some(database);
        }
    }
    for (k, v) in overrides {
        env.insert(k.to_string(), v.to_string());
    }
    let database_url = env["DATABASE_URL"].clone();
    let (a, metrics) = start(&env).await;
    // The second replica does not migrate, as in a deployment with a migration job.
    let mut env_b = env.clone();
    env_b.insert("RUN_MIGRATIONS".into(), "false".into());
    let b = if backend.shared() {
        start(&env_b).await.0
    } else {
        a.clone()
    };
    TestApp {
        a,
        b,
        client: reqwest::Client::new(),
        postgres,
        mariadb,
        metrics,
        database_url,
        env: env_b,
    }
}

async fn start(env: &HashMap<String, String>) -> (String, Option<String>) {
    let settings = Settings::from_lookup(|k| env.get(k).cloned()).expect("test settings");
    let app = Application::build(settings).await.expect("app starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    let metrics = app.metrics_port().map(|p| format!("http://127.0.0.1:{p}"));
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    (base, metrics)
}

/// A new, empty PostgreSQL database on the test server: (admin URL, name, URL).
pub async fn fresh_postgres_database() -> (String, String, String) {
    let admin_url = std::env::var("TEST_POSTGRES_URL").expect("TEST_POSTGRES_URL");
    let name = format!("otpgate_test_{}", Uuid::new_v4().simple());
    let admin = Database::connect(&admin_url)
        .await
        .expect("connect to the test PostgreSQL");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    admin.close().await.ok();
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("TEST_POSTGRES_URL ends with /dbname");
    let url = format!("{base}/{name}");
    (admin_url, name, url)
}

/// A MariaDB database of its own and a user of its own (so a test can lock the user out, as
/// PostgreSQL's tests refuse connections to their database).
#[derive(Debug, Clone)]
pub struct MariadbDatabase {
    /// `TEST_MARIADB_URL`: a user that may create databases and users.
    pub admin_url: String,
    /// The database.
    pub name: String,
    /// The user, `'user'@'%'`, with every privilege on the database and none elsewhere.
    pub user: String,
    /// `mysql://user:password@host:port/name`.
    pub url: String,
    /// `mysql://…` of the server, without user or database: `mysql://host:port`.
    pub server: String,
}

/// A new, empty MariaDB database with its own user on the test server. The database gets the
/// server's default character set (latin1 here, as on many installations): the migrations
/// must make their tables utf8mb4 themselves.
pub async fn fresh_mariadb_database() -> MariadbDatabase {
    let admin_url = std::env::var("TEST_MARIADB_URL").expect("TEST_MARIADB_URL");
    let id = Uuid::new_v4().simple().to_string();
    let name = format!("otpgate_test_{id}");
    let user = format!("u{}", &id[..16]);
    let password = format!("pw-{}", Uuid::new_v4().simple());
    let admin = Database::connect(&admin_url)
        .await
        .expect("connect to the test MariaDB");
    for statement in [
        format!("CREATE DATABASE `{name}`"),
        format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"),
        format!("GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'%'"),
    ] {
        admin
            .execute_unprepared(&statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    admin.close().await.ok();
    let host = admin_url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@').map_or(Some(rest), |(_, h)| Some(h)))
        .and_then(|rest| rest.split('/').next())
        .expect("TEST_MARIADB_URL is mysql://user@host:port/db")
        .to_string();
    MariadbDatabase {
        url: format!("mysql://{user}:{password}@{host}/{name}"),
        server: format!("mysql://{host}"),
        admin_url,
        name,
        user,
    }
}

impl MariadbDatabase {
    /// Locks this database's user out (`ACCOUNT LOCK`) and ends its connections (`false`), or
    /// lets it in again (`true`): the app sees its database go away and come back.
    pub async fn set_connections(&self, allow: bool) {
        let admin = Database::connect(self.admin_url.as_str())
            .await
            .expect("admin connection");
        let lock = if allow { "UNLOCK" } else { "LOCK" };
        admin
            .execute_unprepared(&format!("ALTER USER '{}'@'%' ACCOUNT {lock}", self.user))
            .await
            .expect("alter user");
        if !allow {
            let rows = admin
                .query_all_raw(sea_orm::Statement::from_string(
                    sea_orm::DatabaseBackend::MySql,
                    format!(
                        "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{}'",
                        self.user
                    ),
                ))
                .await
                .expect("list connections");
            for row in rows {
                let id: i64 = row.try_get("", "ID").expect("connection id");
                // A connection may end by itself meanwhile.
                let _ = admin
                    .execute_unprepared(&format!("KILL CONNECTION {id}"))
                    .await;
            }
        }
        admin.close().await.ok();
    }
}

/// A response as the tests look at it.
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// Parsed JSON body (`Value::Null` when not JSON).
    pub body: Value,
}

impl Reply {
    /// The `code` of a problem body.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json error with this status and code.
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "status of {}", self.body);
        assert_eq!(self.code(), code, "code of {}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "content type of {}",
            self.body
        );
        assert_eq!(self.body["status"], json!(status));
        assert!(self.body["type"].is_string() && self.body["title"].is_string());
        assert!(self.body["detail"].is_string());
    }
}

impl TestApp {
    /// Starts one more replica on the same database (and Redis), with `overrides`; its base URL.
    pub async fn start_replica(&self, overrides: &[(&str, &str)]) -> String {
        let mut env = self.env.clone();
        for (k, v) in overrides {
            env.insert(k.to_string(), v.to_string());
        }
        start(&env).await.0
    }

    /// Makes the app's PostgreSQL or MariaDB database refuse (`false`) or accept (`true`)
    /// connections; refusing also ends the connections the app holds.
    pub async fn set_database_connections(&self, allow: bool) {
        if let Some(mariadb) = &self.mariadb {
            return mariadb.set_connections(allow).await;
        }
        let (admin_url, name) = self.postgres.as_ref().expect("a cluster app");
        let admin = Database::connect(admin_url.as_str())
            .await
            .expect("admin connection");
        admin
            .execute_unprepared(&format!(
                "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {allow}"
            ))
            .await
            .expect("alter database");
        if !allow {
            admin
                .execute_unprepared(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
                ))
                .await
                .expect("terminate connections");
        }
        admin.close().await.ok();
    }

    /// Sends `method path` with an optional JSON body and bearer token to `base`.
    pub async fn call(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        bearer: Option<&str>,
    ) -> Reply {
        let mut req = self.client.request(method, format!("{base}{path}"));
        if let Some(body) = body {
            req = req.json(&body);
        }
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body read");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    /// POST JSON to `base`.
    pub async fn post(&self, base: &str, path: &str, body: Value) -> Reply {
        self.call(base, reqwest::Method::POST, path, Some(body), None)
            .await
    }

    /// `POST /api/auth/login` on `base`.
    pub async fn login(&self, base: &str, phone: &str) -> Reply {
        self.post(base, "/api/auth/login", json!({ "phone": phone }))
            .await
    }

    /// Login that must succeed; returns the exposed code.
    pub async fn login_code(&self, base: &str, phone: &str) -> String {
        let reply = self.login(base, phone).await;
        assert_eq!(reply.status, 200, "login: {}", reply.body);
        reply.body["otp_code"]
            .as_str()
            .expect("otp_code exposed")
            .to_string()
    }

    /// `POST /api/auth/verify-otp` on `base`.
    pub async fn verify(&self, base: &str, phone: &str, code: &str) -> Reply {
        self.post(
            base,
            "/api/auth/verify-otp",
            json!({ "phone": phone, "otp_code": code }),
        )
        .await
    }

    /// Login + verify that must succeed; returns the token response.
    pub async fn sign_in(&self, phone: &str) -> Value {
        let code = self.login_code(&self.a, phone).await;
        let reply = self.verify(&self.b, phone, &code).await;
        assert_eq!(reply.status, 200, "verify: {}", reply.body);
        reply.body
    }

    /// `POST /api/auth/refresh-token` on `base`.
    pub async fn refresh(&self, base: &str, refresh_token: &str) -> Reply {
        self.post(
            base,
            "/api/auth/refresh-token",
            json!({ "refresh_token": refresh_token }),
        )
        .await
    }

    /// `GET /api/auth/me` on `base`.
    pub async fn me(&self, base: &str, access_token: &str) -> Reply {
        self.call(
            base,
            reqwest::Method::GET,
            "/api/auth/me",
            None,
            Some(access_token),
        )
        .await
    }

    /// `POST /api/auth/logout` on `base`.
    pub async fn logout(&self, base: &str, access_token: &str) -> Reply {
        self.call(
            base,
            reqwest::Method::POST,
            "/api/auth/logout",
            None,
            Some(access_token),
        )
        .await
    }
}

/// A field of a token response as a string.
pub fn field<'a>(body: &'a Value, name: &str) -> &'a str {
    body[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} missing in {body}"))
}

/// Sends `n` requests at once, alternating between the two instances; their statuses.
pub async fn statuses_in_parallel<F, Fut>(
    app: &std::sync::Arc<TestApp>,
    n: usize,
    request: F,
) -> Vec<u16>
where
    F: Fn(std::sync::Arc<TestApp>, String) -> Fut,
    Fut: std::future::Future<Output = Reply> + Send + 'static,
{
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let base = if i % 2 == 0 {
                app.a.clone()
            } else {
                app.b.clone()
            };
            tokio::spawn(request(app.clone(), base))
        })
        .collect();
    let mut statuses = Vec::with_capacity(n);
    for task in tasks {
        statuses.push(task.await.expect("request task").status);
    }
    statuses
}
