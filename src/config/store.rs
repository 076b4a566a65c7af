//! Where state lives: the SQL database (users) and Redis (everything ephemeral and shared).

use std::time::Duration;

use super::env::{ConfigError, Vars, invalid};
use crate::domain::secret::Secret;

/// The SQLite file used when `DATABASE_URL` is unset.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://otpgate.db?mode=rwc";

/// How otpgate reaches Redis (`REDIS_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// One Redis (`REDIS_URL` is one URL).
    Standalone,
    /// Redis Cluster (`REDIS_URL` lists seed nodes).
    Cluster,
    /// A primary found through Sentinel (`REDIS_URL` lists the sentinels).
    Sentinel,
}

impl RedisMode {
    /// The mode's name, as `REDIS_MODE` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Cluster => "cluster",
            Self::Sentinel => "sentinel",
        }
    }
}

/// The database and Redis.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `DATABASE_URL`: `postgres://…`, `mysql://…` (MySQL or MariaDB) or `sqlite://…`.
    pub database_url: Secret,
    /// `DATABASE_MAX_CONNECTIONS`: pool size (SQLite always uses 1).
    pub database_max_connections: u32,
    /// `RUN_MIGRATIONS`: migrate the database at start-up.
    pub run_migrations: bool,
    /// `REDIS_URL`: shared store; unset means the in-process store. One URL in standalone
    /// mode, a comma-separated list of seed nodes (cluster) or sentinels (sentinel).
    pub redis_url: Option<Secret>,
    /// `REDIS_MODE`: standalone, cluster or sentinel.
    pub redis_mode: RedisMode,
    /// The URLs of `REDIS_URL`, checked.
    pub redis_nodes: Vec<Secret>,
    /// `REDIS_SENTINEL_MASTER`: the primary's name in sentinel mode.
    pub redis_sentinel_master: Option<String>,
    /// `REDIS_KEY_PREFIX`: prefix of every Redis key, to share one Redis between deployments.
    pub redis_key_prefix: String,
    /// `REDIS_CONNECTIONS`: multiplexed connections per replica (`REDIS_POOL_SIZE` is read too).
    /// One by default: concurrent requests' commands then share writes and reads, and Redis
    /// serves one socket (six alternated pairs at 2,800 flows/s, 2026-11-30: Redis 122–127
    /// against 133–135 µs per flow, flow p50 2.4–2.8 against 3.0–3.5 ms, p99 median 12.8
    /// against 14.1 ms; closed model 5,945–6,088 against 5,777–5,974 flows/s).
    pub redis_pool_size: usize,
    /// `REDIS_TIMEOUT_MS`: upper bound on one store operation.
    pub redis_timeout: Duration,
}

impl StoreSettings {
    pub(crate) fn from_env(env: &Vars<'_>) -> Result<Self, ConfigError> {
        let redis_timeout_ms: u64 = env.ranged("REDIS_TIMEOUT_MS", 1000, 1..=60_000)?;
        let database_url = env
            .get("DATABASE_URL")
            .map(|url| normalize_database_url(&url))
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        if !["postgres://", "mysql://", "sqlite:"]
            .iter()
            .any(|scheme| database_url.starts_with(scheme))
        {
            env.report(invalid(
                "DATABASE_URL",
                format!(
                    "{}: expected postgres://user:password@host:5432/db, \
                     mysql://user:password@host:3306/db (MySQL or MariaDB) or sqlite://file.db",
                    describe_url(&database_url)
                ),
            ));
        }
        let (redis_mode, redis_nodes, redis_sentinel_master) = redis_settings(env)?;
        Ok(Self {
            database_url: Secret::new(database_url),
            database_max_connections: env.parse("DATABASE_MAX_CONNECTIONS", 10)?,
            run_migrations: env.bool("RUN_MIGRATIONS", true)?,
            redis_url: env.get("REDIS_URL").map(Secret::new),
            redis_mode,
            redis_nodes,
            redis_sentinel_master,
            redis_key_prefix: env
                .get("REDIS_KEY_PREFIX")
                .unwrap_or_else(|| "otpgate:".into()),
            redis_pool_size: match env.get("REDIS_CONNECTIONS") {
                Some(_) => env.parse("REDIS_CONNECTIONS", 1)?,
                None => env.parse("REDIS_POOL_SIZE", 1)?,
            },
            redis_timeout: Duration::from_millis(redis_timeout_ms),
        })
    }

