//! The shared state of one replica: the store, the database, the services; built once at
//! start-up from the settings.

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use crate::auth::{AuthConfig, AuthService};
use crate::config::Settings;
use crate::db::SetupError;
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
    /// The database refuses this configuration: the user or password, a database that does not
    /// exist, a server older than otpgate supports (redacted like [`StartupError::Database`]).
    #[error("database: {0}")]
    DatabaseConfig(String),
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

impl StartupError {
    /// Whether the configuration is at fault (exit 2) rather than an outage (exit 1).
    pub fn is_configuration(&self) -> bool {
        matches!(self, StartupError::DatabaseConfig(_))
    }
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

/// The Redis store of `REDIS_URL`, or `None` for the in-process store.
fn redis_store(settings: &Settings) -> Result<Option<Arc<dyn Store>>, StartupError> {
    if settings.store.redis_url.is_none() {
        return Ok(None);
    }
    let store = RedisStore::with_options(&RedisOptions {
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
    })?;
    Ok(Some(store))
}

/// Whether Redis and the database answer within 6 s each: one line per one that does not,
/// naming what was tried (host:port, never a password). For `otpgate check`.
pub async fn probe_backends(settings: &Settings) -> Vec<String> {
    use crate::domain::secret::redact_credentials;
    // Longer than the pool's 5 s connect timeout, so a refused or unreachable port is reported
    // as such rather than as a timeout.
    let limit = std::time::Duration::from_secs(6);
    let mut problems = Vec::new();
    match redis_store(settings) {
        Ok(None) => {}
        Ok(Some(store)) => match tokio::time::timeout(limit, store.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => problems.push(format!(
                "{} does not answer: {}",
                settings.store.redis_shown(),
                redact_credentials(&err.to_string())
            )),
            Err(_) => problems.push(format!(
                "{} does not answer within 6 s",
                settings.store.redis_shown()
            )),
        },
        Err(err) => problems.push(err.to_string()),
    }
    let database = settings.store.database_shown();
    if let Some(file) = settings.store.sqlite_file() {
        // Checked without opening it: `check` creates nothing.
        let path = std::path::Path::new(file);
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        if !path.exists() && !dir.is_dir() {
            problems.push(format!(
                "{database}: the directory {} does not exist",
                dir.display()
            ));
        }
        return problems;
    }
    let answer = async {
        let db = crate::db::connect(settings.store.database_url.expose(), 1).await?;
        crate::db::ping(&db).await?;
        if db.get_database_backend() == sea_orm::DatabaseBackend::MySql {
            let server = crate::db::mysql_server(&db).await?;
            if !server.supported() {
                return Err(SetupError::TooOld { found: server });
            }
        }
        Ok::<(), SetupError>(())
    };
    match tokio::time::timeout(limit, answer).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) if err.is_configuration() => problems.push(format!(
            "{database}: {}",
            redact_credentials(&err.to_string())
        )),
        Ok(Err(err)) => problems.push(format!(
            "{database} does not answer: {}",
            redact_credentials(&err.to_string())
        )),
        Err(_) => problems.push(format!("{database} does not answer within 6 s")),
    }
    problems
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
        let backend: Arc<dyn Store> = match redis_store(&settings)? {
            Some(redis) => redis,
            None => {
                tracing::warn!("REDIS_URL is unset: using the in-process store (one replica only)");
                Arc::new(MemoryStore::new())
            }
        };
        let store: Arc<dyn Store> = Arc::new(Metered::new(backend, metrics.clone()));
        let database = settings.store.database_shown();
        let at = |err: SetupError| {
            let text = format!(
                "{database}: {}",
                crate::domain::secret::redact_credentials(&err.to_string())
            );
            if err.is_configuration() {
                StartupError::DatabaseConfig(text)
            } else {
                StartupError::Database(text)
            }
        };
        let db = crate::db::connect(
            settings.store.database_url.expose(),
            settings.store.database_max_connections,
        )
        .await
        .map_err(|err| at(err.into()))?;
        if settings.store.run_migrations {
            crate::db::migrate(&db).await.map_err(at)?;
        }
        let auth = AuthService::new(
            AuthConfig {
                otp: &settings.otp,
                tokens: &settings.tokens,
                limits: &settings.limits,
                messaging: &settings.messaging,
                app_name: &settings.delivery.app_name,
                admin: &settings.admin,
                events: &settings.events,
                captcha: settings.captcha.as_ref(),
                integrity: settings.integrity.as_ref(),
                app_attest: settings.app_attest.as_ref(),
            },
            store.clone(),
            db.clone(),
            Delivery::from_settings(&settings.delivery).map_err(StartupError::Other)?,
            metrics.clone(),
        )
        .map_err(|e| StartupError::Other(e.to_string()))?;
        let auth = Arc::new(auth);
        {
            // Blocked users' phones get no code: write their marks into the store (an in-process
            // store starts empty; a Redis may have lost them). Retried until the store and the
            // database answer.
            let auth = auth.clone();
            tokio::spawn(async move {
                let mut wait = std::time::Duration::from_millis(500);
                loop {
                    match auth.restore_phone_blocks().await {
                        Ok(0) => break,
                        Ok(n) => {
                            tracing::info!(users = n, "block marks of blocked users restored");
                            break;
                        }
                        Err(err) => {
                            tracing::warn!(error = err.code(), "block marks not restored yet");
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(std::time::Duration::from_secs(30));
                        }
                    }
                }
            });
        }
        if settings.store.run_migrations {
            // The database answered the migrations: choose the login statement now.
            auth.prepare_database()
                .await
                .map_err(|err| at(err.into()))?;
        } else {
            // Not needed to start (`/ready` reports it), but say so now rather than at the
            // first login; the login statement is chosen here when the database answers.
            let db = db.clone();
            let auth = auth.clone();
            let database = database.clone();
            tokio::spawn(async move {
                let ready = async {
                    crate::db::ping(&db).await?;
                    auth.prepare_database().await
                };
                if let Err(err) = ready.await.map_err(SetupError::from) {
                    let error = crate::domain::secret::redact_credentials(&err.to_string());
                    if err.is_configuration() {
                        tracing::warn!(
                            database,
                            error,
                            "the database refuses this configuration; logins get 503 until \
                             DATABASE_URL is fixed"
                        );
                    } else {
                        tracing::warn!(
                            database,
                            error,
                            "the database does not answer; logins get 503 until it does"
                        );
                    }
                }
            });
        }
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
        let twilio_callbacks = settings.delivery.twilio.as_ref().and_then(|t| {
            Some(crate::messaging::receipts::TwilioCallbacks {
                url: t.status_callback.clone()?,
                auth_token: t.auth_token.clone(),
            })
        });
        let messaging = Arc::new(Messaging::new(
            &settings.messaging,
            settings
                .delivery
                .telegram
                .as_ref()
                .map(|t| t.bot_token.clone()),
            twilio_callbacks,
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
