//! Host patterns: exact names and `*.example.com` wildcards, case-insensitive.

use std::fmt;

/// A host a provider claims: an exact DNS name or a `*.` wildcard (one or more labels).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `api.stripe.com`
    Exact(String),
    /// `*.example.com`, stored as the suffix `example.com`; matches `a.example.com`,
    /// `a.b.example.com`, not `example.com` itself.
    Wildcard(String),
}

/// Lower-cases a host and strips one trailing dot.
pub fn normalize_host(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

fn valid_dns_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

impl HostPattern {
    /// Parses `api.x.com` or `*.x.com`; the error says why not.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let host = normalize_host(raw.trim());
        if let Some(suffix) = host.strip_prefix("*.") {
            if !valid_dns_name(suffix) || !suffix.contains('.') {
                return Err(format!(
                    "invalid wildcard host {raw:?}: expected *.example.com"
                ));
            }
            return Ok(Self::Wildcard(suffix.to_owned()));
        }
        if host.contains('*') || !valid_dns_name(&host) {
            return Err(format!(
                "invalid host {raw:?}: expected a DNS name or *.example.com"
            ));
        }
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!(
                "invalid host {raw:?}: IP literals are not provider hosts"
            ));
        }
        Ok(Self::Exact(host))
    }

    /// Whether a normalized host matches this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Wildcard(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            Self::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}
