//! What operators do with users (the admin API): search, block, delete.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use uuid::Uuid;

use super::{identity, user};

/// Which users a search returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// Phones starting with this (`+` and digits).
    pub phone_prefix: Option<String>,
    /// Created at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before.
    pub created_to: Option<DateTime<Utc>>,
    /// Last login at or after.
    pub last_login_from: Option<DateTime<Utc>>,
    /// Last login before.
    pub last_login_to: Option<DateTime<Utc>>,
    /// Only blocked (`true`) or only unblocked (`false`) users.
    pub blocked: Option<bool>,
    /// Users older than this id (the cursor: ids are UUID v7, so id order is creation order).
    pub before: Option<Uuid>,
    /// At most this many.
    pub limit: u64,
}

/// The users `filter` selects, newest first.
pub async fn search_users(
    db: &DatabaseConnection,
    filter: &UserFilter,
) -> Result<Vec<user::Model>, DbErr> {
    let mut query = user::Entity::find();
    let instant = |at| super::instant_param(db, at);
    if let Some(prefix) = &filter.phone_prefix {
        // A `+` and digits only (checked at the edge): nothing LIKE would read as a wildcard.
        query = query.filter(user::Column::Phone.starts_with(prefix.as_str()));
    }
    if let Some(at) = filter.created_from {
        query = query.filter(user::Column::CreatedAt.gte(instant(at)));
    }
    if let Some(at) = filter.created_to {
        query = query.filter(user::Column::CreatedAt.lt(instant(at)));
    }
    if let Some(at) = filter.last_login_from {
        query = query.filter(user::Column::LastLoginAt.gte(instant(at)));
    }
    if let Some(at) = filter.last_login_to {
        query = query.filter(user::Column::LastLoginAt.lt(instant(at)));
    }
    match filter.blocked {
        Some(true) => query = query.filter(user::Column::BlockedAt.is_not_null()),
        Some(false) => query = query.filter(user::Column::BlockedAt.is_null()),
        None => {}
    }
    if let Some(before) = filter.before {
        query = query.filter(user::Column::Id.lt(before));
    }
    query
        .order_by_desc(user::Column::Id)
        .limit(filter.limit)
        .all(db)
        .await
}

/// Sets (or clears) `blocked_at` of user `id`; the user as stored now, `None` if there is no
/// such user. Blocking a blocked user keeps the first time.
pub async fn set_blocked(
    db: &DatabaseConnection,
    id: Uuid,
    at: Option<DateTime<Utc>>,
) -> Result<Option<user::Model>, DbErr> {
    let Some(found) = user::Entity::find_by_id(id).one(db).await? else {
        return Ok(None);
    };
    if found.blocked_at.is_some() == at.is_some() {
        return Ok(Some(found));
    }
    let mut active = found.into_active_model();
    active.blocked_at = Set(at);
    Ok(Some(active.update(db).await?))
}

/// Deletes user `id` and their identities, in one transaction; the user deleted, `None` if
/// there was none.
pub async fn delete_user(db: &DatabaseConnection, id: Uuid) -> Result<Option<user::Model>, DbErr> {
    let txn = db.begin().await?;
    let Some(found) = user::Entity::find_by_id(id).one(&txn).await? else {
        return Ok(None);
    };
    identity::Entity::delete_many()
        .filter(identity::Column::UserId.eq(id))
        .exec(&txn)
        .await?;
    user::Entity::delete_by_id(id).exec(&txn).await?;
    txn.commit().await?;
    Ok(Some(found))
}

/// The blocked users and their phones (to mark them in the store at start-up).
pub async fn blocked_users(db: &DatabaseConnection) -> Result<Vec<(Uuid, Option<String>)>, DbErr> {
    user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .column(user::Column::Phone)
        .filter(user::Column::BlockedAt.is_not_null())
        .into_tuple()
        .all(db)
        .await
}

/// Why [`change_phone`] did not move the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhoneChange {
    /// Moved: the user as stored now is returned beside it.
    Done,
    /// Another account has the new number.
    Taken,
    /// No such user.
    NoUser,
}

/// Moves user `id` to phone `new` in one transaction: the user's phone, and their WhatsApp
/// identity (its subject is the number) when it named the old one.
pub async fn change_phone(
    db: &DatabaseConnection,
    id: Uuid,
    new: &str,
) -> Result<(PhoneChange, Option<user::Model>), DbErr> {
    let txn = db.begin().await?;
    let Some(found) = user::Entity::find_by_id(id).one(&txn).await? else {
        return Ok((PhoneChange::NoUser, None));
    };
    if user::Entity::find()
        .filter(user::Column::Phone.eq(new))
        .filter(user::Column::Id.ne(id))
        .one(&txn)
        .await?
        .is_some()
    {
        return Ok((PhoneChange::Taken, None));
    }
    let old = found.phone.clone();
    let mut active = found.into_active_model();
    active.phone = Set(Some(new.to_string()));
    let updated = match active.update(&txn).await {
        Ok(updated) => updated,
        // Taken between the check and the update (another replica's login created it).
        Err(err)
            if matches!(
                err.sql_err(),
                Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
            ) =>
        {
            return Ok((PhoneChange::Taken, None));
        }
        Err(err) => return Err(err),
    };
    if let Some(old) = old {
        identity::Entity::update_many()
            .col_expr(
                identity::Column::Subject,
                sea_orm::sea_query::Expr::value(new),
            )
            .filter(identity::Column::UserId.eq(id))
            .filter(identity::Column::Provider.eq("whatsapp"))
            .filter(identity::Column::Subject.eq(old))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok((PhoneChange::Done, Some(updated)))
}
