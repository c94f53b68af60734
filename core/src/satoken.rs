//! Kubernetes projected ServiceAccount tokens as caller credentials, verified offline.
//!
//! A module may identify itself to the proxy with `Proxy-Authorization: Bearer <jwt>`, the JWT
//! being the projected ServiceAccount token kubelet mounts into its pod (a `serviceAccountToken`
//! volume source with the hub's audience). [`SaVerifier::verify`] checks it against the
//! cluster's JWKS held in memory — signature (RS256 or ES256 only), `exp`, `nbf`/`iat`, `iss`,
//! `aud` — and returns the [`SaIdentity`] (namespace and service account) it names; mapping that
//! identity to a caller is done elsewhere. Verification does no I/O: the keys are loaded by
//! [`SaVerifier::new`] and reloaded by [`SaVerifier::refresh`], which a background task
//! ([`SaVerifier::spawn_refresh`]) calls every `refresh_secs`, and early (at most once per
//! 10 s) when a token names a key id the JWKS does not hold (key rotation).
//!
//! Errors name what failed, never a value from the token: neither the token, nor its signature,
//! nor its claims appear in an error message or a log line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::{Mutex, Notify, watch};

#[cfg(test)]
mod tests;

/// Default `leeway_secs`.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Default `refresh_secs`.
pub const DEFAULT_REFRESH_SECS: u64 = 300;
/// Longest token [`SaVerifier::verify`] looks at (Kubernetes tokens are 1 to 2 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest JWKS document read from the file or the URL.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Least time between two refreshes when an unknown key id asks for an early one.
pub const EARLY_REFRESH_MIN: Duration = Duration::from_secs(10);
/// Most `leeway_secs` may be.
const MAX_LEEWAY_SECS: u64 = 600;
/// Most `refresh_secs` may be.
const MAX_REFRESH_SECS: u64 = 86_400;
/// Timeout of one JWKS fetch from `jwks_url`.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// RSA modulus sizes accepted (ring's `RSA_PKCS1_2048_8192_SHA256` bounds).
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

/// Where and how ServiceAccount tokens are verified. Set exactly one of `jwks_file` and
/// `jwks_url`; `issuer` and `audiences` are required.
///
/// In a cluster, the API server serves its keys at
/// `https://kubernetes.default.svc/openid/v1/jwks` to any service account (the default
/// `system:service-account-issuer-discovery` binding): set `jwks_url` to it, `jwks_token_file`
/// to `/var/run/secrets/kubernetes.io/serviceaccount/token` and `jwks_ca_file` to
/// `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`. `issuer` is the API server's
/// `--service-account-issuer` (`kubectl get --raw /.well-known/openid-configuration` shows it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaTokenConfig {
    /// `jwks_file`: a JWKS JSON document (`{"keys": [...]}`) on disk, e.g. a mounted ConfigMap.
    /// Read again every `refresh_secs`; the keys are replaced when its content changed.
    pub jwks_file: Option<PathBuf>,
    /// `jwks_url`: where to fetch the JWKS instead, e.g.
    /// `https://kubernetes.default.svc/openid/v1/jwks` or the issuer's `jwks_uri`. `https://`
    /// (plain `http://` only to a loopback address); fetched directly, never through a proxy,
    /// no redirects, 10 s timeout, at most 1 MiB.
    pub jwks_url: Option<String>,
    /// `jwks_token_file`: a file holding a bearer token sent with each `jwks_url` fetch
    /// (re-read each time, so a rotating projected token works). Only with `jwks_url`.
    pub jwks_token_file: Option<PathBuf>,
    /// `jwks_ca_file`: PEM roots trusted for `jwks_url`, instead of the system roots (the
    /// cluster CA in-cluster). Only with `jwks_url`.
    pub jwks_ca_file: Option<PathBuf>,
    /// `issuer` (required): the exact `iss` every token must carry.
    pub issuer: String,
    /// `audiences` (required, at least one): a token's `aud` (a string or an array) must contain
    /// one of these. Give the hub its own audience (the projected volume's `audience`), not the
    /// API server's, so tokens minted for other services are not accepted here.
    pub audiences: Vec<String>,
    /// `leeway_secs` (default 30): clock skew allowed on `exp`, `nbf` and `iat`. At most 600.
    pub leeway_secs: u64,
    /// `refresh_secs` (default 300): how often the JWKS is reloaded. A token naming an unknown
    /// key id asks for an early reload, at most once per 10 s. Between 1 and 86400.
    pub refresh_secs: u64,
}

