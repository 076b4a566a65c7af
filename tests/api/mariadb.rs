//! The binary on MySQL/MariaDB as ops meet it: `otpgate migrate` twice, and every way the
//! database can refuse a configuration — the wrong password, a database that does not exist,
//! one the user may not use, a server that is down, a server older than otpgate supports —
//! each a clear message naming host, port and database (never the password), exit 2 for a
//! configuration mistake and 1 for an outage.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{otpgate, temp_dir};
use crate::helpers::{MariadbDatabase, fresh_mariadb_database, mariadb_available};

fn run(args: &[&str], url: &str) -> Output {
    otpgate(&temp_dir())
        .args(args)
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("DATABASE_URL", url)
        .output()
        .expect("run")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `mysql://user:password@host:port/name` with another password, and its `host:port`.
fn with_password(database: &MariadbDatabase, password: &str) -> (String, String) {
    let host = database.server.trim_start_matches("mysql://").to_string();
    (
        format!(
            "mysql://{}:{password}@{host}/{}",
            database.user, database.name
        ),
        host,
    )
}

#[test]
fn migrate_exits_0_on_mariadb_twice() {
    if !mariadb_available() {
        return;
    }
    let database = runtime().block_on(fresh_mariadb_database());
    for _ in 0..2 {
        let output = run(&["migrate"], &database.url);
        assert!(output.status.success(), "{}", text(&output));
    }
    // The seed's form of the URL, and MariaDB's name for the scheme, reach the same database.
    let seed_form = database.url.replacen("mysql://", "mysql+aiomysql://", 1);
    let mariadb_form = database.url.replacen("mysql://", "mariadb://", 1);
    for url in [seed_form, mariadb_form] {
        let output = run(&["migrate"], &url);
        assert!(output.status.success(), "{url}: {}", text(&output));
    }
}

#[test]
fn a_wrong_password_exits_2_naming_host_port_and_database() {
    if !mariadb_available() {
        return;
    }
    let database = runtime().block_on(fresh_mariadb_database());
    let (url, host) = with_password(&database, "Wrong-Hunter2-pw");
    for args in [&["migrate"][..], &["serve"]] {
        let output = run(args, &url);
        let all = text(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {all}");
        assert!(
            all.contains(&format!("mysql at {host}/{}", database.name)),
            "{args:?} names host, port and database: {all}"
        );
        assert!(
            all.contains("refused the user or password"),
            "{args:?}: {all}"
        );
        assert!(
            !all.contains("Hunter2"),
            "{args:?} printed the password: {all}"
        );
        assert!(!all.contains("panicked"), "{all}");
    }
    // `check` says the same, as a warning, and exits 0 (the settings themselves are valid).
    let output = run(&["check"], &url);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(
        all.contains(&format!(
            "warning: mysql at {host}/{}: the server refused the user or password",
            database.name
        )),
        "{all}"
    );
    assert!(!all.contains("Hunter2"), "{all}");
}

#[test]
fn a_database_that_does_not_exist_exits_2() {
    if !mariadb_available() {
        return;
    }
    let database = runtime().block_on(fresh_mariadb_database());
    // The admin may see every database: the server says it does not exist.
    let admin = std::env::var("TEST_MARIADB_URL").expect("TEST_MARIADB_URL");
    let (base, _) = admin.rsplit_once('/').expect("admin URL ends with /db");
    let missing = format!("{base}/otpgate_missing_{}", &database.user[1..]);
    let host = database.server.trim_start_matches("mysql://");
    for args in [&["migrate"][..], &["serve"]] {
        let output = run(args, &missing);
        let all = text(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {all}");
        assert!(
            all.contains(&format!(
                "mysql at {host}/otpgate_missing_{}: the database does not exist",
                &database.user[1..]
            )),
            "{args:?}: {all}"
        );
    }
    // A user without rights on it cannot tell; the message says both.
    let other = format!(
        "{}/otpgate_missing_{}",
        database.url.rsplit_once('/').expect("url").0,
        &database.user[1..]
    );
    let output = run(&["migrate"], &other);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(2), "{all}");
    assert!(
        all.contains("the user may not use this database, or it does not exist"),
        "{all}"
    );
    assert!(!all.contains("pw-"), "printed the password: {all}");
}

#[test]
fn a_server_that_is_down_at_start_exits_1_naming_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let url = format!("mysql://otpgate:Down-Hunter2-pw@127.0.0.1:{port}/otpgate");
    let started = Instant::now();
    let output = run(&["serve"], &url);
    let all = text(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "an outage, not a mistake: {all}"
    );
    assert!(
        all.contains(&format!("mysql at 127.0.0.1:{port}/otpgate")),
        "{all}"
    );
    assert!(all.contains("the server is down or unreachable"), "{all}");
    assert!(!all.contains("Hunter2"), "{all}");
    assert!(started.elapsed() < Duration::from_secs(20), "no hang");
}

/// A mariadbd of our own that reports an old version (`--version`), so the check of the
/// server's version meets a real server that claims to be MariaDB 10.3.
#[test]
fn a_server_older_than_supported_exits_2_naming_its_version() {
    if !mariadb_available() {
        return;
    }
    let server = OwnMariadb::start(Some("10.3.39-MariaDB"));
    server.sql("CREATE DATABASE otpgate");
    let url = format!("mysql://root@127.0.0.1:{}/otpgate", server.port);
    let output = run(&["migrate"], &url);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(2), "{all}");
    assert!(
        all.contains(&format!(
            "mysql at 127.0.0.1:{}/otpgate: the server is MariaDB 10.3.39; otpgate needs \
             MariaDB 10.5 or MySQL 8.0 or newer",
            server.port
        )),
        "{all}"
    );
    let output = run(&["check"], &url);
    let all = text(&output);
    assert!(all.contains("the server is MariaDB 10.3.39"), "{all}");
    // Nothing was created on it.
    assert_eq!(
        server.sql("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'otpgate'"),
        "0"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// A throwaway MariaDB server in a temporary directory (as the `mysql` user when we are root),
/// stopped and removed on drop.
struct OwnMariadb {
    child: Child,
    dir: PathBuf,
    port: u16,
}

fn program(name: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
    {
        let path = Path::new(dir).join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!("{name} not found (scripts/test.sh installs mariadb-server)");
}

impl OwnMariadb {
    fn start(version: Option<&str>) -> Self {
        let dir = temp_dir();
        let root = std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0;
        let user: &[&str] = if root { &["--user=mysql"] } else { &[] };
        if root {
            Command::new("chown")
                .args(["mysql", dir.to_str().expect("utf-8 dir")])
                .status()
                .expect("chown");
        }
        let data = dir.join("data");
        let status = Command::new(program("mariadb-install-db"))
            .arg("--no-defaults")
            .args(user)
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mariadb-install-db");
        assert!(status.success(), "mariadb-install-db failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let mut cmd = Command::new(program("mariadbd"));
        cmd.arg("--no-defaults")
            .args(user)
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .arg(format!("--port={port}"))
            .args(["--bind-address=127.0.0.1", "--skip-name-resolve"])
            .args(["--innodb-buffer-pool-size=16M", "--skip-innodb-doublewrite"])
            .args([
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-flush-method=nosync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(version) = version {
            cmd.arg(format!("--version={version}"));
        }
        let child = cmd.spawn().expect("mariadbd");
        let server = OwnMariadb { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start: {}",
                std::fs::read_to_string(server.dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Runs `statement` as root over the socket; its single value, if any.
    fn sql(&self, statement: &str) -> String {
        let output = Command::new(program("mariadb"))
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .args(["-uroot", "-N", "-B", "-e", statement])
            .output()
            .expect("mariadb client");
        assert!(output.status.success(), "{statement}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl Drop for OwnMariadb {
    fn drop(&mut self) {
        // SIGTERM: a clean, quick shutdown (nothing here is worth keeping).
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
