//! The registry's persistence: one [`Store`] interface and one implementation, [`SqlStore`],
//! whose queries are written once for SQLite and PostgreSQL ([`crate::db`]); each backend has its
//! own migrations under `migrations/{sqlite,postgres}`. Credentials arrive here already sealed by
//! the vault; the store never sees plaintext.
//!
//! Change detection for the proxy's in-memory registry: every write bumps one global
//! `registry_revision` in the same transaction, so a poller reads a single row to learn whether
//! anything changed (PostgreSQL additionally `NOTIFY`s on [`REGISTRY_CHANNEL`]).
//!
//! A provider write takes the [`AuditEntry`] that records it and appends it in the same
//! transaction: the entry exists exactly when the change does.

mod access;
mod row;
pub mod snapshot;
mod sql;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;

use crate::access::{
    ApiToken, ApiTokenInsert, AuditEntry, AuditQuery, AuditRecord, TokenId, TokenQuery,
};
use crate::caller::{CallerRecord, GrantId, GrantRecord, Tenant};
use crate::provider::{
    AuthType, HostPattern, ProviderConfig, ProviderId, ProviderRecord, ProviderStatus,
    SealedCredentials,
};

pub use sql::{SqlStore, watch_registry};

/// PostgreSQL `NOTIFY` channel announcing registry changes (payload: the new revision).
pub const REGISTRY_CHANNEL: &str = "hub_registry";

/// Largest page a list call returns.
pub const MAX_PAGE_SIZE: u32 = 500;

/// What can go wrong in the store. `kind()` is a stable label for logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No live row with that id.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was broken: `field` names the input field, `message` the owner.
    #[error("conflict on {field}: {message}")]
    Conflict {
        /// e.g. `hosts[0]` or `name`.
        field: String,
        /// e.g. `host api.x.com is already claimed by provider stripe (01J…)`.
        message: String,
    },
    /// An optimistic-concurrency check failed (the row changed underneath).
    #[error("the record changed concurrently; retry")]
    Stale,
    /// The database URL is not one we support.
    #[error("unsupported database url {0:?}: expected sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    /// A stored value could not be decoded (a bug or a manual edit).
    #[error("corrupt row {id}: {detail}")]
    Corrupt {
        /// Row id.
        id: String,
        /// What failed to decode.
        detail: String,
    },
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database failed or is unreachable.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// Stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Conflict { .. } => "conflict",
            Self::Stale => "stale",
            Self::UnsupportedUrl(_) => "unsupported_url",
            Self::Corrupt { .. } => "corrupt",
            Self::Migrate(_) => "migrate",
            Self::Database(_) => "database",
        }
    }
}

/// A provider to insert. The caller chooses the id (the vault binds ciphertext to it first).
#[derive(Debug, Clone)]
pub struct ProviderInsert {
    /// New ULID.
    pub id: ProviderId,
    /// Unique among live providers.
    pub name: String,
    /// Its tenant (`None`: global, every tenant's callers reach it). Fixed for its lifetime.
    pub tenant: Option<String>,
    /// Each unique among live providers of the same scope (tenant, or global).
    pub hosts: Vec<HostPattern>,
    /// Validated base URL.
    pub base_url: String,
    /// Auth scheme.
    pub auth_type: AuthType,
    /// Sealed credentials (`None` for `AuthType::None`).
    pub credentials: Option<SealedCredentials>,
    /// Validated policy.
    pub config: ProviderConfig,
    /// Initial status.
    pub status: ProviderStatus,
}

/// A partial update: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProviderChange {
    /// New name.
    pub name: Option<String>,
    /// New host set (replaces the old one).
    pub hosts: Option<Vec<HostPattern>>,
    /// New base URL.
    pub base_url: Option<String>,
    /// New policy (whole).
    pub config: Option<ProviderConfig>,
    /// New status.
    pub status: Option<ProviderStatus>,
    /// New auth scheme and credentials (sets `credentials_updated_at`).
    pub credentials: Option<(AuthType, Option<SealedCredentials>)>,
    /// When set, the update applies only if the row is still at this version (else `Stale`).
    pub expected_version: Option<i64>,
}

/// Filter and cursor for listing providers. Order is by id (ULIDs sort by creation time), so a
/// cursor stays stable under concurrent inserts.
#[derive(Debug, Clone, Default)]
pub struct ProviderQuery {
    /// Only this status.
    pub status: Option<ProviderStatus>,
    /// Only names containing this substring.
    pub name_contains: Option<String>,
    /// Only providers this tenant's scope sees: its own and the global ones.
    pub visible_to: Option<String>,
    /// Only ids strictly greater than this (the previous page's last id).
    pub after: Option<ProviderId>,
    /// Page size (clamped to 1..=[`MAX_PAGE_SIZE`]).
    pub limit: u32,
}