impl Default for SaTokenConfig {
    fn default() -> Self {
        Self {
            jwks_file: None,
            jwks_url: None,
            jwks_token_file: None,
            jwks_ca_file: None,
            issuer: String::new(),
            audiences: Vec::new(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
            refresh_secs: DEFAULT_REFRESH_SECS,
        }
    }
}

/// Who a verified token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaIdentity {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account's name.
    pub service_account: String,
    /// The token's `sub`: `system:serviceaccount:<namespace>:<name>`.
    pub subject: String,
    /// The token's `exp`.
    pub expires_at: DateTime<Utc>,
}

/// Why a token was refused, or why the JWKS could not be loaded. The message names what failed,
/// never a value taken from the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaError {
    /// Not a well-formed JWS compact token, or its header or claims are not what a
    /// ServiceAccount token carries (what is wrong is named).
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// `alg` is neither RS256 nor ES256 (a registered JOSE name, or `other`).
    #[error("token algorithm {0} is not accepted (RS256 and ES256 only)")]
    UnsupportedAlgorithm(String),
    /// No key of the JWKS matches the token's `kid` and algorithm.
    #[error("no JWKS key matches the token's key id and algorithm")]
    UnknownKey,
    /// The signature does not verify with the selected key.
    #[error("token signature does not verify")]
    BadSignature,
    /// `exp` (plus leeway) has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` or `iat` is in the future (beyond the leeway).
    #[error("token is not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("token issuer is not the configured issuer")]
    WrongIssuer,
    /// `aud` names none of the configured audiences.
    #[error("token audience names none of the configured audiences")]
    WrongAudience,
    /// `sub` is not `system:serviceaccount:<namespace>:<name>`, or the `kubernetes.io` claim
    /// names another namespace or service account.
    #[error("token does not name a consistent Kubernetes service account")]
    NotAServiceAccount,
    /// The JWKS could not be read, fetched or parsed.
    #[error("JWKS: {0}")]
    Jwks(String),
    /// The configuration is invalid (the key is named).
    #[error("invalid service account token config: {0}")]
    Config(String),
}

impl SaError {
    /// Stable snake_case label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::TooLarge => "too_large",
            Self::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::NotAServiceAccount => "not_a_service_account",
            Self::Jwks(_) => "jwks",
            Self::Config(_) => "config",
        }
    }
}

/// The two algorithms accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    Es256,
}

/// One verification key from the JWKS.
#[derive(Debug)]
struct Jwk {
    kid: Option<String>,
    material: Material,
}

#[derive(Debug)]
enum Material {
    /// Big-endian modulus and exponent, leading zeros stripped.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Uncompressed P-256 point `0x04 || x || y`.
    P256 { point: Vec<u8> },
}

impl Jwk {
    fn alg(&self) -> Alg {
        match self.material {
            Material::Rsa { .. } => Alg::Rs256,
            Material::P256 { .. } => Alg::Es256,
        }
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature;
        match &self.material {
            Material::Rsa { n, e } => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            Material::P256 { point } => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
        }
    }
}

/// The keys in use, replaced whole on reload.
#[derive(Debug, Default)]
struct KeySet {
    keys: Vec<Jwk>,
}

impl KeySet {
    /// The key for a token: by `kid` when it has one, else the only key of the algorithm's type.
    /// `Err(true)`: the `kid` is not in the set at all (worth an early refresh).
    fn select(&self, kid: Option<&str>, alg: Alg) -> Result<&Jwk, bool> {
        match kid {
            Some(kid) => {
                let mut named = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
                let mut any = false;
                for k in named.by_ref() {
                    any = true;
                    if k.alg() == alg {
                        return Ok(k);
                    }
                }
                Err(!any)
            }
            None => {
                let mut of_type = self.keys.iter().filter(|k| k.alg() == alg);
                match (of_type.next(), of_type.next()) {
                    (Some(k), None) => Ok(k),
                    _ => Err(false),
                }
            }
        }
    }
}

