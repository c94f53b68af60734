//! The provider model: who a provider is (name, hosts, base URL), how the hub authenticates to it
//! ([`Auth`]), and the policy the hub applies to its calls ([`ProviderConfig`]).
//!
//! Validation lives here so that the admin API, the store and the proxy agree on one set of rules.

mod auth;
mod config;
mod host;
pub mod placement;
#[cfg(test)]
mod tests;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use ulid::Ulid;

pub use auth::{Auth, AuthType, BodyFormat};
pub use config::{
    BreakerPolicy, DEFAULT_RATE_LIMIT_PER_SEC, HttpVersion, MAX_TIMEOUT_MS, MAX_TOTAL_TIMEOUT_MS,
    ProviderConfig, TlsMode,
};
pub use host::{HostPattern, normalize_host};

/// Provider ids are ULIDs.
pub type ProviderId = Ulid;

/// Whether the hub routes calls to a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderStatus {
    /// Calls are routed.
    Active,
    /// Calls are refused with 403 `provider_disabled`.
    Disabled,
}

impl ProviderStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "disabled" => Some(Self::Disabled),
            _ => None,
        }
    }
}

/// Encrypted credentials as stored: the vault's sealed bytes and the id of the key that sealed them.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedCredentials {
    /// Id of the vault key that encrypted `ciphertext`.
    pub key_id: String,
    /// `nonce || ciphertext || tag`, opaque to everything but the vault.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedCredentials")
            .field("key_id", &self.key_id)
            .field("len", &self.ciphertext.len())
            .finish()
    }
}

/// A provider as stored (credentials still sealed).
#[derive(Debug, Clone)]
pub struct ProviderRecord {
    /// ULID.
    pub id: ProviderId,
    /// Unique human name (e.g. `stripe`), also the metrics label.
    pub name: String,
    /// The tenant whose callers reach it; `None` for a global provider (every tenant's).
    pub tenant: Option<String>,
    /// Host patterns routed to this provider (normalized, lower case).
    pub hosts: Vec<HostPattern>,
    /// Where calls go: `https://api.stripe.com` (an http URL only with `allowInsecureUpstream`).
    pub base_url: String,
    /// The auth scheme (the secret parts are in `credentials`).
    pub auth_type: AuthType,
    /// Sealed credentials; `None` for `AuthType::None`.
    pub credentials: Option<SealedCredentials>,
    /// When the credentials last changed.
    pub credentials_updated_at: Option<DateTime<Utc>>,
    /// Per-provider policy.
    pub config: ProviderConfig,
    /// Active or disabled.
    pub status: ProviderStatus,
    /// Increments on every change; the proxy re-decrypts credentials only when it moves.
    pub version: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// What a caller supplies to register a provider (validated with [`NewProvider::validate`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewProvider {
    /// Unique name.
    pub name: String,
    /// Host patterns.
    pub hosts: Vec<String>,
    /// Upstream base URL.
    pub base_url: String,
    /// Auth scheme with its secrets.
    #[serde(default)]
    pub auth: Auth,
    /// Policy; omitted fields take their defaults.
    #[serde(default)]
    pub config: ProviderConfig,
    /// Initial status (default active).
    #[serde(default = "default_status")]
    pub status: ProviderStatus,
    /// The tenant whose callers reach it (default `default`); fixed for the provider's life.
    #[serde(default)]
    pub tenant: Option<String>,
    /// A global provider: every tenant's callers reach it (with a grant). Excludes `tenant`.
    #[serde(default)]
    pub global: bool,
}

impl NewProvider {
    /// The tenant as stored: `None` for a global provider.
    pub fn scope(&self) -> Option<String> {
        if self.global {
            None
        } else {
            Some(
                self.tenant
                    .clone()
                    .unwrap_or_else(|| crate::caller::DEFAULT_TENANT.to_owned()),
            )
        }
    }
}

fn default_status() -> ProviderStatus {
    ProviderStatus::Active
}

/// A validation failure, naming the offending field (JSON pointer-ish, camelCase).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The offending field, e.g. `config.timeoutMs` or `hosts[1]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ValidationError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The longest provider name accepted.
pub const MAX_NAME_LEN: usize = 64;
/// The most host patterns one provider may claim.
pub const MAX_HOSTS: usize = 32;