    /// Whether the in-process store is in use (no `REDIS_URL`).
    pub fn embedded(&self) -> bool {
        self.redis_url.is_none()
    }

    /// The database for logs and errors: `postgres at host:5432/db`, `mysql at host:3306/db`
    /// (the default port when the URL has none) or `sqlite file otpgate.db`; never a password.
    pub fn database_shown(&self) -> String {
        database_shown(self.database_url.expose())
    }

    /// The file of a SQLite `DATABASE_URL` (`sqlite://x.db?mode=rwc` or `sqlite:x.db`).
    pub fn sqlite_file(&self) -> Option<&str> {
        sqlite_file(self.database_url.expose())
    }

    /// The Redis nodes for logs: `cluster at 10.0.0.1:6379, 10.0.0.2:6379`, never a password;
    /// `memory` for the in-process store.
    pub fn redis_shown(&self) -> String {
        if self.embedded() {
            return "memory (in-process)".into();
        }
        let nodes: Vec<&str> = self
            .redis_nodes
            .iter()
            .map(|u| {
                let rest = u.expose().split_once("://").map_or(u.expose(), |(_, r)| r);
                let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                host.split('/').next().unwrap_or(host)
            })
            .collect();
        format!("redis {} at {}", self.redis_mode.name(), nodes.join(", "))
    }
}

/// `REDIS_MODE`, the URLs of `REDIS_URL` and `REDIS_SENTINEL_MASTER`, checked together.
fn redis_settings(env: &Vars<'_>) -> Result<(RedisMode, Vec<Secret>, Option<String>), ConfigError> {
    let mode = match env
        .get("REDIS_MODE")
        .map(|m| m.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("standalone") => RedisMode::Standalone,
        Some("cluster") => RedisMode::Cluster,
        Some("sentinel") => RedisMode::Sentinel,
        Some(other) => {
            env.report(invalid(
                "REDIS_MODE",
                format!("expected standalone, cluster or sentinel, got {other:?}"),
            ));
            RedisMode::Standalone
        }
    };
    if let Some(prefix) = env.get("REDIS_KEY_PREFIX")
        && prefix.contains(['{', '}'])
    {
        env.report(invalid(
            "REDIS_KEY_PREFIX",
            "must not contain { or }: otpgate places hash tags in its keys itself",
        ));
    }
    let urls = env.list("REDIS_URL");
    if urls.is_empty() {
        if mode != RedisMode::Standalone {
            return Err(invalid(
                "REDIS_URL",
                format!("REDIS_MODE={} needs REDIS_URL", mode.name()),
            ));
        }
        return Ok((mode, Vec::new(), None));
    }
    if mode == RedisMode::Standalone && urls.len() > 1 {
        return Err(invalid(
            "REDIS_URL",
            "standalone mode takes one URL; for a list of nodes set REDIS_MODE=cluster \
             (seed nodes) or REDIS_MODE=sentinel (sentinels)",
        ));
    }
    for url in &urls {
        let shown = describe_url(url);
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(|_| {
            invalid(
                "REDIS_URL",
                format!("{shown} is not a Redis URL (redis://[user:password@]host:port[/db])"),
            )
        })?;
        if !matches!(
            info.addr(),
            redis::ConnectionAddr::Tcp(..) | redis::ConnectionAddr::TcpTls { .. }
        ) && mode != RedisMode::Standalone
        {
            return Err(invalid(
                "REDIS_URL",
                format!("{shown}: cluster and sentinel nodes need host:port addresses"),
            ));
        }
    }
    let master = env
        .get("REDIS_SENTINEL_MASTER")
        .map(|m| m.trim().to_string());
    match (mode, &master) {
        (RedisMode::Sentinel, None) => {
            return Err(invalid(
                "REDIS_SENTINEL_MASTER",
                "REDIS_MODE=sentinel needs the primary's name (as in `sentinel monitor NAME …`)",
            ));
        }
        (RedisMode::Standalone | RedisMode::Cluster, Some(_)) => {
            return Err(invalid(
                "REDIS_SENTINEL_MASTER",
                "only used with REDIS_MODE=sentinel",
            ));
        }
        _ => {}
    }
    Ok((mode, urls.into_iter().map(Secret::new).collect(), master))
}

