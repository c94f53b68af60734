//! Spool hand-over through Valkey: a proxy stopping (SIGTERM) while the database is down does
//! not take its undrained DLQ entries with it. A Kubernetes pod's `emptyDir` survives container
//! restarts, not the pod's deletion, so a rolling update during a database incident would lose
//! what the replaced pods had spooled. On a clean stop the writer pushes those entries (sealed,
//! exactly as spooled) to the list `<prefix>dlq:handover`; the drainer of any proxy takes them
//! into the database once it is reachable.
//!
//! Exactly once: one drainer at a time holds `<prefix>dlq:handover:lock` (`SET NX PX`), reads a
//! batch from the head of the list, inserts it (idempotent by id) and only then trims it off. A
//! drainer dying between the insert and the trim leaves the batch for the next one, whose
//! insert is then a no-op. Valkey's own durability applies: with persistence off, a Valkey
//! restart before the database returns loses what it held (the log says how many were handed).

use std::time::Duration;

use super::seal::SealedEntry;

/// Entries per command.
const BATCH: usize = 64;
/// How long a drainer's lock lasts without renewal.
const LOCK_MS: u64 = 10_000;
/// Longest one Valkey command may take.
const WAIT: Duration = Duration::from_secs(2);

/// The hand-over list in Valkey.
#[derive(Clone)]
pub struct Handover {
    client: redis::Client,
    key: String,
    lock: String,
    me: String,
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover").field("key", &self.key).finish()
    }
}

async fn bounded<T>(
    op: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(WAIT, op).await.unwrap_or_else(|_| {
        Err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "valkey did not answer in time",
        )))
    })
}

