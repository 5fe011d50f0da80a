use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ragway_openapi::{
    CollectionInfo, CollectionList, CreateCollectionRequest, DeleteDocumentResponse, DocumentList, ErrorBody,
    IngestRequest, IngestResponse, JobAccepted, UpdateCollectionRequest,
};
use ragway_retrieval::{ChunkingOptions, DenseStorage};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::catalog::collections::{Caps, DocumentPage};
use crate::config::{Quantization, StoreKind};
use crate::error::{ApiError, ErrorCode};
use crate::http::auth::Caller;
use crate::http::errors::{ApiJson, ApiQuery};
use crate::http::AppState;
use crate::validate;

#[utoipa::path(post, path = "/v1/collections", tag = "collections", request_body = CreateCollectionRequest,
    responses((status = 201, description = "Created", body = CollectionInfo), (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 409, description = "Already exists, or `limits.max_collections` reached", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateCollectionRequest>,
) -> Result<(StatusCode, Json<CollectionInfo>), ApiError> {
    validate::collection_name(&request.name)?;
    if state.engine.llm().serves(&request.name) {
        return Err(ApiError::invalid(
            ErrorCode::NameTakenByLlmBackend,
            format!(
                "`{}` names an LLM backend or model group; /v1/chat/completions could not tell them apart: choose another name",
                request.name
            ),
        ));
    }
    let config = &state.config;
    let chunking = ChunkingOptions {
        chunk_words: request.chunk_words.unwrap_or(config.retrieval.chunk_words),
        overlap_words: request
            .chunk_overlap_words
            .unwrap_or(config.retrieval.chunk_overlap_words),
    };
    validate::chunking(chunking, config.limits.min_chunk_words)?;
    let fusion = request.fusion.as_ref().map(validate::fusion).transpose()?;
    // The embedded store's defaults (`[store]`); a Qdrant server chooses its own.
    let defaults = (config.store.kind == StoreKind::Edge).then_some(DenseStorage {
        quantized: config.store.quantization == Quantization::Int8,
        vectors_on_disk: config.store.vectors_on_disk,
    });
    let storage = validate::storage(request.storage, defaults)?;
    let caps = Caps {
        server: config.limits.max_collections,
        owner: caller.tenant.as_ref().and_then(|t| t.limits.collections),
    };
    let (collections, internal) = (state.collections.clone(), caller.internal(&request.name));
    let created = to_completion(async move {
        collections
            .create(&internal, chunking, fusion, storage, caps)
            .await
    })
    .await;
    if let (Err(ApiError::OverQuota { .. }), Some(tenant)) = (&created, &caller.tenant) {
        state.quotas.rejected(tenant, "collections");
    }
    let info = created.map_err(|e| caller.public_error(e))?;
    Ok((StatusCode::CREATED, Json(caller.present(info))))
}

#[utoipa::path(get, path = "/v1/collections", tag = "collections", responses((status = 200, description = "OK", body = CollectionList)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<CollectionList>, ApiError> {
    let collections = caller
        .collections(&state)?
        .iter()
        .map(|c| caller.present(c.info()))
        .collect();
    Ok(Json(CollectionList { collections }))
}

#[utoipa::path(get, path = "/v1/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, description = "OK", body = CollectionInfo), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<CollectionInfo>, ApiError> {
    Ok(Json(
        caller.present(caller.collection(&state, &name).await?.info()),
    ))
}

/// Changes a collection's settings (its fusion); the epoch is bumped, so no result cached under
/// the old settings is served again.
#[utoipa::path(patch, path = "/v1/collections/{name}", tag = "collections", request_body = UpdateCollectionRequest,
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, description = "OK", body = CollectionInfo), (status = 400, description = "Invalid input", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<UpdateCollectionRequest>,
) -> Result<Json<CollectionInfo>, ApiError> {
    let fusion = request.fusion.as_ref().map(validate::fusion).transpose()?;
    let internal = caller.collection(&state, &name).await?.name.clone();
    let collections = state.collections.clone();
    let info = to_completion(async move { collections.set_fusion(&internal, fusion).await })
        .await
        .map_err(|e| caller.public_error(e))?;
    Ok(Json(caller.present(info)))
}

