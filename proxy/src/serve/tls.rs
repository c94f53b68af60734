//! TLS interception: a rustls certificate resolver that mints a leaf for the SNI name from the
//! hub CA on first use, caches it (bounded LRU) and renews it before it expires. It mints only for
//! names that route to a live provider, so the hub never signs arbitrary names.
//!
//! A refused CONNECT is answered inside the tunnel (clients show an HTTP answer's body, not a
//! CONNECT failure's), which needs a leaf for the refused name: [`RefusalLeaves`] mints those
//! with their own small cache and a rate bound, so unknown names cannot make the hub sign
//! without limit. Past the bound the refusal is the bare CONNECT answer.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hub_core::ca::HubCa;
use hub_core::provider::normalize_host;
use lru::LruCache;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::registry::Registry;

struct Cached {
    key: Arc<CertifiedKey>,
    renew_at: SystemTime,
}

/// Mints and caches leaf certificates per SNI name.
pub struct LeafResolver {
    ca: Arc<HubCa>,
    registry: Arc<Registry>,
    validity: Duration,
    cache: Mutex<LruCache<String, Cached>>,
}

impl std::fmt::Debug for LeafResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafResolver")
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

impl LeafResolver {
    /// A resolver holding at most `capacity` leaves, each valid for `validity`.
    pub fn new(
        ca: Arc<HubCa>,
        registry: Arc<Registry>,
        capacity: usize,
        validity: Duration,
    ) -> Self {
        Self {
            ca,
            registry,
            validity,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("nonzero"),
            )),
        }
    }

    /// The leaf for `host`, minted when missing or due for renewal.
    pub fn leaf_for(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let now = SystemTime::now();
        if let Some(c) = self.cache.lock().expect("leaf cache lock").get(host)
            && c.renew_at > now
        {
            return Some(c.key.clone());
        }
        let key = mint(&self.ca, host, self.validity)?;
        // Renew when three quarters of the lifetime have passed.
        let renew_at = now + self.validity.mul_f64(0.75);
        self.cache.lock().expect("leaf cache lock").put(
            host.to_owned(),
            Cached {
                key: key.clone(),
                renew_at,
            },
        );
        Some(key)
    }

    /// Cached leaves.
    pub fn cached(&self) -> usize {
        self.cache.lock().expect("leaf cache lock").len()
    }
}

/// Mints a leaf for `host` from the hub CA.
fn mint(ca: &HubCa, host: &str, validity: Duration) -> Option<Arc<CertifiedKey>> {
    let minted = match ca.mint_leaf(host, validity) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(host, error = %e, "cannot mint leaf certificate");
            return None;
        }
    };
    let chain = minted
        .chain_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(minted.key_pkcs8_der));
    let signing_key = match rustls::crypto::ring::sign::any_supported_type(&key_der) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(host, error = %e, "minted key unusable");
            return None;
        }
    };
    crate::metrics::LEAVES_MINTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Some(Arc::new(CertifiedKey::new(chain, signing_key)))
}

/// Refusal leaves kept (one per refused name, least recently used out first).
pub const REFUSAL_CACHE: usize = 256;
/// Refusal leaves minted per second at most (the rest get the bare CONNECT refusal).
pub const REFUSAL_MINTS_PER_SEC: u32 = 10;
/// Lifetime of a refusal leaf (it only carries one answer).
const REFUSAL_VALIDITY: Duration = Duration::from_secs(3600);

/// Leaves for names whose CONNECT the hub refuses, so the refusal can be answered inside the
/// tunnel. Bounded: [`REFUSAL_CACHE`] names, [`REFUSAL_MINTS_PER_SEC`] new ones a second.
pub struct RefusalLeaves {
    ca: Arc<HubCa>,
    cache: Mutex<LruCache<String, (Arc<CertifiedKey>, SystemTime)>>,
    /// Start of the current one-second window and the mints in it.
    window: Mutex<(std::time::Instant, u32)>,
}

impl std::fmt::Debug for RefusalLeaves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusalLeaves").finish_non_exhaustive()
    }
}

impl RefusalLeaves {
    /// Refusal leaves from `ca`.
    pub fn new(ca: Arc<HubCa>) -> Self {
        Self {
            ca,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(REFUSAL_CACHE).expect("nonzero"),
            )),
            window: Mutex::new((std::time::Instant::now(), 0)),
        }
    }

    /// Makes sure a leaf for `host` is ready (cached, or minted within the rate bound); `false`
    /// when the bound is reached.
    pub fn prepare(&self, host: &str) -> bool {
        let now = SystemTime::now();
        if self
            .cache
            .lock()
            .expect("refusal cache lock")
            .get(host)
            .is_some_and(|(_, renew_at)| *renew_at > now)
        {
            return true;
        }
        {
            let mut w = self.window.lock().expect("refusal window lock");
            if w.0.elapsed() >= Duration::from_secs(1) {
                *w = (std::time::Instant::now(), 0);
            }
            if w.1 >= REFUSAL_MINTS_PER_SEC {
                return false;
            }
            w.1 += 1;
        }
        let Some(key) = mint(&self.ca, host, REFUSAL_VALIDITY) else {
            return false;
        };
        self.cache
            .lock()
            .expect("refusal cache lock")
            .put(host.to_owned(), (key, now + REFUSAL_VALIDITY / 2));
        true
    }
}

impl ResolvesServerCert for RefusalLeaves {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = normalize_host(hello.server_name()?);
        // Only names prepared at their CONNECT.
        self.cache
            .lock()
            .expect("refusal cache lock")
            .get(&host)
            .map(|(k, _)| k.clone())
    }
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = normalize_host(hello.server_name()?);
        // Only names a live provider serves; the CONNECT check already refused the others.
        self.registry.snapshot().claimed(&host).then_some(())?;
        self.leaf_for(&host)
    }
}

/// The server-side TLS config used inside tunnels: h2 or HTTP/1.1 by ALPN (the server's order
/// decides when a module offers both: HTTP/1.1 first unless `prefer_h2`), leaves from `resolver`.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    prefer_h2: bool,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // rustls picks the first of these the module also offers. gRPC clients offer only h2
    // (`serve/h2.rs`); see `proxy.prefer_h2` for why HTTP/1.1 comes first by default.
    cfg.alpn_protocols = if prefer_h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec(), b"h2".to_vec()]
    };
    // Session resumption (TLS 1.3 tickets, TLS 1.2 session ids): a module reconnecting to the
    // same provider skips the certificate signature, the dearest step of a handshake.
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(Arc::new(cfg))
}
