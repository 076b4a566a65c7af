//! Liveness (`/health`, no I/O) and readiness (`/ready`, store and database) probes.

use std::sync::Arc;
use std::time::Duration;

use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object};

use sea_orm::DatabaseConnection;

use super::ApiTags;
use crate::store::Store;

/// Upper bound on each readiness check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Probes for load balancers and Kubernetes.
pub struct HealthApi {
    /// Checked by `/ready`.
    pub store: Arc<dyn Store>,
    /// Checked by `/ready`.
    pub db: DatabaseConnection,
}

/// The process is up.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Whether each dependency answers.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    /// `ok` or `unavailable`: Redis or the in-process store.
    pub store: String,
    /// `ok` or `unavailable`: the SQL database.
    pub database: String,
}

impl Example for Health {
    fn example() -> Self {
        Health {
            status: "ok".into(),
        }
    }
}

impl Example for Readiness {
    fn example() -> Self {
        Readiness {
            status: "ready".into(),
            store: "ok".into(),
            database: "ok".into(),
        }
    }
}

/// Liveness answer.
#[derive(ApiResponse)]
pub enum HealthResponse {
    /// The process is up (nothing else is checked).
    #[oai(status = 200)]
    Up(Json<Health>),
}

/// Readiness answer.
#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Store and database answer.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// A dependency does not answer; the body says which.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

fn status(ok: bool) -> String {
    if ok { "ok" } else { "unavailable" }.to_string()
}

#[poem_openapi::OpenApi(tag = "ApiTags::Ops")]
impl HealthApi {
    /// Liveness: answers without touching any dependency.
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> HealthResponse {
        HealthResponse::Up(Json(Health {
            status: "ok".into(),
        }))
    }

    /// Readiness: checks the store and the database, each within 2 s.
    #[oai(path = "/ready", method = "get", operation_id = "ready")]
    async fn ready(&self) -> ReadyResponse {
        let store = tokio::time::timeout(CHECK_TIMEOUT, self.store.ping());
        let database = tokio::time::timeout(CHECK_TIMEOUT, crate::db::ping(&self.db));
        let (store, database) = tokio::join!(store, database);
        let store_ok = matches!(store, Ok(Ok(())));
        let database_ok = matches!(database, Ok(Ok(())));
        if !store_ok {
            tracing::warn!("readiness: store unavailable");
        }
        if !database_ok {
            tracing::warn!("readiness: database unavailable");
        }
        let body = Readiness {
            status: if store_ok && database_ok {
                "ready"
            } else {
                "not_ready"
            }
            .into(),
            store: status(store_ok),
            database: status(database_ok),
        };
        if store_ok && database_ok {
            ReadyResponse::Ready(Json(body))
        } else {
            ReadyResponse::NotReady(Json(body))
        }
    }
}
