//! Ingestion jobs: follow, list and cancel them. A job is its collection's tenant's alone.

use axum::extract::{Path, State};
use axum::Json;
use ragway_openapi::{ErrorBody, JobList, JobStatus};

use crate::error::ApiError;
use crate::http::auth::Caller;
use crate::http::AppState;

/// The job as the caller sees it, if it is the caller's.
fn own(caller: &Caller, mut status: JobStatus) -> Result<JobStatus, ApiError> {
    match caller.public(&status.collection) {
        Some(public) => {
            status.collection = public.to_string();
            Ok(status)
        }
        None => Err(ApiError::JobNotFound(status.id)),
    }
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "documents",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "OK", body = JobStatus), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    Ok(Json(own(&caller, state.jobs.get(&id).await?)?))
}

/// Stops the job after its current batch; the batches already applied stay.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "documents",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 202, description = "Cancelling: the job stops after its current batch", body = JobStatus),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Already finished", body = ErrorBody)))]
pub async fn cancel_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(axum::http::StatusCode, Json<JobStatus>), ApiError> {
    own(&caller, state.jobs.get(&id).await?)?;
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(own(&caller, state.jobs.cancel(&id).await?)?),
    ))
}

#[utoipa::path(get, path = "/v1/collections/{name}/jobs", tag = "documents",
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, description = "OK", body = JobList), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<JobList>, ApiError> {
    let collection = caller.collection(&state, &name).await?;
    let jobs = state.jobs.of_collection(&collection.name).await?;
    Ok(Json(JobList {
        jobs: jobs.into_iter().filter_map(|j| own(&caller, j).ok()).collect(),
    }))
}
