//! Builds the application from [`Settings`] and serves it until a shutdown signal.

use std::future::Future;
use std::sync::Arc;

use poem::http::header;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::middleware::SetHeader;
use poem::{Endpoint, EndpointExt, Route, Server};
use sea_orm::DatabaseConnection;

use crate::auth::AuthService;
use crate::config::Settings;
use crate::delivery::Delivery;
use crate::error::problem_response;
use crate::ratelimit::{ClientGate, FrontDoor};
use crate::store::{MemoryStore, RedisStore, Store, StoreError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The store could not be set up.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// The listener could not be bound.
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
    /// Anything else that stops the wiring.
    #[error("{0}")]
    Other(String),
}

/// What every request handler can reach.
pub struct AppState {
    /// The settings the server started with.
    pub settings: Settings,
    /// Ephemeral shared state.
    pub store: Arc<dyn Store>,
    /// Users and identities.
    pub db: DatabaseConnection,
    /// The login domain.
    pub auth: Arc<AuthService>,
}

impl AppState {
    /// Connects the store and the database (migrating it when `RUN_MIGRATIONS` is on).
    pub async fn build(settings: Settings) -> Result<Arc<Self>, StartupError> {
        let store: Arc<dyn Store> = match &settings.redis_url {
            Some(url) => Arc::new(RedisStore::new(
                url,
                &settings.redis_key_prefix,
                settings.redis_pool_size,
                settings.redis_timeout,
            )?),
            None => {
                tracing::warn!("REDIS_URL is unset: using the in-process store (one replica only)");
                Arc::new(MemoryStore::new())
            }
        };
        let db =
            crate::db::connect(&settings.database_url, settings.database_max_connections).await?;
        if settings.run_migrations {
            crate::db::migrate(&db).await?;
        }
        if settings.send_otp_via_sms {
            return Err(StartupError::Other(
                "SEND_OTP_VIA_SMS=true: this build has no SMS provider yet (only the development \
                 `log` channel); unset it or set it to false"
                    .into(),
            ));
        }
        let auth = AuthService::new(
            &settings,
            store.clone(),
            db.clone(),
            Delivery::development(),
        )
        .map_err(|e| StartupError::Other(e.to_string()))?;
        tracing::info!(
            database = crate::db::backend_name(&db),
            store = if settings.embedded_store() {
                "memory"
            } else {
                "redis"
            },
            expose_otp = settings.expose_otp,
            "state ready"
        );
        Ok(Arc::new(Self {
            settings,
            store,
            db,
            auth: Arc::new(auth),
        }))
    }
}

/// All routes: the API, its docs and spec, with every error rendered as problem+json.
pub fn routes(state: Arc<AppState>) -> impl Endpoint {
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
    };
    let api = crate::api::service(state);
    let spec = api.spec_endpoint();
    let swagger = api.swagger_ui();
    let redoc = api.redoc();
    Route::new()
        .nest("/docs", swagger)
        .nest("/redoc", redoc)
        .at("/openapi.json", spec)
        .nest(
            "/",
            api.with(gate)
                .with(SetHeader::new().overriding(header::CACHE_CONTROL, "no-store")),
        )
        .catch_all_error(|err| async move { problem_response(err) })
        .with(SetHeader::new().overriding(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
}

/// A bound, not yet running server (zero2prod's `Application`).
pub struct Application {
    acceptor: TcpAcceptor,
    port: u16,
    state: Arc<AppState>,
}

impl Application {
    /// Connects everything and binds `HOST:PORT` (port 0 picks a free one).
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let address = format!("{}:{}", settings.host, settings.port);
        let state = AppState::build(settings).await?;
        let acceptor = TcpListener::bind(address).into_acceptor().await?;
        let port = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().map(|s| s.port()))
            .ok_or_else(|| StartupError::Other("listener has no socket address".into()))?;
        Ok(Self {
            acceptor,
            port,
            state,
        })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` completes, then stops accepting and gives in-flight requests
    /// `SHUTDOWN_GRACE_SECONDS` to finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let grace = self.state.settings.shutdown_grace;
        tracing::info!(port = self.port, "listening");
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(routes(self.state), shutdown, Some(grace))
            .await
    }
}
