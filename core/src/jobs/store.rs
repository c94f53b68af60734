//! Job rows in the hub database (table `jobs`, migration 0003), the same SQL on SQLite and
//! PostgreSQL through [`Db`]. A worker takes a job with one conditional `UPDATE … RETURNING`
//! (status, due time and lease checked together), so two workers never run it at once and a
//! dead worker's lease simply expires.

use ulid::Ulid;

use crate::db::{Db, exec, fetch, scalars};

/// The columns of a [`JobRow`].
macro_rules! columns {
    () => {
        "id, provider_id, provider, tenant, method, path, headers, body, body_key_id, \
         idempotency_key, request_id, callback_url, status, attempts, due_at, lease_until, last_error, \
         result_status, result_headers, result_body, result_key_id, result_truncated, dlq_id, \
         callback_status, callback_attempts, callback_error, created_at, updated_at, finished_at"
    };
}

/// One `jobs` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct JobRow {
    pub id: String,
    pub provider_id: String,
    pub provider: String,
    pub tenant: Option<String>,
    pub method: String,
    pub path: String,
    pub headers: String,
    pub body: Option<Vec<u8>>,
    pub body_key_id: Option<String>,
    pub idempotency_key: String,
    pub request_id: String,
    pub callback_url: Option<String>,
    pub status: String,
    pub attempts: i64,
    pub due_at: i64,
    pub lease_until: Option<i64>,
    pub last_error: Option<String>,
    pub result_status: Option<i64>,
    pub result_headers: Option<String>,
    pub result_body: Option<Vec<u8>>,
    pub result_key_id: Option<String>,
    pub result_truncated: bool,
    pub dlq_id: Option<String>,
    pub callback_status: Option<String>,
    pub callback_attempts: i64,
    pub callback_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

/// A job to insert (body already sealed).
#[derive(Debug)]
pub(crate) struct JobInsert<'a> {
    pub id: Ulid,
    pub provider_id: Ulid,
    pub provider: &'a str,
    pub tenant: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: String,
    pub body: Option<(String, Vec<u8>)>,
    pub idempotency_key: &'a str,
    pub request_id: &'a str,
    pub callback_url: Option<&'a str>,
}

/// A completed attempt's result (body already sealed).
#[derive(Debug)]
pub(crate) struct JobOutcome {
    pub status: u16,
    pub headers: String,
    pub body: Option<(String, Vec<u8>)>,
    pub truncated: bool,
}

/// The jobs table.
#[derive(Debug, Clone)]
pub(crate) struct JobStore {
    db: Db,
}