/// Parses a JWKS document, keeping the RS256/ES256 signing keys and skipping the others.
fn parse_jwks(bytes: &[u8]) -> Result<KeySet, SaError> {
    #[derive(Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(bytes)
        .map_err(|_| SaError::Jwks("not a JWKS document (a JSON object with keys)".into()))?;
    let mut set = KeySet::default();
    let mut skipped = 0usize;
    for value in doc.keys {
        match parse_jwk(value) {
            Some(k) => set.keys.push(k),
            None => skipped += 1,
        }
    }
    if set.keys.is_empty() {
        return Err(SaError::Jwks(format!(
            "no usable RS256 or ES256 signing key ({skipped} skipped)"
        )));
    }
    if skipped > 0 {
        tracing::debug!(skipped, "JWKS keys skipped (not RS256/ES256 signing keys)");
    }
    Ok(set)
}

/// One JWK, or `None` when it is not an RS256/ES256 signature key this module can use.
fn parse_jwk(value: serde_json::Value) -> Option<Jwk> {
    #[derive(Deserialize)]
    struct Raw {
        kty: String,
        kid: Option<String>,
        #[serde(rename = "use")]
        use_: Option<String>,
        alg: Option<String>,
        n: Option<String>,
        e: Option<String>,
        crv: Option<String>,
        x: Option<String>,
        y: Option<String>,
    }
    let raw: Raw = serde_json::from_value(value).ok()?;
    if raw.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let b64 = |s: Option<&String>| URL_SAFE_NO_PAD.decode(s?.as_bytes()).ok();
    let material = match raw.kty.as_str() {
        "RSA" => {
            if raw.alg.as_deref().is_some_and(|a| a != "RS256") {
                return None;
            }
            let n = strip_zeros(b64(raw.n.as_ref())?);
            let e = strip_zeros(b64(raw.e.as_ref())?);
            let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
            if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) || e.is_empty() || e.len() > 5 {
                return None;
            }
            Material::Rsa { n, e }
        }
        "EC" => {
            if raw.alg.as_deref().is_some_and(|a| a != "ES256")
                || raw.crv.as_deref() != Some("P-256")
            {
                return None;
            }
            let x = b64(raw.x.as_ref())?;
            let y = b64(raw.y.as_ref())?;
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Material::P256 { point }
        }
        _ => return None,
    };
    Some(Jwk {
        kid: raw.kid,
        material,
    })
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let lead = v.iter().take_while(|b| **b == 0).count();
    v.drain(..lead);
    v
}

/// Where the keys come from.
#[derive(Debug)]
enum Source {
    File(PathBuf),
    Url {
        url: reqwest::Url,
        client: reqwest::Client,
        token_file: Option<PathBuf>,
    },
}

