use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ragway_openapi::{
    CollectionInfo, CollectionList, CreateCollectionRequest, DeleteDocumentResponse, ErrorBody,
    IngestRequest, IngestResponse,
};
use ragway_retrieval::ChunkingOptions;

use crate::app::AppState;
use crate::error::{ApiError, ApiJson};
use crate::validate;

#[utoipa::path(post, path = "/v1/collections", tag = "collections", request_body = CreateCollectionRequest,
    responses((status = 201, description = "Created", body = CollectionInfo), (status = 400, description = "Invalid input", body = ErrorBody), (status = 409, description = "Already exists", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateCollectionRequest>,
) -> Result<(StatusCode, Json<CollectionInfo>), ApiError> {
    validate::collection_name(&request.name)?;
    let defaults = &state.config.retrieval;
    let chunking = ChunkingOptions {
        chunk_words: request.chunk_words.unwrap_or(defaults.chunk_words),
        overlap_words: request
            .chunk_overlap_words
            .unwrap_or(defaults.chunk_overlap_words),
    };
    // Chunks beyond ~200 words would be cut by the embedder's 256-token window.
    if !(1..=1_000).contains(&chunking.chunk_words) || chunking.overlap_words >= chunking.chunk_words {
        return Err(ApiError::invalid(
            "invalid_chunking",
            "chunk_words must be 1-1000 and chunk_overlap_words smaller than chunk_words",
        ));
    }
    let info = state.collections.create(&request.name, chunking).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

#[utoipa::path(get, path = "/v1/collections", tag = "collections", responses((status = 200, description = "OK", body = CollectionList)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<CollectionList>, ApiError> {
    let mut collections = Vec::new();
    for collection in state.collections.list()? {
        collections.push(collection.info().await);
    }
    Ok(Json(CollectionList { collections }))
}

#[utoipa::path(get, path = "/v1/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, description = "OK", body = CollectionInfo), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<CollectionInfo>, ApiError> {
    Ok(Json(state.collections.get(&name)?.info().await))
}

#[utoipa::path(delete, path = "/v1/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 204, description = "No content"), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn delete(State(state): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    state.collections.drop_collection(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/collections/{name}/documents", tag = "documents", request_body = IngestRequest,
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, description = "OK", body = IngestResponse), (status = 400, description = "Invalid input", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody), (status = 503, description = "Unavailable", body = ErrorBody)))]
pub async fn ingest(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<IngestRequest>,
) -> Result<Json<IngestResponse>, ApiError> {
    state.collections.get(&name)?;
    let limit = state.config.server.max_documents_per_request;
    if request.documents.is_empty() || request.documents.len() > limit {
        return Err(ApiError::invalid(
            "invalid_documents",
            format!("send 1 to {limit} documents per request"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for doc in &request.documents {
        validate::document_id(&doc.id)?;
        if !seen.insert(doc.id.as_str()) {
            return Err(ApiError::invalid(
                "duplicate_document_id",
                format!("document id {:?} appears twice in this request", doc.id),
            ));
        }
        if doc.text.trim().is_empty() {
            return Err(ApiError::invalid(
                "empty_document",
                format!("document {:?} has no text", doc.id),
            ));
        }
    }
    Ok(Json(state.collections.ingest(&name, request.documents).await?))
}

#[utoipa::path(delete, path = "/v1/collections/{name}/documents/{id}", tag = "documents",
    params(("name" = String, Path, description = "Collection name"), ("id" = String, Path, description = "Document id")),
    responses((status = 200, description = "OK", body = DeleteDocumentResponse), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn delete_document(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<DeleteDocumentResponse>, ApiError> {
    let (chunks_removed, epoch) = state.collections.delete_document(&name, &id).await?;
    Ok(Json(DeleteDocumentResponse {
        id,
        chunks_removed,
        epoch,
    }))
}
