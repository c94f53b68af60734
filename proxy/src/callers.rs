//! Who is calling, on every way in. A module sends a caller credential as proxy authentication
//! (`HTTPS_PROXY=http://<caller>:<token>@hub:3128`, or `Proxy-Authorization: Bearer <token>`, or
//! a Kubernetes ServiceAccount JWT as the Bearer token or the Basic password). [`Gate`] turns
//! the header into an [`Identity`] — once per tunnel for CONNECT (every request inside is that
//! caller's), per request for absolute-form — and [`Gate::current`] re-checks the identity
//! against the registry snapshot in force on every request, so a revoked, expired or rotated
//! credential stops working on open tunnels as soon as the snapshot moves (≤ the registry
//! propagation bound).
//!
//! [`Gate::authorize`] is the one grant check: the pipeline calls it for requests inside
//! tunnels, absolute-form requests, WebSocket upgrades and HTTP/2 streams alike; passthrough
//! tunnels ask [`Gate::authorize_tunnel`] (they need an unrestricted grant: the hub cannot see
//! their requests).

use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use hub_core::access::token_hash;
use hub_core::caller::{
    CALLER_TOKEN_PREFIX, CallerId, CallerRecord, DEFAULT_TENANT, ServiceAccountRef, evaluate,
};
use hub_core::config::CallersMode;
use hub_core::satoken::SaVerifier;
use hub_core::vault::INTERNAL_CALLER_PREFIX;

use crate::problem::Problem;
use crate::registry::{Grant, Provider, Snapshot};

/// Who a connection or request authenticated as. `Debug` never shows the token's hash.
#[derive(Clone, PartialEq, Eq)]
pub enum Identity {
    /// No caller (`proxy.callers: off`, or `optional` without a credential).
    Anonymous,
    /// The hub's own components (the admin's `POST /call`, DLQ replays, async jobs), with the
    /// credential derived from the master keys. Operators authorized those calls in the admin
    /// API (or the module's grant did, when it submitted the job): no grant check; the provider
    /// is named by `X-Hub-Provider-Id`.
    Internal,
    /// A caller.
    Caller {
        /// The caller.
        id: CallerId,
        /// The hash of the token it used (`None` for a ServiceAccount JWT): a rotated token
        /// stops working on tunnels opened with the old one.
        token_hash: Option<Arc<str>>,
        /// When the credential itself expires (a JWT's `exp`).
        until: Option<DateTime<Utc>>,
    },
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Internal => f.write_str("Internal"),
            Self::Caller { id, until, .. } => f
                .debug_struct("Caller")
                .field("id", id)
                .field("until", until)
                .finish_non_exhaustive(),
        }
    }
}

/// The caller (if any) a call is made as, and its tenant.
#[derive(Debug, Clone)]
pub struct Who {
    /// `None`: anonymous, or the hub itself.
    pub caller: Option<Arc<CallerRecord>>,
    /// The hub's internal caller.
    pub internal: bool,
}

/// The name the hub's own calls carry in logs and metrics.
pub const INTERNAL_NAME: &str = "hub";

impl Who {
    /// The tenant whose providers the call may reach.
    pub fn tenant(&self) -> &str {
        self.caller
            .as_ref()
            .map_or(DEFAULT_TENANT, |c| c.tenant.as_str())
    }

    /// The caller's name: `-` when anonymous, `hub` for the hub's own calls (logs, metrics).
    pub fn name(&self) -> &str {
        match &self.caller {
            Some(c) => c.name.as_str(),
            None if self.internal => INTERNAL_NAME,
            None => "-",
        }
    }
}

/// Checks caller credentials and grants.
#[derive(Debug, Clone)]
pub struct Gate {
    mode: CallersMode,
    sa: Option<Arc<SaVerifier>>,
    /// SHA-256 of the internal caller credential under each master key.
    internal: Arc<[String]>,
    /// Ends the JWKS refresh task when the last clone of the gate goes.
    _refresh: Option<Arc<tokio::sync::watch::Sender<bool>>>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new(CallersMode::Optional, None)
    }
}

enum Credential {
    /// Basic: the user part names the caller.
    Named(String, String),
    /// Bearer: the token alone.
    Bare(String),
}

fn parse(raw: &[u8]) -> Result<Credential, &'static str> {
    let raw = std::str::from_utf8(raw).map_err(|_| "the Proxy-Authorization header is not text")?;
    let (scheme, rest) = raw
        .trim()
        .split_once(' ')
        .ok_or("the Proxy-Authorization header has no scheme")?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Credential::Bare(rest.to_owned()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err("the Proxy-Authorization scheme must be Basic or Bearer");
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .map_err(|_| "the Basic credential is not base64")?;
    let decoded = String::from_utf8(decoded).map_err(|_| "the Basic credential is not UTF-8")?;
    let (user, pass) = decoded
        .split_once(':')
        .ok_or("the Basic credential has no ':'")?;
    Ok(Credential::Named(user.to_owned(), pass.to_owned()))
}

