//! The proxy's view of the provider registry: an immutable [`Snapshot`] swapped atomically
//! (`arc-swap`) whenever the store's registry revision moves. Nothing on the request path touches
//! the database: a lookup is a hash probe (exact hosts) or a short suffix scan (wildcards).
//!
//! Credentials are decrypted once per provider version, when a snapshot is built, and held in
//! memory inside [`Auth`] (whose `Debug` never prints a secret).
//!
//! Every revision installed from the store is also written to the last-known-good file
//! (`hub_core::store::snapshot`, credentials still sealed), and a proxy that cannot reach the
//! store at start loads that file instead ([`Registry::load_snapshot_file`]) and catches up in
//! the background. [`Registry::status`] reports where the routes came from and how old they are
//! without asking the store: it is what the refresher last observed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hub_core::caller::{CallerId, CallerRecord, DEFAULT_TENANT, GrantRecord, ServiceAccountRef};
use hub_core::provider::{
    Auth, BaseUrl, BreakerPolicy, HostPattern, ProviderConfig, ProviderId, ProviderRecord,
    ProviderStatus, parse_base_url,
};
use hub_core::state::Policy;
use hub_core::store::Store;
use hub_core::store::snapshot::{self, RedisCopy, RegistrySnapshot, SnapshotError};
use hub_core::vault::Vault;

/// A live provider as the request path needs it.
#[derive(Debug)]
pub struct Provider {
    /// ULID.
    pub id: ProviderId,
    /// Name (metrics label, log field).
    pub name: String,
    /// Its tenant; `None` for a global provider.
    pub tenant: Option<String>,
    /// Active or disabled.
    pub status: ProviderStatus,
    /// Where calls go.
    pub base: BaseUrl,
    /// Policy.
    pub config: ProviderConfig,
    /// Decrypted credentials; `None` when they could not be decrypted (calls get 503).
    pub auth: Option<Auth>,
    /// Masks the credentials in the provider's answers (`hub_core::scrub`), built with `auth`
    /// ([`crate::inject::scrubber_for`]); `None`: nothing to mask or `scrubResponses` off.
    pub scrubber: Option<Arc<hub_core::scrub::Scrubber>>,
    /// Store version this was built from.
    pub version: i64,
}

impl Provider {
    /// An active provider named `name` on `http://name.test` with the default policy and no
    /// credentials (unit tests).
    #[cfg(test)]
    pub(crate) fn for_tests(name: &str) -> Self {
        Self {
            id: ProviderId::new(),
            name: name.to_owned(),
            tenant: Some(DEFAULT_TENANT.to_owned()),
            status: ProviderStatus::Active,
            base: parse_base_url(&format!("http://{name}.test"), true).expect("test base URL"),
            config: ProviderConfig::default(),
            auth: Some(Auth::None),
            scrubber: None,
            version: 1,
        }
    }

    /// Whether a module-facing port is one this provider is reached on: the scheme's default
    /// port (443 through CONNECT, 80 in absolute-form) or the base URL's own port.
    pub fn accepts_port(&self, port: u16, tunnel: bool) -> bool {
        port == if tunnel { 443 } else { 80 } || port == self.base.port
    }
}

/// The hosts of one scope (a tenant, or the global providers).
#[derive(Debug, Default)]
struct HostTable {
    exact: HashMap<String, Arc<Provider>>,
    /// `(suffix, provider)`, longest suffix first so the most specific wildcard wins.
    wildcards: Vec<(String, Arc<Provider>)>,
}

impl HostTable {
    fn lookup(&self, host: &str) -> Option<&Arc<Provider>> {
        if let Some(p) = self.exact.get(host) {
            return Some(p);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            })
            .map(|(_, p)| p)
    }
}

/// A grant as the request path needs it: the record and its own limits, resolved once.
#[derive(Debug)]
pub struct Grant {
    /// The stored grant.
    pub record: GrantRecord,
    /// Its rate limit and quota as shared-state policy (`None`: no limits of its own). The
    /// breaker numbers never trip (a grant has no breaker; the provider's does).
    pub policy: Option<Policy>,
}

