//! Asynchronous calls (`Prefer: respond-async` through the proxy, which answers `202` with
//! `Location: /api/v1/integrations/jobs/{id}`): a job's state, attempts, and once it completed
//! the provider's answer (status, headers, body); a failed job names its DLQ entry.

use axum::Json;
use axum::extract::State;
use hub_core::jobs::JobView;

use crate::AdminState;
use crate::error::ApiError;
use crate::extract::IdPath;

/// `GET /jobs/{id}`: `404` for an unknown job (or one the retention job deleted).
pub async fn get(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
) -> Result<Json<JobView>, ApiError> {
    s.jobs
        .get(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no job with id {id}")))
}
