//! The hub's OAuth2 access tokens: obtained from each provider's token endpoint, cached,
//! refreshed before they expire, one token request at a time across every instance, and never
//! injected expired.
//!
//! - **Cache.** Per provider version, in memory (a registry change of the provider, e.g. a new
//!   client secret, makes a new slot: old tokens are never used again) and, with Redis, sealed in
//!   the [`TokenShare`] so other instances adopt it instead of asking again.
//! - **When.** A token is refreshed once [`REFRESH_AT`] of its lifetime has passed (minus up to
//!   [`REFRESH_JITTER`] of it, so instances and providers do not line up); a token within
//!   [`EXPIRY_MARGIN`] of expiry counts as expired.
//! - **Single flight.** In one process a per-provider lock; across instances a lease in Redis:
//!   the holder asks the endpoint, the others poll the shared token until it appears or the
//!   lease lapses. Every wait is bounded by the call's budget.
//! - **The endpoint** is called through the same egress checks as the provider (destination
//!   check of the resolved address, verified TLS with the hub's roots, no redirects) and under
//!   its own breaker (shared state, keyed by a derived id), so an identity-provider outage is
//!   not hammered: once open, calls fail fast with `503 credentials_unavailable` (or keep a
//!   still-valid token, per provider: `whenIdpDown: useValidToken`). Its answers never reach a
//!   module; failures are reported by RFC 6749 code only.
//! - **Rotated refresh tokens** are stored before the new access token is used: durably in the
//!   store (sealed) and in the share; a refresh uses the newest stored one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hub_core::oauth::share::TokenShare;
use hub_core::oauth::{Grant, Issued, MAX_TOKEN_RESPONSE, TokenError, WhenIdpDown};
use hub_core::provider::{BreakerPolicy, ProviderId, SealedCredentials};
use hub_core::secret::SecretString;
use hub_core::state::{Admission, Outcome, Policy, SharedState};
use hub_core::store::Store;
use hub_core::vault::Vault;
use hub_core::wire::problem;
use tokio::time::Instant;

use crate::escape::Resolver;
use crate::problem::Problem;
use crate::registry::Provider;

/// Share of a token's lifetime after which it is refreshed.
pub const REFRESH_AT: f64 = 0.8;
/// Up to this share of the lifetime is taken off the refresh point at random.
pub const REFRESH_JITTER: f64 = 0.05;
/// A token this close to its expiry is not injected.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// The longest a token request may take (the call's budget may cut it shorter).
pub const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refresh lease is held at most (a crashed holder frees it by then).
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often an instance waiting on another's refresh looks for the new token.
pub const POLL_EVERY: Duration = Duration::from_millis(25);

/// An access token as injected.
#[derive(Debug)]
pub struct Token {
    /// The token.
    pub value: SecretString,
    /// Expiry (monotonic).
    pub expires: Instant,
    /// When to refresh it (monotonic).
    pub refresh: Instant,
    /// Identifies this token in the share (compare-and-delete on a 401).
    generation: String,
    /// The provider's scrubber with this token (and its `Bearer` form) added: what masks the
    /// answers of calls that carry it.
    pub scrubber: Option<Arc<hub_core::scrub::Scrubber>>,
}

/// The provider's scrubber plus `token` (unless `scrubResponses` is off).
fn scrubber_with(
    provider: &Provider,
    token: &SecretString,
) -> Option<Arc<hub_core::scrub::Scrubber>> {
    if !provider.config.scrub_responses {
        return None;
    }
    let bearer = format!("Bearer {}", token.expose());
    let forms = [token.expose(), bearer.as_str()];
    match &provider.scrubber {
        Some(s) => {
            let mut s = s.with_extra(forms[0]);
            s = s.with_extra(forms[1]);
            Some(Arc::new(s))
        }
        None => hub_core::scrub::Scrubber::new(forms).map(Arc::new),
    }
}

impl Token {
    fn usable(&self, now: Instant) -> bool {
        now + EXPIRY_MARGIN < self.expires
    }

    fn fresh(&self, now: Instant) -> bool {
        now < self.refresh && self.usable(now)
    }
}

