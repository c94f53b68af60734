//! Tenants, callers, grants and `explain` (admin only, except reads and explain for viewers).
//!
//! Callers are modules: `POST /callers` issues a caller token, shown once in the 201 answer and
//! stored only as its SHA-256; `DELETE /callers/{id}` revokes (the row stays, and open tunnels
//! of that caller are refused from the next registry revision on, within the propagation
//! bound). Every change to callers or grants is audited in the same transaction as the change,
//! with the (caller, provider, methods, paths) allowances it newly gives (`allows`) or takes
//! away (`removes`), computed by [`hub_core::caller::allowances`].
//!
//! A token scoped to a tenant ([`crate::scope`]) sees and changes that tenant's callers and
//! grants only (another tenant's answer 404), creates in its tenant, and may not create or
//! delete tenants.
//!
//! `GET /explain` answers what the proxy would do with a call, using the proxy's own grant
//! evaluator ([`hub_core::caller::evaluate`]); it names the credential *type* that would be
//! injected, never the credential.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use hub_core::access::{AuditEntry, token_hash};
use hub_core::caller::{
    Allowance, CallerId, CallerRecord, DEFAULT_TENANT, GrantLimits, GrantRecord, MAX_GROUPS,
    MAX_PATHS, Methods, PathPattern, Refusal, ServiceAccountRef, Subject, Tenant, allowance_diff,
    allowances, evaluate, new_caller_token, valid_name,
};
use hub_core::provider::{ProviderRecord, ProviderStatus, normalize_host, split_host_port};
use hub_core::store::StoreError;
use hub_core::wire::problem;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::page::{self, Page};
use super::providers::cursor_id;
use crate::AdminState;
use crate::auth::Caller as Actor;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, IdPath, parse_ulid};
use crate::scope::Listing;

// ---------------------------------------------------------------------------------------------
// What the registry holds, read whole: callers and grants are small tables (one row per module
// and per permission), and the allowance diff needs all of them anyway.

#[derive(Clone)]
struct World {
    callers: Vec<CallerRecord>,
    grants: Vec<GrantRecord>,
    providers: Vec<ProviderRecord>,
}

impl World {
    async fn load(s: &AdminState) -> Result<Self, ApiError> {
        Ok(Self {
            callers: s.store.all_callers().await?,
            grants: s.store.all_grants().await?,
            providers: s.store.live_providers().await?,
        })
    }

    fn allowances(&self) -> BTreeSet<Allowance> {
        allowances(
            &self.callers,
            &self.grants,
            |id| {
                self.providers
                    .iter()
                    .find(|p| p.id == *id)
                    .map(|p| p.name.clone())
            },
            Utc::now(),
        )
    }

    /// The caller named `key` (name or id), when `actor` sees it.
    fn caller(&self, actor: &Actor, key: &str) -> Option<&CallerRecord> {
        self.callers
            .iter()
            .find(|c| c.name == key || c.id.to_string() == key)
            .filter(|c| actor.sees(Some(&c.tenant)))
    }
}

fn entry(
    actor: &Actor,
    action: &str,
    target: impl ToString,
    detail: serde_json::Value,
) -> AuditEntry {
    AuditEntry {
        actor: actor.id.clone(),
        action: action.to_owned(),
        target_id: Some(target.to_string()),
        detail,
    }
}