impl Source {
    fn from_config(c: &SaTokenConfig) -> Result<Self, SaError> {
        let bad = |m: &str| SaError::Config(m.to_owned());
        match (&c.jwks_file, &c.jwks_url) {
            (Some(_), Some(_)) => Err(bad("set one of jwks_file and jwks_url, not both")),
            (None, None) => Err(bad("set jwks_file or jwks_url")),
            (Some(path), None) => {
                if c.jwks_token_file.is_some() || c.jwks_ca_file.is_some() {
                    return Err(bad(
                        "jwks_token_file and jwks_ca_file go with jwks_url only",
                    ));
                }
                Ok(Self::File(path.clone()))
            }
            (None, Some(raw)) => {
                let url =
                    reqwest::Url::parse(raw.trim()).map_err(|_| bad("jwks_url: not a URL"))?;
                let Some(host) = url.host_str() else {
                    return Err(bad("jwks_url: no host"));
                };
                let loopback = host.eq_ignore_ascii_case("localhost")
                    || host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                match url.scheme() {
                    "https" => {}
                    "http" if loopback => {}
                    _ => return Err(bad("jwks_url: https:// (http:// only to loopback)")),
                }
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(bad("jwks_url: no credentials in the URL (jwks_token_file)"));
                }
                let mut builder = reqwest::Client::builder()
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(FETCH_TIMEOUT)
                    .tls_built_in_root_certs(false);
                let roots = match &c.jwks_ca_file {
                    Some(path) => {
                        let pem = std::fs::read(path).map_err(|e| {
                            SaError::Config(format!(
                                "jwks_ca_file {}: cannot read: {}",
                                path.display(),
                                e.kind()
                            ))
                        })?;
                        reqwest::Certificate::from_pem_bundle(&pem)
                            .ok()
                            .filter(|certs| !certs.is_empty())
                            .ok_or_else(|| {
                                SaError::Config(format!(
                                    "jwks_ca_file {}: no PEM certificate",
                                    path.display()
                                ))
                            })?
                    }
                    None => system_roots(),
                };
                for cert in roots {
                    builder = builder.add_root_certificate(cert);
                }
                let client = builder
                    .build()
                    .map_err(|e| SaError::Config(format!("jwks_url: client: {e}")))?;
                Ok(Self::Url {
                    url,
                    client,
                    token_file: c.jwks_token_file.clone(),
                })
            }
        }
    }

    /// The JWKS bytes, at most [`MAX_JWKS_BYTES`].
    async fn load(&self) -> Result<Vec<u8>, SaError> {
        match self {
            Self::File(path) => {
                let bytes = tokio::fs::read(path).await.map_err(|e| {
                    SaError::Jwks(format!("cannot read {}: {}", path.display(), e.kind()))
                })?;
                if bytes.len() > MAX_JWKS_BYTES {
                    return Err(SaError::Jwks(format!(
                        "{} is larger than {MAX_JWKS_BYTES} bytes",
                        path.display()
                    )));
                }
                Ok(bytes)
            }
            Self::Url {
                url,
                client,
                token_file,
            } => {
                let mut req = client.get(url.clone()).header("accept", "application/json");
                if let Some(path) = token_file {
                    let token = tokio::fs::read_to_string(path).await.map_err(|e| {
                        SaError::Jwks(format!(
                            "cannot read jwks_token_file {}: {}",
                            path.display(),
                            e.kind()
                        ))
                    })?;
                    let mut value =
                        reqwest::header::HeaderValue::try_from(format!("Bearer {}", token.trim()))
                            .map_err(|_| {
                                SaError::Jwks("jwks_token_file: not a header value".into())
                            })?;
                    value.set_sensitive(true);
                    req = req.header(reqwest::header::AUTHORIZATION, value);
                }
                let fetch_err = |e: &reqwest::Error| {
                    SaError::Jwks(format!(
                        "fetch from {}: {}",
                        url_for_log(url),
                        crate::jobs::callback::reqwest_kind(e)
                    ))
                };
                let mut resp = req.send().await.map_err(|e| fetch_err(&e))?;
                if !resp.status().is_success() {
                    return Err(SaError::Jwks(format!(
                        "fetch from {}: status {}",
                        url_for_log(url),
                        resp.status().as_u16()
                    )));
                }
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await.map_err(|e| fetch_err(&e))? {
                    if body.len() + chunk.len() > MAX_JWKS_BYTES {
                        return Err(SaError::Jwks(format!(
                            "fetch from {}: larger than {MAX_JWKS_BYTES} bytes",
                            url_for_log(url)
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            }
        }
    }
}

/// Scheme, host, port and path only (no query string).
fn url_for_log(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// The system's trusted roots, for a `jwks_url` without `jwks_ca_file` (as the proxy trusts
/// for upstream TLS).
pub fn system_roots() -> Vec<reqwest::Certificate> {
    let certs = match rustls_native_certs::load_native_certs() {
        Ok(certs) => certs,
        Err(e) => {
            tracing::warn!(error = %e, "cannot load the system's trusted roots for jwks_url");
            Vec::new()
        }
    };
    certs
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der.as_ref()).ok())
        .collect()
}

/// Verifies ServiceAccount tokens against keys held in memory. Cheap to clone (shared state);
/// `Send + Sync`.
#[derive(Debug, Clone)]
pub struct SaVerifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: SaTokenConfig,
    source: Source,
    keys: ArcSwap<KeySet>,
    /// Digest of the JWKS document last loaded; held across a reload so reloads do not race.
    loaded: Mutex<Option<[u8; 32]>>,
    /// Woken by a token naming an unknown key id.
    wake: Notify,
    early_refresh_min: Duration,
}

/// The JWS header fields looked at; others (`typ`, ...) are ignored, `jku`/`x5u` never fetched.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// `aud`: a string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaim>,
}

#[derive(Deserialize)]
struct KubernetesClaim {
    namespace: Option<String>,
    serviceaccount: Option<Named>,
}

#[derive(Deserialize)]
struct Named {
    name: Option<String>,
}

/// A NumericDate as whole seconds; `None` when not a sane number.
fn seconds(v: f64) -> Option<i64> {
    // Years 1970 ± ~3000: far beyond any real token, well inside i64 and chrono.
    (v.is_finite() && v.abs() < 1e11).then(|| v.floor() as i64)
}

/// The `alg` named in an error: a registered JOSE name as is, anything else as `other`
/// (never an arbitrary string from the token).
fn alg_label(alg: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "none", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512",
        "ES256K", "PS256", "PS384", "PS512", "EdDSA", "Ed25519", "Ed448",
    ];
    KNOWN
        .iter()
        .find(|k| **k == alg)
        .copied()
        .unwrap_or("other")
}

