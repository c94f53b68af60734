//! Provider CRUD: register, list (cursor-paginated, filtered by status and name), read, change
//! (`PATCH`, optionally guarded by `If-Match`), soft delete. Every change is audited in its own
//! transaction ([`write`]).

pub mod patch;
pub mod view;
pub mod write;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hub_core::provider::{NewProvider, ProviderId, ProviderRecord, ProviderStatus};
use hub_core::store::{ProviderQuery, StoreError};
use serde::Deserialize;

use self::patch::ProviderPatch;
use self::view::{ProviderView, respond};
use super::page::{self, Page};
use crate::AdminState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, IdPath, IfMatch, parse_ulid};

/// How often an unconditional `PATCH` re-reads and re-applies itself when a concurrent change
/// got in between its read and its write.
const PATCH_ATTEMPTS: u32 = 3;

/// `POST /providers`: validate, seal the credentials to the new id, store. 201 with the provider.
pub async fn create(
    State(s): State<AdminState>,
    caller: Caller,
    ApiJson(mut new): ApiJson<NewProvider>,
) -> Result<Response, ApiError> {
    caller.check_creates_global(new.global)?;
    new.tenant = caller.tenant_for_new(new.tenant)?;
    let record = write::create(&s, &caller, new).await?;
    Ok(respond(StatusCode::CREATED, &record))
}

/// Query of `GET /providers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    status: Option<ProviderStatus>,
    name: Option<String>,
}

/// Parses a `cursor` that must be an id.
pub fn cursor_id(cursor: Option<&str>) -> Result<Option<ulid::Ulid>, ApiError> {
    cursor
        .map(|c| {
            parse_ulid(c).ok_or_else(|| ApiError::InvalidQuery {
                field: "cursor".into(),
                message: "not a cursor this API handed out".into(),
            })
        })
        .transpose()
}

/// `GET /providers`: live providers ordered by id (creation order), `status` exact, `name` a
/// literal substring; a scoped token sees its tenant's and the global ones.
pub async fn list(
    State(s): State<AdminState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<ProviderView>>, ApiError> {
    let limit = page::limit(q.limit)?;
    let query = ProviderQuery {
        status: q.status,
        name_contains: page::filter("name", q.name)?,
        visible_to: caller.scope().map(str::to_owned),
        after: cursor_id(q.cursor.as_deref())?,
        limit: limit + 1,
    };
    let fetched = s.store.list_providers(&query).await?;
    Ok(Json(page::page(
        fetched,
        limit,
        |r| r.id.to_string(),
        |r| ProviderView::from(&r),
    )))
}

/// The provider `id`, when `caller` sees it (404 otherwise, as for no provider at all).
pub async fn load(
    s: &AdminState,
    caller: &Caller,
    id: ProviderId,
) -> Result<ProviderRecord, ApiError> {
    s.store
        .get_provider(id)
        .await?
        .filter(|p| caller.sees_provider(p.tenant.as_deref()))
        .ok_or_else(|| ApiError::NotFound(format!("no provider with id {id}")))
}

/// [`load`], for a change: 403 for a global provider and a scoped token.
async fn load_to_change(
    s: &AdminState,
    caller: &Caller,
    id: ProviderId,
) -> Result<ProviderRecord, ApiError> {
    let record = load(s, caller, id).await?;
    caller.check_changes_provider(record.tenant.as_deref())?;
    Ok(record)
}

/// `GET /providers/{id}`.
pub async fn get(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
    caller: Caller,
) -> Result<Response, ApiError> {
    let record = load(&s, &caller, id).await?;
    let mut view = ProviderView::from(&record);
    if record.auth_type.is_oauth()
        && let Some(share) = &s.token_share
    {
        view.auth.token = Some(share.status(record.id).await.unwrap_or_default());
    }
    Ok(view::respond_view(StatusCode::OK, &record, view))
}

/// `PATCH /providers/{id}`: see [`patch`] for the rules. With `If-Match` the change applies only
/// at that version (412 otherwise); without it, a change that raced another one is re-applied
/// onto the newer version.
pub async fn update(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
    if_match: IfMatch,
    caller: Caller,
    ApiJson(patch): ApiJson<ProviderPatch>,
) -> Result<Response, ApiError> {
    let mut attempt = 0;
    let updated = loop {
        attempt += 1;
        let current = load_to_change(&s, &caller, id).await?;
        // Validate first: a bad body is a 422 whatever the version.
        let change = patch.to_change(&current, &s.vault)?;
        if if_match.0.is_some_and(|v| v != current.version) {
            return Err(ApiError::PreconditionFailed);
        }
        if patch.is_empty() {
            return Ok(respond(StatusCode::OK, &current));
        }
        match write::update(&s, &caller, id, change, &patch).await {
            Ok(record) => break record,
            Err(StoreError::Stale) if if_match.0.is_none() && attempt < PATCH_ATTEMPTS => continue,
            Err(StoreError::NotFound) => {
                return Err(ApiError::NotFound(format!("no provider with id {id}")));
            }
            Err(e) => return Err(e.into()),
        }
    };
    Ok(respond(StatusCode::OK, &updated))
}

/// `DELETE /providers/{id}`: soft delete. The row stays for the audit trail; its name and hosts
/// are freed and its credentials wiped. 204.
pub async fn delete(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
    caller: Caller,
) -> Result<Response, ApiError> {
    load_to_change(&s, &caller, id).await?;
    match write::delete(&s, &caller, id).await {
        Ok(()) => {}
        Err(StoreError::NotFound) => {
            return Err(ApiError::NotFound(format!("no provider with id {id}")));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
