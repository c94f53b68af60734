//! Who calls through the hub and what they may do: [`Tenant`]s own providers and callers,
//! [`CallerRecord`]s are the modules (identified by a caller token or a Kubernetes
//! ServiceAccount), and [`GrantRecord`]s say which caller (or caller group) may use which
//! provider for which methods and paths, optionally with their own rate limit and daily quota.
//!
//! The rules live here so that the proxy (every way in: CONNECT, requests inside tunnels,
//! absolute-form, WebSocket upgrades, HTTP/2 streams), the admin API (validation, `explain`, the
//! audit of what a change allows) and the store agree on one reading. Matching is pure and
//! allocation-free on the request path: [`PathPattern::matches`] and [`Methods::allows`].
//!
//! # Path patterns
//!
//! A pattern is an absolute path of `/`-separated segments:
//! - a literal segment matches itself (case-sensitive, after percent-decoding the request's);
//! - `{name}` matches exactly one non-empty segment;
//! - a final `**` matches zero or more segments (`/v1/**` matches `/v1`, `/v1/` and everything
//!   under it; `/**` matches every path).
//!
//! A request path is checked before matching ([`RequestPath::parse`]): a dot segment (`.`, `..`),
//! an encoded `/` or `\` inside a segment, or invalid percent-encoding matches no grant at all,
//! because a provider may resolve it to a path the grant does not name.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::provider::ProviderId;

/// The tenant a single-tenant install (and every provider from before tenants) belongs to.
pub const DEFAULT_TENANT: &str = "default";

/// Caller ids are ULIDs.
pub type CallerId = Ulid;
/// Grant ids are ULIDs.
pub type GrantId = Ulid;

/// Prefix of caller tokens: tells a hub caller token from a JWT or an admin token at a glance
/// (and lets secret scanners find leaked ones).
pub const CALLER_TOKEN_PREFIX: &str = "hubc_";

/// Most groups a caller may belong to.
pub const MAX_GROUPS: usize = 32;
/// Most method entries in one grant.
pub const MAX_METHODS: usize = 16;
/// Most path patterns in one grant.
pub const MAX_PATHS: usize = 64;
/// Longest path pattern.
pub const MAX_PATTERN_LEN: usize = 512;

/// A new caller token: `hubc_` and 256 random bits, base64url. Shown once; the store keeps its
/// SHA-256 ([`crate::access::token_hash`]).
pub fn new_caller_token() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!(
        "{CALLER_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Whether `s` is a valid tenant name, caller name or group name: 1–63 of `a-z 0-9 - _ .`,
/// starting with a letter or digit. Names appear in proxy URLs, metrics labels and logs, so they
/// are kept plain.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    /// Unique name (see [`valid_name`]).
    pub name: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A Kubernetes ServiceAccount a caller is mapped from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountRef {
    /// Namespace.
    pub namespace: String,
    /// ServiceAccount name.
    pub name: String,
}

/// A caller as stored (its token only as a hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerRecord {
    /// ULID.
    pub id: CallerId,
    /// Unique name: the user part of `http://<name>:<token>@hub:3128`.
    pub name: String,
    /// The tenant whose providers this caller reaches.
    pub tenant: String,
    /// Groups, for grants given to a group.
    pub groups: Vec<String>,
    /// SHA-256 hex of the caller token; `None` for a ServiceAccount-only caller.
    pub token_hash: Option<String>,
    /// The ServiceAccount mapped to this caller, if any.
    pub service_account: Option<ServiceAccountRef>,
    /// After this the caller authenticates nothing.
    pub expires_at: Option<DateTime<Utc>>,
    /// Set when revoked; a revoked caller authenticates nothing.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl CallerRecord {
    /// Whether the caller may authenticate at `now`: not revoked, not expired.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// Who a grant is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Subject {
    /// One caller.
    Caller(CallerId),
    /// Every caller of the grant's tenant in this group.
    Group(String),
}

/// The methods a grant allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Vec<String>", try_from = "Vec<String>")]
pub enum Methods {
    /// `["*"]`: every method.
    Any,
    /// Upper-case method names.
    Only(Vec<String>),
}

impl Methods {
    /// Whether `method` (as sent) is allowed.
    pub fn allows(&self, method: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(list) => list.iter().any(|m| m == method),
        }
    }

    /// Every method this allows, as listed (`["*"]` for any).
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Self::Any => vec!["*".into()],
            Self::Only(list) => list.clone(),
        }
    }
}

impl From<Methods> for Vec<String> {
    fn from(m: Methods) -> Self {
        m.to_vec()
    }
}

impl TryFrom<Vec<String>> for Methods {
    type Error = String;

