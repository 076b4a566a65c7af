//! Builds the application from [`Settings`] and serves it until a shutdown signal.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use poem::http::{StatusCode, header};
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::middleware::SetHeader;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route, Server};
use sea_orm::DatabaseConnection;
use subtle::ConstantTimeEq;

use crate::auth::AuthService;
use crate::config::{Secret, Settings};
use crate::delivery::Delivery;
use crate::error::{Problem, problem_response};
use crate::listener::{ConnectionPolicy, Connections, GuardedAcceptor, TrackRequests};
use crate::messaging::Messaging;
use crate::ratelimit::{ClientGate, FrontDoor};
use crate::store::redis::RedisOptions;
use crate::store::{MemoryStore, Metered, RedisStore, Store, StoreError};
use crate::telemetry::{Metrics, Observe};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The store could not be set up (the text has its URL passwords redacted).
    #[error("store: {0}")]
    Store(String),
    /// The database could not be opened or migrated (the text has its URL passwords
    /// redacted: drivers quote the connection string).
    #[error("database: {0}")]
    Database(String),
    /// The listener could not be bound.
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
    /// The metrics registry could not be built.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Anything else that stops the wiring.
    #[error("{0}")]
    Other(String),
}

impl From<StoreError> for StartupError {
    fn from(err: StoreError) -> Self {
        Self::Store(crate::config::redact_credentials(&err.to_string()))
    }
}

impl From<sea_orm::DbErr> for StartupError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Database(crate::config::redact_credentials(&err.to_string()))
    }
}

/// What every request handler can reach.
pub struct AppState {
    /// The settings the server started with.
    pub settings: Settings,
    /// Ephemeral shared state (timed by [`Metered`]).
    pub store: Arc<dyn Store>,
    /// Users and identities.
    pub db: DatabaseConnection,
    /// The login domain.
    pub auth: Arc<AuthService>,
    /// This app's metrics.
    pub metrics: Arc<Metrics>,
    /// Webhooks and the Telegram Login Widget.
    pub messaging: Arc<Messaging>,
}

impl AppState {
    /// Connects the store and the database (migrating it when `RUN_MIGRATIONS` is on).
    pub async fn build(settings: Settings) -> Result<Arc<Self>, StartupError> {
        let metrics = Metrics::new()?;
        // libphonenumber loads its metadata on first use (about a second in debug builds): load
        // it now rather than in the first user's request.
        let _ = crate::auth::phone::Phone::parse("+14155552671", None);
        let backend: Arc<dyn Store> = match &settings.redis_url {
            Some(_) => RedisStore::with_options(&RedisOptions {
                mode: settings.redis_mode,
                urls: settings
                    .redis_nodes
                    .iter()
                    .map(|u| u.expose().to_string())
                    .collect(),
                sentinel_master: settings.redis_sentinel_master.clone(),
                prefix: settings.redis_key_prefix.clone(),
                connections: settings.redis_pool_size,
                timeout: settings.redis_timeout,
            })?,
            None => {
                tracing::warn!("REDIS_URL is unset: using the in-process store (one replica only)");
                Arc::new(MemoryStore::new())
            }
        };
        let store: Arc<dyn Store> = Arc::new(Metered::new(backend, metrics.clone()));
        let db = crate::db::connect(
            settings.database_url.expose(),
            settings.database_max_connections,
        )
        .await?;
        if settings.run_migrations {
            crate::db::migrate(&db).await?;
        }
        let auth = AuthService::new(
            &settings,
            store.clone(),
            db.clone(),
            Delivery::from_settings(&settings.delivery).map_err(StartupError::Other)?,
            metrics.clone(),
        )
        .map_err(|e| StartupError::Other(e.to_string()))?;
        tracing::info!(
            database = crate::db::backend_name(&db),
            store = if settings.embedded_store() {
                "memory"
            } else {
                settings.redis_mode.name()
            },
            expose_otp = settings.expose_otp,
            "state ready"
        );
        let auth = Arc::new(auth);
        let messaging = Arc::new(Messaging::new(
            &settings,
            auth.clone(),
            store.clone(),
            metrics.clone(),
        ));
        Ok(Arc::new(Self {
            settings,
            store,
            db,
            auth,
            metrics,
            messaging,
        }))
    }
}

/// `GET /metrics`: Prometheus text, behind `METRICS_TOKEN` when one is set.
fn metrics_endpoint(metrics: Arc<Metrics>, token: Option<Secret>) -> impl Endpoint {
    poem::endpoint::make_sync(move |req: Request| -> Response {
        if let Some(token) = &token {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes())) {
                let mut resp = Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "A valid metrics token is required.",
                )
                .into_response();
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                return resp;
            }
        }
        metrics
            .render()
            .with_content_type("text/plain; version=0.0.4; charset=utf-8")
            .into_response()
    })
}

