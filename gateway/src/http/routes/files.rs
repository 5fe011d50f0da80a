//! `POST /v1/collections/{name}/files`: files (multipart), or URLs where the operator allows
//! fetching, become documents — one per file, named by it, cut by the embedder's tokens along the
//! file's pages or headings — indexed by a background job. Every file is read before anything is
//! stored: one that cannot be (empty, too large, not a supported format, encrypted, no text) fails
//! the whole request with a 4xx naming it.

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ragway_openapi::{ErrorBody, FilesAccepted, FilesUpload};

use crate::catalog::files::Upload;
use crate::error::{ApiError, ErrorCode};
use crate::http::auth::Caller;
use crate::http::AppState;
use crate::validate;

#[utoipa::path(post, path = "/v1/collections/{name}/files", tag = "documents",
    request_body(content = FilesUpload, content_type = "multipart/form-data"),
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 202, description = "Read; indexed by the job", body = FilesAccepted),
        (status = 400, description = "No files, too many, or a bad field", body = ErrorBody),
        (status = 403, description = "URLs sent, and this server does not fetch them", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 413, description = "A file, or the request, is too large", body = ErrorBody),
        (status = 415, description = "A file is not PDF, DOCX, HTML, Markdown or text", body = ErrorBody),
        (status = 422, description = "A file is encrypted, malformed or has no text; or a URL could not be fetched", body = ErrorBody),
        (status = 503, description = "Unavailable or busy (then with `Retry-After`)", body = ErrorBody)))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let multipart = multipart.map_err(|e| {
        ApiError::invalid(
            ErrorCode::InvalidBody,
            format!("send multipart/form-data with `file` parts: {}", e.body_text()),
        )
    })?;
    let collection = caller.collection(&state, &name).await?;
    state.collections.check_embedder(&collection)?;
    caller.require_embedding_budget(&state)?;
    let limits = &state.config.limits;
    let (mut uploads, urls) = form(multipart, limits.max_files_per_request).await?;
    for url in urls {
        uploads.push(state.files.fetch(&url).await?);
    }
    let mut documents = Vec::with_capacity(uploads.len());
    let mut read = Vec::with_capacity(uploads.len());
    for upload in uploads {
        validate::document_id(&upload.name)?;
        if read
            .iter()
            .any(|r: &ragway_openapi::FileRead| r.id == upload.name)
        {
            return Err(ApiError::invalid(
                ErrorCode::DuplicateDocumentId,
                format!("`{}` is sent twice", upload.name),
            ));
        }
        let (document, file) = state.files.read(upload).await?;
        documents.push(document);
        read.push(file);
    }
    let chunks: usize = read.iter().map(|r| r.chunks).sum();
    if chunks > limits.max_chunks_per_request {
        return Err(ApiError::invalid(
            ErrorCode::TooManyChunks,
            format!(
                "these files make {chunks} chunks; the limit is {} per request (limits.max_chunks_per_request): send fewer at a time",
                limits.max_chunks_per_request
            ),
        ));
    }
    let admitted = caller.check_storage(&state, &collection, &documents).await?;
    let (job, _) = state.jobs.submit(collection, documents, true, admitted).await?;
    let accepted = FilesAccepted {
        status_url: format!("/v1/jobs/{}", job.id),
        job_id: job.id,
        files: read,
    };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// The request's files (`file` or `files` parts, each with a file name) and URLs (`url` parts):
/// 1 to `most` in all.
async fn form(mut multipart: Multipart, most: usize) -> Result<(Vec<Upload>, Vec<String>), ApiError> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::invalid(
            ErrorCode::InvalidBody,
            format!("not a readable multipart form: {e}"),
        )
    };
    let (mut files, mut urls) = (Vec::new(), Vec::new());
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            // An empty form (a closing boundary alone) does not parse either.
            Err(e) if files.is_empty() && urls.is_empty() => {
                return Err(ApiError::invalid(
                    ErrorCode::NoFiles,
                    format!("no files: send multipart/form-data with one or more `file` parts ({e})"),
                ))
            }
            Err(e) => return Err(bad(e)),
        };
        let field_name = field.name().unwrap_or_default().to_string();
        match field_name.as_str() {
            "file" | "files" => {
                let Some(name) = field.file_name().map(str::to_string) else {
                    return Err(ApiError::invalid(
                        ErrorCode::InvalidBody,
                        "a `file` part needs a file name (Content-Disposition: form-data; name=\"file\"; filename=\"…\")",
                    ));
                };
                let bytes = field.bytes().await.map_err(bad)?.to_vec();
                files.push(Upload { name, bytes });
            }
            "url" => urls.push(field.text().await.map_err(bad)?.trim().to_string()),
            other => {
                return Err(ApiError::invalid(
                    ErrorCode::InvalidBody,
                    format!("unknown form field `{other}`: send `file` parts (and `url`, where allowed)"),
                ))
            }
        }
        if files.len() + urls.len() > most {
            return Err(ApiError::invalid(
                ErrorCode::TooManyFiles,
                format!("send at most {most} files and URLs per request (limits.max_files_per_request)"),
            ));
        }
    }
    if files.is_empty() && urls.is_empty() {
        return Err(ApiError::invalid(
            ErrorCode::NoFiles,
            "no files: send multipart/form-data with one or more `file` parts",
        ));
    }
    Ok((files, urls))
}
