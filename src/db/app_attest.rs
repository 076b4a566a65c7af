//! App Attest keys: stored once when attested, read and advanced at each assertion.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    SqlErr,
};

use super::app_attest_key;

/// Stores a newly attested key; `false` when the key id is known already (the stored key, and
/// its counter, stay as they are).
pub async fn insert_key(
    db: &DatabaseConnection,
    key: app_attest_key::Model,
) -> Result<bool, DbErr> {
    let active = app_attest_key::ActiveModel {
        key_id: Set(key.key_id),
        public_key: Set(key.public_key),
        app_id: Set(key.app_id),
        environment: Set(key.environment),
        counter: Set(key.counter),
        created_at: Set(key.created_at),
        last_used_at: Set(key.last_used_at),
    };
    match app_attest_key::Entity::insert(active).exec(db).await {
        Ok(_) => Ok(true),
        Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            Ok(false)
        }
        Err(err) => Err(err),
    }
}

/// The key `key_id`, if attested.
pub async fn find_key(
    db: &DatabaseConnection,
    key_id: &str,
) -> Result<Option<app_attest_key::Model>, DbErr> {
    app_attest_key::Entity::find_by_id(key_id.to_string())
        .one(db)
        .await
}

/// Moves key `key_id`'s counter to `counter` if it is still below it: `true` when this call
/// moved it. Two replicas given the same assertion: one wins, the other sees `false`.
pub async fn advance_counter(
    db: &DatabaseConnection,
    key_id: &str,
    counter: i64,
    at: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let result = app_attest_key::Entity::update_many()
        .col_expr(app_attest_key::Column::Counter, Expr::value(counter))
        .col_expr(app_attest_key::Column::LastUsedAt, Expr::value(at))
        .filter(app_attest_key::Column::KeyId.eq(key_id))
        .filter(app_attest_key::Column::Counter.lt(counter))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// The attested keys, newest first, at most `limit`; only `key_id`'s when given.
pub async fn list_keys(
    db: &DatabaseConnection,
    key_id: Option<&str>,
    limit: u64,
) -> Result<Vec<app_attest_key::Model>, DbErr> {
    let mut query = app_attest_key::Entity::find();
    if let Some(key_id) = key_id {
        query = query.filter(app_attest_key::Column::KeyId.eq(key_id));
    }
    query
        .order_by_desc(app_attest_key::Column::CreatedAt)
        .limit(limit)
        .all(db)
        .await
}

/// Deletes key `key_id`: whether there was one.
pub async fn delete_key(db: &DatabaseConnection, key_id: &str) -> Result<bool, DbErr> {
    let result = app_attest_key::Entity::delete_by_id(key_id.to_string())
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}
