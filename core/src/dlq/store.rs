//! DLQ rows in the hub database (table `dlq_entries`, migration 0003), the same SQL on SQLite
//! and PostgreSQL through [`Db`]. Every state change is one statement.

use chrono::{DateTime, Utc};
use ulid::Ulid;

use super::model::{DlqEntry, DlqFilter, DlqQuery, EntryStatus, ReplayOutcome};
use super::seal::SealedEntry;
use crate::db::{Db, exec, fetch, scalars};

/// The columns of an [`EntryRow`].
macro_rules! columns {
    () => {
        "id, provider_id, provider, tenant, method, path, headers, body, body_key_id, body_size, \
         body_truncated, idempotency_key, request_id, caller, job_id, attempts, last_status, \
         last_error, stop_reason, excerpt, status, replays, replay_status, replay_error, \
         replay_excerpt, replayed_at, created_at, updated_at, expires_at"
    };
}

/// One `dlq_entries` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct EntryRow {
    pub id: String,
    pub provider_id: String,
    pub provider: String,
    pub tenant: Option<String>,
    pub method: String,
    pub path: String,
    pub headers: String,
    pub body: Option<Vec<u8>>,
    pub body_key_id: Option<String>,
    pub body_size: i64,
    pub body_truncated: bool,
    pub idempotency_key: Option<String>,
    pub request_id: String,
    pub caller: Option<String>,
    pub job_id: Option<String>,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub last_error: String,
    pub stop_reason: String,
    pub excerpt: String,
    pub status: String,
    pub replays: i64,
    pub replay_status: Option<i64>,
    pub replay_error: Option<String>,
    pub replay_excerpt: Option<String>,
    pub replayed_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: i64,
}

/// Milliseconds since the epoch as a UTC time (out-of-range values clamp to the epoch).
pub(crate) fn utc(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// `now - due` as a duration (zero when nothing is due, or the clock moved back).
pub(crate) fn lag(now_ms: i64, due_ms: Option<i64>) -> std::time::Duration {
    due_ms.map_or(std::time::Duration::ZERO, |due| {
        std::time::Duration::from_millis(u64::try_from(now_ms.saturating_sub(due)).unwrap_or(0))
    })
}

impl EntryRow {
    /// Decodes the row; `Err` names what is corrupt.
    pub fn to_entry(&self) -> Result<DlqEntry, String> {
        let ulid = |v: &str, what: &str| {
            Ulid::from_string(v).map_err(|e| format!("{what} is not a ULID: {e}"))
        };
        let status = EntryStatus::parse(&self.status)
            .ok_or_else(|| format!("unknown status {:?}", self.status))?;
        let headers: Vec<(String, String)> =
            serde_json::from_str(&self.headers).map_err(|e| format!("headers: {e}"))?;
        let last_replay = self.replayed_at.map(|at| ReplayOutcome {
            at: utc(at),
            succeeded: status == EntryStatus::Resolved,
            status: self.replay_status.and_then(|s| u16::try_from(s).ok()),
            error: self.replay_error.clone(),
            excerpt: self.replay_excerpt.clone().unwrap_or_default(),
        });
        Ok(DlqEntry {
            id: ulid(&self.id, "id")?,
            provider_id: ulid(&self.provider_id, "provider_id")?,
            provider: self.provider.clone(),
            tenant: self.tenant.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            headers,
            body_size: u64::try_from(self.body_size).unwrap_or(0),
            body_truncated: self.body_truncated,
            replayable: !self.body_truncated,
            idempotency_key: self.idempotency_key.clone(),
            request_id: self.request_id.clone(),
            caller: self.caller.clone(),
            job_id: self
                .job_id
                .as_deref()
                .map(|j| ulid(j, "job_id"))
                .transpose()?,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            last_status: self.last_status.and_then(|s| u16::try_from(s).ok()),
            last_error: self.last_error.clone(),
            stop: self.stop_reason.clone(),
            excerpt: self.excerpt.clone(),
            status,
            replays: u32::try_from(self.replays).unwrap_or(0),
            last_replay,
            created_at: utc(self.created_at),
            updated_at: utc(self.updated_at),
            expires_at: utc(self.expires_at),
        })
    }
}

/// What a replay ended with, as recorded on the entry.
#[derive(Debug, Clone)]
pub(crate) struct ReplayRecord<'a> {
    pub succeeded: bool,
    pub status: Option<u16>,
    pub error: Option<&'a str>,
    pub excerpt: &'a str,
}

/// The DLQ table.
#[derive(Debug, Clone)]
pub(crate) struct EntryStore {
    db: Db,
}