impl Gate {
    /// A gate in `mode`; `sa` verifies ServiceAccount JWTs (none configured: JWTs are refused)
    /// and has its keys reloaded in the background (every `refresh_secs`, early on an unknown
    /// `kid`) for as long as the gate lives. Call within a Tokio runtime when `sa` is set.
    pub fn new(mode: CallersMode, sa: Option<Arc<SaVerifier>>) -> Self {
        Self::with_internal(mode, sa, Vec::new())
    }

    /// [`Gate::new`], also accepting the hub's internal caller credential by these hashes
    /// ([`hub_core::vault::Vault::internal_caller_hashes`]).
    pub fn with_internal(
        mode: CallersMode,
        sa: Option<Arc<SaVerifier>>,
        internal: Vec<String>,
    ) -> Self {
        let refresh = sa.as_ref().map(|v| {
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            drop(v.spawn_refresh(stop));
            Arc::new(stop_tx)
        });
        Self {
            mode,
            sa,
            internal: internal.into(),
            _refresh: refresh,
        }
    }

    /// The mode.
    pub fn mode(&self) -> CallersMode {
        self.mode
    }

    /// Authenticates a `Proxy-Authorization` value (`None`: the header is absent).
    pub fn authenticate(
        &self,
        snap: &Snapshot,
        header: Option<&[u8]>,
    ) -> Result<Identity, Problem> {
        if self.mode == CallersMode::Off {
            return Ok(Identity::Anonymous);
        }
        let Some(raw) = header else {
            return match self.mode {
                CallersMode::Required => Err(Problem::caller_unauthenticated(
                    "this hub requires a caller credential and none was sent",
                )),
                _ => Ok(Identity::Anonymous),
            };
        };
        let (user, secret) = match parse(raw).map_err(Problem::caller_unauthenticated)? {
            Credential::Named(user, secret) => (Some(user), secret),
            Credential::Bare(secret) => (None, secret),
        };
        if secret.starts_with(INTERNAL_CALLER_PREFIX) {
            let hash = token_hash(&secret);
            return if user.is_none() && self.internal.contains(&hash) {
                Ok(Identity::Internal)
            } else {
                Err(Problem::caller_unauthenticated(
                    "the caller credential is not valid",
                ))
            };
        }
        if secret.starts_with(CALLER_TOKEN_PREFIX)
            || self.sa.is_none()
            || !SaVerifier::looks_like_jwt(&secret)
        {
            let hash = token_hash(&secret);
            let caller = snap
                .caller_by_token(&hash)
                .filter(|c| names(user.as_deref(), c))
                .ok_or_else(|| {
                    Problem::caller_unauthenticated("the caller credential is not valid")
                })?;
            check_live(caller, None)?;
            return Ok(Identity::Caller {
                id: caller.id,
                token_hash: Some(Arc::from(hash)),
                until: None,
            });
        }
        let verifier = self.sa.as_ref().expect("checked above");
        let sa = verifier.verify(&secret).map_err(|e| {
            Problem::caller_unauthenticated(format!(
                "the ServiceAccount token was refused ({})",
                e.kind()
            ))
        })?;
        let key = ServiceAccountRef {
            namespace: sa.namespace,
            name: sa.service_account,
        };
        let caller = snap
            .caller_by_service_account(&key)
            .filter(|c| names(user.as_deref(), c))
            .ok_or_else(|| {
                Problem::caller_unauthenticated(format!(
                    "no caller is mapped to ServiceAccount {}/{}",
                    key.namespace, key.name
                ))
            })?;
        check_live(caller, Some(sa.expires_at))?;
        Ok(Identity::Caller {
            id: caller.id,
            token_hash: None,
            until: Some(sa.expires_at),
        })
    }

    /// Who `identity` is under the snapshot in force: a revoked, expired, deleted or re-keyed
    /// caller gets `407` (also inside a tunnel opened before the change).
    pub fn current(&self, snap: &Snapshot, identity: &Identity) -> Result<Who, Problem> {
        let (id, token_hash, until) = match identity {
            Identity::Anonymous => {
                return Ok(Who {
                    caller: None,
                    internal: false,
                });
            }
            Identity::Internal => {
                return Ok(Who {
                    caller: None,
                    internal: true,
                });
            }
            Identity::Caller {
                id,
                token_hash,
                until,
            } => (id, token_hash, until),
        };
        let caller = snap
            .caller(id)
            .filter(|c| match token_hash {
                Some(h) => c.token_hash.as_deref() == Some(&**h),
                None => true,
            })
            .ok_or_else(|| {
                Problem::caller_unauthenticated("the caller credential is no longer valid")
            })?;
        check_live(caller, *until)?;
        Ok(Who {
            caller: Some(caller.clone()),
            internal: false,
        })
    }

