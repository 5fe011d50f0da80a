//! `POST /v1/rerank` (and `/v2/rerank`, where Cohere's v2 client sends it): the cross-encoder on its
//! own, as chat stacks call it (Cohere / Jina / TEI).

use axum::extract::State;
use axum::Json;
use ragway_openapi::{
    ErrorBody, RerankDocument, RerankInput, RerankRequest, RerankResponse, RerankResult, RerankUsage,
};

use crate::error::{ApiError, ErrorCode};
use crate::http::auth::Caller;
use crate::http::errors::ApiJson;
use crate::http::routes::answers::deadline;
use crate::http::AppState;
use crate::resilience::guard::ModelStage;
use crate::tenancy::quota::Budget;
use crate::validate;

#[utoipa::path(post, path = "/v1/rerank", tag = "openai", request_body = RerankRequest,
    responses((status = 200, description = "Documents by relevance, best first", body = RerankResponse),
        (status = 400, description = "Invalid input, or over a limit", body = ErrorBody),
        (status = 404, description = "No reranker is configured", body = ErrorBody),
        (status = 429, description = "The tenant's embedding token budget is spent", body = ErrorBody),
        (status = 503, description = "The reranker failed, or is busy (then with `Retry-After`)", body = ErrorBody)))]
pub async fn rerank(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<RerankRequest>,
) -> Result<Json<RerankResponse>, ApiError> {
    let Some(reranker) = state.models.reranker.clone() else {
        return Err(ApiError::NotConfigured(
            "no reranker is configured (models.reranker)".into(),
        ));
    };
    // Like `/v1/embeddings`, whatever `model` a client names is served by the one configured: a
    // Cohere or Jina client keeps its model name and changes only its base URL and key.
    let documents: Vec<String> = request
        .documents
        .into_iter()
        .map(RerankInput::into_text)
        .collect();
    validate::query_text(&request.query, state.config.server.max_query_chars)?;
    validate::rerank_documents(&documents, &state.config.limits)?;
    let top_n = request.top_n.unwrap_or(documents.len());
    if top_n == 0 {
        return Err(ApiError::invalid(
            ErrorCode::TopNOutOfRange,
            "top_n must be at least 1",
        ));
    }
    // Metered like `/v1/embeddings`: the cross-encoder's tokens count against the tenant's
    // `embedding_tokens_per_day` (model tokens outside the LLM).
    // Reserved before scoring, from the most tokens the pairs can take (a token covers at least
    // a byte; each pair adds three markers); charged what they took.
    let most = documents
        .iter()
        .map(|d| (request.query.len() + d.len()) as u64 + 3)
        .sum();
    let meter = caller
        .meter(&state)
        .reserve(Budget::Embedding, most)
        .await
        .map_err(|over| over.refusal())?;
    let deadline = deadline(&state, None)?;
    let score = reranker.score(request.query, documents.clone());
    let scored = deadline
        .scope(score)
        .await
        .map_err(|e| ApiError::from_stage(ModelStage::Reranker, e))?;
    meter.embedding(scored.tokens as u64);
    let mut results: Vec<RerankResult> = scored
        .scores
        .iter()
        .enumerate()
        .map(|(index, &logit)| RerankResult {
            index,
            relevance_score: 1.0 / (1.0 + (-logit).exp()),
            document: None,
        })
        .collect();
    results.sort_by(|a, b| b.relevance_score.total_cmp(&a.relevance_score));
    results.truncate(top_n);
    if request.return_documents == Some(true) {
        for result in &mut results {
            let text = documents[result.index].clone();
            result.document = Some(RerankDocument { text });
        }
    }
    Ok(Json(RerankResponse {
        model: reranker.model_id().to_string(),
        results,
        usage: RerankUsage {
            total_tokens: scored.tokens,
        },
    }))
}

#[utoipa::path(post, path = "/v2/rerank", tag = "openai", request_body = RerankRequest,
    responses((status = 200, description = "As `/v1/rerank`: where Cohere's v2 client sends it", body = RerankResponse),
        (status = 400, description = "Invalid input, or over a limit", body = ErrorBody),
        (status = 404, description = "No reranker is configured", body = ErrorBody),
        (status = 429, description = "The tenant's embedding token budget is spent", body = ErrorBody),
        (status = 503, description = "The reranker failed, or is busy (then with `Retry-After`)", body = ErrorBody)))]
pub async fn rerank_v2(
    state: State<AppState>,
    caller: Caller,
    request: ApiJson<RerankRequest>,
) -> Result<Json<RerankResponse>, ApiError> {
    rerank(state, caller, request).await
}
