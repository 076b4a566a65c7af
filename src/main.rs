//! `otpgate [serve|check|migrate|healthcheck|keygen]`: thin dispatch; the work is in the
//! library.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use otpgate::app::Application;
use otpgate::config::{self, Settings};
use otpgate::keys::{self, SigningAlgorithm};

const USAGE: &str = "usage: otpgate [COMMAND] [--help]

commands:
  serve        run the HTTP server (the default)
  check        check the configuration, report every problem at once, and try Redis and the
               database; exit 2 when the configuration is invalid
  migrate      apply database migrations and exit
  healthcheck  GET /health on the configured port; exit 0 when it answers 200
  keygen       print a new signing key (ES256 or EdDSA), or the public key of one

  otpgate COMMAND --help   what a command does and takes
  otpgate --version        the version

Configuration comes from the environment and an optional .env file in the working directory;
every variable is in .env.example and in README.md (Configuration).";

const SERVE_HELP: &str = "usage: otpgate serve

Runs the HTTP server on HOST:PORT (default 0.0.0.0:8000) with the settings of the environment
and ./.env. Without REDIS_URL and DATABASE_URL it runs embedded: codes and limits in memory,
users in ./otpgate.db (SQLite). The first log lines say where the API and /docs are, and which
store and database are in use. Stops on SIGTERM or Ctrl-C after in-flight requests finish
(SHUTDOWN_GRACE_SECONDS).

A configuration with problems is refused with every problem listed (exit 2); `otpgate check`
shows the same without starting.";

const CHECK_HELP: &str = "usage: otpgate check

Reads the configuration as `serve` would and reports every problem at once, each naming its
variable; warns about variables that look like otpgate's but are not read (misspellings) and
.env lines that do not parse; then tries Redis and the database (6 s each) and warns when one
does not answer, naming the host:port it tried (never a password). Starts nothing, writes
nothing.

Exit status: 0 when the configuration is valid (warnings included), 2 when it is not.";

const MIGRATE_HELP: &str = "usage: otpgate migrate

Applies every pending database migration to DATABASE_URL (PostgreSQL, MySQL/MariaDB or SQLite)
and exits: 0 on success, 2 when the database refuses the configuration (the user or password, a
database that does not exist, a server older than MariaDB 10.5 or MySQL 8.0), 1 otherwise (it
does not answer). Needs only DATABASE_URL, so a migration job carries no other secret. `serve`
migrates at start too unless RUN_MIGRATIONS=false.";

const HEALTHCHECK_HELP: &str = "usage: otpgate healthcheck

GET /health on HOST:PORT (127.0.0.1 when HOST is a wildcard); exit 0 when it answers 200, 1
otherwise. For container HEALTHCHECK lines: the image has no shell or curl.";

const KEYGEN_HELP: &str = "usage: otpgate keygen [--alg ES256|EdDSA] [--public FILE]

Prints a new PKCS#8 private key (PEM) for JWT_PRIVATE_KEY_FILE, ES256 unless --alg says EdDSA.
With --public FILE, prints the public key of the private key in FILE instead (for
JWT_PREVIOUS_PUBLIC_KEY_FILES when rotating keys).

  otpgate keygen --alg ES256 > jwt-key.pem
  otpgate keygen --alg ES256 --public jwt-key.pem > jwt-key.pub.pem";

/// `println!` that does not panic when stdout is closed (`otpgate --help | head -1`).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn is_help(arg: &str) -> bool {
    matches!(arg, "-h" | "--help" | "help")
}

