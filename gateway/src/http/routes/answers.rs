//! `/search` (retrieval alone) and `/query` (a grounded answer, as JSON or as Server-Sent Events).

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ragway_openapi::{
    BatchSearchRequest, BatchSearchResponse, ErrorBody, Hit, Mode, QueryRequest, QueryResponse,
    SearchRequest, SearchResponse,
};
use ragway_retrieval::{Fusion, Priority, ScoredChunk};

use crate::answer::conversation::Conversation;
use crate::answer::engine::{Ask, Grounding, Source};
use crate::answer::pipeline::Retriever;
use crate::answer::prompt::Sampling;
use crate::answer::{Query, RequestContext};
use crate::catalog::collections::Collection;
use crate::error::ApiError;
use crate::http::auth::Caller;
use crate::http::errors::ApiJson;
use crate::http::shape::{self, answer_response, Collected};
use crate::http::AppState;
use crate::resilience::deadline::Deadline;
use crate::validate;

#[utoipa::path(post, path = "/v1/collections/{name}/search", tag = "answers", request_body = SearchRequest,
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, description = "OK", body = SearchResponse, headers(("x-ragway-mode" = String))),
        (status = 400, description = "Invalid input", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, body = SearchResponse, description = "No retrieval path: `mode` is `error`")))]
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<SearchRequest>,
) -> Result<Response, ApiError> {
    let body = searched(&state, &caller, &name, &request).await?;
    Ok(answer_response(body.mode, body))
}

/// One `/search` of the caller's collection `name` (also an MCP tool's).
pub(crate) async fn searched(
    state: &AppState,
    caller: &Caller,
    name: &str,
    request: &SearchRequest,
) -> Result<SearchResponse, ApiError> {
    let query = search_query(state, &request.query, request.top_k, request.filter.as_ref())?;
    let ctx = context(state, caller, request.deadline_ms)?;
    let collection = caller.collection(state, name).await?;
    state.collections.check_embedder(&collection)?;
    let fusion = fusion_for(state, &collection, request.fusion.as_ref())?;
    Ok(search_one(state, caller, &collection, fusion, &query, &ctx).await)
}

#[utoipa::path(post, path = "/v1/collections/{name}/search/batch", tag = "answers", request_body = BatchSearchRequest,
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, description = "Each search's result in the order asked, each with its own `mode`", body = BatchSearchResponse),
        (status = 400, description = "Invalid input (the message names the query)", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, body = BatchSearchResponse, description = "No retrieval path for any of them: every `mode` is `error`")))]
pub async fn search_batch(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<BatchSearchRequest>,
) -> Result<Response, ApiError> {
    validate::batch_size(request.queries.len(), state.config.limits.max_batch_queries)?;
    let mut queries = Vec::with_capacity(request.queries.len());
    for (i, asked) in request.queries.iter().enumerate() {
        let query = search_query(&state, &asked.query, asked.top_k, asked.filter.as_ref());
        queries.push(query.map_err(|e| e.for_item("query", i))?);
    }
    let ctx = context(&state, &caller, request.deadline_ms)?;
    let collection = caller.collection(&state, &name).await?;
    state.collections.check_embedder(&collection)?;
    let fusion = fusion_for(&state, &collection, request.fusion.as_ref())?;
    // One batch for the model (through L2 and the tenant's budget); a query it could not embed
    // is embedded again on its own by its search, which then degrades as a single search would.
    let texts = queries.iter().map(|q| q.text.to_string()).collect();
    let embedder = &state.pipeline.embedder;
    if let Ok(embedded) = ctx.scope(embedder.embed(texts, Priority::Interactive)).await {
        caller.meter(&state).embedding(embedded.tokens as u64);
        if embedded.vectors.len() == queries.len() {
            for (query, vector) in queries.iter_mut().zip(embedded.vectors) {
                query.vector = Some(Arc::new(vector));
            }
        }
    }
    let searches = queries
        .iter()
        .map(|query| search_one(&state, &caller, &collection, fusion, query, &ctx));
    let results = futures::future::join_all(searches).await;
    let status = match results.iter().all(|r| r.mode == Mode::Error) {
        true => StatusCode::SERVICE_UNAVAILABLE,
        false => StatusCode::OK,
    };
    Ok((status, Json(BatchSearchResponse { results })).into_response())
}

/// A search's text, `top_k` and filter, checked.
fn search_query<'a>(
    state: &AppState,
    text: &'a str,
    top_k: Option<usize>,
    filter: Option<&ragway_openapi::MetadataFilter>,
) -> Result<Query<'a>, ApiError> {
    let limits = &state.config;
    validate::query_text(text, limits.server.max_query_chars)?;
    let top_k = validate::top_k(top_k, limits.retrieval.default_top_k, limits.retrieval.max_top_k)?;
    Ok(Query {
        text,
        filter: validate::filter(filter)?,
        top_k,
        vector: None,
    })
}

