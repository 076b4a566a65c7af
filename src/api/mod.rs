//! The HTTP surface: one poem-openapi struct per area, combined as a tuple. Handlers parse and
//! shape; the domain ([`crate::auth`]) does the work. Nothing here talks to Redis or SQL.

use std::sync::Arc;

use poem_openapi::{OpenApiService, Tags};

use sea_orm::DatabaseConnection;

use crate::auth::AuthService;
use crate::messaging::Messaging;
use crate::store::Store;

pub mod auth;
pub mod health;
pub mod keys;
pub mod messaging;
pub mod problem;
pub mod text;

/// Groups of operations in the docs.
#[derive(Tags)]
pub enum ApiTags {
    /// Phone login: codes, tokens, sessions.
    Auth,
    /// Login by WhatsApp or Telegram message, and the Telegram Login Widget.
    Messaging,
    /// Called by WhatsApp and Telegram, not by apps.
    Webhooks,
    /// Liveness and readiness probes.
    Ops,
}

/// The OpenAPI service of every area.
pub type Api = OpenApiService<
    (
        auth::AuthApi,
        messaging::MessagingApi,
        keys::KeysApi,
        health::HealthApi,
    ),
    (),
>;

/// What the API areas need; each area struct keeps its own part.
#[derive(Clone)]
pub struct Deps {
    /// The login domain.
    pub auth: Arc<AuthService>,
    /// Webhooks and the Telegram Login Widget.
    pub messaging: Arc<Messaging>,
    /// Ephemeral shared state (for readiness).
    pub store: Arc<dyn Store>,
    /// The database (for readiness).
    pub db: DatabaseConnection,
}

/// Builds the API with its spec metadata.
pub fn service(deps: Deps) -> Api {
    OpenApiService::new(
        (
            auth::AuthApi {
                auth: deps.auth.clone(),
            },
            messaging::MessagingApi {
                auth: deps.auth.clone(),
                messaging: deps.messaging,
            },
            keys::KeysApi { auth: deps.auth },
            health::HealthApi {
                store: deps.store,
                db: deps.db,
            },
        ),
        "otpgate",
        env!("CARGO_PKG_VERSION"),
    )
    .summary("OTP-only phone login")
    .description(
        "A user proves they own a phone number with a one-time code and receives a JWT access \
         token and a rotating refresh token. Every error is `application/problem+json` \
         (RFC 9457) with a stable `code`.",
    )
}
