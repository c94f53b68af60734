//! Tenants, callers and grants (migration 0004), written once for both backends. Every write is
//! a registry write ([`SqlStore::begin_write`]: the revision moves, so the proxy picks callers
//! and grants up like providers) and appends its audit entry in the same transaction.

use chrono::{DateTime, Utc};

use super::SqlStore;
use super::access::append_audit_in;
use crate::access::AuditEntry;
use crate::caller::{
    CallerRecord, GrantId, GrantLimits, GrantRecord, ServiceAccountRef, Subject, Tenant,
};
use crate::db::{fetch, tx_exec, tx_scalar};
use crate::store::StoreError;

#[derive(Debug, sqlx::FromRow)]
struct TenantRow {
    name: String,
    created_at: DateTime<Utc>,
}

#[derive(Debug, sqlx::FromRow)]
struct CallerRow {
    id: String,
    name: String,
    tenant: String,
    groups: String,
    token_hash: Option<String>,
    sa_namespace: Option<String>,
    sa_name: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl CallerRow {
    fn into_record(self) -> Result<CallerRecord, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            id: self.id.clone(),
            detail,
        };
        Ok(CallerRecord {
            id: self.id.parse().map_err(|e| corrupt(format!("id: {e}")))?,
            groups: serde_json::from_str(&self.groups)
                .map_err(|e| corrupt(format!("groups: {e}")))?,
            service_account: match (self.sa_namespace, self.sa_name) {
                (Some(namespace), Some(name)) => Some(ServiceAccountRef { namespace, name }),
                _ => None,
            },
            name: self.name,
            tenant: self.tenant,
            token_hash: self.token_hash,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
struct GrantRow {
    id: String,
    tenant: String,
    caller_id: Option<String>,
    caller_group: Option<String>,
    provider_id: String,
    methods: String,
    paths: String,
    rate_limit_per_sec: Option<i64>,
    burst: Option<i64>,
    daily_quota: Option<i64>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl GrantRow {
    fn into_record(self) -> Result<GrantRecord, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            id: self.id.clone(),
            detail,
        };
        let subject = match (self.caller_id, self.caller_group) {
            (Some(c), None) => {
                Subject::Caller(c.parse().map_err(|e| corrupt(format!("caller_id: {e}")))?)
            }
            (None, Some(g)) => Subject::Group(g),
            _ => return Err(corrupt("a grant names a caller or a group".into())),
        };
        let small = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
        Ok(GrantRecord {
            id: self.id.parse().map_err(|e| corrupt(format!("id: {e}")))?,
            subject,
            provider_id: self
                .provider_id
                .parse()
                .map_err(|e| corrupt(format!("provider_id: {e}")))?,
            methods: serde_json::from_str(&self.methods)
                .map_err(|e| corrupt(format!("methods: {e}")))?,
            paths: serde_json::from_str(&self.paths).map_err(|e| corrupt(format!("paths: {e}")))?,
            limits: GrantLimits {
                rate_limit_per_sec: small(self.rate_limit_per_sec),
                burst: small(self.burst),
                daily_quota: self.daily_quota.and_then(|v| u64::try_from(v).ok()),
            },
            tenant: self.tenant,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

const CALLER_COLUMNS: &str = "id, name, tenant, groups, token_hash, sa_namespace, sa_name, \
     expires_at, revoked_at, created_at, updated_at";
const GRANT_COLUMNS: &str = "id, tenant, caller_id, caller_group, provider_id, methods, paths, \
     rate_limit_per_sec, burst, daily_quota, created_at, updated_at";

/// `Conflict` for a unique violation on the callers table (name, token, ServiceAccount).
fn caller_conflict(err: sqlx::Error, c: &CallerRecord) -> StoreError {
    if let sqlx::Error::Database(db) = &err
        && db.is_unique_violation()
    {
        let what = format!("{} {}", db.constraint().unwrap_or_default(), db.message());
        return if what.contains("sa_") || what.contains("service_account") {
            StoreError::Conflict {
                field: "serviceAccount".into(),
                message: "that ServiceAccount is already mapped to another caller".into(),
            }
        } else if what.contains("token") {
            StoreError::Conflict {
                field: "token".into(),
                message: "token collision; retry".into(),
            }
        } else {
            StoreError::Conflict {
                field: "name".into(),
                message: format!("a caller named {} exists", c.name),
            }
        };
    }
    StoreError::Database(err)
}

impl SqlStore {
    pub(super) async fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let rows = fetch!(
            fetch_all,
            TenantRow,
            &self.db,
            "SELECT name, created_at FROM tenants ORDER BY name"
        )?;
        Ok(rows
            .into_iter()
            .map(|r| Tenant {
                name: r.name,
                created_at: r.created_at,
            })
            .collect())
    }

    pub(super) async fn insert_tenant(
        &self,
        tenant: Tenant,
        audit: AuditEntry,
    ) -> Result<Tenant, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = tx_exec!(
            &mut tx,
            "INSERT INTO tenants (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            &tenant.name,
            tenant.created_at
        )?;
        if done == 0 {
            return Err(StoreError::Conflict {
                field: "name".into(),
                message: format!("tenant {} exists", tenant.name),
            });
        }
        append_audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(tenant)
    }

    pub(super) async fn remove_tenant(
        &self,
        name: &str,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let in_use = tx_scalar!(
            fetch_one,
            i64,
            &mut tx,
            "SELECT (SELECT COUNT(*) FROM providers WHERE tenant = ? AND deleted_at IS NULL) \
             + (SELECT COUNT(*) FROM callers WHERE tenant = ?) \
             + (SELECT COUNT(*) FROM grants WHERE tenant = ?) \
             + (SELECT COUNT(*) FROM api_tokens WHERE tenant = ? AND revoked_at IS NULL)",
            name,
            name,
            name,
            name
        )?;
        if in_use > 0 {
            return Err(StoreError::Conflict {
                field: "name".into(),
                message: format!(
                    "tenant {name} still has providers, callers, grants or API tokens; remove \
                     (revoke) them first"
                ),
            });
        }
        // Soft-deleted providers and revoked tokens must not block: they let go of the tenant
        // (the audit trail still names it).
        tx_exec!(
            &mut tx,
            "UPDATE providers SET tenant = NULL WHERE tenant = ? AND deleted_at IS NOT NULL",
            name
        )?;
        tx_exec!(
            &mut tx,
            "UPDATE api_tokens SET tenant = NULL WHERE tenant = ? AND revoked_at IS NOT NULL",
            name
        )?;
        let n = tx_exec!(&mut tx, "DELETE FROM tenants WHERE name = ?", name)?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        append_audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn callers(&self) -> Result<Vec<CallerRecord>, StoreError> {
        let sql = format!("SELECT {CALLER_COLUMNS} FROM callers ORDER BY id");
        fetch!(fetch_all, CallerRow, &self.db, &sql)?
            .into_iter()
            .map(CallerRow::into_record)
            .collect()
    }

    pub(super) async fn write_caller(
        &self,
        c: CallerRecord,
        create: bool,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        let groups = serde_json::to_string(&c.groups).expect("strings serialize");
        let (ns, sa) = match &c.service_account {
            Some(s) => (Some(s.namespace.as_str()), Some(s.name.as_str())),
            None => (None, None),
        };
        let mut tx = self.begin_write().await?;
        let n = if create {
            tx_exec!(
                &mut tx,
                "INSERT INTO callers (id, name, tenant, groups, token_hash, sa_namespace, sa_name, \
                 expires_at, revoked_at, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                c.id.to_string(),
                &c.name,
                &c.tenant,
                &groups,
                c.token_hash.as_deref(),
                ns,
                sa,
                c.expires_at,
                c.revoked_at,
                c.created_at,
                c.updated_at
            )
        } else {
            tx_exec!(
                &mut tx,
                "UPDATE callers SET groups = ?, token_hash = ?, sa_namespace = ?, sa_name = ?, \
                 expires_at = ?, revoked_at = ?, updated_at = ? WHERE id = ?",
                &groups,
                c.token_hash.as_deref(),
                ns,
                sa,
                c.expires_at,
                c.revoked_at,
                c.updated_at,
                c.id.to_string()
            )
        }
        .map_err(|e| caller_conflict(e, &c))?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        append_audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn grants(&self) -> Result<Vec<GrantRecord>, StoreError> {
        let sql = format!("SELECT {GRANT_COLUMNS} FROM grants ORDER BY id");
        fetch!(fetch_all, GrantRow, &self.db, &sql)?
            .into_iter()
            .map(GrantRow::into_record)
            .collect()
    }

    pub(super) async fn write_grant(
        &self,
        g: GrantRecord,
        create: bool,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        let (caller, group) = match &g.subject {
            Subject::Caller(id) => (Some(id.to_string()), None),
            Subject::Group(name) => (None, Some(name.clone())),
        };
        let methods = serde_json::to_string(&g.methods).expect("strings serialize");
        let paths = serde_json::to_string(&g.paths).expect("strings serialize");
        let rate = g.limits.rate_limit_per_sec.map(i64::from);
        let burst = g.limits.burst.map(i64::from);
        let quota = g
            .limits
            .daily_quota
            .map(|q| i64::try_from(q).unwrap_or(i64::MAX));
        let mut tx = self.begin_write().await?;
        let n = if create {
            tx_exec!(
                &mut tx,
                "INSERT INTO grants (id, tenant, caller_id, caller_group, provider_id, methods, \
                 paths, rate_limit_per_sec, burst, daily_quota, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                g.id.to_string(),
                &g.tenant,
                caller,
                group,
                g.provider_id.to_string(),
                &methods,
                &paths,
                rate,
                burst,
                quota,
                g.created_at,
                g.updated_at
            )?
        } else {
            tx_exec!(
                &mut tx,
                "UPDATE grants SET methods = ?, paths = ?, rate_limit_per_sec = ?, burst = ?, \
                 daily_quota = ?, updated_at = ? WHERE id = ?",
                &methods,
                &paths,
                rate,
                burst,
                quota,
                g.updated_at,
                g.id.to_string()
            )?
        };
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        append_audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn remove_grant(
        &self,
        id: GrantId,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let n = tx_exec!(&mut tx, "DELETE FROM grants WHERE id = ?", id.to_string())?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        append_audit_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }
}