/// One search of `collection`, its embedding tokens charged to the caller.
async fn search_one(
    state: &AppState,
    caller: &Caller,
    collection: &Collection,
    fusion: Fusion,
    query: &Query<'_>,
    ctx: &RequestContext,
) -> SearchResponse {
    let retrieved = state.search.retrieve(collection.target(fusion), query, ctx).await;
    caller.meter(state).embedding(retrieved.report.embedding_tokens);
    let mut report = retrieved.report;
    report.finish();
    let mode = report.mode();
    let (dense, keyword) = (&retrieved.dense_ids, &retrieved.keyword_ids);
    metrics::counter!("ragway_answers_total", "mode" => mode.as_str()).increment(1);
    SearchResponse {
        hits: retrieved
            .hits
            .into_iter()
            .map(|h| hit(h, dense, keyword))
            .collect(),
        mode,
        degraded: report.degraded(),
        stages: report.stages(),
        cache: report.cache.clone(),
        timings_ms: report.timings_ms,
    }
}

#[utoipa::path(post, path = "/v1/collections/{name}/query", tag = "answers", request_body = QueryRequest,
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, description = "OK; with `\"stream\": true`, Server-Sent Events (`meta`, `delta`…, `degraded`, `done`)",
            content((QueryResponse = "application/json"), (serde_json::Value = "text/event-stream")), headers(("x-ragway-mode" = String))),
        (status = 400, description = "Invalid input", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, body = QueryResponse, description = "No retrieval path: `mode` is `error`")))]
pub async fn query(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<QueryRequest>,
) -> Result<Response, ApiError> {
    let streamed = request.stream == Some(true);
    let ask = asking(&state, &caller, &name, &request).await?;
    let answer = state.engine.answer(ask).await?;
    if streamed {
        return shape::ragway_events(answer.spawn()).await;
    }
    let answer = answer.collect(Collected::from).await?;
    Ok(answer_response(answer.mode, answer.into_query_response()))
}

/// The answer to one `/query` of the caller's collection `name`, whole (an MCP tool's).
pub(crate) async fn answered(
    state: &AppState,
    caller: &Caller,
    name: &str,
    request: &QueryRequest,
) -> Result<QueryResponse, ApiError> {
    let ask = asking(state, caller, name, request).await?;
    let answer = state.engine.answer(ask).await?;
    Ok(answer.collect(Collected::from).await?.into_query_response())
}

/// What the engine is asked for a `/query`.
async fn asking(
    state: &AppState,
    caller: &Caller,
    name: &str,
    request: &QueryRequest,
) -> Result<Ask, ApiError> {
    let limits = &state.config;
    validate::query_text(&request.query, limits.server.max_query_chars)?;
    let passages = validate::top_k(
        request.top_k,
        limits.generation.default_passages,
        limits.retrieval.max_top_k,
    )?;
    let filter = validate::filter(request.filter.as_ref())?;
    let ctx = context(state, caller, request.deadline_ms)?;
    let collection = caller.collection(state, name).await?;
    state.collections.check_embedder(&collection)?;
    let fusion = fusion_for(state, &collection, request.fusion.as_ref())?;
    let streamed = request.stream == Some(true);
    let grounding = Grounding {
        collection,
        fusion,
        filter,
        passages,
        conversation: Conversation::single(&request.query),
        from_chat: false,
        llm: request.llm.clone(),
    };
    Ok(Ask {
        source: Source::Collection(grounding),
        sampling: default_sampling(state),
        ctx,
        meter: caller.meter(state),
        permit: if streamed { caller.stream(state)? } else { None },
    })
}

/// The request's deadline and what its tenant may use.
pub(crate) fn context(
    state: &AppState,
    caller: &Caller,
    deadline_ms: Option<u64>,
) -> Result<RequestContext, ApiError> {
    Ok(RequestContext {
        deadline: deadline(state, deadline_ms)?,
        allowance: caller.allowance(state)?,
    })
}

/// The configured way of writing answers (`generation.max_tokens`, `generation.temperature`).
pub(crate) fn default_sampling(state: &AppState) -> Sampling {
    Sampling {
        max_tokens: state.config.generation.max_tokens,
        temperature: state.config.generation.temperature,
    }
}

/// The fusion a search of `collection` uses: the request's, else the collection's own, else the
/// server's (`retrieval.fusion`).
pub(crate) fn fusion_for(
    state: &AppState,
    collection: &Collection,
    requested: Option<&ragway_openapi::FusionSettings>,
) -> Result<Fusion, ApiError> {
    match (requested, collection.fusion()) {
        (Some(requested), _) => validate::fusion(requested),
        (None, Some(own)) => Ok(own),
        (None, None) => Ok(state.pipeline.settings.fusion),
    }
}

pub(crate) fn deadline(state: &AppState, requested_ms: Option<u64>) -> Result<Deadline, ApiError> {
    let limits = &state.config.resilience;
    Deadline::for_request(requested_ms, limits.default_deadline_ms, limits.max_deadline_ms)
}

fn hit(h: ScoredChunk, dense: &HashSet<String>, keyword: &HashSet<String>) -> Hit {
    let engines = [("dense", dense), ("keyword", keyword)]
        .into_iter()
        .filter(|(_, ids)| ids.contains(&h.chunk.chunk_id))
        .map(|(engine, _)| engine.to_string())
        .collect();
    Hit {
        doc_id: h.chunk.doc_id,
        chunk_id: h.chunk.chunk_id,
        text: h.chunk.text,
        score: h.score,
        metadata: h.chunk.metadata,
        engines,
    }
}