    fn try_from(list: Vec<String>) -> Result<Self, String> {
        if list.is_empty() {
            return Err("must list at least one method, or \"*\"".into());
        }
        if list.len() > MAX_METHODS {
            return Err(format!("at most {MAX_METHODS} methods"));
        }
        if list.iter().any(|m| m == "*") {
            return if list.len() == 1 {
                Ok(Self::Any)
            } else {
                Err("\"*\" stands alone".into())
            };
        }
        let mut out: Vec<String> = Vec::with_capacity(list.len());
        for m in list {
            if m.is_empty() || m.len() > 32 || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!(
                    "{m:?} is not a method: upper-case letters, e.g. GET, POST"
                ));
            }
            if !out.contains(&m) {
                out.push(m);
            }
        }
        Ok(Self::Only(out))
    }
}

/// One segment of a [`PathPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

/// A path pattern (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    raw: String,
    segments: Vec<Segment>,
    /// Ends in `**`.
    rest: bool,
}

impl PathPattern {
    /// Parses a pattern; `Err` says what is wrong.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.len() > MAX_PATTERN_LEN {
            return Err(format!("longer than {MAX_PATTERN_LEN} bytes"));
        }
        let Some(body) = raw.strip_prefix('/') else {
            return Err(format!("{raw:?} must start with /"));
        };
        if raw.contains(['?', '#']) || raw.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!(
                "{raw:?} must be a path without query, fragment, spaces or control characters"
            ));
        }
        let parts: Vec<&str> = body.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        let mut rest = false;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if *part == "**" {
                if !last {
                    return Err(format!("{raw:?}: ** may only be the last segment"));
                }
                rest = true;
            } else if part.starts_with('{') || part.ends_with('}') {
                let name = part
                    .strip_prefix('{')
                    .and_then(|p| p.strip_suffix('}'))
                    .filter(|n| {
                        !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    })
                    .ok_or_else(|| format!("{raw:?}: {part:?} is not a {{param}} segment"))?;
                let _ = name;
                segments.push(Segment::Param);
            } else if part.contains('*') {
                return Err(format!(
                    "{raw:?}: * is allowed only as a final ** segment (use {{param}} for one segment)"
                ));
            } else if *part == "." || *part == ".." {
                return Err(format!("{raw:?}: dot segments are not allowed"));
            } else {
                let decoded = percent_decode(part)
                    .ok_or_else(|| format!("{raw:?}: invalid percent-encoding"))?;
                segments.push(Segment::Literal(decoded));
            }
        }
        Ok(Self {
            raw: raw.to_owned(),
            segments,
            rest,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether `path` matches.
    pub fn matches(&self, path: &RequestPath<'_>) -> bool {
        let segs = &path.segments;
        if self.rest {
            if segs.len() < self.segments.len() {
                return false;
            }
        } else if segs.len() != self.segments.len() {
            return false;
        }
        self.segments.iter().zip(segs.iter()).all(|(p, s)| match p {
            Segment::Literal(l) => l == s,
            Segment::Param => !s.is_empty(),
        })
    }

    /// Whether this pattern matches every path (`/**`).
    pub fn is_everything(&self) -> bool {
        self.rest && self.segments.is_empty()
    }
}

impl Serialize for PathPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for PathPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A request path split into decoded segments, ready for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath<'a> {
    segments: Vec<std::borrow::Cow<'a, str>>,
}

impl<'a> RequestPath<'a> {
    /// Splits the path of an origin-form target (`/a/b?q` → `a`, `b`). `Err` names why the path
    /// can match no grant: a dot segment, an encoded `/` or `\`, invalid percent-encoding.
    pub fn parse(path_and_query: &'a str) -> Result<Self, &'static str> {
        let path = path_and_query
            .split_once(['?', '#'])
            .map_or(path_and_query, |(p, _)| p);
        let Some(body) = path.strip_prefix('/') else {
            return Err("the path is not absolute");
        };
        let mut segments = Vec::new();
        for part in body.split('/') {
            let seg: std::borrow::Cow<'a, str> = if part.contains('%') {
                let d = percent_decode(part).ok_or("the path has invalid percent-encoding")?;
                if d.contains(['/', '\\']) {
                    return Err("the path has an encoded / or \\ inside a segment");
                }
                std::borrow::Cow::Owned(d)
            } else {
                std::borrow::Cow::Borrowed(part)
            };
            if seg == "." || seg == ".." || seg.contains('\\') {
                return Err("the path has a dot segment or a backslash");
            }
            segments.push(seg);
        }
        Ok(Self { segments })
    }
}

/// Decodes `%XX` escapes; `None` on a bad escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A grant's own limits, enforced in the shared state like a provider's (keyed by the grant id).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantLimits {
    /// Calls per second through this grant (`None`: only the provider's limit applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_sec: Option<u32>,
    /// Bucket size (default: the rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Calls per UTC day through this grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_quota: Option<u64>,
}

impl GrantLimits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.rate_limit_per_sec.is_some() || self.daily_quota.is_some()
    }
}

