use std::collections::HashSet;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ragway_openapi::{
    Citation, ErrorBody, Hit, Mode, QueryRequest, QueryResponse, SearchRequest, SearchResponse,
};
use ragway_retrieval::{Fusion, ScoredChunk};
use serde::Serialize;

use crate::answer_stream::StreamJob;
use crate::app::AppState;
use crate::auth::Caller;
use crate::collections::Collection;
use crate::conversation::Conversation;
use crate::deadline::Deadline;
use crate::error::{ApiError, ApiJson};
use crate::pipeline::Allowance;
use crate::routes::streams;
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
    let limits = &state.config;
    validate::query_text(&request.query, limits.server.max_query_chars)?;
    let top_k = validate::top_k(
        request.top_k,
        limits.retrieval.default_top_k,
        limits.retrieval.max_top_k,
    )?;
    let filter = validate::filter(request.filter.as_ref())?;
    let deadline = deadline(&state, request.deadline_ms)?;
    let collection = caller.collection(&state, &name).await?;
    state.collections.check_embedder(&collection)?;
    let fusion = fusion_for(&state, &collection, request.fusion.as_ref())?;
    let allowance = caller.allowance(&state)?;
    let retrieved = state
        .pipeline
        .search(
            collection.target(fusion),
            &request.query,
            filter,
            top_k,
            &deadline,
            &allowance,
        )
        .await;
    caller.charge_answer(&state, &retrieved.report, &Default::default());
    let mut report = retrieved.report;
    report.finish();
    let mode = report.mode();
    let (dense, keyword) = (&retrieved.dense_ids, &retrieved.keyword_ids);
    let body = SearchResponse {
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
    };
    Ok(answer_response(mode, body))
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
    let limits = &state.config;
    validate::query_text(&request.query, limits.server.max_query_chars)?;
    let passages = validate::top_k(
        request.top_k,
        limits.generation.default_passages,
        limits.retrieval.max_top_k,
    )?;
    let filter = validate::filter(request.filter.as_ref())?;
    let deadline = deadline(&state, request.deadline_ms)?;
    let collection = caller.collection(&state, &name).await?;
    state.collections.check_embedder(&collection)?;
    let fusion = fusion_for(&state, &collection, request.fusion.as_ref())?;
    let allowance = caller.allowance(&state)?;
    if request.stream == Some(true) {
        let question = Question {
            text: &request.query,
            filter,
            passages,
            fusion,
            deadline,
        };
        return stream_answer(state.clone(), &caller, &collection, question, allowance).await;
    }
    let answer = state
        .pipeline
        .answer(
            collection.target(fusion),
            &Conversation::single(&request.query),
            filter,
            passages,
            &deadline,
            &allowance,
        )
        .await;
    caller.charge_answer(&state, &answer.report, &answer.usage);
    let mut report = answer.report;
    report.finish();
    let mode = report.mode();
    let body = QueryResponse {
        answer: answer.text,
        citations: answer.citations.into_iter().map(citation).collect(),
        mode,
        degraded: report.degraded(),
        stages: report.stages(),
        cache: report.cache.clone(),
        timings_ms: report.timings_ms,
        usage: answer.usage,
    };
    Ok(answer_response(mode, body))
}

/// A question to answer from a collection.
pub(crate) struct Question<'a> {
    pub text: &'a str,
    pub filter: ragway_retrieval::MetadataFilter,
    pub passages: usize,
    pub fusion: Fusion,
    pub deadline: Deadline,
}

/// Retrieval, then the answer as Server-Sent Events; no retrieval path is still a 503 JSON answer.
pub(crate) async fn stream_answer(
    state: AppState,
    caller: &Caller,
    collection: &Collection,
    question: Question<'_>,
    allowance: Allowance,
) -> Result<Response, ApiError> {
    let tenant = caller.stream(&state)?;
    let Question {
        text: query,
        filter,
        passages,
        fusion,
        deadline,
    } = question;
    let retrieved = state
        .pipeline
        .retrieve(
            collection.target(fusion),
            query,
            filter,
            passages,
            &deadline,
            &allowance,
        )
        .await;
    caller.charge_answer(&state, &retrieved.report, &Default::default());
    if retrieved.report.mode() == Mode::Error {
        let mut report = retrieved.report;
        report.finish();
        let body = QueryResponse {
            answer: String::new(),
            citations: Vec::new(),
            mode: Mode::Error,
            degraded: report.degraded(),
            stages: report.stages(),
            cache: report.cache.clone(),
            timings_ms: report.timings_ms,
            usage: Default::default(),
        };
        return Ok(answer_response(Mode::Error, body));
    }
    let conversation = Conversation::single(query);
    let job = StreamJob::grounded(state, &conversation, retrieved, deadline).within(allowance, tenant);
    streams::ragway_events(job).await
}

pub(crate) fn citation((index, h): (usize, ScoredChunk)) -> Citation {
    Citation {
        index,
        doc_id: h.chunk.doc_id,
        chunk_id: h.chunk.chunk_id,
        text: h.chunk.text,
        score: h.score,
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

/// Every answer carries its mode in the `x-ragway-mode` header and is counted by mode; `error`
/// answers are 503 with the same body shape.
pub(crate) fn answer_response(mode: Mode, body: impl Serialize) -> Response {
    metrics::counter!("ragway_answers_total", "mode" => mode.as_str()).increment(1);
    let status = if mode == Mode::Error {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert("x-ragway-mode", HeaderValue::from_static(mode.as_str()));
    response
}
