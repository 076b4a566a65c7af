//! otpgate: OTP-only phone login for high-traffic mobile apps.
//!
//! A user proves they own a phone number with a one-time code and receives a short-lived JWT
//! access token plus a rotating refresh token. Replicas are stateless: everything they share
//! lives in the [`store`] (Redis, or an in-process map for a single embedded server) and in
//! the SQL database behind [`db`] (PostgreSQL, or SQLite when embedded).
//!
//! # Layout
//!
//! - [`config`]: [`config::Settings`] read from the environment and an optional `.env`.
//! - [`app`]: builds the HTTP application from the settings and serves it until shutdown.
//! - [`api`]: the HTTP surface (poem-openapi), one struct per area; no storage access here.
//! - [`auth`]: the domain: phone numbers, code issue/verify, tokens and sessions.
//! - [`store`]: ephemeral shared state behind one trait, with Redis and in-process backends.
//! - [`db`]: SeaORM entities and queries for users and their identities.
//! - [`delivery`]: how a code reaches the user (one `Sender` trait per channel).
//! - [`messaging`]: login by WhatsApp/Telegram message: webhooks and the Telegram Login Widget.
//! - [`error`]: the one error type, rendered as RFC 9457 `application/problem+json`.
//! - [`listener`]: connection caps, the request-head deadline, hyper's errors as problems.
//! - [`ratelimit`]: the per-replica front door, cluster-wide quotas, client IPs.
//! - [`telemetry`]: the tracing subscriber.
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
pub mod error;
pub mod listener;
pub mod messaging;
pub mod ratelimit;
pub mod store;
pub mod telemetry;
