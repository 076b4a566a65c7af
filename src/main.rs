//! `otpgate [serve|migrate|healthcheck]`: thin dispatch; the work is in the library.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use otpgate::app::Application;
use otpgate::config::{self, Settings};
use otpgate::keys::{self, SigningAlgorithm};

const USAGE: &str = "usage: otpgate [serve|migrate|healthcheck|keygen]

  serve        run the HTTP server (the default)
  migrate      apply database migrations and exit
  healthcheck  GET /health on the configured port; exit 0 when it answers 200
  keygen [--alg ES256|EdDSA] [--public FILE]
               print a new PKCS#8 private key for JWT_PRIVATE_KEY_FILE, or, with --public,
               the public key of FILE (for JWT_PREVIOUS_PUBLIC_KEY_FILES when rotating)

Configuration comes from the environment and an optional .env file (see README.md).";

#[tokio::main]
async fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    if matches!(command.as_deref(), Some("-h" | "--help" | "help")) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if matches!(command.as_deref(), Some("-V" | "--version")) {
        println!("otpgate {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    match command.as_deref() {
        None | Some("serve") => match Settings::from_env() {
            Ok(settings) => serve(settings).await,
            Err(err) => {
                eprintln!("otpgate: {err}");
                ExitCode::from(2)
            }
        },
        Some("migrate") => migrate(&config::database_url(config::env_lookup())).await,
        Some("healthcheck") => match config::listen_address(config::env_lookup()) {
            Ok((host, port)) => healthcheck(&host, port),
            Err(err) => {
                eprintln!("otpgate: {err}");
                ExitCode::from(2)
            }
        },
        Some("keygen") => keygen(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some(other) => {
            eprintln!("otpgate: unknown command {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn serve(settings: Settings) -> ExitCode {
    otpgate::telemetry::init(&settings.server.log_level, settings.server.log_format);
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(error = %err, "start-up failed");
            eprintln!("otpgate: start-up failed: {err}");
            return ExitCode::FAILURE;
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

async fn migrate(database_url: &str) -> ExitCode {
    let result = async {
        let db = otpgate::db::connect(database_url, 1).await?;
        otpgate::db::migrate(&db).await
    }
    .await;
    match result {
        Ok(()) => {
            println!("otpgate: migrations applied");
            ExitCode::SUCCESS
        }
        Err(err) => {
            let err = otpgate::domain::secret::redact_credentials(&err.to_string());
            eprintln!("otpgate: migration failed: {err}");
            ExitCode::FAILURE
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
                eprintln!("otpgate: bad keygen arguments\n\n{USAGE}");
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
            print!("{pem}");
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
