use axum::extract::State;
use axum::Json;
use ragway_openapi::{EmbeddingData, EmbeddingUsage, EmbeddingsRequest, EmbeddingsResponse, ErrorBody};

use crate::app::AppState;
use crate::error::{ApiError, ApiJson};
use crate::routes::answers::deadline;

const MAX_INPUTS: usize = 2_048;

/// OpenAI-compatible embeddings from the configured embedder.
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai", request_body = EmbeddingsRequest,
    responses((status = 200, description = "OK", body = EmbeddingsResponse), (status = 400, description = "Invalid input", body = ErrorBody), (status = 503, description = "Unavailable", body = ErrorBody)))]
pub async fn embeddings(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<EmbeddingsRequest>,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    if request.encoding_format.as_deref().is_some_and(|f| f != "float") {
        return Err(ApiError::invalid(
            "unsupported_encoding",
            "only encoding_format \"float\" is supported",
        ));
    }
    let texts = request.input.into_vec();
    if texts.is_empty() || texts.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            "invalid_input",
            format!("send 1 to {MAX_INPUTS} inputs"),
        ));
    }
    if texts.iter().any(|t| t.is_empty()) {
        return Err(ApiError::invalid(
            "invalid_input",
            "inputs must not be empty strings",
        ));
    }
    // Through the embedder's guard, so its breaker, timeout and injected faults apply here too.
    let embedder = &state.pipeline.embedder;
    let deadline = deadline(&state, None)?;
    let embeddings = state
        .pipeline
        .guards
        .embed
        .run(&deadline, embedder.embed(texts))
        .await
        .map_err(|failure| ApiError::Unavailable {
            code: "embedder_unavailable",
            message: format!("the embedder did not answer: {failure}"),
        })?;
    Ok(Json(EmbeddingsResponse {
        object: "list".into(),
        data: embeddings
            .vectors
            .into_iter()
            .enumerate()
            .map(|(index, embedding)| EmbeddingData {
                object: "embedding".into(),
                index,
                embedding,
            })
            .collect(),
        model: embedder.model_id().to_string(),
        usage: EmbeddingUsage {
            prompt_tokens: embeddings.tokens,
            total_tokens: embeddings.tokens,
        },
    }))
}
