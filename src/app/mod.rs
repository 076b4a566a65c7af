//! Builds the application from [`Settings`] and serves it until a shutdown signal: the
//! composition root (layer 8).

pub mod frontdoor;
pub mod listener;
pub mod observe;
mod raw_problem;
pub mod routes;
pub mod state;

pub use routes::routes;
pub use state::{AppState, StartupError};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use poem::Server;

use crate::config::Settings;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};

use listener::{Connections, GuardedAcceptor};
use routes::{connection_policy, metrics_routes, routes_with};

/// How long, at most, the audit events queued when the server stops take to be written.
const FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(5);

/// How long, at most, connections that are open when shutdown starts keep being served (with
/// `Connection: close`) before the server's own graceful shutdown closes the idle ones; at most
/// half the grace. See [`Application::run_until_stopped`].
const LAME_DUCK: Duration = Duration::from_secs(1);

/// A bound, not yet running server (zero2prod's `Application`).
pub struct Application {
    acceptor: TcpAcceptor,
    metrics_acceptor: Option<TcpAcceptor>,
    port: u16,
    metrics_port: Option<u16>,
    state: Arc<AppState>,
}

fn bound_port(acceptor: &TcpAcceptor) -> Result<u16, StartupError> {
    acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().map(|s| s.port()))
        .ok_or_else(|| StartupError::Other("listener has no socket address".into()))
}

impl Application {
    /// Connects everything and binds `HOST:PORT` (and `HOST:METRICS_PORT`; port 0 picks a
    /// free one).
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let metrics_address = settings
            .server
            .metrics_port
            .map(|p| format!("{}:{p}", settings.server.host));
        let state = AppState::build(settings).await?;
        let acceptor = TcpListener::bind(address).into_acceptor().await?;
        let port = bound_port(&acceptor)?;
        let (metrics_acceptor, metrics_port) = match metrics_address {
            Some(address) => {
                let acceptor = TcpListener::bind(address).into_acceptor().await?;
                let port = bound_port(&acceptor)?;
                (Some(acceptor), Some(port))
            }
            None => (None, None),
        };
        Ok(Self {
            acceptor,
            metrics_acceptor,
            port,
            metrics_port,
            state,
        })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The metrics port actually bound, when `METRICS_PORT` is set.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_port
    }

    /// Serves until `shutdown` completes, then drains: the listening socket closes at once
    /// (new connections are refused); connections already open are served for up to
    /// [`LAME_DUCK`] more (or until they are all closed), each HTTP/1 response with
    /// `Connection: close`; then idle connections close and the requests still running get the
    /// rest of `SHUTDOWN_GRACE_SECONDS` to finish. The process is gone within the grace.
    ///
    /// Why the lame-duck second: closing an idle kept-alive connection races with a proxy
    /// sending its next request on it, which the proxy must then answer 502 (a POST that may
    /// have arrived cannot be retried elsewhere). An answer with `Connection: close` ends the
    /// connection without that race.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let grace = self.state.settings.server.shutdown_grace;
        let settings = &self.state.settings;
        let host = match settings.server.host.as_str() {
            "0.0.0.0" | "::" | "[::]" => "localhost",
            other => other,
        };
        let base = if host.contains(':') && !host.starts_with('[') {
            format!("http://[{host}]:{}", self.port)
        } else {
            format!("http://{host}:{}", self.port)
        };
        let docs = if settings.server.docs_enabled {
            format!("{base}/docs")
        } else {
            "off (DOCS_ENABLED=false)".to_string()
        };
        let lame_duck = LAME_DUCK.min(grace / 2);
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            port = self.port,
            metrics_port = self.metrics_port,
            store = %settings.store.redis_shown(),
            database = %settings.store.database_shown(),
            "otpgate {} listening: API at {base}/api/auth, docs at {docs}",
            env!("CARGO_PKG_VERSION")
        );
        let connections = Connections::new(
            connection_policy(&self.state.settings),
            self.state.metrics.clone(),
            true,
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn({
            let connections = connections.clone();
            async move {
                shutdown.await;
                connections.start_draining();
                let until = tokio::time::Instant::now() + lame_duck;
                while connections.open() > 0 && tokio::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let _ = stop_tx.send(true);
            }
        });
        let grace = grace.saturating_sub(lame_duck);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let idle = self.state.settings.server.http_idle_timeout;
        let metrics_server = self.metrics_acceptor.map(|acceptor| {
            // The same caps and deadlines as the main port (it is not behind the front door).
            let connections = Connections::new(
                connection_policy(&self.state.settings),
                self.state.metrics.clone(),
                false,
            );
            let app = metrics_routes(
                self.state.metrics.clone(),
                self.state.settings.server.metrics_token.clone(),
                connections.clone(),
            );
            let acceptor = GuardedAcceptor::new(acceptor, connections);
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move {
                Server::new_with_acceptor(acceptor)
                    .idle_timeout(idle)
                    .run_with_graceful_shutdown(app, stop, Some(grace))
                    .await
            })
        });
        let acceptor = GuardedAcceptor::new(self.acceptor, connections.clone());
        let auth = self.state.auth.clone();
        let app = routes_with(self.state, Some(connections));
        let result = Server::new_with_acceptor(acceptor)
            .idle_timeout(idle)
            .run_with_graceful_shutdown(app, stopped(stop_rx), Some(grace))
            .await;
        if let Some(task) = metrics_server {
            let _ = task.await;
        }
        // The requests are answered; their audit events are written before the process ends.
        auth.flush_events(FLUSH_AT_SHUTDOWN).await;
        result
    }
}