/// The registry's persistence interface. Deleted providers are invisible to every read except
/// where stated.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// A cheap round trip (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Inserts a provider; `Conflict` names a taken name or host and its owner. `audit` is
    /// appended in the same transaction (nothing of either is kept when one fails).
    async fn create_provider(
        &self,
        new: ProviderInsert,
        audit: Option<AuditEntry>,
    ) -> Result<ProviderRecord, StoreError>;

    /// One live provider.
    async fn get_provider(&self, id: ProviderId) -> Result<Option<ProviderRecord>, StoreError>;

    /// A page of live providers ordered by id.
    async fn list_providers(
        &self,
        query: &ProviderQuery,
    ) -> Result<Vec<ProviderRecord>, StoreError>;

    /// Applies a partial update, bumps `version` and `updated_at`; `audit` is appended in the
    /// same transaction.
    async fn update_provider(
        &self,
        id: ProviderId,
        change: ProviderChange,
        audit: Option<AuditEntry>,
    ) -> Result<ProviderRecord, StoreError>;

    /// Soft-deletes: the row stays (for audit) but its hosts and name are freed and its sealed
    /// credentials are wiped; `audit` is appended in the same transaction.
    async fn delete_provider(
        &self,
        id: ProviderId,
        audit: Option<AuditEntry>,
    ) -> Result<(), StoreError>;

    /// The newest refresh token `provider` rotated to while at `version` (sealed); `None` when
    /// none was stored, or it was stored under another version (credentials changed since).
    async fn oauth_refresh_token(
        &self,
        provider: ProviderId,
        version: i64,
    ) -> Result<Option<SealedCredentials>, StoreError>;

    /// Stores the newest refresh token of `provider` at `version`, replacing the previous one;
    /// with `replacing`, only if the stored ciphertext is still that (key rotation: a token
    /// rotated meanwhile is never overwritten). `false` when nothing was written.
    async fn put_oauth_refresh_token(
        &self,
        provider: ProviderId,
        version: i64,
        sealed: SealedCredentials,
        replacing: Option<&[u8]>,
    ) -> Result<bool, StoreError>;

    /// Every stored refresh token as `(provider, version, sealed)` (key rotation).
    async fn all_oauth_refresh_tokens(
        &self,
    ) -> Result<Vec<(ProviderId, i64, SealedCredentials)>, StoreError>;

    /// Every live provider (active and disabled): the proxy's registry snapshot.
    async fn live_providers(&self) -> Result<Vec<ProviderRecord>, StoreError>;

    /// The global registry revision; it moves on every provider write.
    async fn registry_revision(&self) -> Result<i64, StoreError>;

    /// Stores an admin API token (its hash, never the token); `Conflict` when the id or hash
    /// exists. Token writes are not registry writes: the revision does not move.
    async fn create_api_token(&self, new: ApiTokenInsert) -> Result<ApiToken, StoreError>;

    /// The token with this hash, revoked ones included (the caller checks `revoked_at`).
    async fn api_token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>, StoreError>;

    /// A page of tokens, revoked ones included, ordered by id.
    async fn list_api_tokens(&self, query: &TokenQuery) -> Result<Vec<ApiToken>, StoreError>;

    /// Revokes a token; revoking again keeps the first time. `NotFound` for an unknown id.
    async fn revoke_api_token(&self, id: TokenId) -> Result<(), StoreError>;

    /// Appends to the audit trail on its own (provider writes append theirs in their
    /// transaction); the store assigns the (growing) id and the time.
    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord, StoreError>;

    /// A page of the audit trail, newest first.
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;

    /// Every tenant, by name.
    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError>;

    /// Adds a tenant (`Conflict` when the name exists), with its audit entry.
    async fn create_tenant(&self, tenant: Tenant, audit: AuditEntry) -> Result<Tenant, StoreError>;

    /// Removes an empty tenant (`Conflict` while live providers, callers or grants belong to
    /// it; `NotFound` for an unknown name), with its audit entry.
    async fn delete_tenant(&self, name: &str, audit: AuditEntry) -> Result<(), StoreError>;

    /// Every caller, revoked ones included, by id (the proxy's registry snapshot).
    async fn all_callers(&self) -> Result<Vec<CallerRecord>, StoreError>;

    /// Inserts (`create`) or replaces a caller's mutable fields (groups, token hash,
    /// ServiceAccount, expiry, revocation), with its audit entry in the same transaction;
    /// `Conflict` names a taken name or ServiceAccount. A registry write.
    async fn put_caller(
        &self,
        caller: CallerRecord,
        create: bool,
        audit: AuditEntry,
    ) -> Result<(), StoreError>;

    /// Every grant, by id (the proxy's registry snapshot).
    async fn all_grants(&self) -> Result<Vec<GrantRecord>, StoreError>;

    /// Inserts (`create`) or replaces a grant's methods, paths and limits, with its audit
    /// entry. A registry write.
    async fn put_grant(
        &self,
        grant: GrantRecord,
        create: bool,
        audit: AuditEntry,
    ) -> Result<(), StoreError>;

    /// Deletes a grant (`NotFound` for an unknown id), with its audit entry. A registry write.
    async fn delete_grant(&self, id: GrantId, audit: AuditEntry) -> Result<(), StoreError>;
}

/// Opens the store a URL names (`sqlite://path?mode=rwc` or `postgres://…`).
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(SqlStore::connect(url).await?))
}