/// One provider version's token.
struct Slot {
    version: i64,
    current: Mutex<Option<Arc<Token>>>,
    /// Single flight within the process.
    refreshing: tokio::sync::Mutex<()>,
    /// The newest refresh token the endpoint issued (rotating providers).
    refresh_token: Mutex<Option<SecretString>>,
    requests: std::sync::atomic::AtomicU64,
}

impl Slot {
    fn current(&self) -> Option<Arc<Token>> {
        self.current.lock().expect("token slot").clone()
    }

    fn set(&self, token: Option<Arc<Token>>) {
        *self.current.lock().expect("token slot") = token;
    }
}

/// Obtains, caches and refreshes access tokens (see the module docs).
pub struct Tokens {
    slots: Mutex<HashMap<ProviderId, Arc<Slot>>>,
    share: Arc<dyn TokenShare>,
    vault: Arc<Vault>,
    store: Option<Arc<dyn Store>>,
    state: Arc<dyn SharedState>,
    endpoint: Arc<dyn Endpoint>,
}

/// Asks a token endpoint for a token (HTTP in production; the timing tests count calls).
#[async_trait::async_trait]
pub(crate) trait Endpoint: Send + Sync {
    /// One token request for `provider`, bounded by `deadline`.
    async fn issue(
        &self,
        provider: &Provider,
        grant: Grant<'_>,
        refresh_token: Option<&SecretString>,
        deadline: Instant,
    ) -> Result<Issued, Failure>;
}