fn is_b64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `system:serviceaccount:<namespace>:<name>` split, or `None`.
fn parse_subject(sub: &str) -> Option<(&str, &str)> {
    let rest = sub.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (ok(ns) && ok(name)).then_some((ns, name))
}

impl SaVerifier {
    /// Checks the configuration and loads the JWKS once: an error when the configuration is
    /// invalid or the keys cannot be read, fetched or parsed.
    pub async fn new(config: SaTokenConfig) -> Result<Self, SaError> {
        Self::with_early_refresh_min(config, EARLY_REFRESH_MIN).await
    }

    async fn with_early_refresh_min(
        config: SaTokenConfig,
        early_refresh_min: Duration,
    ) -> Result<Self, SaError> {
        validate(&config)?;
        let source = Source::from_config(&config)?;
        let verifier = Self {
            inner: Arc::new(Inner {
                config,
                source,
                keys: ArcSwap::from_pointee(KeySet::default()),
                loaded: Mutex::new(None),
                wake: Notify::new(),
                early_refresh_min,
            }),
        };
        verifier.refresh().await?;
        Ok(verifier)
    }

    /// Number of keys in use (RS256 and ES256 signing keys of the JWKS).
    pub fn key_count(&self) -> usize {
        self.inner.keys.load().keys.len()
    }

    /// True when `token` has the shape of a JWT: three base64url segments (the last may be
    /// empty) whose first decodes to a JSON object. Lets the caller tell a JWT from an opaque
    /// hub token before choosing how to check it; says nothing about validity (an oversized
    /// JWT is still one, so [`Self::verify`] refuses it as [`SaError::TooLarge`]).
    pub fn looks_like_jwt(token: &str) -> bool {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        if h.is_empty()
            || h.len() > MAX_TOKEN_BYTES
            || p.is_empty()
            || !is_b64url(h)
            || !is_b64url(p)
            || !is_b64url(s)
        {
            return false;
        }
        URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .is_some_and(|v| v.is_object())
    }

    /// Verifies a token now. Synchronous and without I/O; a token naming a key id the JWKS does
    /// not hold is refused ([`SaError::UnknownKey`]) and wakes the refresh task.
    pub fn verify(&self, token: &str) -> Result<SaIdentity, SaError> {
        self.verify_at(token, Utc::now())
    }

