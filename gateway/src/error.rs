//! What can go wrong with a request, as a domain error ([`ApiError`]) with a machine-readable
//! [`ErrorCode`]; `http::errors` is the one place where they become HTTP responses.

use ragway_retrieval::RetrievalError;

/// Declares [`ErrorCode`] and the text each code has on the wire.
macro_rules! error_codes {
    ($($variant:ident => $text:literal,)*) => {
        /// Every machine-readable code an error answer carries (`error.code`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }
        }
    };
}

error_codes! {
    BackendRejectedRequest => "backend_rejected_request",
    BodyTooLarge => "body_too_large",
    ByteQuotaExceeded => "byte_quota_exceeded",
    ChunkQuotaExceeded => "chunk_quota_exceeded",
    CollectionExists => "collection_exists",
    CollectionNotFound => "collection_not_found",
    CollectionQuotaExceeded => "collection_quota_exceeded",
    CollectionUnavailable => "collection_unavailable",
    ContextLengthExceeded => "context_length_exceeded",
    DeadlineOutOfRange => "deadline_out_of_range",
    DenseStoreFailed => "dense_store_failed",
    DocumentNotFound => "document_not_found",
    DocumentQuotaExceeded => "document_quota_exceeded",
    DocumentTooLarge => "document_too_large",
    DocumentTooLong => "document_too_long",
    DuplicateDocumentId => "duplicate_document_id",
    EmbedderBusy => "embedder_busy",
    EmbedderMismatch => "embedder_mismatch",
    EmbedderFailed => "embedder_failed",
    EmbedderUnavailable => "embedder_unavailable",
    EmbeddingTokenQuotaExceeded => "embedding_token_quota_exceeded",
    EmptyDocument => "empty_document",
    EmptyFile => "empty_file",
    EncryptedFile => "encrypted_file",
    EmptyQuery => "empty_query",
    FileTooLarge => "file_too_large",
    Forbidden => "forbidden",
    InputTooLong => "input_too_long",
    Internal => "internal",
    InvalidApiKey => "invalid_api_key",
    InvalidBody => "invalid_body",
    InvalidChunking => "invalid_chunking",
    InvalidCollectionName => "invalid_collection_name",
    InvalidDocumentId => "invalid_document_id",
    InvalidDocuments => "invalid_documents",
    InvalidDuration => "invalid_duration",
    InvalidFilter => "invalid_filter",
    InvalidFusion => "invalid_fusion",
    InvalidImportLine => "invalid_import_line",
    InvalidInput => "invalid_input",
    InvalidQueries => "invalid_queries",
    InvalidQueryString => "invalid_query_string",
    InvalidRole => "invalid_role",
    InvalidStorage => "invalid_storage",
    InvalidTemperature => "invalid_temperature",
    IngestQueueFull => "ingest_queue_full",
    InvalidTenant => "invalid_tenant",
    InvalidUrl => "invalid_url",
    InvalidVector => "invalid_vector",
    JobCancelled => "job_cancelled",
    JobFinished => "job_finished",
    JobStoreUnavailable => "job_store_unavailable",
    JobNotFound => "job_not_found",
    JobQuotaExceeded => "job_quota_exceeded",
    KeyNotFound => "key_not_found",
    KeywordStoreFailed => "keyword_store_failed",
    LlmBackendFailed => "llm_backend_failed",
    LlmBackendMisconfigured => "llm_backend_misconfigured",
    AnswerRestarted => "answer_restarted",
    LlmTokenQuotaExceeded => "llm_token_quota_exceeded",
    LlmUnavailable => "llm_unavailable",
    MalformedJson => "malformed_json",
    MaxTokensOutOfRange => "max_tokens_out_of_range",
    MethodNotAllowed => "method_not_allowed",
    MetadataTooLarge => "metadata_too_large",
    MissingApiKey => "missing_api_key",
    MissingContentType => "missing_content_type",
    ModelNotFound => "model_not_found",
    NameTakenByLlmBackend => "name_taken_by_llm_backend",
    NoMessages => "no_messages",
    NoFiles => "no_files",
    NoRetrievalPath => "no_retrieval_path",
    NoTextInFile => "no_text_in_file",
    NoUserMessage => "no_user_message",
    NOutOfRange => "n_out_of_range",
    NotConfigured => "not_configured",
    Overloaded => "overloaded",
    QueryTooLong => "query_too_long",
    RateLimited => "rate_limited",
    RegistryUnavailable => "registry_unavailable",
    RequestTimeout => "request_timeout",
    RouteNotFound => "route_not_found",
    RerankerBusy => "reranker_busy",
    RerankerFailed => "reranker_failed",
    RerankerUnavailable => "reranker_unavailable",
    StreamQuotaExceeded => "stream_quota_exceeded",
    TenantDeletionUnfinished => "tenant_deletion_unfinished",
    TenantNameTaken => "tenant_name_taken",
    TenantNotFound => "tenant_not_found",
    TenantStoreFailed => "tenant_store_failed",
    TooManyChunks => "too_many_chunks",
    TooManyFiles => "too_many_files",
    TooManyCollections => "too_many_collections",
    TooManyKeys => "too_many_keys",
    TopKOutOfRange => "top_k_out_of_range",
    TopNOutOfRange => "top_n_out_of_range",
    Unauthorized => "unauthorized",
    UnknownCacheLayer => "unknown_cache_layer",
    UnknownStage => "unknown_stage",
    UnreadableFile => "unreadable_file",
    SnapshotNotFound => "snapshot_not_found",
    InvalidSnapshot => "invalid_snapshot",
    UnsupportedContentPart => "unsupported_content_part",
    UnsupportedDimensions => "unsupported_dimensions",
    UnsupportedEncoding => "unsupported_encoding",
    UnsupportedFileType => "unsupported_file_type",
    UploadQuotaExceeded => "upload_quota_exceeded",
    UrlFetchDisabled => "url_fetch_disabled",
    UrlFetchFailed => "url_fetch_failed",
    UnsupportedParameter => "unsupported_parameter",
    WriteFenced => "write_fenced",
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Input that can never succeed as sent; `code` says which rule it broke.
    #[error("{message}")]
    Invalid { code: ErrorCode, message: String },
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
    Conflict { code: ErrorCode, message: String },
    /// Cannot serve now (admission control, a shared registry out of reach); worth retrying
    /// after `retry_after_s`.
    #[error("{message}")]
    Busy {
        code: ErrorCode,
        message: String,
        retry_after_s: u64,
    },
    #[error("this route needs `Authorization: Bearer <admin key>`")]
    Unauthorized,
    #[error(
        "this route needs `Authorization: Bearer <API key>` (keys come from POST /admin/tenants/{{id}}/keys)"
    )]
    NoApiKey,
    #[error("the API key is unknown or revoked")]
    UnknownApiKey,
    #[error("tenant `{0}` does not exist")]
    TenantNotFound(String),
    #[error("key `{0}` does not exist")]
    KeyNotFound(String),
    /// Over a tenant's quota (`Retry-After` when waiting helps); its code says whether it is a
    /// 429 or a 413 (this request's content would cross a storage quota).
    #[error("{message}")]
    OverQuota {
        code: ErrorCode,
        message: String,
        retry_after_s: Option<u64>,
    },
    #[error("the admin key is wrong, or no admin key is configured (resilience.admin_key_env)")]
    Forbidden,
    #[error("request body is larger than the server's limit (server.max_body_bytes)")]
    BodyTooLarge,
    /// An LLM backend refused the request as the caller's fault: passed on as the backend said.
    #[error("backend `{}` refused the request: {}", .0.backend, .0.message)]
    BackendRejected(Box<Rejection>),
    /// A dependency failed and nothing could be served instead; `source` is its own error, when
    /// there is one (logged with the chain of its causes).
    #[error("{message}")]
    Unavailable {
        code: ErrorCode,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
        /// When it is worth trying again (a breaker's next probe), if known; else a second.
        retry_after_s: Option<u64>,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

/// An LLM backend's refusal of a request as the caller's fault: its 4xx status, its message,
/// and its own error `code`, `type` and `param` when it sent them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejection {
    pub backend: String,
    pub status: u16,
    pub message: String,
    pub code: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub param: Option<String>,
}

