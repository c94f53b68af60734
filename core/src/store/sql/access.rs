//! API tokens and the audit trail. Neither is registry state, so these writes do not bump the
//! registry revision (the proxy has nothing to reload); an audit entry of a registry write is
//! appended in that write's transaction ([`append_audit_in`]).

use sqlx::types::Json;

use super::super::access::{AuditRow, TokenRow, map_token_write_error, token_columns};
use super::super::row;
use super::StoreError;
use crate::access::{
    ApiToken, ApiTokenInsert, AuditEntry, AuditQuery, AuditRecord, TokenId, TokenQuery,
};
use crate::db::{Db, Tx, exec, fetch, tx_fetch};

/// Appends an audit entry; the database assigns the (growing) id. Bound as `(at, actor, action,
/// target_id, detail)`.
const INSERT_AUDIT: &str = "INSERT INTO audit_log (at, actor, action, target_id, detail) \
     VALUES (?, ?, ?, ?, ?) \
     RETURNING id, at, actor, action, target_id, CAST(detail AS TEXT) AS detail";

pub(super) async fn create_token(db: &Db, new: ApiTokenInsert) -> Result<ApiToken, StoreError> {
    let row = fetch!(
        fetch_one,
        TokenRow,
        db,
        concat!(
            "INSERT INTO api_tokens (id, name, role, tenant, token_hash, created_by, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING ",
            token_columns!()
        ),
        new.id.to_string(),
        &new.name,
        new.role.as_str(),
        new.tenant.as_deref(),
        &new.hash,
        &new.created_by,
        row::now()
    )
    .map_err(map_token_write_error)?;
    row.into_token()
}

pub(super) async fn token_by_hash(db: &Db, hash: &str) -> Result<Option<ApiToken>, StoreError> {
    let row = fetch!(
        fetch_optional,
        TokenRow,
        db,
        concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens WHERE token_hash = ?"
        ),
        hash
    )?;
    row.map(TokenRow::into_token).transpose()
}

pub(super) async fn list_tokens(db: &Db, query: &TokenQuery) -> Result<Vec<ApiToken>, StoreError> {
    let after = query.after.map(|id| id.to_string());
    let rows = fetch!(
        fetch_all,
        TokenRow,
        db,
        concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens WHERE (? IS NULL OR id > ?) ORDER BY id LIMIT ?"
        ),
        after.as_deref(),
        after.as_deref(),
        row::page_size(query.limit)
    )?;
    rows.into_iter().map(TokenRow::into_token).collect()
}

pub(super) async fn revoke_token(db: &Db, id: TokenId) -> Result<(), StoreError> {
    let done = exec!(
        db,
        "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
        row::now(),
        id.to_string()
    )?;
    if done == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

pub(super) async fn append_audit(db: &Db, entry: AuditEntry) -> Result<AuditRecord, StoreError> {
    let row = fetch!(
        fetch_one,
        AuditRow,
        db,
        INSERT_AUDIT,
        row::now(),
        &entry.actor,
        &entry.action,
        entry.target_id.as_deref(),
        Json(&entry.detail)
    )?;
    row.into_record()
}

/// [`append_audit`] inside a registry write's transaction: the entry commits or rolls back with
/// the change it records.
pub(super) async fn append_audit_in(
    tx: &mut Tx,
    entry: AuditEntry,
) -> Result<AuditRecord, StoreError> {
    let row = tx_fetch!(
        fetch_one,
        AuditRow,
        tx,
        INSERT_AUDIT,
        row::now(),
        &entry.actor,
        &entry.action,
        entry.target_id.as_deref(),
        Json(&entry.detail)
    )?;
    row.into_record()
}

pub(super) async fn list_audit(
    db: &Db,
    query: &AuditQuery,
) -> Result<Vec<AuditRecord>, StoreError> {
    let target = query.target_id.as_deref();
    let rows = fetch!(
        fetch_all,
        AuditRow,
        db,
        "SELECT id, at, actor, action, target_id, CAST(detail AS TEXT) AS detail FROM audit_log \
         WHERE (? IS NULL OR target_id = ?) AND (? IS NULL OR id < ?) \
         ORDER BY id DESC LIMIT ?",
        target,
        target,
        query.before,
        query.before,
        row::page_size(query.limit)
    )?;
    rows.into_iter().map(AuditRow::into_record).collect()
}
