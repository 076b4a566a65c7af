//! Database migrations of otpgate, run by `otpgate migrate` or at start-up (`RUN_MIGRATIONS`).
#![forbid(unsafe_code)]

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_create_users_and_identities;

/// All migrations, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(
            m20261123_000001_create_users_and_identities::Migration,
        )]
    }
}
