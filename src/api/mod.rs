//! The HTTP surface: one poem-openapi struct per area, combined as a tuple. Handlers parse and
//! shape; the domain ([`crate::auth`]) does the work. Nothing here talks to Redis or SQL.

use std::sync::Arc;

use poem_openapi::{OpenApiService, Tags};

use crate::app::AppState;

pub mod auth;
pub mod health;
pub mod keys;
pub mod messaging;
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

/// Builds the API with its spec metadata.
pub fn service(state: Arc<AppState>) -> Api {
    OpenApiService::new(
        (
            auth::AuthApi {
                auth: state.auth.clone(),
            },
            messaging::MessagingApi {
                auth: state.auth.clone(),
                messaging: state.messaging.clone(),
            },
            keys::KeysApi {
                auth: state.auth.clone(),
            },
            health::HealthApi { state },
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