/// The token endpoint over HTTPS (see [`Endpoint::issue`] on [`HttpEndpoint`]).
struct HttpEndpoint {
    resolver: Resolver,
    roots: Vec<reqwest::Certificate>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn rfc3339_in(d: Duration) -> String {
    (chrono::Utc::now() + chrono::Duration::from_std(d).unwrap_or_default())
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A sealed value as the share keeps it: `<key id>:<base64 ciphertext>`.
fn blob_of(sealed: &SealedCredentials) -> String {
    use base64::Engine;
    format!(
        "{}:{}",
        sealed.key_id,
        base64::engine::general_purpose::STANDARD.encode(&sealed.ciphertext)
    )
}

/// The sealed value a [`blob_of`] string holds.
fn sealed_of(blob: &str) -> Option<SealedCredentials> {
    use base64::Engine;
    let (key_id, b64) = blob.split_once(':')?;
    Some(SealedCredentials {
        key_id: key_id.to_owned(),
        ciphertext: base64::engine::general_purpose::STANDARD.decode(b64).ok()?,
    })
}

/// The id the token endpoint's breaker is kept under: derived from the provider's, never equal
/// to any provider's or grant's.
fn endpoint_id(provider: ProviderId) -> ProviderId {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("hub-oauth-endpoint:{provider}"));
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    ProviderId::from_bytes(b)
}

/// The token endpoint's admission policy: no rate limit to speak of (single flight bounds it),
/// the default breaker.
fn endpoint_policy() -> Policy {
    Policy {
        rate_per_sec: 1000,
        burst: 1000,
        daily_quota: None,
        breaker: BreakerPolicy::default(),
    }
}

fn unavailable(provider: &str, why: &str) -> Problem {
    Problem::new(
        problem::CREDENTIALS_UNAVAILABLE,
        format!("the hub cannot obtain an access token for provider {provider}: {why}"),
    )
}

/// Settings for [`Tokens`].
pub struct TokensOptions {
    /// Where instances share tokens and statuses.
    pub share: Arc<dyn TokenShare>,
    /// Seals shared tokens and stored refresh tokens.
    pub vault: Arc<Vault>,
    /// Keeps rotated refresh tokens durably.
    pub store: Option<Arc<dyn Store>>,
    /// The token endpoints' breakers.
    pub state: Arc<dyn SharedState>,
    /// PEM roots trusted beside the system's (`proxy.upstream_ca_file`).
    pub extra_roots: Option<std::path::PathBuf>,
}

impl Tokens {
    /// A token manager.
    pub fn new(opts: TokensOptions) -> anyhow::Result<Self> {
        let mut roots = hub_core::satoken::system_roots();
        if let Some(path) = &opts.extra_roots {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read upstream CA file {}: {e}", path.display())
            })?;
            roots.extend(reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
                anyhow::anyhow!(
                    "upstream CA file {} holds no PEM certificate",
                    path.display()
                )
            })?);
        }
        Ok(Self::with_endpoint(
            opts,
            Arc::new(HttpEndpoint {
                resolver: Resolver::default(),
                roots,
            }),
        ))
    }

    pub(crate) fn with_endpoint(opts: TokensOptions, endpoint: Arc<dyn Endpoint>) -> Self {
        Self {
            slots: Mutex::default(),
            share: opts.share,
            vault: opts.vault,
            store: opts.store,
            state: opts.state,
            endpoint,
        }
    }

    fn slot(&self, provider: &Provider) -> Arc<Slot> {
        let mut slots = self.slots.lock().expect("token slots");
        match slots.get(&provider.id) {
            Some(s) if s.version == provider.version => s.clone(),
            _ => {
                let s = Arc::new(Slot {
                    version: provider.version,
                    current: Mutex::new(None),
                    refreshing: tokio::sync::Mutex::new(()),
                    refresh_token: Mutex::new(None),
                    requests: Default::default(),
                });
                slots.insert(provider.id, s.clone());
                s
            }
        }
    }

    fn key(provider: &Provider, what: &str) -> String {
        format!("oauth:{}:{}:{what}", provider.id, provider.version)
    }

    fn aad(provider: &Provider, what: &str) -> Vec<u8> {
        hub_core::vault::oauth_aad(what, provider.id, provider.version)
    }

    /// The access token to inject for `provider`, waiting at most until `deadline`. `None` for
    /// providers without an OAuth2 grant.
    pub async fn token(
        &self,
        provider: &Provider,
        deadline: Instant,
    ) -> Result<Option<Arc<Token>>, Problem> {
        let Some(grant) = provider.auth.as_ref().and_then(|a| a.oauth()) else {
            return Ok(None);
        };
        let slot = self.slot(provider);
        if let Some(t) = slot.current()
            && t.fresh(Instant::now())
        {
            return Ok(Some(t));
        }
        let guard = tokio::time::timeout_at(deadline, slot.refreshing.lock())
            .await
            .map_err(|_| unavailable(&provider.name, "timed out waiting for a token refresh"))?;
        let out = self.refresh(provider, grant, &slot, deadline).await;
        drop(guard);
        out.map(Some)
    }

    /// Forgets `used` (the provider answered 401 to it) so the next [`Tokens::token`] asks for
    /// a new one; a token another call already replaced is left alone.
    pub async fn invalidate(&self, provider: &Provider, used: &Token) {
        let slot = self.slot(provider);
        {
            let mut cur = slot.current.lock().expect("token slot");
            if cur
                .as_ref()
                .is_some_and(|c| c.generation == used.generation)
            {
                *cur = None;
            }
        }
        self.share
            .delete_if(
                &Self::key(provider, "token"),
                &format!("{}:", used.generation),
            )
            .await;
    }

    /// Under the slot's lock: the cached token if another call refreshed it meanwhile, else the
    /// shared one, else a new one from the endpoint (under the lease).
    async fn refresh(
        &self,
        provider: &Provider,
        grant: Grant<'_>,
        slot: &Slot,
        deadline: Instant,
    ) -> Result<Arc<Token>, Problem> {
        let now = Instant::now();
        let held = slot.current();
        if let Some(t) = held.as_ref().filter(|t| t.fresh(now)) {
            return Ok(t.clone());
        }
        let nonce = ulid::Ulid::new().to_string();
        let lease = Self::key(provider, "lease");
        loop {
            if let Some(t) = self.adopt(provider, slot).await {
                return Ok(t);
            }
            if self.share.lease(&lease, &nonce, LEASE_TTL).await {
                break;
            }
            if Instant::now() + POLL_EVERY >= deadline {
                return Err(unavailable(
                    &provider.name,
                    "timed out waiting for another instance's token refresh",
                ));
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        // Another instance may have stored a token between our look and our lease.
        let result = match self.adopt(provider, slot).await {
            Some(t) => Ok(t),
            None => self.obtain(provider, grant, slot, deadline).await,
        };
        self.share.release(&lease, &nonce).await;
        match result {
            Ok(t) => Ok(t),
            Err(problem) => match (grant.when_idp_down(), held) {
                (WhenIdpDown::UseValidToken, Some(t)) if t.usable(Instant::now()) => {
                    tracing::warn!(provider = %provider.name, "token refresh failed; using the still-valid token");
                    Ok(t)
                }
                _ => Err(problem),
            },
        }
    }

    /// A fresh token another instance shared, installed in the slot.
    async fn adopt(&self, provider: &Provider, slot: &Slot) -> Option<Arc<Token>> {
        if !self.share.shared() {
            return None;
        }
        let blob = self.share.get(&Self::key(provider, "token")).await?;
        let token = self.unseal_token(provider, &blob)?;
        if !token.fresh(Instant::now()) {
            return None;
        }
        let token = Arc::new(token);
        slot.set(Some(token.clone()));
        Some(token)
    }

    fn unseal_token(&self, provider: &Provider, blob: &str) -> Option<Token> {
        #[derive(serde::Deserialize)]
        struct Plain {
            t: String,
            e: i64,
            r: i64,
        }
        let (generation, sealed) = blob.split_once(':')?;
        let plain = self
            .vault
            .open(&Self::aad(provider, "token"), &sealed_of(sealed)?)
            .ok()?;
        let generation = generation.to_owned();
        let p: Plain = serde_json::from_slice(&plain).ok()?;
        let now_ms = unix_ms();
        let now = Instant::now();
        let at = |ms: i64| now + Duration::from_millis(u64::try_from(ms - now_ms).unwrap_or(0));
        let value = SecretString::from(p.t);
        Some(Token {
            scrubber: scrubber_with(provider, &value),
            value,
            expires: at(p.e),
            refresh: at(p.r),
            generation,
        })
    }

    fn seal_token(&self, provider: &Provider, token: &Token) -> Option<String> {
        let now = Instant::now();
        let now_ms = unix_ms();
        let ms = |i: Instant| {
            now_ms + i64::try_from(i.saturating_duration_since(now).as_millis()).unwrap_or(0)
        };
        let plain = zeroize::Zeroizing::new(
            serde_json::json!({"t": token.value.expose(), "e": ms(token.expires), "r": ms(token.refresh)})
                .to_string(),
        );
        let sealed = self
            .vault
            .seal(&Self::aad(provider, "token"), plain.as_bytes())
            .ok()?;
        Some(format!("{}:{}", token.generation, blob_of(&sealed)))
    }

    /// Asks the endpoint (under its breaker), stores a rotated refresh token, shares the token.
    async fn obtain(
        &self,
        provider: &Provider,
        grant: Grant<'_>,
        slot: &Slot,
        deadline: Instant,
    ) -> Result<Arc<Token>, Problem> {
        let id = endpoint_id(provider.id);
        let policy = endpoint_policy();
        let permit = match self.state.admit(id, &policy).await {
            Admission::Admitted(p) => p,
            Admission::CircuitOpen { retry_after } => {
                self.status(provider, slot, None, "circuit_open").await;
                let mut p = unavailable(&provider.name, "its token endpoint's circuit is open");
                p.retry_after = Some(retry_after.as_secs().max(1));
                return Err(p);
            }
            Admission::RateLimited { .. } | Admission::QuotaExhausted { .. } => {
                return Err(unavailable(&provider.name, "too many token requests"));
            }
        };
        slot.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let refresh_token = if grant.rotates() {
            self.newest_refresh_token(provider, slot).await
        } else {
            None
        };
        let issued = self
            .endpoint
            .issue(provider, grant, refresh_token.as_ref(), deadline)
            .await;
        let outcome = match &issued {
            Ok(_) => Outcome::Success,
            Err(Failure::Unreachable(_)) => Outcome::Failure,
            Err(Failure::Token(TokenError::Refused { status, .. })) if *status >= 500 => {
                Outcome::Failure
            }
            Err(_) => Outcome::Neutral,
        };
        self.state.record(permit, outcome).await;
        let issued = match issued {
            Ok(i) => i,
            Err(f) => {
                let why = f.label();
                tracing::warn!(provider = %provider.name, outcome = why, error = %f, "token request failed");
                self.status(provider, slot, None, why).await;
                return Err(unavailable(&provider.name, &f.to_string()));
            }
        };
        if let Some(rt) = &issued.refresh_token
            && grant.rotates()
            && let Err(why) = self.keep_refresh_token(provider, slot, rt).await
        {
            self.status(provider, slot, None, "store_unavailable").await;
            return Err(unavailable(&provider.name, why));
        }
        let token = Arc::new(token_of(provider, &issued));
        slot.set(Some(token.clone()));
        if let Some(blob) = self.seal_token(provider, &token) {
            self.share
                .put(
                    &Self::key(provider, "token"),
                    &blob,
                    token.expires.saturating_duration_since(Instant::now()),
                )
                .await;
        }
        self.status(provider, slot, Some(issued.lifetime), "ok")
            .await;
        Ok(token)
    }
}

/// A token as issued now, due for refresh at [`REFRESH_AT`] of its lifetime less jitter.
fn token_of(provider: &Provider, issued: &Issued) -> Token {
    use rand::Rng;
    let now = Instant::now();
    let life = issued.lifetime.as_secs_f64();
    let jitter = rand::rng().random_range(0.0..=REFRESH_JITTER);
    Token {
        scrubber: scrubber_with(provider, &issued.access_token),
        value: issued.access_token.clone(),
        expires: now + issued.lifetime,
        refresh: now + Duration::from_secs_f64(life * (REFRESH_AT - jitter)),
        generation: ulid::Ulid::new().to_string(),
    }
}

impl Tokens {
    async fn status(&self, provider: &Provider, slot: &Slot, life: Option<Duration>, why: &str) {
        crate::metrics::METRICS
            .token_requests
            .with_label_values(&[&provider.name, why])
            .inc();
        let mut status = self.share.status(provider.id).await.unwrap_or_default();
        if let Some(life) = life {
            status.expires_at = Some(rfc3339_in(life));
        }
        status.last_refresh_at = Some(rfc3339_in(Duration::ZERO));
        status.last_outcome = Some(why.to_owned());
        status.token_requests = slot.requests.load(std::sync::atomic::Ordering::Relaxed);
        self.share.put_status(provider.id, &status).await;
    }

    /// The newest refresh token: this process's, else the share's, else the store's, else the
    /// configured one (`None`).
    async fn newest_refresh_token(&self, provider: &Provider, slot: &Slot) -> Option<SecretString> {
        if let Some(rt) = slot.refresh_token.lock().expect("refresh token").clone() {
            return Some(rt);
        }
        let aad = Self::aad(provider, "refresh");
        if let Some(blob) = self.share.get(&Self::key(provider, "refresh")).await
            && let Some(rt) = self.open_refresh(&aad, &blob)
        {
            return Some(rt);
        }
        let store = self.store.as_ref()?;
        match store
            .oauth_refresh_token(provider.id, provider.version)
            .await
        {
            Ok(Some(sealed)) => {
                let plain = self.vault.open(&aad, &sealed).ok()?;
                String::from_utf8(plain.to_vec())
                    .ok()
                    .map(SecretString::from)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(provider = %provider.name, error = %e, "cannot read the stored refresh token; using the newest this process knows");
                None
            }
        }
    }

    fn open_refresh(&self, aad: &[u8], blob: &str) -> Option<SecretString> {
        let plain = self.vault.open(aad, &sealed_of(blob)?).ok()?;
        String::from_utf8(plain.to_vec())
            .ok()
            .map(SecretString::from)
    }

    /// Keeps a rotated refresh token: in this process at once (it is the only valid one now),
    /// then in the store and the share. `Err` when the store could not take it.
    async fn keep_refresh_token(
        &self,
        provider: &Provider,
        slot: &Slot,
        rt: &SecretString,
    ) -> Result<(), &'static str> {
        *slot.refresh_token.lock().expect("refresh token") = Some(rt.clone());
        let aad = Self::aad(provider, "refresh");
        let sealed = self
            .vault
            .seal(&aad, rt.expose().as_bytes())
            .map_err(|_| "cannot seal the new refresh token")?;
        self.share
            .put(
                &Self::key(provider, "refresh"),
                &blob_of(&sealed),
                Duration::from_secs(90 * 86_400),
            )
            .await;
        if let Some(store) = &self.store
            && let Err(e) = store
                .put_oauth_refresh_token(provider.id, provider.version, sealed, None)
                .await
        {
            tracing::error!(provider = %provider.name, error = %e, "cannot store the rotated refresh token (kept in memory and shared state; stored again on the next refresh)");
            return Err("the rotated refresh token cannot be stored");
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Endpoint for HttpEndpoint {
    /// One token request: destination-checked, pinned, verified TLS, no redirects, bounded.
    async fn issue(
        &self,
        provider: &Provider,
        grant: Grant<'_>,
        refresh_token: Option<&SecretString>,
        deadline: Instant,
    ) -> Result<Issued, Failure> {
        let now = u64::try_from(unix_ms() / 1000).unwrap_or(0);
        let req = grant.request(now, refresh_token).map_err(Failure::Token)?;
        let url = reqwest::Url::parse(&req.url).map_err(|_| Failure::Unreachable("bad URL"))?;
        let https = url.scheme() == "https";
        if !https && !provider.config.allow_insecure_upstream {
            return Err(Failure::Unreachable(
                "the token URL is not https (allowInsecureUpstream is off)",
            ));
        }
        let host = url
            .host_str()
            .ok_or(Failure::Unreachable("no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let addr = self
            .resolver
            .resolve(&host, port, provider.config.allow_private_network)
            .await
            .map_err(|_| {
                Failure::Unreachable("the token endpoint's address is refused or unknown")
            })?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .resolve(&host, addr);
        for root in &self.roots {
            builder = builder.add_root_certificate(root.clone());
        }
        let client = builder
            .build()
            .map_err(|_| Failure::Unreachable("cannot build the HTTP client"))?;
        let mut http = client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(req.body());
        if let Some(a) = &req.authorization {
            let mut v = reqwest::header::HeaderValue::from_str(a.expose())
                .map_err(|_| Failure::Token(TokenError::Key))?;
            v.set_sensitive(true);
            http = http.header(reqwest::header::AUTHORIZATION, v);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let budget = left.min(TOKEN_REQUEST_TIMEOUT);
        let send = async {
            let resp = http
                .send()
                .await
                .map_err(|_| Failure::Unreachable("the token endpoint cannot be reached"))?;
            let status = resp.status().as_u16();
            let mut body = Vec::new();
            let mut resp = resp;
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|_| Failure::Unreachable("the token endpoint's answer broke off"))?
            {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_TOKEN_RESPONSE {
                    return Err(Failure::Token(TokenError::Malformed("answer too large")));
                }
            }
            let body = zeroize::Zeroizing::new(body);
            hub_core::oauth::parse_response(status, &body).map_err(Failure::Token)
        };
        match tokio::time::timeout(budget, send).await {
            Ok(r) => r,
            // The call's own budget ran out first: not the endpoint's fault.
            Err(_) if left < TOKEN_REQUEST_TIMEOUT => Err(Failure::Budget),
            Err(_) => Err(Failure::Unreachable("the token endpoint timed out")),
        }
    }
}

/// Why a token request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    #[error("{0}")]
    Unreachable(&'static str),
    /// The call's budget ran out before the endpoint answered (a neutral outcome for the
    /// endpoint's breaker: a caller asking for 50 ms must not open it).
    #[error("the call's time budget ran out waiting for the token endpoint")]
    Budget,
    #[error(transparent)]
    Token(TokenError),
}

impl Failure {
    fn label(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Budget => "timeout",
            Self::Token(TokenError::Key) => "key",
            Self::Token(TokenError::Malformed(_)) => "malformed",
            Self::Token(TokenError::Refused { code: Some(c), .. }) if c == "invalid_grant" => {
                "invalid_grant"
            }
            Self::Token(TokenError::Refused { code: Some(c), .. }) if c == "invalid_client" => {
                "invalid_client"
            }
            Self::Token(TokenError::Refused { .. }) => "refused",
        }
    }
}

#[cfg(test)]
mod tests;
