//! The registry store on SQLite or PostgreSQL, every query written once through [`Db`] (`?`
//! placeholders, numbered for PostgreSQL). What genuinely differs between the backends stays in a
//! few commented places: how the pool is opened ([`SqlStore::connect`]), the migrations
//! (`migrations/{sqlite,postgres}`: the DDL differs), how a write starts (`begin_write`:
//! `BEGIN IMMEDIATE` or a row lock, `NOTIFY` on PostgreSQL only) and the substring test of the
//! name filter (`list_sql!`).
//!
//! SQLite: one file in WAL mode (readers never block the writer), foreign keys on, and every write
//! in a `BEGIN IMMEDIATE` transaction so that concurrent writers queue on the busy timeout instead
//! of failing on a stale read snapshot. PostgreSQL: every write takes the `hub_meta` row lock
//! first (by bumping the revision), which serializes provider writes. Either way the name and
//! host checks that follow see every earlier write, so a conflict can always name its owner.
//! Writes are rare admin calls; reads never wait.
//!
//! JSON columns (`hosts`, `config`, `audit_log.detail`) are `TEXT` on SQLite and `JSONB` on
//! PostgreSQL: they are bound as [`Json`] (text on SQLite, jsonb on PostgreSQL) and read back
//! with `CAST(… AS TEXT)`, which both backends understand.

mod access;
mod callers;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;

use super::row::{self, ProviderRow};
use super::{ProviderChange, ProviderInsert, ProviderQuery, REGISTRY_CHANNEL, Store, StoreError};
use crate::access::{
    ApiToken, ApiTokenInsert, AuditEntry, AuditQuery, AuditRecord, TokenId, TokenQuery,
};
use crate::caller::{CallerRecord, GrantId, GrantRecord, Tenant};
use crate::db::{Db, Pool, Tx, exec, fetch, scalars, tx_exec, tx_fetch, tx_scalar};
use crate::provider::{HostPattern, ProviderId, ProviderRecord, SealedCredentials};
use chrono::Utc;

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// SQLite: how long a writer waits for the write lock before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// SQLite: readers run in parallel under WAL; writes serialize on the file lock anyway.
const SQLITE_MAX_CONNECTIONS: u32 = 8;
/// PostgreSQL: the store serves admin calls and registry refreshes, not the request path.
const POSTGRES_MAX_CONNECTIONS: u32 = 10;
/// How long a caller waits for a pooled connection (on PostgreSQL this also bounds `connect`, so
/// an unreachable server fails fast).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The columns of a [`ProviderRow`], in a `concat!`-able form (JSON columns as text).
macro_rules! columns {
    () => {
        "id, name, CAST(hosts AS TEXT) AS hosts, base_url, auth_type, credentials, \
         credentials_key_id, credentials_updated_at, CAST(config AS TEXT) AS config, status, \
         version, created_at, updated_at, tenant"
    };
}

/// `list_providers`' query with the backend's substring function: `instr` (SQLite) or `strpos`
/// (PostgreSQL), neither of which the other has. Not `LIKE`: a name filter containing `%` or `_`
/// means those characters (and SQLite's `LIKE` ignores ASCII case).
macro_rules! list_sql {
    ($position:literal) => {
        concat!(
            "SELECT ",
            columns!(),
            " FROM providers WHERE deleted_at IS NULL \
             AND (? IS NULL OR status = ?) \
             AND (? IS NULL OR ",
            $position,
            "(name, ?) > 0) \
             AND (? IS NULL OR tenant IS NULL OR tenant = ?) \
             AND (? IS NULL OR id > ?) \
             ORDER BY id LIMIT ?"
        )
    };
}

/// The registry on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    db: Db,
}

