//! The dead-letter queue: list (newest first, filtered by provider, status, tenant and caller),
//! one entry, its body (operators only: it is whatever the caller sent), retry one, retry all,
//! delete. A token scoped to a tenant sees and acts on that tenant's entries only
//! ([`crate::scope`]).
//!
//! Retries are queued, not run here: `202` means the worker will re-send the call through the
//! hub proxy (same pipeline and idempotency key as live traffic) and record the outcome on the
//! entry, which `GET /dlq/{id}` then shows. Retry, retry-all, delete and body reads are audited.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hub_core::dlq::{DlqEntry, DlqFilter, DlqQuery, EntryStatus};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::audit;
use super::page::{self, Page};
use super::providers::cursor_id;
use crate::AdminState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{ApiQuery, IdPath, parse_ulid};
use crate::scope::Listing;

/// Query of `GET /dlq`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DlqListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    provider_id: Option<String>,
    status: Option<EntryStatus>,
    tenant: Option<String>,
    caller: Option<String>,
}

/// Query of `POST /dlq/retry-all`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryAllQuery {
    provider_id: Option<String>,
    tenant: Option<String>,
    caller: Option<String>,
}

/// The `202` of `POST /dlq/retry-all`.
#[derive(Debug, Serialize)]
pub struct RetryAllView {
    /// Entries queued for a replay.
    pub queued: u64,
}

/// The answer of `GET /dlq/{id}/body`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BodyView {
    /// The body as text, or base64 (see `body_encoding`); empty when none was kept.
    pub body: String,
    /// `utf8` or `base64`.
    pub body_encoding: &'static str,
    /// Bytes kept.
    pub body_size: u64,
    /// The call's body was larger than the DLQ keeps: this is its start only.
    pub body_truncated: bool,
}

/// A `providerId` query parameter.
fn provider_filter(raw: Option<String>) -> Result<Option<ulid::Ulid>, ApiError> {
    raw.map(|p| {
        parse_ulid(&p).ok_or_else(|| ApiError::InvalidQuery {
            field: "providerId".into(),
            message: "not a valid ULID".into(),
        })
    })
    .transpose()
}

/// The entry `id`, when `caller` sees it (404 otherwise, as for no entry at all).
async fn load(s: &AdminState, caller: &Caller, id: ulid::Ulid) -> Result<DlqEntry, ApiError> {
    let entry = s.dlq.get(id).await.map_err(|e| ApiError::dlq(id, e))?;
    caller.check_sees(
        entry.tenant.as_deref(),
        &format!("no DLQ entry with id {id}"),
    )?;
    Ok(entry)
}

/// `GET /dlq`: newest first; `cursor` is the last id of the previous page. A scoped token sees
/// its tenant's entries only.
pub async fn list(
    State(s): State<AdminState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DlqListQuery>,
) -> Result<Json<Page<DlqEntry>>, ApiError> {
    let limit = page::limit(q.limit)?;
    let provider_id = provider_filter(q.provider_id)?;
    let before = cursor_id(q.cursor.as_deref())?;
    let caller_filter = page::filter("caller", q.caller)?;
    let Listing::Matching(tenant) = caller.tenant_filter(page::filter("tenant", q.tenant)?) else {
        return Ok(Json(Page::empty()));
    };
    let query = DlqQuery {
        provider_id,
        status: q.status,
        tenant,
        caller: caller_filter,
        before,
        limit: limit + 1,
    };
    let fetched = s.dlq.list(&query).await?;
    Ok(Json(page::page(
        fetched.entries,
        limit,
        |e| e.id.to_string(),
        |e| e,
    )))
}

/// `GET /dlq/{id}`: the entry, with the outcome of its last replay (never its body).
pub async fn get(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
    caller: Caller,
) -> Result<Json<DlqEntry>, ApiError> {
    load(&s, &caller, id).await.map(Json)
}

/// `GET /dlq/{id}/body`: the sealed body, opened. Operators only, audited, never cached.
pub async fn body(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
    caller: Caller,
) -> Result<Response, ApiError> {
    let entry = load(&s, &caller, id).await?;
    let bytes = s.dlq.body(id).await.map_err(|e| ApiError::dlq(id, e))?;
    let detail = json!({"providerId": entry.provider_id.to_string(), "bytes": bytes.len()});
    audit::record(&s, &caller, "dlq.read_body", id, detail).await;
    let body_size = bytes.len() as u64;
    let (body, body_encoding) = match String::from_utf8(bytes) {
        Ok(text) => (text, "utf8"),
        Err(e) => (
            base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
            "base64",
        ),
    };
    let view = BodyView {
        body,
        body_encoding,
        body_size,
        body_truncated: entry.body_truncated,
    };
    let mut resp = Json(view).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `POST /dlq/{id}/retry`: queues a replay; `202` with the entry (status `queued`). `409` for
/// an entry whose body was truncated or that is already resolved.
pub async fn retry(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
    caller: Caller,
) -> Result<Response, ApiError> {
    load(&s, &caller, id).await?;
    let entry = s.dlq.retry(id).await.map_err(|e| ApiError::dlq(id, e))?;
    let detail = json!({"providerId": entry.provider_id.to_string(), "replays": entry.replays});
    audit::record(&s, &caller, "dlq.retry", id, detail).await;
    Ok((StatusCode::ACCEPTED, Json(entry)).into_response())
}

/// `POST /dlq/retry-all[?providerId=&tenant=&caller=]`: queues every pending replayable entry
/// (of one provider, tenant, caller; a scoped token's tenant only) and answers at once with how
/// many; the worker drains them at each provider's rate limit. Audited when it queued anything.
pub async fn retry_all(
    State(s): State<AdminState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<RetryAllQuery>,
) -> Result<Response, ApiError> {
    let provider = provider_filter(q.provider_id)?;
    let caller_filter = page::filter("caller", q.caller)?;
    let Listing::Matching(tenant) = caller.tenant_filter(page::filter("tenant", q.tenant)?) else {
        return Ok((StatusCode::ACCEPTED, Json(RetryAllView { queued: 0 })).into_response());
    };
    let filter = DlqFilter {
        provider_id: provider,
        tenant,
        caller: caller_filter,
    };
    let queued = s.dlq.retry_all(&filter).await?;
    // The trail records changes: a retry-all that found nothing to queue changed nothing.
    if queued > 0 {
        let target = provider.map(|p| p.to_string());
        let mut detail = json!({"queued": queued});
        if let Some(t) = &filter.tenant {
            detail["tenant"] = t.as_str().into();
        }
        if let Some(c) = &filter.caller {
            detail["caller"] = c.as_str().into();
        }
        audit::record_about(&s, &caller, "dlq.retry_all", target, detail).await;
    }
    Ok((StatusCode::ACCEPTED, Json(RetryAllView { queued })).into_response())
}

/// `DELETE /dlq/{id}`: `204`. What the entry was (provider, request id, status) goes to the
/// audit trail, since the entry itself is gone.
pub async fn delete(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
    caller: Caller,
) -> Result<Response, ApiError> {
    let entry = load(&s, &caller, id).await?;
    s.dlq.delete(id).await.map_err(|e| ApiError::dlq(id, e))?;
    let detail = json!({
        "providerId": entry.provider_id.to_string(),
        "requestId": entry.request_id,
        "status": entry.status.as_str(),
    });
    audit::record(&s, &caller, "dlq.delete", id, detail).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
