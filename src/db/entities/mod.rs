//! SeaORM entities (kept in step with `migration/` by hand; all are small).

pub mod app_attest_key;
pub mod audit_event;
pub mod event_outbox;
pub mod identity;
pub mod user;
