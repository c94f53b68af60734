//! The route table and the router built from it. [`ROUTES`] is the one list of what the admin
//! service answers: the router is built from it, each row names the least role it needs, and
//! the OpenAPI drift test compares it (paths, methods, operation ids, path and query
//! parameters, security) with `api/openapi.yaml`.
//!
//! Handlers live one module per resource; [`handler`] maps each operation to its function, and
//! its exhaustive `match` makes a row without a handler a compile error.

pub mod audit;
pub mod call;
pub mod callers;
pub mod dlq;
pub mod health;
pub mod jobs;
pub mod page;
pub mod providers;
pub mod system;
#[cfg(test)]
mod tests;
pub mod tokens;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{MethodFilter, MethodRouter, on};
use hub_core::access::Role;

use crate::auth::{self, Access};
use crate::error::ApiError;
use crate::{AdminState, BODY_LIMIT, metrics};

/// An HTTP method the admin API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET (and HEAD).
    Get,
    /// POST.
    Post,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

impl Verb {
    /// Lower case, as OpenAPI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Post => "post",
            Self::Patch => "patch",
            Self::Delete => "delete",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Self::Get => MethodFilter::GET,
            Self::Post => MethodFilter::POST,
            Self::Patch => MethodFilter::PATCH,
            Self::Delete => MethodFilter::DELETE,
        }
    }
}

/// Every operation the admin service implements (the OpenAPI `operationId`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Op {
    Healthz,
    Readyz,
    GetOpenApi,
    GetCaPem,
    CreateProvider,
    ListProviders,
    GetProvider,
    UpdateProvider,
    DeleteProvider,
    GetProviderHealth,
    CallProvider,
    CreateToken,
    ListTokens,
    RevokeToken,
    ListAudit,
    ListDlq,
    GetDlqEntry,
    GetDlqBody,
    RetryDlqEntry,
    RetryAllDlq,
    DeleteDlqEntry,
    GetJob,
    GetMetrics,
    CreateTenant,
    ListTenants,
    DeleteTenant,
    CreateCaller,
    ListCallers,
    GetCaller,
    UpdateCaller,
    RevokeCaller,
    RotateCallerToken,
    CreateGrant,
    ListGrants,
    GetGrant,
    DeleteGrant,
    Explain,
}

/// One row of the route table.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// What it does.
    pub op: Op,
    /// The OpenAPI `operationId`.
    pub operation_id: &'static str,
    /// Method.
    pub verb: Verb,
    /// Path, axum syntax (`{id}`), which is also OpenAPI's.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Query parameters it accepts (anything else is 400 `invalid_query`).
    pub query: &'static [&'static str],
}

/// The `/api/v1/integrations` prefix.
pub const PREFIX: &str = "/api/v1/integrations";

const PAGE: &[&str] = &["limit", "cursor"];
const VIEWER: Access = Access::Role(Role::Viewer);
const OPERATOR: Access = Access::Role(Role::Operator);
const ADMIN: Access = Access::Role(Role::Admin);

macro_rules! route {
    ($op:ident, $id:literal, $verb:ident, $path:expr, $access:expr, $query:expr) => {
        Route {
            op: Op::$op,
            operation_id: $id,
            verb: Verb::$verb,
            path: $path,
            access: $access,
            query: $query,
        }
    };
}

const DLQ_LIST: &[&str] = &[
    "limit",
    "cursor",
    "providerId",
    "status",
    "tenant",
    "caller",
];
const DLQ_RETRY_ALL: &[&str] = &["providerId", "tenant", "caller"];