#[utoipa::path(delete, path = "/v1/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 204, description = "No content"), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let internal = caller.collection(&state, &name).await?.name.clone();
    let collections = state.collections.clone();
    to_completion(async move { collections.drop_collection(&internal).await })
        .await
        .map_err(|e| caller.public_error(e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a change to the stores on a task of its own, so that a client that disconnects cannot cut
/// it in half.
async fn to_completion<T: Send + 'static>(
    change: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(change)
        .await
        .map_err(|e| ApiError::Internal(format!("a store change failed: {e}")))?
}

#[utoipa::path(post, path = "/v1/collections/{name}/documents", tag = "documents", request_body = IngestRequest,
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, description = "Indexed and durable", body = IngestResponse),
        (status = 202, description = "Accepted as a background job", body = JobAccepted),
        (status = 400, description = "Invalid input, or over a limit", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "Unavailable or busy (then with `Retry-After`)", body = ErrorBody)))]
pub async fn ingest(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<IngestRequest>,
) -> Result<Response, ApiError> {
    let collection = caller.collection(&state, &name).await?;
    let config = &state.config;
    validate::documents(
        &request.documents,
        config.server.max_documents_per_request,
        &config.limits,
        collection.chunking,
        state.collections.dimension(),
    )?;
    state.collections.check_embedder(&collection)?;
    caller.require_embedding_budget(&state)?;
    let admitted = caller
        .check_storage(&state, &collection, &request.documents)
        .await?;
    let background =
        request.wait == Some(false) || request.documents.len() > config.ingest.sync_max_documents;
    let (job, result) = state
        .jobs
        .submit(collection, request.documents, background, admitted)
        .await?;
    match result {
        // The job runs on its own task: a client that leaves now does not stop the write.
        Some(result) => {
            let response = result
                .await
                .map_err(|_| ApiError::Internal("the ingestion job stopped without an answer".into()))?
                .map_err(|e| caller.public_error(e))?;
            Ok(Json(response).into_response())
        }
        None => {
            let accepted = JobAccepted {
                status_url: format!("/v1/jobs/{}", job.id),
                job_id: job.id,
            };
            Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
        }
    }
}

/// The most documents one page lists.
const MAX_DOCUMENT_PAGE: usize = 1000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DocumentParams {
    /// Only documents whose id starts with this.
    prefix: Option<String>,
    /// The last id of the previous page (its `next_after`).
    after: Option<String>,
    /// How many at most (1-1000; default 100).
    limit: Option<usize>,
}

/// Lists a collection's documents in id order, a page at a time (`next_after` names the next).
#[utoipa::path(get, path = "/v1/collections/{name}/documents", tag = "documents",
    params(("name" = String, Path, description = "Collection name"), DocumentParams),
    responses((status = 200, description = "OK", body = DocumentList), (status = 400, description = "Invalid input", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn list_documents(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiQuery(params): ApiQuery<DocumentParams>,
) -> Result<Json<DocumentList>, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=MAX_DOCUMENT_PAGE).contains(&limit) {
        return Err(ApiError::invalid(
            ErrorCode::InvalidQueryString,
            format!("limit must be 1-{MAX_DOCUMENT_PAGE}"),
        ));
    }
    let collection = caller.collection(&state, &name).await?;
    let page = DocumentPage {
        prefix: params.prefix.as_deref().unwrap_or(""),
        after: params.after.as_deref(),
        limit,
    };
    let (documents, more) = state
        .collections
        .documents(&collection, page)
        .await
        .map_err(|e| caller.public_error(e))?;
    let next_after = more.then(|| documents.last().map(|d| d.id.clone())).flatten();
    Ok(Json(DocumentList {
        documents,
        next_after,
    }))
}

#[utoipa::path(delete, path = "/v1/collections/{name}/documents/{id}", tag = "documents",
    params(("name" = String, Path, description = "Collection name"), ("id" = String, Path, description = "Document id")),
    responses((status = 200, description = "OK", body = DeleteDocumentResponse), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn delete_document(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<DeleteDocumentResponse>, ApiError> {
    let internal = caller.collection(&state, &name).await?.name.clone();
    let (collections, jobs, doc) = (state.collections.clone(), state.jobs.clone(), id.clone());
    let (chunks_removed, epoch) = to_completion(async move {
        let oldest_job = jobs.oldest_unfinished(&internal).await?;
        collections.delete_document(&internal, &doc, oldest_job).await
    })
    .await
    .map_err(|e| caller.public_error(e))?;
    Ok(Json(DeleteDocumentResponse {
        id,
        chunks_removed,
        epoch,
    }))
}