impl SqlStore {
    /// Opens the database a URL names: `sqlite:…` (creating the file if missing, parent
    /// directory included) or `postgres://…` (connecting now).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(url, false).await
    }

    /// Like [`SqlStore::connect`], but a PostgreSQL pool connects on first use: opening it never
    /// waits on (or fails with) the server, so a service can start while the database is down
    /// and serve what does not need it. SQLite (a local file) opens at once as with `connect`.
    pub async fn connect_lazy(url: &str) -> Result<Self, StoreError> {
        Self::open(url, true).await
    }

    async fn open(url: &str, lazy: bool) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Self::over(Db::sqlite(open_sqlite(url).await?)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgPoolOptions::new()
                .max_connections(POSTGRES_MAX_CONNECTIONS)
                .acquire_timeout(ACQUIRE_TIMEOUT);
            let pool = if lazy {
                options.connect_lazy(url)?
            } else {
                options.connect(url).await?
            };
            Ok(Self::over(Db::postgres(pool)))
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    /// The store over a database handle (its statements count there).
    pub fn over(db: Db) -> Self {
        Self { db }
    }

    /// A handle on the store's pool for the DLQ, jobs and work queue (and tests that write raw
    /// rows), with its own statement count.
    pub fn db(&self) -> Db {
        self.db.share_pool()
    }

    /// Starts a registry write: bumps the registry revision in the write's transaction and, on
    /// PostgreSQL, queues the notification, which PostgreSQL delivers only if the transaction
    /// commits. On PostgreSQL the bump also takes the `hub_meta` row lock: the writer lock (on
    /// SQLite, `BEGIN IMMEDIATE` already holds the file's write lock).
    async fn begin_write(&self) -> Result<Tx, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let revision = tx_scalar!(
            fetch_optional,
            i64,
            &mut tx,
            "UPDATE hub_meta SET registry_revision = registry_revision + 1 WHERE id = 1 \
             RETURNING registry_revision"
        )?
        .ok_or_else(row::missing_meta_row)?;
        if tx.backend() == "postgres" {
            tx_exec!(
                &mut tx,
                "SELECT pg_notify(?, ?)",
                REGISTRY_CHANNEL,
                revision.to_string()
            )?;
        }
        Ok(tx)
    }
}

/// Opens a SQLite pool: WAL, `synchronous = NORMAL`, foreign keys, busy timeout; an in-memory
/// database keeps one connection open for good (it lives only as long as one does).
async fn open_sqlite(url: &str) -> Result<sqlx::SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let mut pool = SqlitePoolOptions::new()
        .max_connections(SQLITE_MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT);
    if in_memory {
        // The database lives only as long as one connection to it does.
        pool = pool
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
    } else if let Some(dir) = options.get_filename().parent()
        && !dir.as_os_str().is_empty()
    {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(sqlx::Error::Io)?;
    }
    Ok(pool.connect_with(options).await?)
}

/// `Conflict` when another live provider has `name`.
async fn ensure_name_free(tx: &mut Tx, name: &str, id: &str) -> Result<(), StoreError> {
    let owner = tx_scalar!(
        fetch_optional,
        String,
        tx,
        "SELECT id FROM providers WHERE name = ? AND deleted_at IS NULL AND id <> ?",
        name,
        id
    )?;
    match owner {
        Some(owner) => Err(row::name_conflict(name, &owner)),
        None => Ok(()),
    }
}

/// Makes `hosts` the provider's host set, or `Conflict` naming the first host another live
/// provider claims.
async fn replace_hosts(tx: &mut Tx, hosts: &[HostPattern], id: &str) -> Result<(), StoreError> {
    // Hosts are unique per scope: the provider's tenant, or `*` for a global provider.
    let scope = tx_scalar!(
        fetch_one,
        Option<String>,
        tx,
        "SELECT tenant FROM providers WHERE id = ?",
        id
    )?
    .unwrap_or_else(|| "*".to_owned());
    for (i, host) in hosts.iter().enumerate() {
        let owner = tx_fetch!(
            fetch_optional,
            (String, String),
            tx,
            "SELECT p.id, p.name FROM provider_hosts h JOIN providers p ON p.id = h.provider_id \
             WHERE h.host = ? AND h.scope = ? AND h.provider_id <> ?",
            host.to_string(),
            &scope,
            id
        )?;
        if let Some((owner_id, owner_name)) = owner {
            return Err(row::host_conflict(i, host, &owner_id, &owner_name));
        }
    }
    tx_exec!(tx, "DELETE FROM provider_hosts WHERE provider_id = ?", id)?;
    for host in hosts {
        tx_exec!(
            tx,
            "INSERT INTO provider_hosts (scope, host, provider_id) VALUES (?, ?, ?)",
            &scope,
            host.to_string(),
            id
        )
        .map_err(row::map_write_error)?;
    }
    Ok(())
}

