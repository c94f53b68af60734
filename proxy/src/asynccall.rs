//! `Prefer: respond-async`: the call is persisted as a job (body sealed) before the caller gets
//! `202 Accepted` with `X-Hub-Job-Id` and a `Location` at the admin job resource; a worker then
//! runs it through this same proxy under the provider's full policy.

use std::sync::Arc;

use bytes::Bytes;
use hub_core::jobs::{JobError, JobSubmitter, NewJob};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::forward::body::{Body, Expectation, write_continue};
use crate::forward::caller_headers;
use crate::hygiene::REQUEST_ID;
use crate::inject;
use crate::problem::Problem;
use crate::registry::Provider;
use hub_core::wire::problem;

/// The caller's callback URL header.
pub const CALLBACK_HEADER: &str = "x-hub-callback-url";

fn too_large(limit: usize) -> Problem {
    Problem::new(
        problem::BODY_TOO_LARGE,
        format!("asynchronous calls carry at most {limit} bytes of body"),
    )
}

async fn read_body(session: &mut Session, limit: usize) -> Result<Bytes, Problem> {
    if Expectation::of(session.req_header()) == Expectation::Continue && !session.is_body_empty() {
        write_continue(session).await?;
    }
    match Body::read(session, limit).await? {
        Body::Full(b) => Ok(b),
        Body::Streaming(_) => Err(too_large(limit)),
    }
}

/// Persists the call as a job and answers 202; `Err` is the problem to answer instead.
pub async fn accept(
    session: &mut Session,
    jobs: &dyn JobSubmitter,
    provider: &Arc<Provider>,
    path_and_query: &str,
    request_id: &str,
) -> Result<(), Problem> {
    let body = read_body(session, jobs.max_body_bytes()).await?;
    let req = session.req_header();
    let header_value = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let job = NewJob {
        provider_id: provider.id,
        provider: provider.name.clone(),
        tenant: provider
            .tenant
            .clone()
            .or_else(|| header_value(hub_core::wire::TENANT)),
        method: req.method.as_str().to_owned(),
        path: inject::loggable_path(provider.auth.as_ref(), path_and_query),
        headers: caller_headers(req, provider)
            .into_iter()
            .filter(|(k, _)| k != "prefer" && k != CALLBACK_HEADER)
            .collect(),
        body,
        idempotency_key: provider
            .config
            .idempotency_header
            .as_deref()
            .and_then(|h| header_value(&h.to_ascii_lowercase())),
        request_id: request_id.to_owned(),
        callback_url: header_value(CALLBACK_HEADER),
    };
    let receipt = jobs.submit(job).await.map_err(|e| match e {
        JobError::InvalidCallback(why) => Problem::new(problem::INVALID_CALLBACK, why),
        JobError::BodyTooLarge { limit } => too_large(limit),
        JobError::Conflict { existing } => Problem::new(
            problem::IDEMPOTENCY_CONFLICT,
            format!("the idempotency key already belongs to job {existing} for another request"),
        ),
        other => {
            tracing::error!(error = %other, kind = other.kind(), "cannot persist an asynchronous call");
            Problem::new(problem::JOBS_UNAVAILABLE, "the hub cannot accept asynchronous calls right now")
        }
    })?;
    let body = serde_json::json!({
        "jobId": receipt.id.to_string(),
        "status": receipt.status,
        "location": receipt.location,
        "created": receipt.created,
    });
    let body = Bytes::from(serde_json::to_vec(&body).expect("json serializes"));
    let send = async {
        let mut resp = ResponseHeader::build(202, Some(6))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("x-hub-job-id", receipt.id.to_string())?;
        resp.insert_header("location", receipt.location.as_str())?;
        resp.insert_header("preference-applied", "respond-async")?;
        resp.insert_header(REQUEST_ID, request_id)?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    };
    if let Err(e) = send.await {
        tracing::debug!(error = %e.etype().as_str(), "could not send 202 to the caller");
    }
    Ok(())
}