impl Grant {
    fn new(record: GrantRecord) -> Self {
        let l = record.limits;
        let policy = l.any().then(|| {
            // A quota without a rate: the rate never binds.
            let rate = l.rate_limit_per_sec.unwrap_or(u32::MAX / 2).max(1);
            Policy {
                rate_per_sec: rate,
                burst: l.burst.unwrap_or(rate).max(1),
                daily_quota: l.daily_quota,
                breaker: BreakerPolicy {
                    failure_threshold: u32::MAX,
                    ..BreakerPolicy::default()
                },
            }
        });
        Self { record, policy }
    }
}

/// One registry state; immutable once built.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Store revision this snapshot reflects.
    pub revision: i64,
    tenants: HashMap<String, HostTable>,
    global: HostTable,
    by_id: HashMap<ProviderId, Arc<Provider>>,
    callers_by_id: HashMap<CallerId, Arc<CallerRecord>>,
    /// Callers by the SHA-256 of their token.
    callers_by_token: HashMap<String, Arc<CallerRecord>>,
    callers_by_sa: HashMap<ServiceAccountRef, Arc<CallerRecord>>,
    grants: HashMap<ProviderId, Vec<Arc<Grant>>>,
}

impl Snapshot {
    /// Builds a snapshot from providers and their host patterns (no callers, no grants).
    pub fn new(revision: i64, providers: Vec<(Arc<Provider>, Vec<HostPattern>)>) -> Self {
        Self::with_callers(revision, providers, Vec::new(), Vec::new())
    }

    /// Builds a snapshot from providers, callers and grants.
    pub fn with_callers(
        revision: i64,
        providers: Vec<(Arc<Provider>, Vec<HostPattern>)>,
        callers: Vec<CallerRecord>,
        grants: Vec<GrantRecord>,
    ) -> Self {
        let mut snap = Snapshot {
            revision,
            ..Default::default()
        };
        for (p, hosts) in providers {
            let table = match &p.tenant {
                Some(t) => snap.tenants.entry(t.clone()).or_default(),
                None => &mut snap.global,
            };
            for h in hosts {
                match h {
                    HostPattern::Exact(name) => {
                        table.exact.insert(name, p.clone());
                    }
                    HostPattern::Wildcard(suffix) => table.wildcards.push((suffix, p.clone())),
                }
            }
            snap.by_id.insert(p.id, p);
        }
        for table in snap.tenants.values_mut().chain([&mut snap.global]) {
            table
                .wildcards
                .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        }
        for c in callers {
            let c = Arc::new(c);
            if let Some(h) = &c.token_hash {
                snap.callers_by_token.insert(h.clone(), c.clone());
            }
            if let Some(sa) = &c.service_account {
                snap.callers_by_sa.insert(sa.clone(), c.clone());
            }
            snap.callers_by_id.insert(c.id, c);
        }
        for g in grants {
            if snap.by_id.contains_key(&g.provider_id) {
                snap.grants
                    .entry(g.provider_id)
                    .or_default()
                    .push(Arc::new(Grant::new(g)));
            }
        }
        snap
    }

    /// The provider a (normalized, lower-case, port-less) host routes to for the default
    /// tenant (anonymous calls).
    pub fn lookup(&self, host: &str) -> Option<&Arc<Provider>> {
        self.lookup_for(DEFAULT_TENANT, host)
    }

    /// The provider `host` routes to for a caller of `tenant`: the tenant's own, else a global one.
    pub fn lookup_for(&self, tenant: &str, host: &str) -> Option<&Arc<Provider>> {
        self.tenants
            .get(tenant)
            .and_then(|t| t.lookup(host))
            .or_else(|| self.global.lookup(host))
    }

    /// Whether any tenant (or a global provider) claims `host`: the leaf minter serves it.
    pub fn claimed(&self, host: &str) -> bool {
        self.global.lookup(host).is_some()
            || self.tenants.values().any(|t| t.lookup(host).is_some())
    }