    /// The grant that lets `who` send `method` to `path_and_query` on `provider`; `Ok(None)` for
    /// anonymous calls (allowed only outside `required`, where [`Gate::authenticate`] already
    /// refused them). Refusals are `403 not_granted`.
    pub fn authorize(
        &self,
        snap: &Snapshot,
        who: &Who,
        provider: &Provider,
        method: &str,
        path_and_query: &str,
    ) -> Result<Option<Arc<Grant>>, Problem> {
        let Some(caller) = &who.caller else {
            return Ok(None);
        };
        if self.mode == CallersMode::Off {
            return Ok(None);
        }
        let grants = snap.grants(&provider.id);
        evaluate(grants, |g| &g.record, caller, method, path_and_query)
            .map(|g| Some(g.clone()))
            .map_err(|r| {
                let path = path_and_query
                    .split_once('?')
                    .map_or(path_and_query, |(p, _)| p);
                Problem::not_granted(r.detail(&caller.name, &provider.name, method, path))
            })
    }

    /// Whether `who` may open a passthrough tunnel to `provider`: the hub cannot see the
    /// requests, so it takes a grant of every method on `/**`.
    pub fn authorize_tunnel(
        &self,
        snap: &Snapshot,
        who: &Who,
        provider: &Provider,
    ) -> Result<(), Problem> {
        let Some(caller) = &who.caller else {
            return Ok(());
        };
        if self.mode == CallersMode::Off {
            return Ok(());
        }
        if snap
            .grants(&provider.id)
            .iter()
            .any(|g| g.record.covers(caller) && g.record.unrestricted())
        {
            return Ok(());
        }
        Err(Problem::not_granted(format!(
            "caller {} has no unrestricted grant (every method, /**) for passthrough provider {}",
            caller.name, provider.name
        )))
    }
}

/// Whether the Basic user part (if any) names `caller` (by name or id).
fn names(user: Option<&str>, caller: &CallerRecord) -> bool {
    user.is_none_or(|u| u == caller.name || u == caller.id.to_string())
}

fn check_live(caller: &CallerRecord, until: Option<DateTime<Utc>>) -> Result<(), Problem> {
    let now = Utc::now();
    if caller.revoked_at.is_some() {
        return Err(Problem::caller_unauthenticated(format!(
            "caller {} is revoked",
            caller.name
        )));
    }
    if caller.expires_at.is_some_and(|e| now >= e) || until.is_some_and(|e| now >= e) {
        return Err(Problem::caller_unauthenticated(format!(
            "the credential of caller {} has expired",
            caller.name
        )));
    }
    Ok(())
}

/// Ends a long-lived connection (a WebSocket, a passthrough tunnel) whose caller stops being
/// valid: revoked, expired, deleted or re-keyed. It re-checks the identity whenever the registry
/// installs a revision (so within the propagation bound of the change), and once a second for
/// expiry.
#[derive(Clone)]
pub struct Revoker {
    registry: Arc<crate::registry::Registry>,
    gate: Gate,
    identity: Identity,
}

