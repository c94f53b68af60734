//! The proxy's view of the provider registry: an immutable [`Snapshot`] swapped atomically
//! (`arc-swap`) whenever the store's registry revision moves. Nothing on the request path touches
//! the database: a lookup is a hash probe (exact hosts) or a short suffix scan (wildcards).
//!
//! Credentials are decrypted once per provider version, when a snapshot is built, and held in
//! memory inside [`Auth`] (whose `Debug` never prints a secret).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hub_core::provider::{
    Auth, BaseUrl, HostPattern, ProviderConfig, ProviderId, ProviderRecord, ProviderStatus,
    parse_base_url,
};
use hub_core::store::Store;
use hub_core::vault::Vault;

/// A live provider as the request path needs it.
#[derive(Debug)]
pub struct Provider {
    /// ULID.
    pub id: ProviderId,
    /// Name (metrics label, log field).
    pub name: String,
    /// Active or disabled.
    pub status: ProviderStatus,
    /// Where calls go.
    pub base: BaseUrl,
    /// Policy.
    pub config: ProviderConfig,
    /// Decrypted credentials; `None` when they could not be decrypted (calls get 503).
    pub auth: Option<Auth>,
    /// Store version this was built from.
    pub version: i64,
}

impl Provider {
    /// Whether a module-facing port is one this provider is reached on: the scheme's default
    /// port (443 through CONNECT, 80 in absolute-form) or the base URL's own port.
    pub fn accepts_port(&self, port: u16, tunnel: bool) -> bool {
        port == if tunnel { 443 } else { 80 } || port == self.base.port
    }
}

/// One registry state; immutable once built.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Store revision this snapshot reflects.
    pub revision: i64,
    exact: HashMap<String, Arc<Provider>>,
    /// `(suffix, provider)`, longest suffix first so the most specific wildcard wins.
    wildcards: Vec<(String, Arc<Provider>)>,
    by_id: HashMap<ProviderId, Arc<Provider>>,
}

impl Snapshot {
    /// Builds a snapshot from providers and their host patterns.
    pub fn new(revision: i64, providers: Vec<(Arc<Provider>, Vec<HostPattern>)>) -> Self {
        let mut snap = Snapshot {
            revision,
            ..Default::default()
        };
        for (p, hosts) in providers {
            for h in hosts {
                match h {
                    HostPattern::Exact(name) => {
                        snap.exact.insert(name, p.clone());
                    }
                    HostPattern::Wildcard(suffix) => snap.wildcards.push((suffix, p.clone())),
                }
            }
            snap.by_id.insert(p.id, p);
        }
        snap.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        snap
    }

    /// The provider a (normalized, lower-case, port-less) host routes to.
    pub fn lookup(&self, host: &str) -> Option<&Arc<Provider>> {
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

/// The registry: current snapshot plus what it takes to rebuild it.
pub struct Registry {
    current: ArcSwap<Snapshot>,
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    /// One refresh at a time: two overlapping ones could install the older snapshot last.
    refreshing: tokio::sync::Mutex<()>,
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
        }
    }

    /// The current snapshot (cheap: an atomic load).
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Reloads when the store's revision moved; returns whether a new snapshot was installed.
    pub async fn refresh(&self) -> Result<bool, hub_core::store::StoreError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let revision = self.store.registry_revision().await?;
        let old = self.current.load_full();
        if revision == old.revision {
            return Ok(false);
        }
        let records = self.store.live_providers().await?;
        let built = records
            .into_iter()
            .filter_map(|r| self.build_provider(&old, r))
            .collect();
        self.current.store(Arc::new(Snapshot::new(revision, built)));
        tracing::info!(revision, "registry snapshot installed");
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
        let p = Provider {
            id: r.id,
            name: r.name,
            status: r.status,
            base,
            config: r.config,
            auth,
            version: r.version,
        };
        Some((Arc::new(p), r.hosts))
    }

    /// Whether a snapshot has been loaded (the proxy can route).
    pub fn loaded(&self) -> bool {
        self.current.load().revision >= 0
    }

    /// Whether the store answers.
    pub async fn store_reachable(&self) -> bool {
        self.store.ping().await.is_ok()
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