impl ApiError {
    pub fn invalid(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            message: message.into(),
        }
    }

    /// An input rule broken by the `index`th `item` of a list: says which one.
    pub fn for_item(self, item: &str, index: usize) -> Self {
        match self {
            Self::Invalid { code, message } => Self::Invalid {
                code,
                message: format!("{item} {index}: {message}"),
            },
            other => other,
        }
    }

    /// 503 `code`: a dependency failed and nothing could be served instead.
    pub fn unavailable(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Unavailable {
            code,
            message: message.into(),
            source: None,
            retry_after_s: None,
        }
    }

    /// This error, saying it is worth trying again in `wait` (a 503's `Retry-After`).
    pub fn retry_in(mut self, wait: std::time::Duration) -> Self {
        if let Self::Unavailable { retry_after_s, .. } = &mut self {
            *retry_after_s = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        }
        self
    }

    /// As [`ApiError::unavailable`], keeping the dependency's own error as the source.
    pub fn unavailable_from<E>(code: ErrorCode, message: impl Into<String>, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Self::Unavailable {
            code,
            message: message.into(),
            source: Some(Box::new(source)),
            retry_after_s: None,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid { code, .. }
            | Self::Unavailable { code, .. }
            | Self::Conflict { code, .. }
            | Self::Busy { code, .. }
            | Self::OverQuota { code, .. } => *code,
            Self::NoApiKey => ErrorCode::MissingApiKey,
            Self::UnknownApiKey => ErrorCode::InvalidApiKey,
            Self::TenantNotFound(_) => ErrorCode::TenantNotFound,
            Self::KeyNotFound(_) => ErrorCode::KeyNotFound,
            Self::JobNotFound(_) => ErrorCode::JobNotFound,
            Self::NotConfigured(_) => ErrorCode::NotConfigured,
            Self::CollectionNotFound(_) => ErrorCode::CollectionNotFound,
            Self::DocumentNotFound { .. } => ErrorCode::DocumentNotFound,
            Self::CollectionExists(_) => ErrorCode::CollectionExists,
            Self::ModelNotFound(_) => ErrorCode::ModelNotFound,
            Self::Unauthorized => ErrorCode::Unauthorized,
            Self::Forbidden => ErrorCode::Forbidden,
            Self::BodyTooLarge => ErrorCode::BodyTooLarge,
            Self::BackendRejected(_) => ErrorCode::BackendRejectedRequest,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// What a client is told of a dependency's own failure; the failure itself is logged.
pub fn failed(what: &str) -> String {
    format!("{what} failed (the server log has the details)")
}

impl From<RetrievalError> for ApiError {
    fn from(e: RetrievalError) -> Self {
        match e {
            RetrievalError::UnknownCollection(name) => Self::CollectionNotFound(name),
            RetrievalError::Overloaded(_) | RetrievalError::Stopped(_) => Self::Busy {
                code: ErrorCode::Overloaded,
                message: e.to_string(),
                retry_after_s: 1,
            },
            // What failed inside a model or store (file paths, a server's address) goes to the
            // log as the source; the client is told which part failed.
            RetrievalError::Model(_) | RetrievalError::WorkerGone => {
                Self::unavailable_from(ErrorCode::EmbedderFailed, failed("the embedder"), e)
            }
            RetrievalError::Dense(_) => {
                Self::unavailable_from(ErrorCode::DenseStoreFailed, failed("the dense store"), e)
            }
            RetrievalError::Keyword(_) => {
                Self::unavailable_from(ErrorCode::KeywordStoreFailed, failed("the keyword store"), e)
            }
        }
    }
}

impl From<ragway_rerank::RerankError> for ApiError {
    fn from(e: ragway_rerank::RerankError) -> Self {
        match e {
            ragway_rerank::RerankError::Overloaded(_) | ragway_rerank::RerankError::Stopped(_) => {
                Self::unavailable_from(ErrorCode::Overloaded, e.to_string(), e)
            }
            ragway_rerank::RerankError::Model(_) | ragway_rerank::RerankError::WorkerGone => {
                Self::unavailable_from(ErrorCode::RerankerFailed, failed("the reranker"), e)
            }
        }
    }
}