/// See [`StoreSettings::database_shown`]; also for `otpgate migrate`, which reads only the URL.
pub fn database_shown(url: &str) -> String {
    if let Some(file) = sqlite_file(url) {
        return format!("sqlite file {file}");
    }
    let (scheme, rest) = url.split_once("://").unwrap_or(("database", url));
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    // The user info ends at the last `@` (a password may contain `/`).
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
    let default_port = match scheme {
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        _ => None,
    };
    // `host`, `host:port`, `[v6]` or `[v6]:port`.
    let has_port = match authority.rsplit_once(']') {
        Some((_, after)) => after.starts_with(':'),
        None => authority.contains(':'),
    };
    let authority = match (has_port, default_port, authority.is_empty()) {
        (false, Some(port), false) => format!("{authority}:{port}"),
        (false, Some(port), true) => format!("localhost:{port}"),
        _ => authority.to_string(),
    };
    format!("{scheme} at {authority}/{database}")
}

/// The file part of a SQLite URL.
fn sqlite_file(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    Some(rest.split('?').next().unwrap_or(rest))
}

/// A URL in an error message without anything that could be a password: only its scheme (a
/// malformed value may hold one anywhere, e.g. `user:password@host` without a scheme).
fn describe_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')) =>
        {
            format!("a {scheme}:// URL")
        }
        _ => "a value without a scheme (such as redis:// or postgres://)".to_string(),
    }
}

