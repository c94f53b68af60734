//! Rows of the admin API's tables (`api_tokens`, `audit_log`, migration 0002) as both backends
//! read them back (the audit detail arrives as JSON text on both), and their decoding.

use chrono::{DateTime, Utc};

use super::StoreError;
use crate::access::{ApiToken, AuditEntry, AuditRecord, Role};

/// The token columns, in a `concat!`-able form.
macro_rules! token_columns {
    () => {
        "id, name, role, tenant, created_by, created_at, revoked_at"
    };
}
pub(super) use token_columns;

/// One `api_tokens` row (the hash is never read back).
#[derive(Debug, sqlx::FromRow)]
pub(super) struct TokenRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub tenant: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenRow {
    /// Decodes the row.
    pub fn into_token(self) -> Result<ApiToken, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            id: self.id.clone(),
            detail,
        };
        let id = self
            .id
            .parse()
            .map_err(|e| corrupt(format!("id is not a ULID: {e}")))?;
        let role = Role::parse(&self.role)
            .ok_or_else(|| corrupt(format!("unknown role {:?}", self.role)))?;
        Ok(ApiToken {
            id,
            name: self.name,
            role,
            tenant: self.tenant,
            created_by: self.created_by,
            created_at: self.created_at,
            revoked_at: self.revoked_at,
        })
    }
}

/// One `audit_log` row, `detail` as JSON text.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target_id: Option<String>,
    pub detail: String,
}

impl AuditRow {
    /// Decodes the row.
    pub fn into_record(self) -> Result<AuditRecord, StoreError> {
        let detail = serde_json::from_str(&self.detail).map_err(|e| StoreError::Corrupt {
            id: format!("audit_log {}", self.id),
            detail: format!("detail: {e}"),
        })?;
        Ok(AuditRecord {
            id: self.id,
            at: self.at,
            entry: AuditEntry {
                actor: self.actor,
                action: self.action,
                target_id: self.target_id,
                detail,
            },
        })
    }
}

/// A token hash that is already stored (a 256-bit collision: in practice, a reused insert).
pub(super) fn map_token_write_error(err: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &err
        && db.is_unique_violation()
    {
        return StoreError::Conflict {
            field: "token".into(),
            message: "a token with this id or hash already exists".into(),
        };
    }
    StoreError::Database(err)
}