impl JobStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Inserts a job; `false` when its idempotency key is taken (nothing changed).
    pub async fn insert(&self, j: &JobInsert<'_>, now_ms: i64) -> Result<bool, sqlx::Error> {
        let (key_id, body) = match &j.body {
            Some((k, b)) => (Some(k.as_str()), Some(b.as_slice())),
            None => (None, None),
        };
        let n = exec!(
            &self.db,
            "INSERT INTO jobs (id, provider_id, provider, tenant, method, path, headers, body, \
             body_key_id, idempotency_key, request_id, callback_url, status, attempts, due_at, \
             created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?) \
             ON CONFLICT (provider_id, idempotency_key) DO NOTHING",
            j.id.to_string(),
            j.provider_id.to_string(),
            j.provider,
            j.tenant,
            j.method,
            j.path,
            &j.headers,
            body,
            key_id,
            j.idempotency_key,
            j.request_id,
            j.callback_url,
            now_ms,
            now_ms,
            now_ms,
        )?;
        Ok(n > 0)
    }

    pub async fn get(&self, id: Ulid) -> Result<Option<JobRow>, sqlx::Error> {
        fetch!(
            fetch_optional,
            JobRow,
            &self.db,
            concat!("SELECT ", columns!(), " FROM jobs WHERE id = ?"),
            id.to_string()
        )
    }

    pub async fn by_key(&self, provider: Ulid, key: &str) -> Result<Option<JobRow>, sqlx::Error> {
        fetch!(
            fetch_optional,
            JobRow,
            &self.db,
            concat!(
                "SELECT ",
                columns!(),
                " FROM jobs WHERE provider_id = ? AND idempotency_key = ?"
            ),
            provider.to_string(),
            key
        )
    }

    /// Takes a due, unfinished, unleased job for one attempt (attempts + 1).
    pub async fn lease(
        &self,
        id: Ulid,
        now_ms: i64,
        lease_until: i64,
    ) -> Result<Option<JobRow>, sqlx::Error> {
        fetch!(
            fetch_optional,
            JobRow,
            &self.db,
            concat!(
                "UPDATE jobs SET status = 'processing', attempts = attempts + 1, lease_until = ?, \
                 updated_at = ? WHERE id = ? AND status IN ('pending', 'processing') \
                 AND due_at <= ? AND (lease_until IS NULL OR lease_until <= ?) RETURNING ",
                columns!()
            ),
            lease_until,
            now_ms,
            id.to_string(),
            now_ms,
            now_ms
        )
    }

    /// Completed with the provider's answer; the callback (if any) becomes due.
    pub async fn complete(
        &self,
        id: Ulid,
        attempt: i64,
        out: &JobOutcome,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let (key_id, body) = match &out.body {
            Some((k, b)) => (Some(k.as_str()), Some(b.as_slice())),
            None => (None, None),
        };
        let n = exec!(
            &self.db,
            "UPDATE jobs SET status = 'completed', lease_until = NULL, last_error = NULL, \
             result_status = ?, result_headers = ?, result_body = ?, result_key_id = ?, \
             result_truncated = ?, finished_at = ?, updated_at = ?, \
             callback_status = CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END, \
             callback_due_at = ? WHERE id = ? AND attempts = ? AND status = 'processing'",
            i64::from(out.status),
            &out.headers,
            body,
            key_id,
            out.truncated,
            now_ms,
            now_ms,
            now_ms,
            id.to_string(),
            attempt
        )?;
        Ok(n > 0)
    }

    /// Failed for good (the DLQ entry `dlq_id` records it); the callback becomes due.
    pub async fn fail(
        &self,
        id: Ulid,
        attempt: i64,
        error: &str,
        dlq_id: Ulid,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let n = exec!(
            &self.db,
            "UPDATE jobs SET status = 'failed', lease_until = NULL, last_error = ?, dlq_id = ?, \
             finished_at = ?, updated_at = ?, \
             callback_status = CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END, \
             callback_due_at = ? WHERE id = ? AND attempts = ? AND status = 'processing'",
            error,
            dlq_id.to_string(),
            now_ms,
            now_ms,
            now_ms,
            id.to_string(),
            attempt
        )?;
        Ok(n > 0)
    }

    /// Back to pending until `due_ms`. `counted = false` gives the attempt back (it was not
    /// made: the hub throttled it or the proxy was unreachable).
    pub async fn reschedule(
        &self,
        id: Ulid,
        attempt: i64,
        error: Option<&str>,
        due_ms: i64,
        counted: bool,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        exec!(
            &self.db,
            "UPDATE jobs SET status = 'pending', lease_until = NULL, due_at = ?, \
             attempts = attempts - ?, last_error = COALESCE(?, last_error), updated_at = ? \
             WHERE id = ? AND attempts = ? AND status = 'processing'",
            due_ms,
            i64::from(!counted),
            error,
            now_ms,
            id.to_string(),
            attempt
        )?;
        Ok(())
    }

    /// Records a callback delivery: `status` is `delivered`, `failed` or `pending` (retry at
    /// `due_ms`).
    pub async fn callback_attempt(
        &self,
        id: Ulid,
        status: &str,
        error: Option<&str>,
        due_ms: i64,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        exec!(
            &self.db,
            "UPDATE jobs SET callback_status = ?, callback_attempts = callback_attempts + 1, \
             callback_error = ?, callback_due_at = ?, updated_at = ? \
             WHERE id = ? AND callback_status = 'pending'",
            status,
            error,
            due_ms,
            now_ms,
            id.to_string()
        )?;
        Ok(())
    }

    /// Deletes up to `limit` jobs that finished before `before_ms`.
    pub async fn delete_finished(&self, before_ms: i64, limit: u32) -> Result<u64, sqlx::Error> {
        exec!(
            &self.db,
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE finished_at <= ? \
             AND (callback_status IS NULL OR callback_status <> 'pending') LIMIT ?)",
            before_ms,
            i64::from(limit)
        )
    }

    /// Unfinished jobs overdue by the grace period and not leased (their message was lost).
    pub async fn overdue(&self, before_ms: i64, limit: u32) -> Result<Vec<String>, sqlx::Error> {
        scalars!(
            String,
            &self.db,
            "SELECT id FROM jobs WHERE status IN ('pending', 'processing') AND due_at <= ? \
             AND (lease_until IS NULL OR lease_until <= ?) LIMIT ?",
            before_ms,
            before_ms,
            i64::from(limit)
        )
    }

    /// Jobs per stored status: `(status, count)` for each status that has any.
    pub async fn count_by_status(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        fetch!(
            fetch_all,
            (String, i64),
            &self.db,
            "SELECT status, COUNT(*) FROM jobs GROUP BY status"
        )
    }

    /// When the longest-waiting due, unleased, unfinished job became due (ms), if any.
    pub async fn oldest_due(&self, now_ms: i64) -> Result<Option<i64>, sqlx::Error> {
        let oldest = scalars!(
            Option<i64>,
            &self.db,
            "SELECT MIN(due_at) FROM jobs WHERE status IN ('pending', 'processing') \
             AND due_at <= ? AND (lease_until IS NULL OR lease_until <= ?)",
            now_ms,
            now_ms
        )?;
        Ok(oldest.into_iter().flatten().next())
    }

    /// Callbacks overdue by the grace period.
    pub async fn overdue_callbacks(
        &self,
        before_ms: i64,
        limit: u32,
    ) -> Result<Vec<String>, sqlx::Error> {
        scalars!(
            String,
            &self.db,
            "SELECT id FROM jobs WHERE callback_status = 'pending' AND callback_due_at <= ? LIMIT ?",
            before_ms,
            i64::from(limit)
        )
    }
}