/// How long a client may take to send a request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Buffers request bodies up to `max` bytes (413 beyond, whatever `Content-Length` says or
/// does not say) within [`BODY_READ_TIMEOUT`] (408 after), so a client can neither flood nor
/// trickle.
struct BodyLimit {
    max: usize,
}

impl<E: Endpoint> poem::Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        BodyLimitEndpoint {
            inner: ep,
            max: self.max,
        }
    }
}

struct BodyLimitEndpoint<E> {
    inner: E,
    max: usize,
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> poem::Result<Self::Output> {
        let too_large = || poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max as u64) {
            return Err(too_large());
        }
        if declared != Some(0) && req.method() != poem::http::Method::GET {
            let limit = u64::try_from(self.max)
                .unwrap_or(u64::MAX)
                .saturating_add(1);
            let mut reader = req.take_body().into_async_read().take(limit);
            let mut buf = Vec::new();
            match tokio::time::timeout(BODY_READ_TIMEOUT, reader.read_to_end(&mut buf)).await {
                Err(_) => return Err(poem::Error::from_status(StatusCode::REQUEST_TIMEOUT)),
                Ok(Err(_)) => return Err(poem::Error::from_status(StatusCode::BAD_REQUEST)),
                Ok(Ok(_)) if buf.len() > self.max => return Err(too_large()),
                Ok(Ok(_)) => req.set_body(buf),
            }
        }
        self.inner.call(req).await
    }
}

/// CORS for browser clients: the origins of `CORS_ORIGINS` (`*` = any, development only).
fn cors(origins: &[String]) -> Option<poem::middleware::Cors> {
    if origins.is_empty() {
        return None;
    }
    let cors = poem::middleware::Cors::new()
        .allow_methods([poem::http::Method::GET, poem::http::Method::POST])
        .allow_headers(["authorization", "content-type", "x-request-id"])
        .expose_headers([
            "retry-after",
            "ratelimit",
            "ratelimit-policy",
            "x-request-id",
        ])
        .max_age(600);
    Some(if origins.iter().any(|o| o == "*") {
        cors
    } else {
        cors.allow_origins(origins)
    })
}

