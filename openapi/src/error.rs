use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error response: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code, e.g. `collection_not_found`.
    pub code: String,
    /// What went wrong and how to fix it.
    pub message: String,
    /// An upstream LLM backend's own error type (e.g. `invalid_request_error`), when ragway passes
    /// its refusal on.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The request field the upstream backend's refusal names, when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                kind: None,
                param: None,
            },
        }
    }
}
