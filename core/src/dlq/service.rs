//! The DLQ as operators use it (the admin API's `/dlq` routes call these): list with cursor
//! pagination and filters, get, the sealed body (opened on request), retry one, retry all
//! (queued, answered at once with the count), delete; and the aggregates metrics and health
//! read (depth per provider, replay lag), one query each.

use std::sync::Arc;
use std::time::Duration;

use ulid::Ulid;

use super::model::{DlqEntry, DlqError, DlqFilter, DlqPage, DlqQuery, EntryStatus, ProviderDepth};
use super::seal::open_body;
use super::store::{EntryRow, EntryStore, lag};
use crate::db::Db;
use crate::jobs::queue::{Task, TaskKind, WorkQueue};
use crate::provider::ProviderId;
use crate::state::Clock;
use crate::vault::Vault;

/// Tasks pushed per queue call by [`Dlq::retry_all`].
const PUSH_BATCH: usize = 500;

/// The DLQ service.
#[derive(Clone)]
pub struct Dlq {
    store: EntryStore,
    queue: Arc<dyn WorkQueue>,
    vault: Arc<Vault>,
    clock: Clock,
}

impl std::fmt::Debug for Dlq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dlq")
            .field("queue", &self.queue.backend())
            .finish()
    }
}

fn decode(row: &EntryRow) -> Result<DlqEntry, DlqError> {
    row.to_entry().map_err(|detail| DlqError::Corrupt {
        id: row.id.clone(),
        detail,
    })
}

impl Dlq {
    /// The DLQ on `db`, replays queued on `queue`.
    pub fn new(db: Db, queue: Arc<dyn WorkQueue>, vault: Arc<Vault>, clock: Clock) -> Self {
        Self {
            store: EntryStore::new(db),
            queue,
            vault,
            clock,
        }
    }

    /// A page of entries, newest first.
    pub async fn list(&self, query: &DlqQuery) -> Result<DlqPage, DlqError> {
        let rows = self.store.list(query).await?;
        let entries = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        let full = entries.len() == query.page_size() as usize;
        let next_cursor = if full {
            entries.last().map(|e| e.id)
        } else {
            None
        };
        Ok(DlqPage {
            entries,
            next_cursor,
        })
    }

    /// One entry.
    pub async fn get(&self, id: Ulid) -> Result<DlqEntry, DlqError> {
        let row = self.store.get(id).await?.ok_or(DlqError::NotFound)?;
        decode(&row)
    }

    /// The entry's body, opened (empty when none was kept). Carries whatever the caller sent:
    /// expose it only to operators allowed to see payloads.
    pub async fn body(&self, id: Ulid) -> Result<Vec<u8>, DlqError> {
        let row = self.store.get(id).await?.ok_or(DlqError::NotFound)?;
        match (&row.body, &row.body_key_id) {
            (Some(ct), Some(k)) => Ok(open_body(&self.vault, id, k, ct)?),
            _ => Ok(Vec::new()),
        }
    }

    /// Queues a replay of one entry and returns it (status `queued`); the worker sends it
    /// through the proxy. A failed entry can be retried again; a resolved one cannot.
    pub async fn retry(&self, id: Ulid) -> Result<DlqEntry, DlqError> {
        let now = self.clock.unix_ms();
        if !self.store.mark_queued(id, now).await? {
            let entry = self.get(id).await?;
            return Err(if !entry.replayable {
                DlqError::NotReplayable
            } else {
                DlqError::Resolved
            });
        }
        self.queue
            .push(&[Task::new(TaskKind::Replay, id)], Duration::ZERO)
            .await?;
        self.get(id).await
    }

    /// Queues a replay of every pending replayable entry (of one provider, tenant, caller) and
    /// returns how many at once; the worker drains them at each provider's rate limit.
    pub async fn retry_all(&self, filter: &DlqFilter) -> Result<u64, DlqError> {
        let now = self.clock.unix_ms();
        let ids = self.store.queue_all(filter, now).await?;
        let tasks: Vec<Task> = ids
            .iter()
            .filter_map(|i| Ulid::from_string(i).ok())
            .map(|id| Task::new(TaskKind::Replay, id))
            .collect();
        for chunk in tasks.chunks(PUSH_BATCH) {
            if let Err(e) = self.queue.push(chunk, Duration::ZERO).await {
                // The entries are marked queued: the sweeper pushes them again.
                tracing::warn!(
                    error = e.kind(),
                    "retry-all: queue push failed; the sweeper will retry"
                );
                break;
            }
        }
        Ok(ids.len() as u64)
    }

    /// Deletes an entry.
    pub async fn delete(&self, id: Ulid) -> Result<(), DlqError> {
        if self.store.delete(id).await? {
            Ok(())
        } else {
            Err(DlqError::NotFound)
        }
    }

    /// One provider's DLQ depth: its unresolved (pending or queued) entries. One `COUNT`.
    pub async fn depth(&self, provider: ProviderId) -> Result<u64, DlqError> {
        let n = self.store.unresolved_count(provider).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The DLQ depth of every provider that has unresolved entries (one grouped query).
    pub async fn depth_by_provider(&self) -> Result<Vec<ProviderDepth>, DlqError> {
        self.store
            .unresolved_by_provider()
            .await?
            .into_iter()
            .map(|(id, provider, n)| {
                let provider_id = Ulid::from_string(&id).map_err(|e| DlqError::Corrupt {
                    id: id.clone(),
                    detail: format!("provider_id is not a ULID: {e}"),
                })?;
                Ok(ProviderDepth {
                    provider_id,
                    provider,
                    depth: u64::try_from(n).unwrap_or(0),
                })
            })
            .collect()
    }

    /// How long the longest-waiting queued replay has been due without a worker taking it
    /// (zero when none waits).
    pub async fn replay_lag(&self) -> Result<Duration, DlqError> {
        let now = self.clock.unix_ms();
        let oldest = self.store.oldest_due_queued(now).await?;
        Ok(lag(now, oldest))
    }

    /// Counts entries by status for one provider or all (a page walk, for tests; health and
    /// metrics use [`Self::depth`] and [`Self::depth_by_provider`], one query each).
    pub async fn count(
        &self,
        provider: Option<ProviderId>,
        status: Option<EntryStatus>,
    ) -> Result<usize, DlqError> {
        let mut n = 0;
        let mut before = None;
        loop {
            let page = self
                .list(&DlqQuery {
                    provider_id: provider,
                    status,
                    before,
                    limit: super::model::MAX_PAGE,
                    ..DlqQuery::default()
                })
                .await?;
            n += page.entries.len();
            match page.next_cursor {
                Some(c) => before = Some(c),
                None => return Ok(n),
            }
        }
    }
}