/// Everything the admin service answers.
#[rustfmt::skip]
pub const ROUTES: &[Route] = &[
    route!(Healthz,           "healthz",           Get,    "/healthz",                                   Access::Open, &[]),
    route!(Readyz,            "readyz",            Get,    "/readyz",                                    Access::Open, &[]),
    route!(GetMetrics,        "getMetrics",        Get,    "/metrics",                                   Access::Open, &[]),
    route!(GetOpenApi,        "getOpenApi",        Get,    "/api/v1/openapi.yaml",                       Access::Open, &[]),
    route!(GetCaPem,          "getCaPem",          Get,    "/api/v1/integrations/ca.pem",                Access::Open, &[]),
    route!(CreateProvider,    "createProvider",    Post,   "/api/v1/integrations/providers",             ADMIN,    &[]),
    route!(ListProviders,     "listProviders",     Get,    "/api/v1/integrations/providers",             VIEWER,   &["limit", "cursor", "status", "name"]),
    route!(GetProvider,       "getProvider",       Get,    "/api/v1/integrations/providers/{id}",        VIEWER,   &[]),
    route!(UpdateProvider,    "updateProvider",    Patch,  "/api/v1/integrations/providers/{id}",        ADMIN,    &[]),
    route!(DeleteProvider,    "deleteProvider",    Delete, "/api/v1/integrations/providers/{id}",        ADMIN,    &[]),
    route!(GetProviderHealth, "getProviderHealth", Get,    "/api/v1/integrations/providers/{id}/health", VIEWER,   &[]),
    route!(CallProvider,      "callProvider",      Post,   "/api/v1/integrations/call",                  OPERATOR, &[]),
    route!(ListDlq,           "listDlq",           Get,    "/api/v1/integrations/dlq",                   VIEWER,   DLQ_LIST),
    route!(RetryAllDlq,       "retryAllDlq",       Post,   "/api/v1/integrations/dlq/retry-all",         OPERATOR, DLQ_RETRY_ALL),
    route!(GetDlqEntry,       "getDlqEntry",       Get,    "/api/v1/integrations/dlq/{id}",              VIEWER,   &[]),
    route!(DeleteDlqEntry,    "deleteDlqEntry",    Delete, "/api/v1/integrations/dlq/{id}",              OPERATOR, &[]),
    route!(GetDlqBody,        "getDlqBody",        Get,    "/api/v1/integrations/dlq/{id}/body",         OPERATOR, &[]),
    route!(RetryDlqEntry,     "retryDlqEntry",     Post,   "/api/v1/integrations/dlq/{id}/retry",        OPERATOR, &[]),
    route!(GetJob,            "getJob",            Get,    "/api/v1/integrations/jobs/{id}",             VIEWER,   &[]),
    route!(CreateToken,       "createToken",       Post,   "/api/v1/integrations/tokens",                ADMIN,    &[]),
    route!(ListTokens,        "listTokens",        Get,    "/api/v1/integrations/tokens",                ADMIN,    PAGE),
    route!(RevokeToken,       "revokeToken",       Delete, "/api/v1/integrations/tokens/{id}",           ADMIN,    &[]),
    route!(ListAudit,         "listAudit",         Get,    "/api/v1/integrations/audit",                 VIEWER,   &["limit", "cursor", "targetId"]),
    route!(CreateTenant,      "createTenant",      Post,   "/api/v1/integrations/tenants",               ADMIN,    &[]),
    route!(ListTenants,       "listTenants",       Get,    "/api/v1/integrations/tenants",               VIEWER,   &[]),
    route!(DeleteTenant,      "deleteTenant",      Delete, "/api/v1/integrations/tenants/{name}",        ADMIN,    &[]),
    route!(CreateCaller,      "createCaller",      Post,   "/api/v1/integrations/callers",               ADMIN,    &[]),
    route!(ListCallers,       "listCallers",       Get,    "/api/v1/integrations/callers",               VIEWER,   &["limit", "cursor", "tenant"]),
    route!(GetCaller,         "getCaller",         Get,    "/api/v1/integrations/callers/{id}",          VIEWER,   &[]),
    route!(UpdateCaller,      "updateCaller",      Patch,  "/api/v1/integrations/callers/{id}",          ADMIN,    &[]),
    route!(RevokeCaller,      "revokeCaller",      Delete, "/api/v1/integrations/callers/{id}",          ADMIN,    &[]),
    route!(RotateCallerToken, "rotateCallerToken", Post,   "/api/v1/integrations/callers/{id}/token",    ADMIN,    &[]),
    route!(CreateGrant,       "createGrant",       Post,   "/api/v1/integrations/grants",                ADMIN,    &[]),
    route!(ListGrants,        "listGrants",        Get,    "/api/v1/integrations/grants",                VIEWER,   &["limit", "cursor", "tenant", "caller", "providerId"]),
    route!(GetGrant,          "getGrant",          Get,    "/api/v1/integrations/grants/{id}",           VIEWER,   &[]),
    route!(DeleteGrant,       "deleteGrant",       Delete, "/api/v1/integrations/grants/{id}",           ADMIN,    &[]),
    route!(Explain,           "explain",           Get,    "/api/v1/integrations/explain",               VIEWER,   &["caller", "method", "url"]),
];