/// Checks a provider name: 1–64 chars of `[a-z0-9_-]`, starting with a letter or digit. Names are
/// metric labels and log fields, so they are kept boring.
pub fn validate_name(name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "name",
            "must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit",
        ))
    }
}

/// Parses and checks hosts: valid names or `*.` wildcards, at least one, no duplicates.
pub fn validate_hosts(hosts: &[String]) -> Result<Vec<HostPattern>, ValidationError> {
    if hosts.is_empty() {
        return Err(ValidationError::new(
            "hosts",
            "at least one host is required",
        ));
    }
    if hosts.len() > MAX_HOSTS {
        return Err(ValidationError::new(
            "hosts",
            format!("at most {MAX_HOSTS} hosts per provider"),
        ));
    }
    let mut out: Vec<HostPattern> = Vec::with_capacity(hosts.len());
    for (i, h) in hosts.iter().enumerate() {
        let p =
            HostPattern::parse(h).map_err(|m| ValidationError::new(format!("hosts[{i}]"), m))?;
        if out.contains(&p) {
            return Err(ValidationError::new(
                format!("hosts[{i}]"),
                "duplicate host",
            ));
        }
        out.push(p);
    }
    Ok(out)
}

/// The parts of a base URL the hub needs to dial it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `true` for https.
    pub tls: bool,
    /// Host name or IP literal (no brackets), lower case.
    pub host: String,
    /// Explicit or scheme-default port.
    pub port: u16,
    /// Path prefix without a trailing slash ("" for none).
    pub path_prefix: String,
}

/// Parses and checks a base URL: `https://host[:port][/prefix]`, or `http://` only when
/// `allow_insecure` is set. No userinfo, query or fragment.
pub fn parse_base_url(url: &str, allow_insecure: bool) -> Result<BaseUrl, ValidationError> {
    let err = |m: &str| ValidationError::new("baseUrl", m);
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        if !allow_insecure {
            return Err(err(
                "must be https (set config.allowInsecureUpstream to allow http)",
            ));
        }
        (false, r)
    } else {
        return Err(err("must start with https://"));
    };
    if rest.contains(['?', '#', '@', '\\'])
        || rest.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(err(
            "must not contain userinfo, a query, a fragment, whitespace or control characters",
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = split_host_port(authority).ok_or_else(|| err("invalid host or port"))?;
    let port = port.unwrap_or(if tls { 443 } else { 80 });
    if host.is_empty() {
        return Err(err("missing host"));
    }
    if host.parse::<std::net::IpAddr>().is_err() {
        HostPattern::parse(&host).map_err(|m| err(&m))?;
    }
    Ok(BaseUrl {
        tls,
        host,
        port,
        path_prefix: path.trim_end_matches('/').to_owned(),
    })
}

/// Splits `host[:port]` / `[v6]:port`; lower-cases the host. `None` when the port is not a number.
pub fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_ascii_lowercase(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_ascii_lowercase(), Some(p.parse().ok()?))),
        None => Some((authority.to_ascii_lowercase(), None)),
    }
}

/// A passthrough provider never sees a request, so it cannot carry credentials: its auth type
/// must be `none`.
pub fn validate_tls_mode(config: &ProviderConfig, auth: AuthType) -> Result<(), ValidationError> {
    if config.tls == TlsMode::Passthrough && auth != AuthType::None {
        return Err(ValidationError::new(
            "config.tls",
            "passthrough relays the module's TLS untouched, so no credentials can be injected: \
             use auth type none",
        ));
    }
    Ok(())
}

impl NewProvider {
    /// Validates every field; returns the parsed hosts.
    pub fn validate(&self) -> Result<Vec<HostPattern>, ValidationError> {
        validate_name(&self.name)?;
        if self.global && self.tenant.is_some() {
            return Err(ValidationError::new(
                "global",
                "a global provider belongs to no tenant: omit tenant",
            ));
        }
        if let Some(t) = &self.tenant
            && !crate::caller::valid_name(t)
        {
            return Err(ValidationError::new("tenant", "not a valid tenant name"));
        }
        let hosts = validate_hosts(&self.hosts)?;
        parse_base_url(&self.base_url, self.config.allow_insecure_upstream)?;
        self.auth.validate()?;
        self.config.validate()?;
        validate_tls_mode(&self.config, self.auth.auth_type())?;
        Ok(hosts)
    }
}
