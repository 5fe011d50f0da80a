use axum::extract::State;
use axum::Json;
use ragway_openapi::{
    EmbeddingData, EmbeddingUsage, EmbeddingVector, EmbeddingsRequest, EmbeddingsResponse, ErrorBody,
};
use ragway_retrieval::Priority;

use crate::error::{ApiError, ErrorCode};
use crate::http::auth::Caller;
use crate::http::errors::ApiJson;
use crate::http::routes::answers::deadline;
use crate::http::AppState;
use crate::resilience::guard::ModelStage;
use crate::tenancy::quota::Budget;
use crate::validate;

/// Requests of at most this many inputs wait in the embedder's interactive lane; larger ones are
/// bulk work and never delay a query by more than one batch.
const INTERACTIVE_INPUTS: usize = 4;

/// OpenAI-compatible embeddings from the configured embedder.
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai", request_body = EmbeddingsRequest,
    responses((status = 200, description = "OK", body = EmbeddingsResponse), (status = 400, description = "Invalid input", body = ErrorBody), (status = 503, description = "Unavailable, or busy (then with `Retry-After`)", body = ErrorBody)))]
pub async fn embeddings(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<EmbeddingsRequest>,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                ErrorCode::UnsupportedEncoding,
                format!("encoding_format {other:?} is not one of \"float\", \"base64\""),
            ))
        }
    };
    let dimension = state.models.embedder.dimension();
    if request.dimensions.is_some_and(|d| d != dimension) {
        return Err(ApiError::invalid(
            ErrorCode::UnsupportedDimensions,
            format!(
                "dimensions: this embedder makes {dimension}-dimensional vectors and cannot shorten them"
            ),
        ));
    }
    let texts = request.input.into_vec();
    validate::embedding_inputs(&texts, &state.config.limits)?;
    // A WordPiece token covers at least a byte of its input, and each input adds two markers.
    let most = texts.iter().map(|t| t.len() as u64 + 2).sum();
    let meter = caller
        .meter(&state)
        .reserve(Budget::Embedding, most)
        .await
        .map_err(|over| over.refusal())?;
    let priority = if texts.len() <= INTERACTIVE_INPUTS {
        Priority::Interactive
    } else {
        Priority::Bulk
    };
    // Through the embedder's guard, so its breaker, timeout (a bulk request gets ingestion's
    // batch timeout) and injected faults apply here too.
    let deadline = deadline(&state, None)?;
    let embed = state.models.embedder.embed(texts, priority);
    let embeddings = deadline
        .scope(embed)
        .await
        .map_err(|e| ApiError::from_stage(ModelStage::Embedder, e))?;
    meter.embedding(embeddings.tokens as u64);
    Ok(Json(EmbeddingsResponse {
        object: "list".into(),
        data: embeddings
            .vectors
            .into_iter()
            .enumerate()
            .map(|(index, embedding)| EmbeddingData {
                object: "embedding".into(),
                index,
                embedding: encode(embedding, base64),
            })
            .collect(),
        model: state.models.embedder.model_id().to_string(),
        usage: EmbeddingUsage {
            prompt_tokens: embeddings.tokens,
            total_tokens: embeddings.tokens,
        },
    }))
}

/// A vector as floats, or as OpenAI's base64 of its little-endian f32 bytes.
fn encode(vector: Vec<f32>, base64: bool) -> EmbeddingVector {
    if !base64 {
        return EmbeddingVector::Float(vector);
    }
    use base64::Engine;
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
}
