//! Ingestion jobs: follow, list and cancel them.

use axum::extract::{Path, State};
use axum::Json;
use ragway_openapi::{ErrorBody, JobList, JobStatus};

use crate::app::AppState;
use crate::error::ApiError;

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "documents",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "OK", body = JobStatus), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    Ok(Json(state.jobs.get(&id)?))
}

/// Stops the job after its current batch; the batches already applied stay.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "documents",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 202, description = "Cancelling: the job stops after its current batch", body = JobStatus),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Already finished", body = ErrorBody)))]
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(axum::http::StatusCode, Json<JobStatus>), ApiError> {
    Ok((axum::http::StatusCode::ACCEPTED, Json(state.jobs.cancel(&id)?)))
}

#[utoipa::path(get, path = "/v1/collections/{name}/jobs", tag = "documents",
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, description = "OK", body = JobList), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<JobList>, ApiError> {
    state.collections.get(&name)?;
    Ok(Json(JobList {
        jobs: state.jobs.of_collection(&name),
    }))
}
