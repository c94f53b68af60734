//! PostgreSQL store. Every write takes the `hub_meta` row lock first (by bumping the revision),
//! which serializes provider writes: the name and host checks that follow then see every earlier
//! write, so a conflict can always name its owner. Writes are rare admin calls; reads never wait.

mod access;

use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::row::{self, ProviderRow};
use super::{ProviderChange, ProviderInsert, ProviderQuery, REGISTRY_CHANNEL, Store, StoreError};
use crate::access::{
    ApiToken, ApiTokenInsert, AuditEntry, AuditQuery, AuditRecord, TokenId, TokenQuery,
};
use crate::provider::{HostPattern, ProviderId, ProviderRecord};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// Pool size: the store serves admin calls and registry refreshes, not the request path.
const MAX_CONNECTIONS: u32 = 10;
/// How long a caller waits for a connection (also bounds `connect`, so an unreachable server
/// fails fast).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The columns of a [`ProviderRow`], in a `concat!`-able form.
macro_rules! columns {
    () => {
        "id, name, hosts::text AS hosts, base_url, auth_type, credentials, credentials_key_id, \
         credentials_updated_at, config::text AS config, status, version, created_at, updated_at"
    };
}

/// The registry on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database a `postgres://` URL names.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    /// A pool that connects on first use: opening it never waits on (or fails with) the server,
    /// so a service can start while the database is down and serve what does not need it.
    pub fn connect_lazy(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy(url)?;
        Ok(Self { pool })
    }

    /// The underlying pool (for `LISTEN` on [`REGISTRY_CHANNEL`] and for tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Starts a write: bumps the registry revision (taking the writer lock) and queues the
    /// notification, which PostgreSQL delivers only if the transaction commits.
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let revision: i64 = sqlx::query_scalar(
            "UPDATE hub_meta SET registry_revision = registry_revision + 1 WHERE id = 1 \
             RETURNING registry_revision",
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(row::missing_meta_row)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(REGISTRY_CHANNEL)
            .bind(revision.to_string())
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

/// `Conflict` when another live provider has `name`.
async fn ensure_name_free(conn: &mut PgConnection, name: &str, id: &str) -> Result<(), StoreError> {
    let owner: Option<String> = sqlx::query_scalar(
        "SELECT id FROM providers WHERE name = $1 AND deleted_at IS NULL AND id <> $2",
    )
    .bind(name)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match owner {
        Some(owner) => Err(row::name_conflict(name, &owner)),
        None => Ok(()),
    }
}

/// Makes `hosts` the provider's host set, or `Conflict` naming the first host another live
/// provider claims.
async fn replace_hosts(
    conn: &mut PgConnection,
    hosts: &[HostPattern],
    id: &str,
) -> Result<(), StoreError> {
    for (i, host) in hosts.iter().enumerate() {
        let owner: Option<(String, String)> = sqlx::query_as(
            "SELECT p.id, p.name FROM provider_hosts h JOIN providers p ON p.id = h.provider_id \
             WHERE h.host = $1 AND h.provider_id <> $2",
        )
        .bind(host.to_string())
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((owner_id, owner_name)) = owner {
            return Err(row::host_conflict(i, host, &owner_id, &owner_name));
        }
    }
    sqlx::query("DELETE FROM provider_hosts WHERE provider_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    for host in hosts {
        sqlx::query("INSERT INTO provider_hosts (host, provider_id) VALUES ($1, $2)")
            .bind(host.to_string())
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(row::map_write_error)?;
    }
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        Ok(MIGRATOR.run(&self.pool).await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_provider(&self, new: ProviderInsert) -> Result<ProviderRecord, StoreError> {
        let id = new.id.to_string();
        let now = row::now();
        let (credentials, key_id, credentials_at) = match new.credentials {
            Some(c) => (Some(c.ciphertext), Some(c.key_id), Some(now)),
            None => (None, None, None),
        };
        let mut tx = self.begin_write().await?;
        ensure_name_free(&mut tx, &new.name, &id).await?;
        let row: ProviderRow = sqlx::query_as(concat!(
            "INSERT INTO providers (id, name, hosts, base_url, auth_type, credentials, \
             credentials_key_id, credentials_updated_at, config, status, version, created_at, \
             updated_at) \
             VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $8, $9::jsonb, $10, 1, $11, $11) \
             RETURNING ",
            columns!()
        ))
        .bind(&id)
        .bind(&new.name)
        .bind(row::hosts_json(&new.hosts))
        .bind(&new.base_url)
        .bind(new.auth_type.as_str())
        .bind(credentials)
        .bind(key_id)
        .bind(credentials_at)
        .bind(row::config_json(&new.config))
        .bind(new.status.as_str())
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(row::map_write_error)?;
        replace_hosts(&mut tx, &new.hosts, &id).await?;
        let record = row.into_record()?;
        tx.commit().await?;
        Ok(record)
    }

    async fn get_provider(&self, id: ProviderId) -> Result<Option<ProviderRecord>, StoreError> {
        let row: Option<ProviderRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM providers WHERE id = $1 AND deleted_at IS NULL"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(ProviderRow::into_record).transpose()
    }

    async fn list_providers(
        &self,
        query: &ProviderQuery,
    ) -> Result<Vec<ProviderRecord>, StoreError> {
        // strpos() rather than LIKE: a name filter containing % or _ means those characters.
        let rows: Vec<ProviderRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM providers WHERE deleted_at IS NULL \
             AND ($1::text IS NULL OR status = $1) \
             AND ($2::text IS NULL OR strpos(name, $2) > 0) \
             AND ($3::text IS NULL OR id > $3) \
             ORDER BY id LIMIT $4"
        ))
        .bind(query.status.map(|s| s.as_str()))
        .bind(query.name_contains.as_deref())
        .bind(query.after.map(|id| id.to_string()))
        .bind(row::page_size(query.limit))
        .fetch_all(&self.pool)
        .await?;
        row::into_records(rows)
    }

    async fn update_provider(
        &self,
        id: ProviderId,
        change: ProviderChange,
    ) -> Result<ProviderRecord, StoreError> {
        let id = id.to_string();
        let mut tx = self.begin_write().await?;
        let current: ProviderRow = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM providers WHERE id = $1 AND deleted_at IS NULL"
        ))
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await?
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
        let row: ProviderRow = sqlx::query_as(concat!(
            "UPDATE providers SET name = $2, hosts = $3::jsonb, base_url = $4, auth_type = $5, \
             credentials = $6, credentials_key_id = $7, credentials_updated_at = $8, \
             config = $9::jsonb, \
             status = $10, version = version + 1, updated_at = $11 WHERE id = $1 RETURNING ",
            columns!()
        ))
        .bind(&id)
        .bind(change.name.unwrap_or(current.name))
        .bind(change.hosts.map_or(current.hosts, |h| row::hosts_json(&h)))
        .bind(change.base_url.unwrap_or(current.base_url))
        .bind(auth_type)
        .bind(credentials)
        .bind(key_id)
        .bind(credentials_at)
        .bind(
            change
                .config
                .map_or(current.config, |c| row::config_json(&c)),
        )
        .bind(
            change
                .status
                .map_or(current.status, |s| s.as_str().to_owned()),
        )
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(row::map_write_error)?;
        let record = row.into_record()?;
        tx.commit().await?;
        Ok(record)
    }

    async fn delete_provider(&self, id: ProviderId) -> Result<(), StoreError> {
        let id = id.to_string();
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query(
            "UPDATE providers SET deleted_at = $2, updated_at = $2, version = version + 1, \
             credentials_updated_at = CASE WHEN credentials IS NULL \
                 THEN credentials_updated_at ELSE $2 END, \
             credentials = NULL, credentials_key_id = NULL \
             WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(&id)
        .bind(row::now())
        .execute(&mut *tx)
        .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query("DELETE FROM provider_hosts WHERE provider_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn live_providers(&self) -> Result<Vec<ProviderRecord>, StoreError> {
        let rows: Vec<ProviderRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM providers WHERE deleted_at IS NULL ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        row::into_records(rows)
    }

    async fn registry_revision(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT registry_revision FROM hub_meta WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(row::missing_meta_row)
    }
    async fn create_api_token(&self, new: ApiTokenInsert) -> Result<ApiToken, StoreError> {
        access::create_token(&self.pool, new).await
    }

    async fn api_token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        access::token_by_hash(&self.pool, hash).await
    }

    async fn list_api_tokens(&self, query: &TokenQuery) -> Result<Vec<ApiToken>, StoreError> {
        access::list_tokens(&self.pool, query).await
    }

    async fn revoke_api_token(&self, id: TokenId) -> Result<(), StoreError> {
        access::revoke_token(&self.pool, id).await
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord, StoreError> {
        access::append_audit(&self.pool, entry).await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        access::list_audit(&self.pool, query).await
    }
}

/// Wakes `wake` whenever a registry write is committed (PostgreSQL `LISTEN` on
/// [`super::REGISTRY_CHANNEL`]), so proxies apply changes at once instead of at their next poll.
/// Reconnects with backoff when the connection drops; runs until the task is dropped.
pub async fn watch_registry(url: String, wake: std::sync::Arc<tokio::sync::Notify>) {
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut listener) => match listener.listen(super::REGISTRY_CHANNEL).await {
                Ok(()) => {
                    backoff = std::time::Duration::from_millis(200);
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
        backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
    }
}
