//! The HTTP surface: one poem-openapi struct per area, combined as a tuple. Handlers parse and
//! shape; the domain ([`crate::auth`]) does the work. Nothing here talks to Redis or SQL.

use std::sync::Arc;

use poem_openapi::{OpenApiService, Tags};

use sea_orm::DatabaseConnection;

use crate::auth::AuthService;
use crate::messaging::Messaging;
use crate::store::Store;

pub mod admin;
pub mod auth;
pub mod body;
pub mod health;
pub mod keys;
pub mod messaging;
pub mod oauth;
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
    /// The operator API (`ADMIN_API_KEYS`): users, blocks, sessions.
    Admin,
}

/// The OpenAPI service of every area.
pub type Api = OpenApiService<
    (
        auth::AuthApi,
        messaging::MessagingApi,
        keys::KeysApi,
        health::HealthApi,
        admin::AdminApi,
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
            keys::KeysApi {
                auth: deps.auth.clone(),
            },
            health::HealthApi {
                store: deps.store,
                db: deps.db,
            },
            admin::AdminApi { auth: deps.auth },
        ),
        "otpgate",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "A user proves they own a phone number with a one-time code and receives a JWT access \
         token and a rotating refresh token. Every error is `application/problem+json` \
         (RFC 9457) with a stable `code`.",
    )
}

/// The OpenAPI document as served at `/openapi.json` and embedded in the docs: poem-openapi's,
/// with an example of every problem response, one per code its description lists.
pub fn document(api: &Api) -> String {
    let mut spec: serde_json::Value = match serde_json::from_str(&api.spec()) {
        Ok(spec) => spec,
        Err(_) => return api.spec(),
    };
    if let Some(paths) = spec["paths"].as_object_mut() {
        for operation in paths.values_mut().filter_map(|p| p.as_object_mut()) {
            for op in operation.values_mut() {
                let Some(responses) = op["responses"].as_object_mut() else {
                    continue;
                };
                for response in responses.values_mut() {
                    add_problem_examples(response);
                }
            }
        }
    }
    serde_json::to_string_pretty(&spec).unwrap_or_else(|_| api.spec())
}

/// `examples` for a problem response: one per `` `code` `` its description names.
fn add_problem_examples(response: &mut serde_json::Value) {
    let description = response["description"].as_str().unwrap_or("").to_string();
    // `get_mut`, not indexing: indexing a missing key would add `"content": null` to a
    // response without a body (a 204), which is not valid OpenAPI.
    let Some(media) = response
        .get_mut("content")
        .and_then(|c| c.get_mut(problem::PROBLEM_JSON))
        .and_then(|m| m.as_object_mut())
    else {
        return;
    };
    let mut examples = serde_json::Map::new();
    for code in description.split('`').skip(1).step_by(2) {
        let Some((_, status, title, detail)) =
            problem::PROBLEM_TYPES.iter().find(|(c, ..)| *c == code)
        else {
            continue;
        };
        let mut value = serde_json::json!({
            "type": format!("urn:otpgate:problem:{code}"),
            "title": title,
            "status": status,
            "detail": detail,
            "code": code,
            "request_id": "0d3f6c1e9a7b4d2c8e5f1a2b3c4d5e6f",
        });
        if code == "invalid_field" {
            value["field"] = "otp_code".into();
        }
        examples.insert(
            code.to_string(),
            serde_json::json!({ "summary": title, "value": value }),
        );
    }
    if !examples.is_empty() {
        media.insert("examples".into(), examples.into());
    }
}