    /// [`Self::verify`] at a given time.
    pub fn verify_at(&self, token: &str, now: DateTime<Utc>) -> Result<SaIdentity, SaError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(SaError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SaError::Malformed("not three dot-separated segments"));
        };
        let header = URL_SAFE_NO_PAD
            .decode(h64)
            .map_err(|_| SaError::Malformed("header is not base64url"))?;
        let header: Header = serde_json::from_slice(&header)
            .map_err(|_| SaError::Malformed("header is not a JOSE header"))?;
        let alg = match header.alg.as_str() {
            "RS256" => Alg::Rs256,
            "ES256" => Alg::Es256,
            other => return Err(SaError::UnsupportedAlgorithm(alg_label(other).to_owned())),
        };
        if header.crit.is_some() {
            return Err(SaError::Malformed("header has critical extensions"));
        }
        let keys = self.inner.keys.load();
        let key = keys
            .select(header.kid.as_deref(), alg)
            .map_err(|kid_unknown| {
                if kid_unknown {
                    self.inner.wake.notify_one();
                }
                SaError::UnknownKey
            })?;
        let signature = URL_SAFE_NO_PAD
            .decode(s64)
            .map_err(|_| SaError::Malformed("signature is not base64url"))?;
        let signed = &token.as_bytes()[..h64.len() + 1 + p64.len()];
        if signature.is_empty() || !key.verify(signed, &signature) {
            return Err(SaError::BadSignature);
        }
        drop(keys);

        let payload = URL_SAFE_NO_PAD
            .decode(p64)
            .map_err(|_| SaError::Malformed("payload is not base64url"))?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| {
            SaError::Malformed("claims are not a JSON object of the expected types")
        })?;
        self.check_claims(claims, now.timestamp())
    }

    fn check_claims(&self, claims: Claims, now: i64) -> Result<SaIdentity, SaError> {
        let config = &self.inner.config;
        let leeway = i64::try_from(config.leeway_secs).unwrap_or(0);
        let time = |v: Option<f64>, what: &'static str| match v {
            None => Ok(None),
            Some(v) => seconds(v).map(Some).ok_or(SaError::Malformed(what)),
        };
        let exp = time(claims.exp, "exp is not a NumericDate")?
            .ok_or(SaError::Malformed("exp is missing"))?;
        let nbf = time(claims.nbf, "nbf is not a NumericDate")?;
        let iat = time(claims.iat, "iat is not a NumericDate")?;
        if now > exp.saturating_add(leeway) {
            return Err(SaError::Expired);
        }
        if nbf.is_some_and(|t| t > now.saturating_add(leeway))
            || iat.is_some_and(|t| t > now.saturating_add(leeway))
        {
            return Err(SaError::NotYetValid);
        }
        if claims.iss.as_deref() != Some(config.issuer.as_str()) {
            return Err(SaError::WrongIssuer);
        }
        let audience_ok = match &claims.aud {
            None => false,
            Some(Audience::One(a)) => config.audiences.iter().any(|c| c == a),
            Some(Audience::Many(list)) => list.iter().any(|a| config.audiences.contains(a)),
        };
        if !audience_ok {
            return Err(SaError::WrongAudience);
        }
        let subject = claims.sub.ok_or(SaError::NotAServiceAccount)?;
        let (namespace, name) = parse_subject(&subject).ok_or(SaError::NotAServiceAccount)?;
        if let Some(k) = &claims.kubernetes {
            let sa_name = k.serviceaccount.as_ref().and_then(|s| s.name.as_deref());
            if k.namespace.as_deref() != Some(namespace) || sa_name != Some(name) {
                return Err(SaError::NotAServiceAccount);
            }
        }
        let expires_at = DateTime::from_timestamp(exp, 0).ok_or(SaError::Malformed("exp"))?;
        Ok(SaIdentity {
            namespace: namespace.to_owned(),
            service_account: name.to_owned(),
            expires_at,
            subject,
        })
    }

    /// Reloads the JWKS from its file or URL. When the document is unchanged nothing happens;
    /// when it cannot be loaded or holds no usable key the keys in use are kept and the error
    /// returned.
    pub async fn refresh(&self) -> Result<(), SaError> {
        let mut loaded = self.inner.loaded.lock().await;
        let bytes = self.inner.source.load().await?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if *loaded == Some(digest) {
            return Ok(());
        }
        let set = parse_jwks(&bytes)?;
        let kids: Vec<&str> = set.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        tracing::info!(keys = set.keys.len(), kids = ?kids, "service account JWKS loaded");
        self.inner.keys.store(Arc::new(set));
        *loaded = Some(digest);
        Ok(())
    }

    /// Refreshes every `refresh_secs`, and early when a token named an unknown key id (at most
    /// once per 10 s after the previous refresh), until `stop` changes. Failures are logged and
    /// the previous keys kept.
    pub async fn run_refresh(&self, mut stop: watch::Receiver<bool>) {
        let period = Duration::from_secs(self.inner.config.refresh_secs);
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep_until(last + period) => {}
                _ = self.inner.wake.notified() => {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep_until(last + self.inner.early_refresh_min) => {}
                    }
                }
            }
            last = tokio::time::Instant::now();
            if let Err(e) = self.refresh().await {
                tracing::warn!(
                    kind = e.kind(),
                    error = %e,
                    "service account JWKS refresh failed; the previous keys stay in use"
                );
            }
        }
    }

    /// Spawns [`Self::run_refresh`] on the current runtime.
    pub fn spawn_refresh(
        self: &Arc<Self>,
        stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.run_refresh(stop).await })
    }
}

fn validate(c: &SaTokenConfig) -> Result<(), SaError> {
    let bad = |m: &str| Err(SaError::Config(m.to_owned()));
    if c.issuer.trim().is_empty() {
        return bad("issuer is required");
    }
    if c.audiences.is_empty() || c.audiences.iter().any(|a| a.trim().is_empty()) {
        return bad("audiences: at least one, none empty");
    }
    if c.leeway_secs > MAX_LEEWAY_SECS {
        return bad("leeway_secs: at most 600");
    }
    if !(1..=MAX_REFRESH_SECS).contains(&c.refresh_secs) {
        return bad("refresh_secs: between 1 and 86400");
    }
    Ok(())
}