/// The audit detail of a change: `extra` plus what it allows and removes.
fn diff_detail(before: &World, after: &World, extra: serde_json::Value) -> serde_json::Value {
    let mut d = allowance_diff(&before.allowances(), &after.allowances());
    if let (Some(d), serde_json::Value::Object(extra)) = (d.as_object_mut(), extra) {
        d.extend(extra);
    }
    d
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn created(location: String, body: impl Serialize) -> Response {
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn name_field(field: &str, v: &str) -> Result<(), ApiError> {
    if valid_name(v) {
        Ok(())
    } else {
        Err(ApiError::validation(
            field,
            "must be 1-63 of a-z, 0-9, '-', '_', '.', starting with a letter or digit",
        ))
    }
}

async fn ensure_tenant(s: &AdminState, field: &str, tenant: &str) -> Result<(), ApiError> {
    name_field(field, tenant)?;
    if s.store
        .list_tenants()
        .await?
        .iter()
        .any(|t| t.name == tenant)
    {
        Ok(())
    } else {
        Err(ApiError::validation(
            field,
            format!("no tenant named {tenant}"),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Tenants

/// Body of `POST /tenants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    name: String,
}

/// `POST /tenants`.
pub async fn create_tenant(
    State(s): State<AdminState>,
    actor: Actor,
    ApiJson(new): ApiJson<NewTenant>,
) -> Result<Response, ApiError> {
    actor.check_unscoped("managing tenants")?;
    name_field("name", &new.name)?;
    let tenant = Tenant {
        name: new.name,
        created_at: Utc::now(),
    };
    let audit = entry(&actor, "tenant.create", &tenant.name, json!({}));
    let stored = s.store.create_tenant(tenant, audit).await?;
    Ok(created(
        format!("{}/tenants/{}", super::PREFIX, stored.name),
        stored,
    ))
}

/// `GET /tenants` (a scoped token: its own).
pub async fn list_tenants(
    State(s): State<AdminState>,
    actor: Actor,
) -> Result<Json<Page<Tenant>>, ApiError> {
    let mut items = s.store.list_tenants().await?;
    items.retain(|t| actor.sees(Some(&t.name)));
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

/// `DELETE /tenants/{name}`: only an empty tenant (no providers, callers or grants). 204.
pub async fn delete_tenant(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    actor: Actor,
) -> Result<Response, ApiError> {
    actor.check_unscoped("managing tenants")?;
    if name == DEFAULT_TENANT {
        return Err(ApiError::Conflict {
            field: "name".into(),
            message: "the default tenant cannot be deleted".into(),
        });
    }
    let audit = entry(&actor, "tenant.delete", &name, json!({}));
    match s.store.delete_tenant(&name, audit).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(StoreError::NotFound) => Err(ApiError::NotFound(format!("no tenant named {name}"))),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Callers

/// A caller in answers (never its token or the token's hash).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallerView {
    id: String,
    name: String,
    tenant: String,
    groups: Vec<String>,
    /// Whether it has a caller token (a ServiceAccount-only caller has none).
    has_token: bool,
    service_account: Option<ServiceAccountRef>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<&CallerRecord> for CallerView {
    fn from(c: &CallerRecord) -> Self {
        Self {
            id: c.id.to_string(),
            name: c.name.clone(),
            tenant: c.tenant.clone(),
            groups: c.groups.clone(),
            has_token: c.token_hash.is_some(),
            service_account: c.service_account.clone(),
            expires_at: c.expires_at,
            revoked_at: c.revoked_at,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// The 201 answer of `POST /callers` and `POST /callers/{id}/token`: the caller plus its token,
/// shown this once, and the proxy URL form a module puts in `HTTPS_PROXY`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallerWithToken {
    #[serde(flatten)]
    view: CallerView,
    /// The caller token. It cannot be read again.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

/// Body of `POST /callers`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewCaller {
    name: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    /// A Kubernetes ServiceAccount that authenticates as this caller (its projected token).
    #[serde(default)]
    service_account: Option<ServiceAccountRef>,
    /// Issue a caller token (default true; false for a ServiceAccount-only caller).
    #[serde(default = "yes")]
    token: bool,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

fn yes() -> bool {
    true
}

fn check_groups(groups: &[String]) -> Result<Vec<String>, ApiError> {
    if groups.len() > MAX_GROUPS {
        return Err(ApiError::validation(
            "groups",
            format!("at most {MAX_GROUPS}"),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        name_field(&format!("groups[{i}]"), g)?;
        if !out.contains(g) {
            out.push(g.clone());
        }
    }
    Ok(out)
}

fn check_service_account(sa: Option<&ServiceAccountRef>) -> Result<(), ApiError> {
    if let Some(sa) = sa {
        for (field, v) in [
            ("serviceAccount.namespace", &sa.namespace),
            ("serviceAccount.name", &sa.name),
        ] {
            // Kubernetes names: DNS labels / subdomains.
            if v.is_empty()
                || v.len() > 253
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
            {
                return Err(ApiError::validation(field, "must be a Kubernetes name"));
            }
        }
    }
    Ok(())
}

/// `POST /callers`.
pub async fn create_caller(
    State(s): State<AdminState>,
    actor: Actor,
    ApiJson(new): ApiJson<NewCaller>,
) -> Result<Response, ApiError> {
    name_field("name", &new.name)?;
    let tenant = actor
        .tenant_for_new(new.tenant)?
        .unwrap_or_else(|| DEFAULT_TENANT.to_owned());
    ensure_tenant(&s, "tenant", &tenant).await?;
    let groups = check_groups(&new.groups)?;
    check_service_account(new.service_account.as_ref())?;
    if !new.token && new.service_account.is_none() {
        return Err(ApiError::validation(
            "token",
            "a caller without a token needs a serviceAccount to authenticate with",
        ));
    }
    if new.expires_at.is_some_and(|e| e <= Utc::now()) {
        return Err(ApiError::validation("expiresAt", "must be in the future"));
    }
    let token = new.token.then(new_caller_token);
    let now = Utc::now();
    let caller = CallerRecord {
        id: CallerId::new(),
        name: new.name,
        tenant,
        groups,
        token_hash: token.as_deref().map(token_hash),
        service_account: new.service_account,
        expires_at: new.expires_at,
        revoked_at: None,
        created_at: now,
        updated_at: now,
    };
    let before = World::load(&s).await?;
    let mut after = before.clone();
    after.callers.push(caller.clone());
    let detail = diff_detail(
        &before,
        &after,
        json!({"name": caller.name, "tenant": caller.tenant, "groups": caller.groups}),
    );
    let audit = entry(&actor, "caller.create", caller.id, detail);
    s.store.put_caller(caller.clone(), true, audit).await?;
    Ok(no_store(created(
        format!("{}/callers/{}", super::PREFIX, caller.id),
        CallerWithToken {
            view: (&caller).into(),
            token,
        },
    )))
}

/// Query of `GET /callers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    tenant: Option<String>,
}

/// `GET /callers`: oldest first, revoked ones included.
pub async fn list_callers(
    State(s): State<AdminState>,
    actor: Actor,
    ApiQuery(q): ApiQuery<CallerListQuery>,
) -> Result<Json<Page<CallerView>>, ApiError> {
    let limit = page::limit(q.limit)?;
    let after = cursor_id(q.cursor.as_deref())?;
    let Listing::Matching(tenant) = actor.tenant_filter(page::filter("tenant", q.tenant)?) else {
        return Ok(Json(Page::empty()));
    };
    let mut all = s.store.all_callers().await?;
    all.sort_by_key(|c| c.id);
    let fetched: Vec<CallerRecord> = all
        .into_iter()
        .filter(|c| after.is_none_or(|a| c.id > a))
        .filter(|c| tenant.as_deref().is_none_or(|t| c.tenant == t))
        .take(limit as usize + 1)
        .collect();
    Ok(Json(page::page(
        fetched,
        limit,
        |c| c.id.to_string(),
        |c| CallerView::from(&c),
    )))
}

/// `GET /callers/{id}`.
pub async fn get_caller(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
    actor: Actor,
) -> Result<Json<CallerView>, ApiError> {
    s.store
        .all_callers()
        .await?
        .iter()
        .find(|c| c.id == id && actor.sees(Some(&c.tenant)))
        .map(|c| Json(c.into()))
        .ok_or_else(|| ApiError::NotFound(format!("no caller with id {id}")))
}

/// Body of `PATCH /callers/{id}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallerPatch {
    #[serde(default)]
    groups: Option<Vec<String>>,
    #[serde(default, with = "double_option")]
    service_account: Option<Option<ServiceAccountRef>>,
    #[serde(default, with = "double_option")]
    expires_at: Option<Option<DateTime<Utc>>>,
}

/// `null` (clear) vs absent (keep).
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// Applies `change` to caller `id` under an audit entry with the allowance diff.
async fn change_caller(
    s: &AdminState,
    actor: &Actor,
    id: CallerId,
    action: &str,
    extra: serde_json::Value,
    change: impl FnOnce(&mut CallerRecord) -> Result<(), ApiError>,
) -> Result<CallerRecord, ApiError> {
    let before = World::load(s).await?;
    let mut after = before.clone();
    let caller = after
        .callers
        .iter_mut()
        .find(|c| c.id == id && actor.sees(Some(&c.tenant)))
        .ok_or_else(|| ApiError::NotFound(format!("no caller with id {id}")))?;
    change(caller)?;
    caller.updated_at = Utc::now();
    let updated = caller.clone();
    let detail = diff_detail(&before, &after, extra);
    s.store
        .put_caller(updated.clone(), false, entry(actor, action, id, detail))
        .await?;
    Ok(updated)
}

/// `PATCH /callers/{id}`: groups, ServiceAccount, expiry.
pub async fn update_caller(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
    actor: Actor,
    ApiJson(patch): ApiJson<CallerPatch>,
) -> Result<Json<CallerView>, ApiError> {
    let groups = patch.groups.as_deref().map(check_groups).transpose()?;
    if let Some(sa) = &patch.service_account {
        check_service_account(sa.as_ref())?;
    }
    if let Some(Some(e)) = patch.expires_at
        && e <= Utc::now()
    {
        return Err(ApiError::validation("expiresAt", "must be in the future"));
    }
    let mut fields = Vec::new();
    if groups.is_some() {
        fields.push("groups");
    }
    if patch.service_account.is_some() {
        fields.push("serviceAccount");
    }
    if patch.expires_at.is_some() {
        fields.push("expiresAt");
    }
    let updated = change_caller(
        &s,
        &actor,
        id,
        "caller.update",
        json!({"fields": fields}),
        |c| {
            if let Some(g) = groups {
                c.groups = g;
            }
            if let Some(sa) = patch.service_account {
                if sa.is_none() && c.token_hash.is_none() {
                    return Err(ApiError::validation(
                        "serviceAccount",
                        "the caller has no token: removing its ServiceAccount would lock it out",
                    ));
                }
                c.service_account = sa;
            }
            if let Some(e) = patch.expires_at {
                c.expires_at = e;
            }
            Ok(())
        },
    )
    .await?;
    Ok(Json((&updated).into()))
}

/// `POST /callers/{id}/token`: issues a new token (shown once); the old one stops working,
/// on open tunnels too, with the next registry revision.
pub async fn rotate_caller_token(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
    actor: Actor,
) -> Result<Response, ApiError> {
    let token = new_caller_token();
    let hash = token_hash(&token);
    let updated = change_caller(&s, &actor, id, "caller.rotate_token", json!({}), |c| {
        if c.revoked_at.is_some() {
            return Err(ApiError::Conflict {
                field: "id".into(),
                message: format!("caller {} is revoked", c.name),
            });
        }
        c.token_hash = Some(hash);
        Ok(())
    })
    .await?;
    Ok(no_store(created(
        format!("{}/callers/{}", super::PREFIX, updated.id),
        CallerWithToken {
            view: (&updated).into(),
            token: Some(token),
        },
    )))
}

/// `DELETE /callers/{id}`: revokes (idempotent). The caller stays listed with `revokedAt`. 204.
pub async fn revoke_caller(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
    actor: Actor,
) -> Result<Response, ApiError> {
    change_caller(&s, &actor, id, "caller.revoke", json!({}), |c| {
        c.revoked_at.get_or_insert_with(Utc::now);
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------------------------------------
// Grants

/// A grant in answers.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantView {
    id: String,
    tenant: String,
    /// The caller's id, for a grant to one caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    caller: Option<String>,
    /// The group, for a grant to a group.
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    provider_id: String,
    methods: Methods,
    paths: Vec<PathPattern>,
    #[serde(flatten)]
    limits: GrantLimits,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<&GrantRecord> for GrantView {
    fn from(g: &GrantRecord) -> Self {
        let (caller, group) = match &g.subject {
            Subject::Caller(id) => (Some(id.to_string()), None),
            Subject::Group(name) => (None, Some(name.clone())),
        };
        Self {
            id: g.id.to_string(),
            tenant: g.tenant.clone(),
            caller,
            group,
            provider_id: g.provider_id.to_string(),
            methods: g.methods.clone(),
            paths: g.paths.clone(),
            limits: g.limits,
            created_at: g.created_at,
            updated_at: g.updated_at,
        }
    }
}

/// Body of `POST /grants`: exactly one of `caller` (id or name) and `group`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewGrant {
    #[serde(default)]
    caller: Option<String>,
    #[serde(default)]
    group: Option<String>,
    /// For a group grant: the group's tenant (default `default`). A caller grant takes the
    /// caller's.
    #[serde(default)]
    tenant: Option<String>,
    /// Provider id or name.
    provider: String,
    methods: serde_json::Value,
    paths: serde_json::Value,
    #[serde(default)]
    rate_limit_per_sec: Option<u32>,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default)]
    daily_quota: Option<u64>,
}

fn check_limits(l: &NewGrant) -> Result<GrantLimits, ApiError> {
    if let Some(r) = l.rate_limit_per_sec
        && !(1..=100_000).contains(&r)
    {
        return Err(ApiError::validation("rateLimitPerSec", "must be 1-100000"));
    }
    if let Some(b) = l.burst {
        if l.rate_limit_per_sec.is_none() {
            return Err(ApiError::validation("burst", "needs rateLimitPerSec"));
        }
        if !(1..=100_000).contains(&b) {
            return Err(ApiError::validation("burst", "must be 1-100000"));
        }
    }
    if let Some(q) = l.daily_quota
        && !(1..=1_000_000_000).contains(&q)
    {
        return Err(ApiError::validation("dailyQuota", "must be 1-1000000000"));
    }
    Ok(GrantLimits {
        rate_limit_per_sec: l.rate_limit_per_sec,
        burst: l.burst,
        daily_quota: l.daily_quota,
    })
}

fn check_methods(v: serde_json::Value) -> Result<Methods, ApiError> {
    let list: Vec<String> = serde_json::from_value(v)
        .map_err(|_| ApiError::validation("methods", "must be an array of method names"))?;
    Methods::try_from(list).map_err(|e| ApiError::validation("methods", e))
}

fn check_paths(v: serde_json::Value) -> Result<Vec<PathPattern>, ApiError> {
    let list: Vec<String> = serde_json::from_value(v)
        .map_err(|_| ApiError::validation("paths", "must be an array of path patterns"))?;
    if list.is_empty() || list.len() > MAX_PATHS {
        return Err(ApiError::validation(
            "paths",
            format!("must list 1-{MAX_PATHS} patterns (\"/**\" for every path)"),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            PathPattern::parse(p).map_err(|e| ApiError::validation(format!("paths[{i}]"), e))
        })
        .collect()
}

fn find_provider<'a>(world: &'a World, key: &str) -> Option<&'a ProviderRecord> {
    world
        .providers
        .iter()
        .find(|p| p.id.to_string() == key || p.name == key)
}

/// `POST /grants`.
pub async fn create_grant(
    State(s): State<AdminState>,
    actor: Actor,
    ApiJson(new): ApiJson<NewGrant>,
) -> Result<Response, ApiError> {
    let before = World::load(&s).await?;
    let (subject, tenant) = match (&new.caller, &new.group) {
        (Some(c), None) => {
            let caller = before
                .caller(&actor, c)
                .ok_or_else(|| ApiError::validation("caller", format!("no caller {c}")))?;
            if new.tenant.as_deref().is_some_and(|t| t != caller.tenant) {
                return Err(ApiError::validation(
                    "tenant",
                    format!("caller {} belongs to tenant {}", caller.name, caller.tenant),
                ));
            }
            (Subject::Caller(caller.id), caller.tenant.clone())
        }
        (None, Some(g)) => {
            name_field("group", g)?;
            let tenant = actor
                .tenant_for_new(new.tenant.clone())?
                .unwrap_or_else(|| DEFAULT_TENANT.to_owned());
            ensure_tenant(&s, "tenant", &tenant).await?;
            (Subject::Group(g.clone()), tenant)
        }
        _ => {
            return Err(ApiError::validation(
                "caller",
                "give exactly one of caller and group",
            ));
        }
    };
    let provider = find_provider(&before, &new.provider)
        .filter(|p| actor.sees_provider(p.tenant.as_deref()))
        .ok_or_else(|| ApiError::validation("provider", format!("no provider {}", new.provider)))?;
    if provider.tenant.as_deref().is_some_and(|t| t != tenant) {
        return Err(ApiError::validation(
            "provider",
            format!(
                "provider {} belongs to tenant {}, not {tenant}",
                provider.name,
                provider.tenant.as_deref().unwrap_or_default()
            ),
        ));
    }
    let limits = check_limits(&new)?;
    let now = Utc::now();
    let grant = GrantRecord {
        id: ulid::Ulid::new(),
        tenant,
        subject,
        provider_id: provider.id,
        methods: check_methods(new.methods)?,
        paths: check_paths(new.paths)?,
        limits,
        created_at: now,
        updated_at: now,
    };
    let mut after = before.clone();
    after.grants.push(grant.clone());
    let detail = diff_detail(&before, &after, json!({"provider": provider.name}));
    s.store
        .put_grant(
            grant.clone(),
            true,
            entry(&actor, "grant.create", grant.id, detail),
        )
        .await?;
    Ok(created(
        format!("{}/grants/{}", super::PREFIX, grant.id),
        GrantView::from(&grant),
    ))
}

/// Query of `GET /grants`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    tenant: Option<String>,
    caller: Option<String>,
    provider_id: Option<String>,
}

/// `GET /grants`: oldest first.
pub async fn list_grants(
    State(s): State<AdminState>,
    actor: Actor,
    ApiQuery(q): ApiQuery<GrantListQuery>,
) -> Result<Json<Page<GrantView>>, ApiError> {
    let limit = page::limit(q.limit)?;
    let after = cursor_id(q.cursor.as_deref())?;
    let tenant = page::filter("tenant", q.tenant)?;
    let caller = match q.caller.as_deref() {
        None => None,
        Some(raw) => Some(parse_ulid(raw).ok_or_else(|| ApiError::InvalidQuery {
            field: "caller".into(),
            message: "not a valid ULID".into(),
        })?),
    };
    let provider = match q.provider_id.as_deref() {
        None => None,
        Some(raw) => Some(parse_ulid(raw).ok_or_else(|| ApiError::InvalidQuery {
            field: "providerId".into(),
            message: "not a valid ULID".into(),
        })?),
    };
    let Listing::Matching(tenant) = actor.tenant_filter(tenant) else {
        return Ok(Json(Page::empty()));
    };
    let mut all = s.store.all_grants().await?;
    all.sort_by_key(|g| g.id);
    let fetched: Vec<GrantRecord> = all
        .into_iter()
        .filter(|g| after.is_none_or(|a| g.id > a))
        .filter(|g| tenant.as_deref().is_none_or(|t| g.tenant == t))
        .filter(|g| caller.is_none_or(|c| g.subject == Subject::Caller(c)))
        .filter(|g| provider.is_none_or(|p| g.provider_id == p))
        .take(limit as usize + 1)
        .collect();
    Ok(Json(page::page(
        fetched,
        limit,
        |g| g.id.to_string(),
        |g| GrantView::from(&g),
    )))
}

/// `GET /grants/{id}`.
pub async fn get_grant(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
    actor: Actor,
) -> Result<Json<GrantView>, ApiError> {
    s.store
        .all_grants()
        .await?
        .iter()
        .find(|g| g.id == id && actor.sees(Some(&g.tenant)))
        .map(|g| Json(g.into()))
        .ok_or_else(|| ApiError::NotFound(format!("no grant with id {id}")))
}

/// `DELETE /grants/{id}`. 204.
pub async fn delete_grant(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
    actor: Actor,
) -> Result<Response, ApiError> {
    let before = World::load(&s).await?;
    let mut after = before.clone();
    if !after
        .grants
        .iter()
        .any(|g| g.id == id && actor.sees(Some(&g.tenant)))
    {
        return Err(ApiError::NotFound(format!("no grant with id {id}")));
    }
    after.grants.retain(|g| g.id != id);
    let detail = diff_detail(&before, &after, json!({}));
    match s
        .store
        .delete_grant(id, entry(&actor, "grant.delete", id, detail))
        .await
    {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(StoreError::NotFound) => Err(ApiError::NotFound(format!("no grant with id {id}"))),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Explain

/// Query of `GET /explain`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainQuery {
    /// Caller name or id.
    caller: String,
    method: String,
    /// `https://host[:port]/path?query` (or `http://`).
    url: String,
}

/// The answer of `GET /explain`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// Whether the proxy would send the call on.
    allowed: bool,
    /// The status the module would get from the hub itself (200: the call goes on).
    status: u16,
    /// The problem code of the refusal, if refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    detail: String,
    caller: Option<CallerView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grant: Option<GrantView>,
    /// The credential type the hub would inject (`bearer`, `basic`, `header`, `query`,
    /// `none`); never the credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    credential_type: Option<&'static str>,
}

/// `GET /explain?caller=…&method=…&url=…`.
pub async fn explain(
    State(s): State<AdminState>,
    actor: Actor,
    ApiQuery(q): ApiQuery<ExplainQuery>,
) -> Result<Json<Explanation>, ApiError> {
    let method = q.method.to_ascii_uppercase();
    if method.is_empty() || method.len() > 32 || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ApiError::InvalidQuery {
            field: "method".into(),
            message: "must be an HTTP method".into(),
        });
    }
    let bad_url = |m: &str| ApiError::InvalidQuery {
        field: "url".into(),
        message: m.into(),
    };
    let rest = q
        .url
        .strip_prefix("https://")
        .or_else(|| q.url.strip_prefix("http://"))
        .ok_or_else(|| bad_url("must be an http:// or https:// URL"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    let https = q.url.starts_with("https://");
    let (host, port) = split_host_port(authority)
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| bad_url("has no valid host"))?;
    let host = normalize_host(&host);
    let world = World::load(&s).await?;
    let refuse = |kind: hub_core::wire::ProblemKind, detail: String, caller: Option<CallerView>| {
        Json(Explanation {
            allowed: false,
            status: kind.status,
            code: Some(kind.code),
            detail,
            caller,
            provider: None,
            grant: None,
            credential_type: None,
        })
    };
    let Some(caller) = world.caller(&actor, &q.caller) else {
        return Ok(refuse(
            problem::CALLER_UNAUTHENTICATED,
            format!("no caller {}", q.caller),
            None,
        ));
    };
    let view = CallerView::from(caller);
    if !caller.is_live(Utc::now()) {
        return Ok(refuse(
            problem::CALLER_UNAUTHENTICATED,
            format!("caller {} is revoked or expired", caller.name),
            Some(view),
        ));
    }
    // The proxy's routing rule: the caller's tenant first (exact host, then the longest
    // wildcard), then global providers.
    let pick = |tenant: Option<&str>| {
        let mut candidates: Vec<(&ProviderRecord, usize)> = world
            .providers
            .iter()
            .filter(|p| p.tenant.as_deref() == tenant)
            .filter_map(|p| {
                p.hosts
                    .iter()
                    .filter(|h| h.matches(&host))
                    .map(|h| {
                        let s = h.to_string();
                        if s.starts_with("*.") {
                            s.len()
                        } else {
                            usize::MAX
                        }
                    })
                    .max()
                    .map(|score| (p, score))
            })
            .collect();
        candidates.sort_by_key(|(_, score)| std::cmp::Reverse(*score));
        candidates.first().map(|(p, _)| *p)
    };
    let Some(provider) = pick(Some(&caller.tenant)).or_else(|| pick(None)) else {
        return Ok(refuse(
            problem::UNKNOWN_PROVIDER,
            format!(
                "no provider of tenant {} (or global) serves {host}",
                caller.tenant
            ),
            Some(view),
        ));
    };
    let provider_view = json!({
        "id": provider.id.to_string(),
        "name": provider.name,
        "tenant": provider.tenant,
        "global": provider.tenant.is_none(),
    });
    let mut answer = Explanation {
        allowed: false,
        status: 0,
        code: None,
        detail: String::new(),
        caller: Some(view),
        provider: Some(provider_view),
        grant: None,
        credential_type: None,
    };
    if provider.status == ProviderStatus::Disabled {
        answer.status = problem::PROVIDER_DISABLED.status;
        answer.code = Some(problem::PROVIDER_DISABLED.code);
        answer.detail = format!("provider {} is disabled", provider.name);
        return Ok(Json(answer));
    }
    // The proxy's port rule: the scheme's default port or the base URL's own.
    let port = port.unwrap_or(if https { 443 } else { 80 });
    let base_port = hub_core::provider::parse_base_url(&provider.base_url, true)
        .map(|b| b.port)
        .ok();
    if port != if https { 443 } else { 80 } && Some(port) != base_port {
        answer.status = problem::FORBIDDEN_PORT.status;
        answer.code = Some(problem::FORBIDDEN_PORT.code);
        answer.detail = format!("port {port} is not a port of the provider serving {host}");
        return Ok(Json(answer));
    }
    let grants: Vec<&GrantRecord> = world
        .grants
        .iter()
        .filter(|g| g.provider_id == provider.id)
        .collect();
    match evaluate(&grants, |g| g, caller, &method, &path) {
        Ok(g) => {
            answer.allowed = true;
            answer.status = 200;
            answer.detail = format!("allowed by grant {}", g.id);
            answer.grant = Some((*g).into());
            answer.credential_type = Some(provider.auth_type.as_str());
        }
        Err(r) => {
            let shown = path.split_once('?').map_or(path.as_str(), |(p, _)| p);
            answer.status = problem::NOT_GRANTED.status;
            answer.code = Some(problem::NOT_GRANTED.code);
            answer.detail = Refusal::detail(r, &caller.name, &provider.name, &method, shown);
        }
    }
    Ok(Json(answer))
}
