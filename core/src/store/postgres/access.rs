//! PostgreSQL: API tokens and the audit trail. Neither is registry state, so these writes do not
//! bump the registry revision (the proxy has nothing to reload).

use sqlx::PgPool;

use super::super::access::{AuditRow, TokenRow, detail_json, map_token_write_error, token_columns};
use super::super::row;
use super::StoreError;
use crate::access::{
    ApiToken, ApiTokenInsert, AuditEntry, AuditQuery, AuditRecord, TokenId, TokenQuery,
};

pub(super) async fn create_token(
    pool: &PgPool,
    new: ApiTokenInsert,
) -> Result<ApiToken, StoreError> {
    let row: TokenRow = sqlx::query_as(concat!(
        "INSERT INTO api_tokens (id, name, role, token_hash, created_by, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
        token_columns!()
    ))
    .bind(new.id.to_string())
    .bind(&new.name)
    .bind(new.role.as_str())
    .bind(&new.hash)
    .bind(&new.created_by)
    .bind(row::now())
    .fetch_one(pool)
    .await
    .map_err(map_token_write_error)?;
    row.into_token()
}

pub(super) async fn token_by_hash(
    pool: &PgPool,
    hash: &str,
) -> Result<Option<ApiToken>, StoreError> {
    let row: Option<TokenRow> = sqlx::query_as(concat!(
        "SELECT ",
        token_columns!(),
        " FROM api_tokens WHERE token_hash = $1"
    ))
    .bind(hash)
    .fetch_optional(pool)
    .await?;
    row.map(TokenRow::into_token).transpose()
}

pub(super) async fn list_tokens(
    pool: &PgPool,
    query: &TokenQuery,
) -> Result<Vec<ApiToken>, StoreError> {
    let rows: Vec<TokenRow> = sqlx::query_as(concat!(
        "SELECT ",
        token_columns!(),
        " FROM api_tokens WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2"
    ))
    .bind(query.after.map(|id| id.to_string()))
    .bind(row::page_size(query.limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(TokenRow::into_token).collect()
}

pub(super) async fn revoke_token(pool: &PgPool, id: TokenId) -> Result<(), StoreError> {
    let done =
        sqlx::query("UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1")
            .bind(id.to_string())
            .bind(row::now())
            .execute(pool)
            .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

pub(super) async fn append_audit(
    pool: &PgPool,
    entry: AuditEntry,
) -> Result<AuditRecord, StoreError> {
    let row: AuditRow = sqlx::query_as(
        "INSERT INTO audit_log (at, actor, action, target_id, detail) \
         VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING id, at, actor, action, target_id, detail::text AS detail",
    )
    .bind(row::now())
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(entry.target_id.as_deref())
    .bind(detail_json(&entry.detail))
    .fetch_one(pool)
    .await?;
    row.into_record()
}

pub(super) async fn list_audit(
    pool: &PgPool,
    query: &AuditQuery,
) -> Result<Vec<AuditRecord>, StoreError> {
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT id, at, actor, action, target_id, detail::text AS detail FROM audit_log \
         WHERE ($1::text IS NULL OR target_id = $1) AND ($2::bigint IS NULL OR id < $2) \
         ORDER BY id DESC LIMIT $3",
    )
    .bind(query.target_id.as_deref())
    .bind(query.before)
    .bind(row::page_size(query.limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(AuditRow::into_record).collect()
}