    /// A caller by id.
    pub fn caller(&self, id: &CallerId) -> Option<&Arc<CallerRecord>> {
        self.callers_by_id.get(id)
    }

    /// The caller whose token hashes to `hash`.
    pub fn caller_by_token(&self, hash: &str) -> Option<&Arc<CallerRecord>> {
        self.callers_by_token.get(hash)
    }

    /// The caller a ServiceAccount maps to.
    pub fn caller_by_service_account(&self, sa: &ServiceAccountRef) -> Option<&Arc<CallerRecord>> {
        self.callers_by_sa.get(sa)
    }

    /// The grants on a provider.
    pub fn grants(&self, provider: &ProviderId) -> &[Arc<Grant>] {
        self.grants.get(provider).map_or(&[], Vec::as_slice)
    }

    /// A provider by id.
    pub fn get(&self, id: &ProviderId) -> Option<&Arc<Provider>> {
        self.by_id.get(id)
    }

    /// Every live provider.
    pub fn providers(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.by_id.values()
    }

    /// Number of live providers.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Where the routes in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrySource {
    /// Nothing loaded yet: every call is refused.
    None,
    /// Loaded from the store.
    Store,
    /// Loaded from the last-known-good file: the store was unreachable at start.
    Snapshot,
}

/// What the refresher last observed of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreState {
    /// Not asked yet.
    Unknown,
    /// The last check answered.
    Available,
    /// The last check failed or timed out.
    Unavailable,
}

/// The registry's state as readiness and metrics report it (no I/O to compute).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryStatus {
    /// Where the routes came from.
    pub registry_source: RegistrySource,
    /// The store revision in force (-1: none).
    pub registry_revision: i64,
    /// Seconds since the store last confirmed the revision in force was current.
    pub registry_age_seconds: u64,
    /// Providers routed.
    pub providers: usize,
    /// The store as last observed.
    pub store: StoreState,
}

/// The registry: current snapshot plus what it takes to rebuild it.
pub struct Registry {
    current: ArcSwap<Snapshot>,
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    /// One refresh at a time: two overlapping ones could install the older snapshot last.
    refreshing: tokio::sync::Mutex<()>,
    /// The last-known-good file, when kept.
    snapshot_file: Option<PathBuf>,
    /// Its copy in Redis, when Redis is configured.
    redis_copy: Option<RedisCopy>,
    source: AtomicU8,
    store_state: AtomicU8,
    /// Unix ms when the store last confirmed the revision in force.
    confirmed_at_ms: AtomicI64,
    /// The revision in force, announced on every install (long-lived connections re-check
    /// their caller when it moves: see `callers::Revoker`).
    installed: tokio::sync::watch::Sender<i64>,
}

fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Registry {
    /// An empty registry over `store`; call [`Registry::refresh`] to load it.
    pub fn new(store: Arc<dyn Store>, vault: Arc<Vault>) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot {
                revision: -1,
                ..Default::default()
            }),
            store,
            vault,
            refreshing: tokio::sync::Mutex::new(()),
            snapshot_file: None,
            redis_copy: None,
            source: AtomicU8::new(RegistrySource::None as u8),
            store_state: AtomicU8::new(StoreState::Unknown as u8),
            confirmed_at_ms: AtomicI64::new(0),
            installed: tokio::sync::watch::channel(-1).0,
        }
    }

    /// Keeps the last-known-good file at `path` (`<data_dir>/registry.snapshot.json`).
    #[must_use]
    pub fn with_snapshot_file(mut self, path: PathBuf) -> Self {
        self.snapshot_file = Some(path);
        self
    }

    /// Also keeps the last-known-good snapshot in Redis (for a proxy on a fresh node).
    #[must_use]
    pub fn with_redis_copy(mut self, copy: RedisCopy) -> Self {
        self.redis_copy = Some(copy);
        self
    }

    /// Installs the newest last-known-good snapshot: the file's or Redis's; `Ok(false)` when
    /// there is none. An unreadable file is an error only when Redis has none either.
    pub async fn load_last_known_good(&self) -> Result<bool, SnapshotError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let from_file = match self.snapshot_file.clone() {
            Some(path) => tokio::task::spawn_blocking(move || snapshot::read(&path))
                .await
                .unwrap_or(Ok(None)),
            None => Ok(None),
        };
        let from_redis = match &self.redis_copy {
            Some(copy) => copy.get().await,
            None => None,
        };
        let (snap, from) = match (from_file, from_redis) {
            (Ok(Some(f)), Some(r)) if r.revision > f.revision => (r, "redis"),
            (Ok(Some(f)), _) => (f, "file"),
            (_, Some(r)) => (r, "redis"),
            (Ok(None), None) => return Ok(false),
            (Err(e), None) => return Err(e),
        };
        let old = self.current.load_full();
        let built = snap
            .providers
            .into_iter()
            .filter_map(|r| self.build_provider(&old, r))
            .collect();
        self.install(Snapshot::with_callers(
            snap.revision,
            built,
            snap.callers,
            snap.grants,
        ));
        self.confirmed_at_ms
            .store(snap.confirmed_at_ms, Ordering::Relaxed);
        self.source
            .store(RegistrySource::Snapshot as u8, Ordering::Relaxed);
        tracing::warn!(
            revision = snap.revision,
            from,
            age_seconds = self.status().registry_age_seconds,
            "registry loaded from the last-known-good snapshot (store unreachable)"
        );
        Ok(true)
    }

    /// Where the routes came from, how old they are, what the store did last (no I/O).
    pub fn status(&self) -> RegistryStatus {
        let snap = self.current.load();
        let confirmed = self.confirmed_at_ms.load(Ordering::Relaxed);
        let source = match self.source.load(Ordering::Relaxed) {
            x if x == RegistrySource::Store as u8 => RegistrySource::Store,
            x if x == RegistrySource::Snapshot as u8 => RegistrySource::Snapshot,
            _ => RegistrySource::None,
        };
        RegistryStatus {
            registry_source: source,
            registry_revision: snap.revision,
            registry_age_seconds: if confirmed > 0 {
                u64::try_from((unix_ms() - confirmed).max(0) / 1000).unwrap_or(0)
            } else {
                0
            },
            providers: snap.len(),
            store: match self.store_state.load(Ordering::Relaxed) {
                x if x == StoreState::Available as u8 => StoreState::Available,
                x if x == StoreState::Unavailable as u8 => StoreState::Unavailable,
                _ => StoreState::Unknown,
            },
        }
    }

    fn observed(&self, ok: bool) {
        let state = if ok {
            StoreState::Available
        } else {
            StoreState::Unavailable
        };
        self.store_state.store(state as u8, Ordering::Relaxed);
    }

    /// Announces each installed revision.
    pub fn installed(&self) -> tokio::sync::watch::Receiver<i64> {
        self.installed.subscribe()
    }

    fn install(&self, snap: Snapshot) {
        let revision = snap.revision;
        self.current.store(Arc::new(snap));
        self.installed.send_replace(revision);
    }

    /// The current snapshot (cheap: an atomic load).
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Reloads when the store's revision moved; returns whether a new snapshot was installed.
    pub async fn refresh(&self) -> Result<bool, hub_core::store::StoreError> {
        let result = self.refresh_inner().await;
        self.observed(result.is_ok());
        result
    }

    /// [`Registry::refresh`] bounded by `limit`; the error says why it did not happen.
    pub async fn refresh_within(&self, limit: Duration) -> Result<bool, String> {
        match tokio::time::timeout(limit, self.refresh()).await {
            Ok(Ok(changed)) => Ok(changed),
            Ok(Err(e)) => Err(format!("{e} ({})", e.kind())),
            Err(_) => {
                self.observed(false);
                Err(format!("no answer within {limit:?}"))
            }
        }
    }

    async fn refresh_inner(&self) -> Result<bool, hub_core::store::StoreError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let asked_at = unix_ms();
        let revision = self.store.registry_revision().await?;
        let old = self.current.load_full();
        if revision == old.revision {
            self.confirmed_at_ms.store(asked_at, Ordering::Relaxed);
            if self
                .source
                .swap(RegistrySource::Store as u8, Ordering::Relaxed)
                == RegistrySource::Snapshot as u8
            {
                tracing::info!(
                    revision,
                    "registry store reachable: the snapshot was current"
                );
            }
            return Ok(false);
        }
        let records = self.store.live_providers().await?;
        let callers = self.store.all_callers().await?;
        let grants = self.store.all_grants().await?;
        let keeping = self.snapshot_file.is_some() || self.redis_copy.is_some();
        let keep = keeping.then(|| RegistrySnapshot {
            revision,
            confirmed_at_ms: asked_at,
            providers: records.clone(),
            callers: callers.clone(),
            grants: grants.clone(),
        });
        let built = records
            .into_iter()
            .filter_map(|r| self.build_provider(&old, r))
            .collect();
        self.install(Snapshot::with_callers(revision, built, callers, grants));
        self.confirmed_at_ms.store(asked_at, Ordering::Relaxed);
        self.source
            .store(RegistrySource::Store as u8, Ordering::Relaxed);
        tracing::info!(revision, "registry snapshot installed");
        if let Some(keep) = keep {
            // Under the refresh lock: copies are written in revision order.
            self.keep_last_known_good(&keep).await;
        }
        Ok(true)
    }

    fn build_provider(
        &self,
        old: &Snapshot,
        r: ProviderRecord,
    ) -> Option<(Arc<Provider>, Vec<HostPattern>)> {
        if let Some(prev) = old.get(&r.id)
            && prev.version == r.version
        {
            return Some((prev.clone(), r.hosts));
        }
        let base = match parse_base_url(&r.base_url, r.config.allow_insecure_upstream) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(provider = %r.name, error = %e, "stored base URL invalid; provider skipped");
                return None;
            }
        };
        let auth = match &r.credentials {
            None => Some(Auth::None),
            Some(sealed) => match self.vault.open_auth(r.id, sealed) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::error!(provider = %r.name, key_id = %sealed.key_id, error = %e,
                        "cannot decrypt provider credentials; its calls get 503");
                    None
                }
            },
        };
        let scrubber = crate::inject::scrubber_for(auth.as_ref(), &r.config);
        let p = Provider {
            id: r.id,
            name: r.name,
            tenant: r.tenant,
            status: r.status,
            base,
            config: r.config,
            auth,
            scrubber,
            version: r.version,
        };
        Some((Arc::new(p), r.hosts))
    }

    async fn keep_last_known_good(&self, snap: &RegistrySnapshot) {
        let bytes = snapshot::encode(snap);
        if let Some(path) = self.snapshot_file.clone() {
            let file_bytes = bytes.clone();
            let written =
                tokio::task::spawn_blocking(move || snapshot::write_bytes(&path, &file_bytes))
                    .await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e,
                    "cannot write the registry snapshot: a restart while the store is down may not route"),
                Err(e) => tracing::error!(error = %e, "registry snapshot task failed"),
            }
        }
        if let Some(copy) = &self.redis_copy
            && !copy.put(bytes).await
        {
            tracing::warn!("cannot copy the registry snapshot to Redis (kept on local disk only)");
        }
    }

    /// Whether a snapshot has been loaded (the proxy can route).
    pub fn loaded(&self) -> bool {
        self.current.load().revision >= 0
    }

    /// Keeps the snapshot fresh until `shutdown` flips: checks the revision every `period`, and
    /// at once whenever `wake` is notified (PostgreSQL `LISTEN`; polling stays as the backstop).
    pub async fn run_refresher(
        self: Arc<Self>,
        period: Duration,
        wake: Option<Arc<tokio::sync::Notify>>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let wake = wake.unwrap_or_default();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            match self.refresh().await {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("registry store reachable again");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, kind = e.kind(), "registry refresh failed; serving the last snapshot");
                }
                Err(_) => {}
            }
        }
    }
}
