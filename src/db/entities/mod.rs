//! SeaORM entities (kept in step with `migration/` by hand; both are small).

pub mod identity;
pub mod user;