impl EntryStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Inserts entries; existing ids are left alone, and so are the failed attempts of a job
    /// (recorded once, by the job, when it fails for good). Returns how many rows were added.
    pub async fn insert(&self, entries: &[SealedEntry], now_ms: i64) -> Result<u64, sqlx::Error> {
        let mut added = 0;
        for e in entries {
            let headers = serde_json::to_string(&e.headers).unwrap_or_else(|_| "[]".into());
            added += exec!(
                &self.db,
                "INSERT INTO dlq_entries (id, provider_id, provider, tenant, method, path, headers, \
                 body, body_key_id, body_size, body_truncated, idempotency_key, request_id, caller, \
                 job_id, attempts, last_status, last_error, stop_reason, excerpt, status, \
                 created_at, updated_at, expires_at) \
                 SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ? \
                 WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = ? AND provider_id = ?) \
                 ON CONFLICT (id) DO NOTHING",
                e.id.to_string(),
                e.provider_id.to_string(),
                &e.provider,
                e.tenant.as_deref(),
                &e.method,
                &e.path,
                headers,
                e.body.as_deref(),
                e.body_key_id.as_deref(),
                i64::try_from(e.body_size).unwrap_or(i64::MAX),
                e.body_truncated,
                e.idempotency_key.as_deref(),
                &e.request_id,
                e.caller.as_deref(),
                e.job_id.map(|j| j.to_string()),
                i64::from(e.attempts),
                e.last_status.map(i64::from),
                &e.last_error,
                &e.stop,
                &e.excerpt,
                e.created_at_ms,
                now_ms,
                e.expires_at_ms,
                e.attempt_of_job.map(|j| j.to_string()).unwrap_or_default(),
                e.provider_id.to_string(),
            )?;
        }
        Ok(added)
    }

    pub async fn get(&self, id: Ulid) -> Result<Option<EntryRow>, sqlx::Error> {
        fetch!(
            fetch_optional,
            EntryRow,
            &self.db,
            concat!("SELECT ", columns!(), " FROM dlq_entries WHERE id = ?"),
            id.to_string()
        )
    }

    /// A page, newest first.
    pub async fn list(&self, q: &DlqQuery) -> Result<Vec<EntryRow>, sqlx::Error> {
        fetch!(
            fetch_all,
            EntryRow,
            &self.db,
            concat!(
                "SELECT ",
                columns!(),
                " FROM dlq_entries WHERE (? IS NULL OR provider_id = ?) \
                 AND (? IS NULL OR status = ?) AND (? IS NULL OR tenant = ?) \
                 AND (? IS NULL OR caller = ?) AND (? IS NULL OR id < ?) \
                 ORDER BY id DESC LIMIT ?"
            ),
            q.provider_id.map(|p| p.to_string()),
            q.provider_id.map(|p| p.to_string()),
            q.status.map(EntryStatus::as_str),
            q.status.map(EntryStatus::as_str),
            q.tenant.as_deref(),
            q.tenant.as_deref(),
            q.caller.as_deref(),
            q.caller.as_deref(),
            q.before.map(|b| b.to_string()),
            q.before.map(|b| b.to_string()),
            i64::from(q.page_size()),
        )
    }

    pub async fn delete(&self, id: Ulid) -> Result<bool, sqlx::Error> {
        let n = exec!(
            &self.db,
            "DELETE FROM dlq_entries WHERE id = ?",
            id.to_string()
        )?;
        Ok(n > 0)
    }

    /// Queues one replayable, unresolved entry; `false` when it is not one.
    pub async fn mark_queued(&self, id: Ulid, now_ms: i64) -> Result<bool, sqlx::Error> {
        let n = exec!(
            &self.db,
            "UPDATE dlq_entries SET status = 'queued', due_at = ?, updated_at = ? \
             WHERE id = ? AND status <> 'resolved' AND NOT body_truncated",
            now_ms,
            now_ms,
            id.to_string()
        )?;
        Ok(n > 0)
    }

    /// Queues every pending replayable entry (of one provider, tenant, caller); returns their
    /// ids.
    pub async fn queue_all(&self, f: &DlqFilter, now_ms: i64) -> Result<Vec<String>, sqlx::Error> {
        let provider = f.provider_id.map(|p| p.to_string());
        scalars!(
            String,
            &self.db,
            "UPDATE dlq_entries SET status = 'queued', due_at = ?, updated_at = ? \
             WHERE status = 'pending' AND NOT body_truncated AND (? IS NULL OR provider_id = ?) \
             AND (? IS NULL OR tenant = ?) AND (? IS NULL OR caller = ?) \
             RETURNING id",
            now_ms,
            now_ms,
            provider.as_deref(),
            provider.as_deref(),
            f.tenant.as_deref(),
            f.tenant.as_deref(),
            f.caller.as_deref(),
            f.caller.as_deref(),
        )
    }

    /// Takes a queued entry for a replay until `lease_until`; `None` when it is not queued or
    /// another worker holds it.
    pub async fn lease(
        &self,
        id: Ulid,
        now_ms: i64,
        lease_until: i64,
    ) -> Result<Option<EntryRow>, sqlx::Error> {
        fetch!(
            fetch_optional,
            EntryRow,
            &self.db,
            concat!(
                "UPDATE dlq_entries SET lease_until = ? WHERE id = ? AND status = 'queued' \
                 AND (lease_until IS NULL OR lease_until <= ?) RETURNING ",
                columns!()
            ),
            lease_until,
            id.to_string(),
            now_ms
        )
    }

    /// Records a replay's end: resolved on success, back to pending on failure.
    pub async fn record_replay(
        &self,
        id: Ulid,
        r: &ReplayRecord<'_>,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let status = if r.succeeded { "resolved" } else { "pending" };
        exec!(
            &self.db,
            "UPDATE dlq_entries SET status = ?, replays = replays + 1, replay_status = ?, \
             replay_error = ?, replay_excerpt = ?, replayed_at = ?, lease_until = NULL, \
             due_at = NULL, updated_at = ? WHERE id = ?",
            status,
            r.status.map(i64::from),
            r.error,
            r.excerpt,
            now_ms,
            now_ms,
            id.to_string()
        )?;
        Ok(())
    }

    /// A replay that was not attempted (throttled, proxy unreachable): stays queued, due later.
    pub async fn defer(&self, id: Ulid, due_ms: i64, now_ms: i64) -> Result<(), sqlx::Error> {
        exec!(
            &self.db,
            "UPDATE dlq_entries SET lease_until = NULL, due_at = ?, updated_at = ? \
             WHERE id = ? AND status = 'queued'",
            due_ms,
            now_ms,
            id.to_string()
        )?;
        Ok(())
    }

    /// Unresolved entries (pending or queued) of one provider.
    pub async fn unresolved_count(&self, provider: Ulid) -> Result<i64, sqlx::Error> {
        let counts = scalars!(
            i64,
            &self.db,
            "SELECT COUNT(*) FROM dlq_entries WHERE provider_id = ? \
             AND status IN ('pending', 'queued')",
            provider.to_string()
        )?;
        Ok(counts.first().copied().unwrap_or(0))
    }

    /// Unresolved entries per provider that has any: `(provider_id, provider name, count)`.
    pub async fn unresolved_by_provider(&self) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
        fetch!(
            fetch_all,
            (String, String, i64),
            &self.db,
            // IN, not <> 'resolved': the (status, id) index then skips the resolved rows.
            "SELECT provider_id, MAX(provider), COUNT(*) FROM dlq_entries \
             WHERE status IN ('pending', 'queued') GROUP BY provider_id"
        )
    }

    /// When the longest-waiting due, unleased queued entry became due (ms), if any.
    pub async fn oldest_due_queued(&self, now_ms: i64) -> Result<Option<i64>, sqlx::Error> {
        let oldest = scalars!(
            Option<i64>,
            &self.db,
            "SELECT MIN(due_at) FROM dlq_entries WHERE status = 'queued' AND due_at <= ? \
             AND (lease_until IS NULL OR lease_until <= ?)",
            now_ms,
            now_ms
        )?;
        Ok(oldest.into_iter().flatten().next())
    }

    /// Deletes up to `limit` expired entries.
    pub async fn delete_expired(&self, now_ms: i64, limit: u32) -> Result<u64, sqlx::Error> {
        exec!(
            &self.db,
            "DELETE FROM dlq_entries WHERE id IN \
             (SELECT id FROM dlq_entries WHERE expires_at <= ? LIMIT ?)",
            now_ms,
            i64::from(limit)
        )
    }

    /// Queued entries overdue by the grace period and not leased: their queue message was lost.
    pub async fn overdue(&self, before_ms: i64, limit: u32) -> Result<Vec<String>, sqlx::Error> {
        scalars!(
            String,
            &self.db,
            "SELECT id FROM dlq_entries WHERE status = 'queued' AND due_at <= ? \
             AND (lease_until IS NULL OR lease_until <= ?) LIMIT ?",
            before_ms,
            before_ms,
            i64::from(limit)
        )
    }
}
