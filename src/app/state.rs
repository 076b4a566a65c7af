//! The shared state of one replica: the store, the database, the services; built once at
//! start-up from the settings.

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use crate::auth::{AuthConfig, AuthService};
use crate::config::Settings;
use crate::delivery::Delivery;
use crate::messaging::Messaging;
use crate::store::redis::RedisOptions;
use crate::store::{MemoryStore, Metered, RedisStore, Store, StoreError};
use crate::telemetry::Metrics;

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
        Self::Store(crate::domain::secret::redact_credentials(&err.to_string()))
    }
}

impl From<sea_orm::DbErr> for StartupError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Database(crate::domain::secret::redact_credentials(&err.to_string()))
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
        let _ = crate::domain::phone::Phone::parse("+14155552671", None);
        let backend: Arc<dyn Store> = match &settings.store.redis_url {
            Some(_) => RedisStore::with_options(&RedisOptions {
                mode: settings.store.redis_mode,
                urls: settings
                    .store
                    .redis_nodes
                    .iter()
                    .map(|u| u.expose().to_string())
                    .collect(),
                sentinel_master: settings.store.redis_sentinel_master.clone(),
                prefix: settings.store.redis_key_prefix.clone(),
                connections: settings.store.redis_pool_size,
                timeout: settings.store.redis_timeout,
            })?,
            None => {
                tracing::warn!("REDIS_URL is unset: using the in-process store (one replica only)");
                Arc::new(MemoryStore::new())
            }
        };
        let store: Arc<dyn Store> = Arc::new(Metered::new(backend, metrics.clone()));
        let db = crate::db::connect(
            settings.store.database_url.expose(),
            settings.store.database_max_connections,
        )
        .await?;
        if settings.store.run_migrations {
            crate::db::migrate(&db).await?;
        }
        let auth = AuthService::new(
            AuthConfig {
                otp: &settings.otp,
                tokens: &settings.tokens,
                limits: &settings.limits,
                messaging: &settings.messaging,
                app_name: &settings.delivery.app_name,
            },
            store.clone(),
            db.clone(),
            Delivery::from_settings(&settings.delivery).map_err(StartupError::Other)?,
            metrics.clone(),
        )
        .map_err(|e| StartupError::Other(e.to_string()))?;
        tracing::info!(
            database = crate::db::backend_name(&db),
            store = if settings.store.embedded() {
                "memory"
            } else {
                settings.store.redis_mode.name()
            },
            expose_otp = settings.otp.expose,
            "state ready"
        );
        let auth = Arc::new(auth);
        let messaging = Arc::new(Messaging::new(
            &settings.messaging,
            settings
                .delivery
                .telegram
                .as_ref()
                .map(|t| t.bot_token.clone()),
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
