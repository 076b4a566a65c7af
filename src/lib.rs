//! otpgate: OTP-only phone login for high-traffic mobile apps.
//!
//! A user proves they own a phone number with a one-time code and receives a short-lived JWT
//! access token plus a rotating refresh token. Replicas are stateless: everything they share
//! lives in the [`store`] (Redis, or an in-process map for a single embedded server) and in
//! the SQL database behind [`db`] (PostgreSQL or MySQL/MariaDB, or SQLite when embedded).
//!
//! # Layout: layers that import only downward
//!
//! A module imports only from layers below it (`tests/api/layers.rs` checks it):
//!
//! 1. [`domain`] (plain types and rules), [`keys`] (JWT keys, JWKS), [`telemetry`] (logs,
//!    request ids, metrics).
//! 2. [`config`]: [`config::Settings`], one section per concern, read from the environment.
//! 3. [`store`] (ephemeral shared state: Redis or in-process), [`db`] (SeaORM), [`delivery`]
//!    (one `Sender` per channel).
//! 4. [`error`]: the error enum and its stable codes; no HTTP types.
//! 5. [`auth`]: the login domain: codes, tokens, sessions, login intents.
//! 6. [`messaging`]: WhatsApp and Telegram webhooks, the Telegram Login Widget.
//! 7. [`api`]: the only place that knows HTTP: poem-openapi handlers and problem documents.
//! 8. [`app`]: the composition root: state, routes, middleware, the listener, serving.
#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::await_holding_lock
)]

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod delivery;
pub mod domain;
pub mod error;
pub mod keys;
pub mod messaging;
pub mod store;
pub mod telemetry;
