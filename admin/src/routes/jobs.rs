//! Asynchronous calls (`Prefer: respond-async` through the proxy, which answers `202` with
//! `Location: /api/v1/integrations/jobs/{id}`): a job's state, attempts, and once it completed
//! the provider's answer (status, headers, body); a failed job names its DLQ entry.

use axum::Json;
use axum::extract::State;
use hub_core::jobs::JobView;

use crate::AdminState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::IdPath;

/// `GET /jobs/{id}`: `404` for an unknown job (or one the retention job deleted).
/// A scoped token sees its tenant's jobs only (another tenant's: `404`).
pub async fn get(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
    caller: Caller,
) -> Result<Json<JobView>, ApiError> {
    let not_found = format!("no job with id {id}");
    let job = s
        .jobs
        .get(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(not_found.clone()))?;
    caller.check_sees(job.tenant.as_deref(), &not_found)?;
    Ok(Json(job))
}
