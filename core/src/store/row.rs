//! What both backends share: the provider row as read back (JSON columns arrive as text on both),
//! its decoding into a [`ProviderRecord`], and the wording of conflicts.
//!
//! Decoding never panics: a value the domain cannot accept is [`StoreError::Corrupt`].

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::types::Json;

use super::{MAX_PAGE_SIZE, StoreError};
use crate::provider::{
    AuthType, HostPattern, ProviderConfig, ProviderId, ProviderRecord, ProviderStatus,
    SealedCredentials,
};

/// One `providers` row, JSON columns as text.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct ProviderRow {
    pub id: String,
    pub name: String,
    pub hosts: String,
    pub base_url: String,
    pub auth_type: String,
    pub credentials: Option<Vec<u8>>,
    pub credentials_key_id: Option<String>,
    pub credentials_updated_at: Option<DateTime<Utc>>,
    pub config: String,
    pub status: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `None`: a global provider.
    pub tenant: Option<String>,
}

impl ProviderRow {
    /// Decodes the row into the domain record.
    pub fn into_record(self) -> Result<ProviderRecord, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            id: self.id.clone(),
            detail,
        };
        let id: ProviderId = self
            .id
            .parse()
            .map_err(|e| corrupt(format!("id is not a ULID: {e}")))?;
        let raw_hosts: Vec<String> =
            serde_json::from_str(&self.hosts).map_err(|e| corrupt(format!("hosts: {e}")))?;
        let hosts = raw_hosts
            .iter()
            .map(|h| HostPattern::parse(h).map_err(|e| corrupt(format!("hosts: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let auth_type = AuthType::parse(&self.auth_type)
            .ok_or_else(|| corrupt(format!("unknown auth_type {:?}", self.auth_type)))?;
        let status = ProviderStatus::parse(&self.status)
            .ok_or_else(|| corrupt(format!("unknown status {:?}", self.status)))?;
        let config: ProviderConfig =
            serde_json::from_str(&self.config).map_err(|e| corrupt(format!("config: {e}")))?;
        let credentials = match (self.credentials, self.credentials_key_id) {
            (Some(ciphertext), Some(key_id)) => Some(SealedCredentials { key_id, ciphertext }),
            (None, None) => None,
            _ => return Err(corrupt("credentials without key id or vice versa".into())),
        };
        Ok(ProviderRecord {
            id,
            name: self.name,
            tenant: self.tenant,
            hosts,
            base_url: self.base_url,
            auth_type,
            credentials,
            credentials_updated_at: self.credentials_updated_at,
            config,
            status,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// Decodes a batch of rows, failing on the first corrupt one.
pub(super) fn into_records(rows: Vec<ProviderRow>) -> Result<Vec<ProviderRecord>, StoreError> {
    rows.into_iter().map(ProviderRow::into_record).collect()
}

/// Host patterns as stored: the JSON array of their display strings (`*.x.com`), bound as JSON
/// (text on SQLite, jsonb on PostgreSQL).
pub(super) fn hosts_json(hosts: &[HostPattern]) -> Json<Vec<String>> {
    Json(hosts.iter().map(ToString::to_string).collect())
}

/// The current time at the precision both backends keep (PostgreSQL stores microseconds), so a
/// returned record equals what a later read yields.
pub(super) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A list limit clamped to `1..=MAX_PAGE_SIZE`.
pub(super) fn page_size(limit: u32) -> i64 {
    i64::from(limit.clamp(1, MAX_PAGE_SIZE))
}

/// `hosts[index]` is claimed by another live provider.
pub(super) fn host_conflict(
    index: usize,
    host: &HostPattern,
    owner_id: &str,
    owner_name: &str,
) -> StoreError {
    StoreError::Conflict {
        field: format!("hosts[{index}]"),
        message: format!("host {host} is already claimed by provider {owner_name} ({owner_id})"),
    }
}

/// `name` is taken by another live provider.
pub(super) fn name_conflict(name: &str, owner_id: &str) -> StoreError {
    StoreError::Conflict {
        field: "name".into(),
        message: format!("name {name} is already taken by provider {owner_id}"),
    }
}

/// The single `hub_meta` row is gone (only a manual edit does that).
pub(super) fn missing_meta_row() -> StoreError {
    StoreError::Corrupt {
        id: "hub_meta".into(),
        detail: "the registry revision row is missing".into(),
    }
}

/// Maps a unique violation the pre-checks did not foresee (they run under the writer lock, so this
/// is a safety net) to a `Conflict` without an owner; anything else is a database error.
pub(super) fn map_write_error(err: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &err
        && db.is_unique_violation()
    {
        let what = format!("{} {}", db.constraint().unwrap_or_default(), db.message());
        let field = if what.contains("provider_hosts") {
            "hosts"
        } else if what.contains("name") {
            "name"
        } else {
            "id"
        };
        return StoreError::Conflict {
            field: field.into(),
            message: format!("{field} is already taken by another provider"),
        };
    }
    StoreError::Database(err)
}
