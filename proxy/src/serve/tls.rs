//! TLS interception: a rustls certificate resolver that mints a leaf for the SNI name from the
//! hub CA on first use, caches it (bounded LRU) and renews it before it expires. It mints only for
//! names that route to a live provider, so the hub never signs arbitrary names.

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
        let minted = match self.ca.mint_leaf(host, self.validity) {
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
        let key = Arc::new(CertifiedKey::new(chain, signing_key));
        // Renew when three quarters of the lifetime have passed.
        let renew_at = now + self.validity.mul_f64(0.75);
        self.cache.lock().expect("leaf cache lock").put(
            host.to_owned(),
            Cached {
                key: key.clone(),
                renew_at,
            },
        );
        crate::metrics::LEAVES_MINTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(key)
    }

    /// Cached leaves.
    pub fn cached(&self) -> usize {
        self.cache.lock().expect("leaf cache lock").len()
    }
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = normalize_host(hello.server_name()?);
        // Only names a live provider serves; the CONNECT check already refused the others.
        self.registry.snapshot().lookup(&host)?;
        self.leaf_for(&host)
    }
}

/// The server-side TLS config used inside tunnels: HTTP/1.1 only, leaves from `resolver`.
pub fn server_config(
    resolver: Arc<LeafResolver>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Session resumption (TLS 1.3 tickets, TLS 1.2 session ids): a module reconnecting to the
    // same provider skips the certificate signature, the dearest step of a handshake.
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(Arc::new(cfg))
}