impl std::fmt::Debug for Revoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revoker")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Revoker {
    /// Watches `identity` under `gate`; `None` when there is nothing to watch (anonymous or the
    /// hub itself).
    pub fn new(
        registry: Arc<crate::registry::Registry>,
        gate: Gate,
        identity: Identity,
    ) -> Option<Self> {
        matches!(identity, Identity::Caller { .. }).then_some(Self {
            registry,
            gate,
            identity,
        })
    }

    /// Resolves once the identity is no longer valid; never, while it is.
    pub async fn revoked(&self) {
        let mut installed = self.registry.installed();
        loop {
            if self
                .gate
                .current(&self.registry.snapshot(), &self.identity)
                .is_err()
            {
                return;
            }
            tokio::select! {
                changed = installed.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn caller(name: &str, token: &str) -> CallerRecord {
        let now = Utc::now();
        CallerRecord {
            id: CallerId::new(),
            name: name.into(),
            tenant: DEFAULT_TENANT.into(),
            groups: Vec::new(),
            token_hash: Some(token_hash(token)),
            service_account: None,
            expires_at: None,
            revoked_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn basic(user: &str, token: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
        )
        .into_bytes()
    }

    fn snapshot(callers: Vec<CallerRecord>) -> Snapshot {
        Snapshot::with_callers(1, Vec::new(), callers, Vec::new())
    }

    #[test]
    fn live_revoked_and_expired_callers() {
        let live = caller("live", "hubc_live");
        let mut expired = caller("expired", "hubc_expired");
        expired.expires_at = Some(Utc::now() - Duration::seconds(1));
        let mut revoked = caller("revoked", "hubc_revoked");
        revoked.revoked_at = Some(Utc::now());
        let snap = snapshot(vec![live.clone(), expired, revoked]);
        let gate = Gate::new(CallersMode::Required, None);
        let id = gate
            .authenticate(&snap, Some(&basic("live", "hubc_live")))
            .unwrap();
        assert_eq!(gate.current(&snap, &id).unwrap().name(), "live");
        let by_id = gate
            .authenticate(&snap, Some(&basic(&live.id.to_string(), "hubc_live")))
            .unwrap();
        assert_eq!(by_id, id, "the user part may be the caller's id");
        assert!(gate.authenticate(&snap, Some(b"Bearer hubc_live")).is_ok());
        for (header, says) in [
            (basic("expired", "hubc_expired"), "expired"),
            (basic("revoked", "hubc_revoked"), "revoked"),
            (basic("someone", "hubc_live"), "not valid"),
            (b"Bearer hubc_nope".to_vec(), "not valid"),
            (b"Negotiate abc".to_vec(), "Basic or Bearer"),
            (b"Basic !!!".to_vec(), "base64"),
        ] {
            let p = gate.authenticate(&snap, Some(&header)).unwrap_err();
            assert_eq!(p.status, 407);
            assert!(
                p.detail.contains(says),
                "{}: {}",
                String::from_utf8_lossy(&header),
                p.detail
            );
        }
        let none = gate.authenticate(&snap, None).unwrap_err();
        assert_eq!(none.status, 407);
        // Optional lets anonymous calls through, but not bad credentials; off ignores both.
        let optional = Gate::new(CallersMode::Optional, None);
        assert_eq!(
            optional.authenticate(&snap, None).unwrap(),
            Identity::Anonymous
        );
        assert!(
            optional
                .authenticate(&snap, Some(b"Bearer hubc_nope"))
                .is_err()
        );
        let off = Gate::new(CallersMode::Off, None);
        assert_eq!(
            off.authenticate(&snap, Some(b"Bearer hubc_nope")).unwrap(),
            Identity::Anonymous
        );
    }

    #[test]
    fn an_identity_stops_when_its_caller_is_revoked_expires_or_is_rekeyed() {
        let c = caller("billing", "hubc_old");
        let gate = Gate::new(CallersMode::Required, None);
        let id = gate
            .authenticate(&snapshot(vec![c.clone()]), Some(b"Bearer hubc_old"))
            .unwrap();
        let mut rotated = c.clone();
        rotated.token_hash = Some(token_hash("hubc_new"));
        assert!(
            gate.current(&snapshot(vec![rotated]), &id).is_err(),
            "re-keyed"
        );
        let mut expired = c.clone();
        expired.expires_at = Some(Utc::now() - Duration::seconds(1));
        assert!(
            gate.current(&snapshot(vec![expired]), &id).is_err(),
            "expired"
        );
        assert!(gate.current(&snapshot(Vec::new()), &id).is_err(), "deleted");
        assert!(gate.current(&snapshot(vec![c]), &id).is_ok());
    }

    #[test]
    fn an_identity_does_not_print_its_token_hash() {
        let c = caller("billing", "hubc_secret");
        let gate = Gate::new(CallersMode::Required, None);
        let id = gate
            .authenticate(&snapshot(vec![c]), Some(b"Bearer hubc_secret"))
            .unwrap();
        let shown = format!("{id:?}");
        assert!(!shown.contains(&token_hash("hubc_secret")), "{shown}");
        assert!(shown.contains("Caller"));
    }

    #[test]
    fn only_the_hubs_own_credential_is_internal() {
        let gate = Gate::with_internal(CallersMode::Required, None, vec![token_hash("hubi_abc")]);
        let snap = snapshot(Vec::new());
        assert_eq!(
            gate.authenticate(&snap, Some(b"Bearer hubi_abc")).unwrap(),
            Identity::Internal
        );
        assert!(gate.authenticate(&snap, Some(b"Bearer hubi_abd")).is_err());
        assert!(
            gate.authenticate(&snap, Some(&basic("hub", "hubi_abc")))
                .is_err(),
            "not with a user name"
        );
        let who = gate.current(&snap, &Identity::Internal).unwrap();
        assert!(who.internal && who.caller.is_none());
        assert_eq!(who.name(), INTERNAL_NAME);
    }
}