/// Appends the audit entry of a registry write, in its transaction.
async fn audit_in(tx: &mut Tx, audit: Option<AuditEntry>) -> Result<(), StoreError> {
    if let Some(entry) = audit {
        access::append_audit_in(tx, entry).await?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        self.db.backend()
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match self.db.pool() {
            Pool::Sqlite(p) => SQLITE_MIGRATOR.run(p).await?,
            Pool::Postgres(p) => POSTGRES_MIGRATOR.run(p).await?,
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        exec!(&self.db, "SELECT 1")?;
        Ok(())
    }

    async fn create_provider(
        &self,
        new: ProviderInsert,
        audit: Option<AuditEntry>,
    ) -> Result<ProviderRecord, StoreError> {
        let id = new.id.to_string();
        let now = row::now();
        let (credentials, key_id, credentials_at) = match new.credentials {
            Some(c) => (Some(c.ciphertext), Some(c.key_id), Some(now)),
            None => (None, None, None),
        };
        let mut tx = self.begin_write().await?;
        ensure_name_free(&mut tx, &new.name, &id).await?;
        let row = tx_fetch!(
            fetch_one,
            ProviderRow,
            &mut tx,
            concat!(
                "INSERT INTO providers (id, name, hosts, base_url, auth_type, credentials, \
                 credentials_key_id, credentials_updated_at, config, status, version, \
                 created_at, updated_at, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?) \
                 RETURNING ",
                columns!()
            ),
            &id,
            &new.name,
            row::hosts_json(&new.hosts),
            &new.base_url,
            new.auth_type.as_str(),
            credentials,
            key_id,
            credentials_at,
            Json(&new.config),
            new.status.as_str(),
            now,
            now,
            new.tenant.as_deref()
        )
        .map_err(row::map_write_error)?;
        replace_hosts(&mut tx, &new.hosts, &id).await?;
        let record = row.into_record()?;
        audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn get_provider(&self, id: ProviderId) -> Result<Option<ProviderRecord>, StoreError> {
        let row = fetch!(
            fetch_optional,
            ProviderRow,
            &self.db,
            concat!(
                "SELECT ",
                columns!(),
                " FROM providers WHERE id = ? AND deleted_at IS NULL"
            ),
            id.to_string()
        )?;
        row.map(ProviderRow::into_record).transpose()
    }

    async fn list_providers(
        &self,
        query: &ProviderQuery,
    ) -> Result<Vec<ProviderRecord>, StoreError> {
        let sql = match self.db.pool() {
            Pool::Sqlite(_) => list_sql!("instr"),
            Pool::Postgres(_) => list_sql!("strpos"),
        };
        let status = query.status.map(|s| s.as_str());
        let name = query.name_contains.as_deref();
        let visible_to = query.visible_to.as_deref();
        let after = query.after.map(|id| id.to_string());
        let rows = fetch!(
            fetch_all,
            ProviderRow,
            &self.db,
            sql,
            status,
            status,
            name,
            name,
            visible_to,
            visible_to,
            after.as_deref(),
            after.as_deref(),
            row::page_size(query.limit)
        )?;
        row::into_records(rows)
    }

    async fn update_provider(
        &self,
        id: ProviderId,
        change: ProviderChange,
        audit: Option<AuditEntry>,
    ) -> Result<ProviderRecord, StoreError> {
        let id = id.to_string();
        let mut tx = self.begin_write().await?;
        let current = tx_fetch!(
            fetch_optional,
            ProviderRow,
            &mut tx,
            concat!(
                "SELECT ",
                columns!(),
                " FROM providers WHERE id = ? AND deleted_at IS NULL"
            ),
            &id
        )?
        .ok_or(StoreError::NotFound)?;
        if change
            .expected_version
            .is_some_and(|v| v != current.version)
        {
            return Err(StoreError::Stale);
        }
        if let Some(name) = &change.name {
            ensure_name_free(&mut tx, name, &id).await?;
        }
        if let Some(hosts) = &change.hosts {
            replace_hosts(&mut tx, hosts, &id).await?;
        }
        let now = row::now();
        let (auth_type, credentials, key_id, credentials_at) = match change.credentials {
            Some((auth_type, Some(c))) => (
                auth_type.as_str().to_owned(),
                Some(c.ciphertext),
                Some(c.key_id),
                Some(now),
            ),
            Some((auth_type, None)) => (auth_type.as_str().to_owned(), None, None, Some(now)),
            None => (
                current.auth_type,
                current.credentials,
                current.credentials_key_id,
                current.credentials_updated_at,
            ),
        };
        // The JSON columns keep their stored value unless changed (COALESCE): binding back the
        // text read above would need a cast to JSONB that SQLite cannot spell.
        let row = tx_fetch!(
            fetch_one,
            ProviderRow,
            &mut tx,
            concat!(
                "UPDATE providers SET name = ?, hosts = COALESCE(?, hosts), base_url = ?, \
                 auth_type = ?, credentials = ?, credentials_key_id = ?, \
                 credentials_updated_at = ?, config = COALESCE(?, config), status = ?, \
                 version = version + 1, updated_at = ? WHERE id = ? RETURNING ",
                columns!()
            ),
            change.name.unwrap_or(current.name),
            change.hosts.as_deref().map(row::hosts_json),
            change.base_url.unwrap_or(current.base_url),
            auth_type,
            credentials,
            key_id,
            credentials_at,
            change.config.as_ref().map(Json),
            change
                .status
                .map_or(current.status, |s| s.as_str().to_owned()),
            now,
            &id
        )
        .map_err(row::map_write_error)?;
        let record = row.into_record()?;
        audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn delete_provider(
        &self,
        id: ProviderId,
        audit: Option<AuditEntry>,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        let now = row::now();
        let mut tx = self.begin_write().await?;
        let deleted = tx_exec!(
            &mut tx,
            "UPDATE providers SET deleted_at = ?, updated_at = ?, version = version + 1, \
             credentials_updated_at = CASE WHEN credentials IS NULL \
                 THEN credentials_updated_at ELSE ? END, \
             credentials = NULL, credentials_key_id = NULL \
             WHERE id = ? AND deleted_at IS NULL",
            now,
            now,
            now,
            &id
        )?;
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        tx_exec!(
            &mut tx,
            "DELETE FROM provider_hosts WHERE provider_id = ?",
            &id
        )?;
        // Its grants go with it (the audit entry lists what they allowed).
        tx_exec!(&mut tx, "DELETE FROM grants WHERE provider_id = ?", &id)?;
        audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn live_providers(&self) -> Result<Vec<ProviderRecord>, StoreError> {
        let rows = fetch!(
            fetch_all,
            ProviderRow,
            &self.db,
            concat!(
                "SELECT ",
                columns!(),
                " FROM providers WHERE deleted_at IS NULL ORDER BY id"
            )
        )?;
        row::into_records(rows)
    }

    async fn registry_revision(&self) -> Result<i64, StoreError> {
        scalars!(
            i64,
            &self.db,
            "SELECT registry_revision FROM hub_meta WHERE id = 1"
        )?
        .into_iter()
        .next()
        .ok_or_else(row::missing_meta_row)
    }

    async fn oauth_refresh_token(
        &self,
        provider: ProviderId,
        version: i64,
    ) -> Result<Option<SealedCredentials>, StoreError> {
        let rows = fetch!(
            fetch_all,
            (String, Vec<u8>),
            &self.db,
            "SELECT key_id, ciphertext FROM oauth_refresh_tokens \
             WHERE provider_id = ? AND provider_version = ?",
            provider.to_string(),
            version
        )?;
        Ok(rows
            .into_iter()
            .next()
            .map(|(key_id, ciphertext)| SealedCredentials { key_id, ciphertext }))
    }

    async fn put_oauth_refresh_token(
        &self,
        provider: ProviderId,
        version: i64,
        sealed: SealedCredentials,
        replacing: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let n = match replacing {
            Some(old) => exec!(
                &self.db,
                "UPDATE oauth_refresh_tokens SET key_id = ?, ciphertext = ?, updated_at = ? \
                 WHERE provider_id = ? AND provider_version = ? AND ciphertext = ?",
                sealed.key_id,
                sealed.ciphertext,
                Utc::now(),
                provider.to_string(),
                version,
                old.to_vec()
            )?,
            None => exec!(
                &self.db,
                "INSERT INTO oauth_refresh_tokens \
                 (provider_id, provider_version, key_id, ciphertext, updated_at) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (provider_id) DO UPDATE SET \
                 provider_version = excluded.provider_version, key_id = excluded.key_id, \
                 ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
                provider.to_string(),
                version,
                sealed.key_id,
                sealed.ciphertext,
                Utc::now()
            )?,
        };
        Ok(n > 0)
    }

    async fn all_oauth_refresh_tokens(
        &self,
    ) -> Result<Vec<(ProviderId, i64, SealedCredentials)>, StoreError> {
        let rows = fetch!(
            fetch_all,
            (String, i64, String, Vec<u8>),
            &self.db,
            "SELECT provider_id, provider_version, key_id, ciphertext \
             FROM oauth_refresh_tokens ORDER BY provider_id"
        )?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, version, key_id, ciphertext)| {
                Some((
                    id.parse().ok()?,
                    version,
                    SealedCredentials { key_id, ciphertext },
                ))
            })
            .collect())
    }

    async fn create_api_token(&self, new: ApiTokenInsert) -> Result<ApiToken, StoreError> {
        access::create_token(&self.db, new).await
    }

    async fn api_token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        access::token_by_hash(&self.db, hash).await
    }

    async fn list_api_tokens(&self, query: &TokenQuery) -> Result<Vec<ApiToken>, StoreError> {
        access::list_tokens(&self.db, query).await
    }

    async fn revoke_api_token(&self, id: TokenId) -> Result<(), StoreError> {
        access::revoke_token(&self.db, id).await
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord, StoreError> {
        access::append_audit(&self.db, entry).await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        access::list_audit(&self.db, query).await
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        self.tenants().await
    }

    async fn create_tenant(&self, tenant: Tenant, audit: AuditEntry) -> Result<Tenant, StoreError> {
        self.insert_tenant(tenant, audit).await
    }

    async fn delete_tenant(&self, name: &str, audit: AuditEntry) -> Result<(), StoreError> {
        self.remove_tenant(name, audit).await
    }

    async fn all_callers(&self) -> Result<Vec<CallerRecord>, StoreError> {
        self.callers().await
    }

    async fn put_caller(
        &self,
        caller: CallerRecord,
        create: bool,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        self.write_caller(caller, create, audit).await
    }

    async fn all_grants(&self) -> Result<Vec<GrantRecord>, StoreError> {
        self.grants().await
    }

    async fn put_grant(
        &self,
        grant: GrantRecord,
        create: bool,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        self.write_grant(grant, create, audit).await
    }

    async fn delete_grant(&self, id: GrantId, audit: AuditEntry) -> Result<(), StoreError> {
        self.remove_grant(id, audit).await
    }
}

/// Wakes `wake` whenever a registry write is committed (PostgreSQL `LISTEN` on
/// [`REGISTRY_CHANNEL`]), so proxies apply changes at once instead of at their next poll.
/// Reconnects with backoff when the connection drops; runs until the task is dropped.
pub async fn watch_registry(url: String, wake: std::sync::Arc<tokio::sync::Notify>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut listener) => match listener.listen(REGISTRY_CHANNEL).await {
                Ok(()) => {
                    backoff = Duration::from_millis(200);
                    // A change may have happened while (re)connecting.
                    wake.notify_one();
                    while listener.recv().await.is_ok() {
                        wake.notify_one();
                    }
                    tracing::warn!("registry LISTEN connection lost; polling continues meanwhile");
                }
                Err(e) => tracing::warn!(error = %e, "cannot LISTEN for registry changes"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot connect to LISTEN for registry changes"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}
