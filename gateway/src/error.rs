//! The one place where errors become HTTP responses.

use axum::extract::rejection::JsonRejection;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ragway_openapi::ErrorBody;
use ragway_retrieval::RetrievalError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Input that can never succeed as sent; `code` says which rule it broke.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("collection `{0}` does not exist")]
    CollectionNotFound(String),
    #[error("document `{document}` does not exist in collection `{collection}`")]
    DocumentNotFound { collection: String, document: String },
    #[error("model `{0}` is neither a collection nor an LLM backend (see GET /v1/models)")]
    ModelNotFound(String),
    #[error("collection `{0}` already exists")]
    CollectionExists(String),
    #[error("job `{0}` does not exist")]
    JobNotFound(String),
    /// The route needs a part this server is not configured with.
    #[error("{0}")]
    NotConfigured(String),
    /// The request conflicts with the server's state (a limit reached, a finished job).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Too busy now (admission control); worth retrying after `retry_after_s`.
    #[error("{message}")]
    Busy {
        code: &'static str,
        message: String,
        retry_after_s: u64,
    },
    #[error("this route needs `Authorization: Bearer <admin key>`")]
    Unauthorized,
    #[error("the admin key is wrong, or no admin key is configured (resilience.admin_key_env)")]
    Forbidden,
    #[error("request body is larger than the server's limit (server.max_body_bytes)")]
    BodyTooLarge,
    /// A dependency failed and nothing could be served instead.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::CollectionNotFound(_)
            | Self::DocumentNotFound { .. }
            | Self::ModelNotFound(_)
            | Self::JobNotFound(_)
            | Self::NotConfigured(_) => StatusCode::NOT_FOUND,
            Self::CollectionExists(_) | Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { code, .. }
            | Self::Unavailable { code, .. }
            | Self::Conflict { code, .. }
            | Self::Busy { code, .. } => code,
            Self::JobNotFound(_) => "job_not_found",
            Self::NotConfigured(_) => "not_configured",
            Self::CollectionNotFound(_) => "collection_not_found",
            Self::DocumentNotFound { .. } => "document_not_found",
            Self::CollectionExists(_) => "collection_exists",
            Self::ModelNotFound(_) => "model_not_found",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::BodyTooLarge => "body_too_large",
            Self::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, Self::Internal(_) | Self::Unavailable { .. }) {
            tracing::error!(error = %self, "request failed");
        }
        let mut response =
            (self.status(), Json(ErrorBody::new(self.code(), self.to_string()))).into_response();
        if let Self::Busy { retry_after_s, .. } = self {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_s));
        }
        response
    }
}

impl From<RetrievalError> for ApiError {
    fn from(e: RetrievalError) -> Self {
        match e {
            RetrievalError::UnknownCollection(name) => Self::CollectionNotFound(name),
            RetrievalError::Overloaded(e) => Self::Busy {
                code: "overloaded",
                message: e.to_string(),
                retry_after_s: 1,
            },
            RetrievalError::Model(_)
            | RetrievalError::WorkerGone
            | RetrievalError::Dense(_)
            | RetrievalError::Keyword(_) => Self::Unavailable {
                code: e.code(),
                message: e.to_string(),
            },
        }
    }
}

/// A model stage a route calls directly (`/v1/embeddings`, `/v1/rerank`, ingestion's embedding).
#[derive(Debug, Clone, Copy)]
pub enum ModelStage {
    Embedder,
    Reranker,
}

impl ApiError {
    /// What a route answers when `stage` produced nothing: busy (a full queue, an open breaker:
    /// 503 with `Retry-After`) or unavailable (503); a caller's own error keeps its status.
    pub fn from_stage<E>(stage: ModelStage, failure: crate::guard::Failure<E>) -> Self
    where
        E: std::fmt::Display + Into<ApiError>,
    {
        use crate::guard::Failure;
        let (busy, unavailable, name) = match stage {
            ModelStage::Embedder => ("embedder_busy", "embedder_unavailable", "embedder"),
            ModelStage::Reranker => ("reranker_busy", "reranker_unavailable", "reranker"),
        };
        match failure {
            Failure::Rejected(e) => e.into(),
            Failure::Overloaded(_) | Failure::BreakerOpen => Self::Busy {
                code: busy,
                message: format!("the {name} cannot take this work now ({failure}); retry later"),
                retry_after_s: 1,
            },
            other => Self::Unavailable {
                code: unavailable,
                message: format!("the {name} did not answer: {other}"),
            },
        }
    }
}

impl From<ragway_rerank::RerankError> for ApiError {
    fn from(e: ragway_rerank::RerankError) -> Self {
        Self::Unavailable {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => Self::invalid("invalid_body", e.body_text()),
            JsonRejection::JsonSyntaxError(e) => Self::invalid("malformed_json", e.body_text()),
            JsonRejection::MissingJsonContentType(e) => Self::invalid("missing_content_type", e.body_text()),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::BodyTooLarge
            }
            other => Self::invalid("invalid_body", other.body_text()),
        }
    }
}

/// `axum::Json`, with rejections answered in ragway's error shape.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);