/// Accepts SQLAlchemy-style URLs from the seed (`postgresql+asyncpg://`, `mysql+aiomysql://`,
/// `sqlite+aiosqlite:///x.db`) and `mariadb://` as a name for `mysql://` (one protocol, one
/// driver), and gives SQLite files `mode=rwc` so they are created on first start.
pub fn normalize_database_url(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = match url.split_once("://") {
        Some(parts) => parts,
        None => return url.to_string(),
    };
    let (base, had_driver) = match scheme.split_once('+') {
        Some((base, _driver)) => (base, true),
        None => (scheme, false),
    };
    let base = match base {
        "postgresql" => "postgres",
        "mariadb" => "mysql",
        other => other,
    };
    if base != "sqlite" {
        return format!("{base}://{rest}");
    }
    // SQLAlchemy's `sqlite:///relative.db` has one slash more than sqlx's `sqlite://relative.db`.
    // Without a driver the URL is read as sqlx reads it (`sqlite:///abs/x.db` is absolute),
    // except the seed's `sqlite:///./x.db` and `sqlite:///../x.db`, which only SQLAlchemy's
    // reading makes sense of (sqlx would put `./x.db` in the root directory).
    let path = if had_driver || rest.starts_with("/./") || rest.starts_with("/../") {
        rest.strip_prefix('/').unwrap_or(rest)
    } else {
        rest
    };
    if path.contains('?') || path.starts_with(":memory:") {
        format!("sqlite://{path}")
    } else {
        format!("sqlite://{path}?mode=rwc")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings_from as settings;

    #[test]
    fn redis_modes_are_checked() {
        let var = |pairs: &[(&str, &str)]| settings(pairs).unwrap_err().first().var;
        let s = settings(&[("REDIS_URL", "redis://:pw@127.0.0.1:6379/2")]).unwrap();
        assert_eq!(s.store.redis_mode, RedisMode::Standalone);
        assert_eq!(s.store.redis_nodes.len(), 1);
        let nodes = "redis://10.0.0.1:6379, redis://10.0.0.2:6379";
        assert_eq!(var(&[("REDIS_URL", nodes)]), "REDIS_URL");
        let c = settings(&[("REDIS_MODE", "cluster"), ("REDIS_URL", nodes)]).unwrap();
        assert_eq!(
            (c.store.redis_mode, c.store.redis_nodes.len()),
            (RedisMode::Cluster, 2)
        );
        assert_eq!(
            var(&[("REDIS_MODE", "sentinel"), ("REDIS_URL", nodes)]),
            "REDIS_SENTINEL_MASTER"
        );
        let s = settings(&[
            ("REDIS_MODE", "Sentinel"),
            ("REDIS_URL", nodes),
            ("REDIS_SENTINEL_MASTER", "mymaster"),
        ])
        .unwrap();
        assert_eq!(s.store.redis_sentinel_master.as_deref(), Some("mymaster"));
        assert_eq!(var(&[("REDIS_MODE", "sharded")]), "REDIS_MODE");
        assert_eq!(var(&[("REDIS_MODE", "cluster")]), "REDIS_URL");
        let bad = settings(&[
            ("REDIS_MODE", "cluster"),
            ("REDIS_URL", "redis://:secretpw@10.0.0.1:6379,http//nope"),
        ])
        .unwrap_err();
        let bad = bad.first();
        assert_eq!(bad.var, "REDIS_URL");
        assert!(!bad.message.contains("secretpw"), "{}", bad.message);
        assert_eq!(
            var(&[
                ("REDIS_URL", "redis://127.0.0.1"),
                ("REDIS_SENTINEL_MASTER", "m")
            ]),
            "REDIS_SENTINEL_MASTER"
        );
        assert_eq!(var(&[("REDIS_KEY_PREFIX", "app{1}:")]), "REDIS_KEY_PREFIX");
    }

    #[test]
    fn seed_database_urls_are_accepted() {
        assert_eq!(
            normalize_database_url("postgresql+asyncpg://u:p@db:5432/app"),
            "postgres://u:p@db:5432/app"
        );
        assert_eq!(
            normalize_database_url("postgresql://h/app"),
            "postgres://h/app"
        );
        assert_eq!(
            normalize_database_url("sqlite+aiosqlite:///./app.db"),
            "sqlite://./app.db?mode=rwc"
        );
        assert_eq!(
            normalize_database_url("sqlite://data/app.db"),
            "sqlite://data/app.db?mode=rwc"
        );
        // The seed's README form: relative to the working directory, as SQLAlchemy reads it.
        assert_eq!(
            normalize_database_url("sqlite:///./app.db"),
            "sqlite://./app.db?mode=rwc"
        );
        assert_eq!(
            normalize_database_url("sqlite:///../app.db"),
            "sqlite://../app.db?mode=rwc"
        );
        // sqlx's absolute form stays absolute.
        assert_eq!(
            normalize_database_url("sqlite:///var/lib/otpgate/app.db"),
            "sqlite:///var/lib/otpgate/app.db?mode=rwc"
        );
        assert_eq!(normalize_database_url("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(
            normalize_database_url("mysql://user:password@localhost/recruitment_db"),
            "mysql://user:password@localhost/recruitment_db"
        );
        assert_eq!(
            normalize_database_url("mysql+aiomysql://u:p@db:3306/app"),
            "mysql://u:p@db:3306/app"
        );
        assert_eq!(
            normalize_database_url("mariadb://u:p@db/app"),
            "mysql://u:p@db/app"
        );
        assert_eq!(
            normalize_database_url("mariadb+mariadbconnector://u:p@db/app"),
            "mysql://u:p@db/app"
        );
    }

    #[test]
    fn the_seeds_mysql_url_is_a_valid_setting() {
        let s = settings(&[(
            "DATABASE_URL",
            "mysql://user:password@localhost/recruitment_db",
        )])
        .unwrap();
        assert_eq!(
            s.store.database_shown(),
            "mysql at localhost:3306/recruitment_db"
        );
        let s = settings(&[(
            "DATABASE_URL",
            "mariadb://u:p@10.0.0.5:3307/otp?ssl-mode=required",
        )])
        .unwrap();
        assert_eq!(
            s.store.database_url.expose(),
            "mysql://u:p@10.0.0.5:3307/otp?ssl-mode=required"
        );
        assert_eq!(s.store.database_shown(), "mysql at 10.0.0.5:3307/otp");
        let err = settings(&[("DATABASE_URL", "mssql://sa:hunter2@db/x")]).unwrap_err();
        let err = err.first();
        assert_eq!(err.var, "DATABASE_URL");
        assert!(err.message.contains("mysql://"), "{}", err.message);
        assert!(!err.message.contains("hunter2"), "{}", err.message);
    }

    #[test]
    fn database_shown_names_host_port_and_database_never_the_password() {
        for (url, shown) in [
            ("postgres://u:p@db:5433/x", "postgres at db:5433/x"),
            ("postgres://u:p@db/x", "postgres at db:5432/x"),
            (
                "mysql://u:p/w@ss@db/x?ssl-mode=required",
                "mysql at db:3306/x",
            ),
            ("mysql://u:p@[::1]:3307/x", "mysql at [::1]:3307/x"),
            ("mysql://u:p@[::1]/x", "mysql at [::1]:3306/x"),
            ("mysql://u@db", "mysql at db:3306/"),
            ("sqlite://otpgate.db?mode=rwc", "sqlite file otpgate.db"),
        ] {
            assert_eq!(database_shown(url), shown, "{url}");
        }
    }
}
