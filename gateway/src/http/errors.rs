//! The one place where errors become HTTP responses: the status follows from the error's code
//! alone ([`status`]), and every body has ragway's error shape (`{"error": {"code", "message"}}`),
//! with `Retry-After` where waiting helps.

use axum::extract::rejection::JsonRejection;
use axum::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ragway_openapi::ErrorBody;

use crate::error::{ApiError, ErrorCode};

/// The HTTP status of every error code.
pub fn status(code: ErrorCode) -> StatusCode {
    use ErrorCode as C;
    match code {
        C::ContextLengthExceeded
        | C::DeadlineOutOfRange
        | C::DocumentTooLarge
        | C::DocumentTooLong
        | C::DuplicateDocumentId
        | C::EmptyDocument
        | C::EmptyQuery
        | C::InputTooLong
        | C::InvalidBody
        | C::InvalidChunking
        | C::InvalidCollectionName
        | C::InvalidDocumentId
        | C::InvalidDocuments
        | C::InvalidDuration
        | C::InvalidFilter
        | C::InvalidFusion
        | C::InvalidInput
        | C::InvalidQueries
        | C::InvalidQueryString
        | C::InvalidUrl
        | C::EmptyFile
        | C::NoFiles
        | C::TooManyFiles
        | C::InvalidRole
        | C::InvalidTemperature
        | C::InvalidTenant
        | C::MalformedJson
        | C::MaxTokensOutOfRange
        | C::MetadataTooLarge
        | C::MissingContentType
        | C::NameTakenByLlmBackend
        | C::NoMessages
        | C::NoUserMessage
        | C::NOutOfRange
        | C::QueryTooLong
        | C::TooManyChunks
        | C::TopKOutOfRange
        | C::TopNOutOfRange
        | C::UnknownCacheLayer
        | C::UnknownStage
        | C::SnapshotNotFound
        | C::InvalidSnapshot
        | C::UnsupportedContentPart
        | C::InvalidImportLine
        | C::InvalidStorage
        | C::InvalidVector
        | C::UnsupportedDimensions
        | C::UnsupportedEncoding
        | C::UnsupportedParameter
        | C::BackendRejectedRequest => StatusCode::BAD_REQUEST,
        C::InvalidApiKey | C::MissingApiKey | C::Unauthorized => StatusCode::UNAUTHORIZED,
        C::Forbidden => StatusCode::FORBIDDEN,
        C::CollectionNotFound
        | C::DocumentNotFound
        | C::JobNotFound
        | C::KeyNotFound
        | C::ModelNotFound
        | C::NotConfigured
        | C::TenantNotFound
        | C::RouteNotFound => StatusCode::NOT_FOUND,
        C::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        C::UrlFetchDisabled => StatusCode::FORBIDDEN,
        C::FileTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        C::UnsupportedFileType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        C::EncryptedFile | C::UnreadableFile | C::NoTextInFile | C::UrlFetchFailed => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        C::CollectionExists
        | C::EmbedderMismatch
        | C::JobCancelled
        | C::JobFinished
        | C::TenantNameTaken
        | C::TooManyCollections
        | C::TooManyKeys => StatusCode::CONFLICT,
        C::BodyTooLarge | C::ByteQuotaExceeded | C::ChunkQuotaExceeded | C::DocumentQuotaExceeded => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        C::CollectionQuotaExceeded
        | C::EmbeddingTokenQuotaExceeded
        | C::JobQuotaExceeded
        | C::UploadQuotaExceeded
        | C::LlmTokenQuotaExceeded
        | C::RateLimited
        | C::StreamQuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
        C::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        C::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        // Only ever in-band, in a stream whose status was sent: as a backend failure would be.
        C::LlmBackendMisconfigured | C::AnswerRestarted => StatusCode::BAD_GATEWAY,
        C::CollectionUnavailable
        | C::DenseStoreFailed
        | C::EmbedderBusy
        | C::EmbedderFailed
        | C::EmbedderUnavailable
        | C::IngestQueueFull
        | C::JobStoreUnavailable
        | C::KeywordStoreFailed
        | C::LlmBackendFailed
        | C::LlmUnavailable
        | C::NoRetrievalPath
        | C::Overloaded
        | C::RegistryUnavailable
        | C::RerankerBusy
        | C::RerankerFailed
        | C::RerankerUnavailable
        | C::TenantDeletionUnfinished
        | C::TenantStoreFailed
        | C::WriteFenced => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl ApiError {
    /// The code's status; a relayed backend's own refusal keeps the backend's 4xx.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::BackendRejected(rejection) => {
                StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::BAD_REQUEST)
            }
            other => status(other.code()),
        }
    }
}

/// The chain of an error's sources, outermost first (`a: b: c`); empty when it has none.
fn causes(error: &dyn std::error::Error) -> String {
    let mut chain = Vec::new();
    let mut next = error.source();
    while let Some(cause) = next {
        chain.push(cause.to_string());
        next = cause.source();
    }
    chain.join(": ")
}

impl ApiError {
    /// When trying again is worth it (`Retry-After`), if it is.
    pub(crate) fn retry_after_s(&self) -> Option<u64> {
        match self {
            Self::Busy { retry_after_s, .. } => Some(*retry_after_s),
            Self::OverQuota { retry_after_s, .. } => *retry_after_s,
            // Nothing could serve it now: when a breaker's next probe is, if known.
            Self::Unavailable {
                code, retry_after_s, ..
            } if status(*code) == StatusCode::SERVICE_UNAVAILABLE => Some(retry_after_s.unwrap_or(1)),
            _ => None,
        }
    }

    /// ragway's error shape; a backend's refusal keeps the backend's own code, type and param
    /// (an OpenAI-shaped error, e.g. `context_length_exceeded`).
    pub(crate) fn body(&self) -> ErrorBody {
        // An internal error's text (file paths, a store's words) is for the log, not the client.
        let message = match self {
            Self::Internal(_) => "internal error (the server log has the details)".to_string(),
            other => other.to_string(),
        };
        let mut body = ErrorBody::new(self.code().as_str(), message);
        if let Self::BackendRejected(rejection) = self {
            if let Some(code) = &rejection.code {
                body.error.code.clone_from(code);
            }
            body.error.kind.clone_from(&rejection.kind);
            body.error.param.clone_from(&rejection.param);
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, Self::Internal(_) | Self::Unavailable { .. }) {
            tracing::error!(error = %self, causes = %causes(&self), "request failed");
        }
        let mut response = (self.http_status(), Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_s() {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        if matches!(self, Self::NoApiKey | Self::UnknownApiKey) {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => Self::invalid(ErrorCode::InvalidBody, e.body_text()),
            JsonRejection::JsonSyntaxError(e) => Self::invalid(ErrorCode::MalformedJson, e.body_text()),
            JsonRejection::MissingJsonContentType(e) => {
                Self::invalid(ErrorCode::MissingContentType, e.body_text())
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::BodyTooLarge
            }
            other => Self::invalid(ErrorCode::InvalidBody, other.body_text()),
        }
    }
}

/// `axum::Json`, with rejections answered in ragway's error shape.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        Self::invalid(ErrorCode::InvalidQueryString, rejection.body_text())
    }
}

/// `axum::extract::Query`, with rejections answered in ragway's error shape.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);