impl Handover {
    /// The list under `<prefix>dlq:handover` on the Valkey `url` names.
    pub fn new(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            key: format!("{prefix}dlq:handover"),
            lock: format!("{prefix}dlq:handover:lock"),
            me: ulid::Ulid::new().to_string(),
        })
    }

    async fn conn(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        bounded(self.client.get_multiplexed_async_connection()).await
    }

    /// Appends `entries` to the list; the number pushed (all, or an error).
    pub async fn push(&self, entries: &[SealedEntry]) -> redis::RedisResult<usize> {
        let mut conn = self.conn().await?;
        for chunk in entries.chunks(BATCH) {
            let items: Vec<Vec<u8>> = chunk
                .iter()
                .map(|e| serde_json::to_vec(e).expect("a sealed entry serializes"))
                .collect();
            bounded(
                redis::cmd("RPUSH")
                    .arg(&self.key)
                    .arg(items)
                    .query_async::<i64>(&mut conn),
            )
            .await?;
        }
        Ok(entries.len())
    }

    /// Entries waiting in the list (0 when Valkey does not answer).
    pub async fn waiting(&self) -> usize {
        let Ok(mut conn) = self.conn().await else {
            return 0;
        };
        bounded(
            redis::cmd("LLEN")
                .arg(&self.key)
                .query_async::<usize>(&mut conn),
        )
        .await
        .unwrap_or(0)
    }

    /// Moves what the list holds into the database with `insert` (which must be idempotent
    /// and say whether it worked), one batch at a time under the lock. Returns the number
    /// taken; stops at the first failed insert (the batch stays in the list).
    pub async fn take<F, Fut>(&self, mut insert: F) -> usize
    where
        F: FnMut(Vec<SealedEntry>) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let Ok(mut conn) = self.conn().await else {
            return 0;
        };
        let locked: Option<String> = bounded(
            redis::cmd("SET")
                .arg(&self.lock)
                .arg(&self.me)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_MS)
                .query_async(&mut conn),
        )
        .await
        .unwrap_or(None);
        if locked.is_none() {
            return 0; // another drainer has it
        }
        let mut taken = 0;
        loop {
            let raw: Vec<Vec<u8>> = match bounded(
                redis::cmd("LRANGE")
                    .arg(&self.key)
                    .arg(0)
                    .arg(BATCH - 1)
                    .query_async(&mut conn),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => break,
            };
            if raw.is_empty() {
                break;
            }
            let n = raw.len();
            let entries: Vec<SealedEntry> = raw
                .iter()
                .filter_map(|r| match serde_json::from_slice(r) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        tracing::error!(error = %e, "a handed-over DLQ entry does not decode; dropped");
                        None
                    }
                })
                .collect();
            if !insert(entries).await {
                break;
            }
            let trimmed = bounded(
                redis::cmd("LTRIM")
                    .arg(&self.key)
                    .arg(n)
                    .arg(-1)
                    .query_async::<()>(&mut conn),
            )
            .await;
            if trimmed.is_err() {
                break; // inserted already: the next drainer's insert is a no-op
            }
            taken += n;
            let _: redis::RedisResult<()> = bounded(
                redis::cmd("PEXPIRE")
                    .arg(&self.lock)
                    .arg(LOCK_MS)
                    .query_async(&mut conn),
            )
            .await;
        }
        // Release only our own lock.
        let _: redis::RedisResult<i64> = bounded(
            redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
            )
            .key(&self.lock)
            .arg(&self.me)
            .invoke_async(&mut conn),
        )
        .await;
        taken
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    use super::Handover;
    use crate::dlq::seal::{EntryDraft, SealedEntry};
    use crate::secret::SecretString;
    use crate::vault::Vault;

    fn entry(vault: &Vault) -> SealedEntry {
        EntryDraft {
            id: ulid::Ulid::new(),
            provider_id: ulid::Ulid::new(),
            provider: "p",
            tenant: None,
            method: "POST",
            path: "/v1/x",
            headers: &[],
            body: Some(b"{}"),
            idempotency_key: None,
            request_id: "r",
            job_id: None,
            attempts: 1,
            last_status: Some(503),
            last_error: "status",
            stop: "attempts_exhausted",
            excerpt: "",
            failed_at_ms: 1_700_000_000_000,
        }
        .seal(vault, 1024, 86_400_000)
        .unwrap()
    }

    /// Two drainers taking at once store every handed-over entry exactly once; a failed insert
    /// leaves its batch in the list.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hand_overs_are_taken_once_each() {
        let Some(url) = crate::testing::redis_url().await else {
            return;
        };
        let prefix = format!("hub-test-{}:", ulid::Ulid::new());
        let vault = Vault::from_spec(&SecretString::new(
            "t1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ))
        .unwrap();
        let entries: Vec<_> = (0..150).map(|_| entry(&vault)).collect();
        let (a, b) = (
            Handover::new(&url, &prefix).unwrap(),
            Handover::new(&url, &prefix).unwrap(),
        );
        assert_eq!(a.push(&entries).await.unwrap(), 150);
        assert_eq!(b.waiting().await, 150);
        // A database that is down: nothing is taken, nothing leaves the list.
        assert_eq!(a.take(|_| async { false }).await, 0);
        assert_eq!(a.waiting().await, 150);
        let stored = Arc::new(Mutex::new(Vec::new()));
        let insert = |s: Arc<Mutex<Vec<ulid::Ulid>>>| {
            move |batch: Vec<SealedEntry>| {
                let s = s.clone();
                async move {
                    s.lock().unwrap().extend(batch.iter().map(|e| e.id));
                    true
                }
            }
        };
        let (ta, tb) = tokio::join!(
            a.take(insert(stored.clone())),
            b.take(insert(stored.clone()))
        );
        let (ta, tb) = (ta + a.take(insert(stored.clone())).await, tb);
        assert_eq!(ta + tb, 150, "every entry taken once ({ta} + {tb})");
        let got = stored.lock().unwrap().clone();
        assert_eq!(got.len(), 150, "no entry inserted twice");
        let want: HashSet<_> = entries.iter().map(|e| e.id).collect();
        assert_eq!(got.into_iter().collect::<HashSet<_>>(), want);
        assert_eq!(a.waiting().await, 0);
    }
}