/// mimalloc: a request allocates and frees many blocks of a few kilobytes (futures, buffers),
/// which glibc's allocator serves slowly (no thread cache above 1 KiB); measured in
/// `loadtest/cluster.sh`, with the peak RSS inside its budget.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str);
    let rest = args.get(1..).unwrap_or_default();
    match command {
        Some(arg) if is_help(arg) => {
            say!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("-V" | "--version" | "version") => {
            say!("otpgate {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let help = match command.unwrap_or("serve") {
        "serve" => SERVE_HELP,
        "check" => CHECK_HELP,
        "migrate" => MIGRATE_HELP,
        "healthcheck" => HEALTHCHECK_HELP,
        "keygen" => KEYGEN_HELP,
        other => {
            eprintln!("otpgate: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if rest.iter().any(|a| is_help(a)) {
        say!("{help}");
        return ExitCode::SUCCESS;
    }
    if command != Some("keygen")
        && let Some(extra) = rest.first()
    {
        eprintln!("otpgate: unexpected argument {extra:?}\n\n{help}");
        return ExitCode::from(2);
    }
    match command {
        None | Some("serve") => match Settings::from_env() {
            Ok(settings) => serve(settings).await,
            Err(errors) => {
                for warning in config::lint::environment_warnings() {
                    eprintln!("otpgate: warning: {warning}");
                }
                eprintln!("otpgate: {errors}");
                eprintln!("otpgate: nothing was started; `otpgate check` lists the same problems");
                ExitCode::from(2)
            }
        },
        Some("check") => check().await,
        Some("migrate") => migrate(&config::database_url(config::env_lookup())).await,
        Some("healthcheck") => match config::listen_address(config::env_lookup()) {
            Ok((host, port)) => healthcheck(&host, port),
            Err(err) => {
                eprintln!("otpgate: {err}");
                ExitCode::from(2)
            }
        },
        _ => keygen(rest),
    }
}

async fn serve(settings: Settings) -> ExitCode {
    otpgate::telemetry::init(&settings.server.log_level, settings.server.log_format);
    for warning in config::lint::environment_warnings() {
        tracing::warn!("{warning}");
    }
    let production = settings.environment == config::Environment::Production;
    for warning in settings.otp.test_numbers.production_warnings(production) {
        tracing::warn!("{warning}");
    }
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(error = %err, "start-up failed");
            eprintln!("otpgate: start-up failed: {err}");
            // A database that refuses the configuration (user, password, database name,
            // server version) is a configuration mistake, like a bad variable.
            return if err.is_configuration() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            };
        }
    };
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// `otpgate check`: every configuration problem at once, then whether Redis and the database
/// answer.
async fn check() -> ExitCode {
    let warnings = config::lint::environment_warnings();
    for warning in &warnings {
        say!("warning: {warning}");
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(errors) => {
            for e in &errors.0 {
                say!("error: {}: {}", e.var, e.message);
            }
            say!(
                "configuration invalid: {} error(s), {} warning(s)",
                errors.0.len(),
                warnings.len()
            );
            return ExitCode::from(2);
        }
    };
    let production = settings.environment == config::Environment::Production;
    let test_numbers = settings.otp.test_numbers.production_warnings(production);
    for warning in &test_numbers {
        say!("warning: {warning}");
    }
    let store = &settings.store;
    say!("environment: {:?}", settings.environment);
    say!(
        "listen:      {}:{}",
        settings.server.host,
        settings.server.port
    );
    say!("store:       {}", store.redis_shown());
    say!("database:    {}", store.database_shown());
    let unreachable = otpgate::app::state::probe_backends(&settings).await;
    for problem in &unreachable {
        say!("warning: {problem}");
    }
    say!(
        "configuration valid: {} warning(s)",
        warnings.len() + test_numbers.len() + unreachable.len()
    );
    ExitCode::SUCCESS
}

async fn migrate(database_url: &str) -> ExitCode {
    let result = async {
        let db = otpgate::db::connect(database_url, 1).await?;
        otpgate::db::migrate(&db).await
    }
    .await;
    match result {
        Ok(()) => {
            say!("otpgate: migrations applied");
            ExitCode::SUCCESS
        }
        Err(err) => {
            let text = otpgate::domain::secret::redact_credentials(&err.to_string());
            let database = config::database_shown(database_url);
            eprintln!("otpgate: migration failed: {database}: {text}");
            if err.is_configuration() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn keygen(args: &[String]) -> ExitCode {
    let mut algorithm = SigningAlgorithm::Es256;
    let mut public_of = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match (arg.as_str(), it.next()) {
            ("--alg", Some(name)) => match SigningAlgorithm::parse(name) {
                Some(SigningAlgorithm::Hs256) | None => {
                    eprintln!("otpgate: keygen makes ES256 or EdDSA keys, not {name:?}");
                    return ExitCode::from(2);
                }
                Some(alg) => algorithm = alg,
            },
            ("--public", Some(path)) => public_of = Some(path.clone()),
            _ => {
                eprintln!("otpgate: bad keygen arguments {args:?}\n\n{KEYGEN_HELP}");
                return ExitCode::from(2);
            }
        }
    }
    let result = match public_of {
        Some(path) => std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {path:?}: {e}"))
            .and_then(|pem| keys::public_pem(algorithm, &pem)),
        None => keys::generate_pem(algorithm),
    };
    match result {
        Ok(pem) => {
            let _ = write!(std::io::stdout(), "{pem}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("otpgate: keygen: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A dependency-free probe for container health checks.
fn healthcheck(host: &str, port: u16) -> ExitCode {
    let host = match host {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
        other => other,
    };
    let probe = || -> std::io::Result<bool> {
        let timeout = Duration::from_secs(3);
        let addr = (host, port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
    };
    match probe() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("otpgate: /health did not answer 200");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("otpgate: /health unreachable on {host}:{port}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (Kubernetes).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