/// A grant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    /// ULID.
    pub id: GrantId,
    /// The tenant of the subject (and of the provider, unless the provider is global).
    pub tenant: String,
    /// Who may.
    pub subject: Subject,
    /// Which provider.
    pub provider_id: ProviderId,
    /// Which methods.
    pub methods: Methods,
    /// Which paths (at least one).
    pub paths: Vec<PathPattern>,
    /// The grant's own limits.
    pub limits: GrantLimits,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl GrantRecord {
    /// Whether this grant covers `caller`.
    pub fn covers(&self, caller: &CallerRecord) -> bool {
        self.tenant == caller.tenant
            && match &self.subject {
                Subject::Caller(id) => *id == caller.id,
                Subject::Group(g) => caller.groups.iter().any(|cg| cg == g),
            }
    }

    /// Whether this grant allows `method` on `path`.
    pub fn allows(&self, method: &str, path: &RequestPath<'_>) -> bool {
        self.methods.allows(method) && self.paths.iter().any(|p| p.matches(path))
    }

    /// Whether it allows everything (every method, `/**`): what a passthrough tunnel, whose
    /// requests the hub cannot see, needs.
    pub fn unrestricted(&self) -> bool {
        self.methods == Methods::Any && self.paths.iter().any(PathPattern::is_everything)
    }
}

/// Why a caller may not make a call (`403 not_granted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No grant of the caller's names the provider.
    NoGrant,
    /// Grants name the provider, but none allows this method and path.
    NotAllowed,
    /// The path can match no grant (see [`RequestPath::parse`]).
    Path(&'static str),
}

impl Refusal {
    /// The refusal's detail for the caller (names, method and path; never a credential).
    pub fn detail(self, caller: &str, provider: &str, method: &str, path: &str) -> String {
        match self {
            Self::NoGrant => {
                format!("caller {caller} has no grant for provider {provider}")
            }
            Self::NotAllowed => {
                format!("no grant of caller {caller} allows {method} {path} on provider {provider}")
            }
            Self::Path(why) => format!("{why}: it matches no grant (caller {caller})"),
        }
    }
}

/// The one grant evaluator (proxy, every way in; admin `explain`): the grant among `grants` (a
/// provider's grants, as `get` reads them) that lets `caller` send `method` to `path_and_query`.
/// A grant naming the caller wins over a group's; among equals, the first.
pub fn evaluate<'a, T>(
    grants: &'a [T],
    get: impl Fn(&T) -> &GrantRecord,
    caller: &CallerRecord,
    method: &str,
    path_and_query: &str,
) -> Result<&'a T, Refusal> {
    let mut covering = grants.iter().filter(|g| get(g).covers(caller)).peekable();
    if covering.peek().is_none() {
        return Err(Refusal::NoGrant);
    }
    let path = RequestPath::parse(path_and_query).map_err(Refusal::Path)?;
    let mut by_group = None;
    for g in covering {
        let r = get(g);
        if r.allows(method, &path) {
            if matches!(r.subject, Subject::Caller(_)) {
                return Ok(g);
            }
            by_group.get_or_insert(g);
        }
    }
    by_group.ok_or(Refusal::NotAllowed)
}

/// One (caller, provider, methods, paths) statement of what is allowed: the unit the audit trail
/// records when a change allows or removes something.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Allowance {
    /// Caller name.
    pub caller: String,
    /// Provider name.
    pub provider: String,
    /// Methods (`["*"]` for any).
    pub methods: Vec<String>,
    /// Path patterns.
    pub paths: Vec<String>,
}

/// Every allowance `grants` give `callers` (live callers only), with provider names from `name_of`
/// (grants on providers it does not know are skipped).
pub fn allowances(
    callers: &[CallerRecord],
    grants: &[GrantRecord],
    name_of: impl Fn(&ProviderId) -> Option<String>,
    now: DateTime<Utc>,
) -> BTreeSet<Allowance> {
    let mut out = BTreeSet::new();
    for g in grants {
        let Some(provider) = name_of(&g.provider_id) else {
            continue;
        };
        for c in callers.iter().filter(|c| c.is_live(now) && g.covers(c)) {
            out.insert(Allowance {
                caller: c.name.clone(),
                provider: provider.clone(),
                methods: g.methods.to_vec(),
                paths: g.paths.iter().map(|p| p.as_str().to_owned()).collect(),
            });
        }
    }
    out
}

/// What a change did to the allowances: the audit detail's `allows` and `removes`.
pub fn allowance_diff(
    before: &BTreeSet<Allowance>,
    after: &BTreeSet<Allowance>,
) -> serde_json::Value {
    let allows: Vec<&Allowance> = after.difference(before).collect();
    let removes: Vec<&Allowance> = before.difference(after).collect();
    serde_json::json!({ "allows": allows, "removes": removes })
}

#[cfg(test)]
mod tests;