/// The handler of an operation, answering `filter`.
fn handler(op: Op, filter: MethodFilter) -> MethodRouter<AdminState> {
    match op {
        Op::Healthz => on(filter, system::healthz),
        Op::Readyz => on(filter, system::readyz),
        Op::GetOpenApi => on(filter, system::openapi),
        Op::GetCaPem => on(filter, system::ca_pem),
        Op::CreateProvider => on(filter, providers::create),
        Op::ListProviders => on(filter, providers::list),
        Op::GetProvider => on(filter, providers::get),
        Op::UpdateProvider => on(filter, providers::update),
        Op::DeleteProvider => on(filter, providers::delete),
        Op::GetProviderHealth => on(filter, health::get),
        Op::CallProvider => on(filter, call::call),
        Op::CreateToken => on(filter, tokens::create),
        Op::ListTokens => on(filter, tokens::list),
        Op::RevokeToken => on(filter, tokens::revoke),
        Op::ListAudit => on(filter, audit::list),
        Op::ListDlq => on(filter, dlq::list),
        Op::GetDlqEntry => on(filter, dlq::get),
        Op::GetDlqBody => on(filter, dlq::body),
        Op::RetryDlqEntry => on(filter, dlq::retry),
        Op::RetryAllDlq => on(filter, dlq::retry_all),
        Op::DeleteDlqEntry => on(filter, dlq::delete),
        Op::GetJob => on(filter, jobs::get),
        Op::GetMetrics => on(filter, system::metrics),
        Op::CreateTenant => on(filter, callers::create_tenant),
        Op::ListTenants => on(filter, callers::list_tenants),
        Op::DeleteTenant => on(filter, callers::delete_tenant),
        Op::CreateCaller => on(filter, callers::create_caller),
        Op::ListCallers => on(filter, callers::list_callers),
        Op::GetCaller => on(filter, callers::get_caller),
        Op::UpdateCaller => on(filter, callers::update_caller),
        Op::RevokeCaller => on(filter, callers::revoke_caller),
        Op::RotateCallerToken => on(filter, callers::rotate_caller_token),
        Op::CreateGrant => on(filter, callers::create_grant),
        Op::ListGrants => on(filter, callers::list_grants),
        Op::GetGrant => on(filter, callers::get_grant),
        Op::DeleteGrant => on(filter, callers::delete_grant),
        Op::Explain => on(filter, callers::explain),
    }
}

/// The admin router: every row of [`ROUTES`] behind its access check, problem+json for
/// unknown routes (404) and methods (405), the body limit (413), and every answer counted in
/// the service's metrics by route template.
pub fn router(state: AdminState) -> Router {
    let mut router = Router::new();
    for r in ROUTES {
        let mut method_router = handler(r.op, r.verb.filter());
        if let Access::Role(needed) = r.access {
            method_router = method_router
                .route_layer(from_fn_with_state((state.clone(), needed), auth::require));
        }
        router = router.route(r.path, method_router);
    }
    router
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(from_fn_with_state(state.metrics.clone(), metrics::track))
        .with_state(state)
}