/// The methods of every path in the spec (`/api/auth/login` → `POST`), for `Allow` headers and
/// the `route` label of metrics.
fn spec_methods(spec_json: &str) -> HashMap<String, String> {
    let spec: serde_json::Value = serde_json::from_str(spec_json).unwrap_or_default();
    spec["paths"]
        .as_object()
        .map(|paths| {
            paths
                .iter()
                .map(|(path, ops)| {
                    let methods: Vec<String> = ops
                        .as_object()
                        .map(|o| o.keys().map(|m| m.to_ascii_uppercase()).collect())
                        .unwrap_or_default();
                    (path.clone(), methods.join(", "))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The Content-Security-Policy of the documentation pages: their scripts and styles are
/// inline (Swagger UI and Redoc ship as one page); nothing may frame them.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; \
     style-src 'self' 'unsafe-inline' https://fonts.googleapis.com; \
     font-src 'self' data: https://fonts.gstatic.com; img-src 'self' data:; \
     connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'none'";

/// All routes: the API, its docs and spec (when `DOCS_ENABLED`) and `/metrics` (unless it has
/// its own port), with every error rendered as problem+json, every request observed, and the
/// front door on every path but the probes and webhooks.
pub fn routes(state: Arc<AppState>) -> impl Endpoint {
    routes_with(state, None)
}

fn routes_with(state: Arc<AppState>, connections: Option<Arc<Connections>>) -> impl Endpoint {
    let door = FrontDoor::new(
        state.settings.frontdoor_per_second,
        state.settings.frontdoor_burst,
    );
    if let Some(door) = &door {
        door.spawn_sweeper();
    }
    let gate = ClientGate {
        trusted: Arc::new(state.settings.trusted_proxies.clone()),
        door,
        metrics: state.metrics.clone(),
        v6_prefix: state.settings.ipv6_prefix,
    };
    let metrics = state.metrics.clone();
    let settings = state.settings.clone();
    let metrics_here = settings.metrics_port.is_none();
    let token = settings.metrics_token.clone();
    let api = crate::api::service(state);
    let mut allow = spec_methods(&api.spec());
    let mut extra = vec!["/metrics"];
    if settings.docs_enabled {
        extra.extend(["/docs", "/redoc", "/openapi.json"]);
    }
    for path in extra {
        allow.insert(path.to_string(), "GET".to_string());
    }
    let observed = Observe {
        metrics: metrics.clone(),
        routes: Arc::new(
            allow
                .keys()
                .cloned()
                .chain(["/docs/".to_string(), "/redoc/".to_string()])
                .collect(),
        ),
    };
    let allow = Arc::new(allow);
    let mut route = Route::new();
    if settings.docs_enabled {
        let docs_headers = || {
            SetHeader::new()
                .overriding(header::CONTENT_SECURITY_POLICY, DOCS_CSP)
                .overriding(header::X_FRAME_OPTIONS, "DENY")
                .overriding(header::REFERRER_POLICY, "no-referrer")
        };
        route = route
            .nest("/docs", api.swagger_ui().with(docs_headers()))
            .nest("/redoc", api.redoc().with(docs_headers()))
            .at("/openapi.json", api.spec_endpoint());
    }
    if metrics_here {
        route = route.at("/metrics", metrics_endpoint(metrics.clone(), token));
    }
    let cors = cors(&settings.cors_origins);
    let vary = cors.is_some();
    let tracked = connections.is_some();
    route
        .nest(
            "/",
            api.with(SetHeader::new().overriding(header::CACHE_CONTROL, "no-store")),
        )
        .with(BodyLimit {
            max: settings.body_limit_bytes,
        })
        .with(gate)
        .with_if(cors.is_some(), cors.unwrap_or_default())
        // The CORS answer depends on `Origin`: caches must keep one per origin.
        .with_if(vary, SetHeader::new().appending(header::VARY, "Origin"))
        .catch_all_error(|err| async move { problem_response(err) })
        .around(move |ep, req| {
            // RFC 9110: a 405 names the methods the resource supports.
            let methods = allow.get(req.uri().path()).cloned();
            async move {
                let mut resp = ep.call(req).await?;
                if resp.status() == StatusCode::METHOD_NOT_ALLOWED
                    && let Some(value) =
                        methods.and_then(|m| header::HeaderValue::from_str(&m).ok())
                {
                    resp.headers_mut().insert(header::ALLOW, value);
                }
                Ok(resp)
            }
        })
        .with(SetHeader::new().overriding(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .with(observed)
        .with_if(
            tracked,
            TrackRequests {
                connections: connections.unwrap_or_else(|| {
                    Connections::new(connection_policy(&settings), metrics, false)
                }),
            },
        )
}

fn connection_policy(settings: &Settings) -> ConnectionPolicy {
    ConnectionPolicy {
        header_timeout: settings.http_header_timeout,
        max_total: settings.http_max_connections,
        max_per_ip: settings.http_max_connections_per_ip,
        trusted: Arc::new(settings.trusted_proxies.clone()),
        v6_prefix: settings.ipv6_prefix,
        idle_timeout: settings.http_idle_timeout,
    }
}

/// The routes of the separate metrics listener (`METRICS_PORT`).
fn metrics_routes(
    metrics: Arc<Metrics>,
    token: Option<Secret>,
    connections: Arc<Connections>,
) -> impl Endpoint {
    Route::new()
        .at("/metrics", metrics_endpoint(metrics, token))
        .catch_all_error(|err| async move { problem_response(err) })
        .with(TrackRequests { connections })
}

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
        let address = format!("{}:{}", settings.host, settings.port);
        let metrics_address = settings
            .metrics_port
            .map(|p| format!("{}:{p}", settings.host));
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

    /// Serves until `shutdown` completes, then stops accepting and gives in-flight requests
    /// `SHUTDOWN_GRACE_SECONDS` to finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let grace = self.state.settings.shutdown_grace;
        tracing::info!(
            port = self.port,
            metrics_port = self.metrics_port,
            "listening"
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let idle = self.state.settings.http_idle_timeout;
        let metrics_server = self.metrics_acceptor.map(|acceptor| {
            // The same caps and deadlines as the main port (it is not behind the front door).
            let connections = Connections::new(
                connection_policy(&self.state.settings),
                self.state.metrics.clone(),
                false,
            );
            let app = metrics_routes(
                self.state.metrics.clone(),
                self.state.settings.metrics_token.clone(),
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
        let connections = Connections::new(
            connection_policy(&self.state.settings),
            self.state.metrics.clone(),
            true,
        );
        let acceptor = GuardedAcceptor::new(self.acceptor, connections.clone());
        let app = routes_with(self.state, Some(connections));
        let result = Server::new_with_acceptor(acceptor)
            .idle_timeout(idle)
            .run_with_graceful_shutdown(app, stopped(stop_rx), Some(grace))
            .await;
        if let Some(task) = metrics_server {
            let _ = task.await;
        }
        result
    }
}
