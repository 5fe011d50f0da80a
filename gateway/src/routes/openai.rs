//! OpenAI-compatible chat: what chat frontends point at, and what lets one ragway serve as
//! another's LLM backend.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use ragway_llm::{ChatMessage, GenerationRequest, Role};
use ragway_openapi::{
    ChatChoice, ChatCompletion, ChatCompletionRequest, ChatMessageOut, ChatUsage, ErrorBody, Mode, ModelCard,
    ModelList, RagwayAnswerInfo,
};

use serde_json::json;

use crate::answer_stream::StreamJob;
use crate::app::AppState;
use crate::error::{ApiError, ApiJson, ErrorCode};
use crate::report::Report;
use crate::routes::answers::{answer_response, citation, deadline};
use crate::routes::streams;
use crate::validate;

#[utoipa::path(get, path = "/v1/models", tag = "openai", responses((status = 200, description = "OK", body = ModelList)))]
pub async fn models(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    let card = |id: &str, kind: &str| ModelCard {
        id: id.to_string(),
        object: "model".into(),
        created: 0,
        owned_by: "ragway".into(),
        ragway_kind: kind.into(),
    };
    let mut data: Vec<ModelCard> = state
        .collections
        .list()?
        .iter()
        .map(|c| card(&c.name, "collection"))
        .collect();
    data.extend(
        state
            .pipeline
            .llm
            .backends()
            .iter()
            .map(|b| card(b.name(), "llm")),
    );
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    }))
}

/// `model` is a collection (RAG over it) or an LLM backend (plain chat); collections win a name
/// clash. The mode is in the `x-ragway-mode` header and, for RAG, in the `ragway` field.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", request_body = ChatCompletionRequest,
    responses((status = 200, description = "OK; with `\"stream\": true`, Server-Sent Events of `chat.completion.chunk` objects ending with `data: [DONE]`",
            content((ChatCompletion = "application/json"), (String = "text/event-stream")), headers(("x-ragway-mode" = String))),
        (status = 400, description = "Invalid input", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 503, description = "Unavailable", body = ErrorBody)))]
pub async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let messages = messages(&request)?;
    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(state.config.generation.max_tokens);
    let cap = state.config.generation.max_tokens_cap;
    if !(1..=cap).contains(&max_tokens) {
        return Err(ApiError::invalid(
            ErrorCode::MaxTokensOutOfRange,
            format!("max_tokens = {max_tokens} is out of range: use 1 to {cap} (generation.max_tokens_cap)"),
        ));
    }
    let temperature = request.temperature.unwrap_or(state.config.generation.temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            ErrorCode::InvalidTemperature,
            "temperature must be between 0 and 2",
        ));
    }
    let deadline = deadline(&state, None)?;
    if let Ok(collection) = state.collections.get(&request.model) {
        let question = messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.clone())
            .ok_or_else(|| {
                ApiError::invalid(
                    ErrorCode::NoUserMessage,
                    "messages hold no user message to answer",
                )
            })?;
        validate::query_text(&question, state.config.server.max_query_chars)?;
        let passages = state.config.generation.default_passages;
        if request.stream == Some(true) {
            return stream_rag_chat(
                state.clone(),
                &collection,
                &question,
                passages,
                deadline,
                request.model,
            )
            .await;
        }
        let answer = state
            .pipeline
            .answer(
                collection.target(),
                &question,
                Vec::new(),
                state.config.generation.default_passages,
                &deadline,
            )
            .await;
        let mut report = answer.report;
        report.finish();
        let mode = report.mode();
        let info = RagwayAnswerInfo {
            mode,
            degraded: report.degraded(),
            citations: answer.citations.into_iter().map(citation).collect(),
            cache: report.cache.clone(),
        };
        let usage = (answer.usage.prompt_tokens, answer.usage.completion_tokens);
        return Ok(answer_response(
            mode,
            completion(&request.model, answer.text, usage, Some(info)),
        ));
    }
    let Some(backend) = state
        .pipeline
        .llm
        .backends()
        .iter()
        .find(|b| b.name() == request.model)
    else {
        return Err(ApiError::ModelNotFound(request.model));
    };
    let generation_request = GenerationRequest {
        messages,
        max_tokens,
        temperature,
    };
    let name = backend.name().to_string();
    if request.stream == Some(true) {
        let job = StreamJob {
            state: state.clone(),
            request: generation_request,
            report: Report::bare_llm(),
            citations: Vec::new(),
            fallback_text: String::new(),
            only: Some(name),
            deadline,
        };
        return streams::openai_chunks(job, request.model, true).await;
    }
    let mut report = Report::bare_llm();
    let Some(generation) = state
        .pipeline
        .llm
        .generate(&generation_request, &deadline, &mut report, Some(&name))
        .await
    else {
        let reasons: Vec<String> = report
            .degraded()
            .iter()
            .map(|d| format!("{:?}", d.reason))
            .collect();
        return Err(ApiError::Unavailable {
            code: ErrorCode::LlmUnavailable,
            message: format!("backend `{name}` did not answer ({})", reasons.join(", ")),
        });
    };
    let usage = (generation.prompt_tokens, generation.completion_tokens);
    Ok(answer_response(
        Mode::Normal,
        completion(&request.model, generation.text, usage, None),
    ))
}

/// RAG chat, streamed as OpenAI chunks.
async fn stream_rag_chat(
    state: AppState,
    collection: &crate::collections::Collection,
    question: &str,
    passages: usize,
    deadline: crate::deadline::Deadline,
    model: String,
) -> Result<Response, ApiError> {
    let retrieved = state
        .pipeline
        .retrieve(collection.target(), question, Vec::new(), passages, &deadline)
        .await;
    if retrieved.report.mode() == Mode::Error {
        let mut report = retrieved.report;
        report.finish();
        let body = json!({
            "error": {"code": ErrorCode::NoRetrievalPath.as_str(), "message": "neither retrieval engine is available (mode: error)"},
            "ragway": {"mode": Mode::Error, "degraded": report.degraded(), "citations": []},
        });
        return Ok(answer_response(Mode::Error, body));
    }
    streams::openai_chunks(
        StreamJob::grounded(state, question, retrieved, deadline),
        model,
        false,
    )
    .await
}

fn messages(request: &ChatCompletionRequest) -> Result<Vec<ChatMessage>, ApiError> {
    if request.messages.is_empty() {
        return Err(ApiError::invalid(ErrorCode::NoMessages, "messages is empty"));
    }
    request
        .messages
        .iter()
        .map(|m| {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(ApiError::invalid(
                        ErrorCode::InvalidRole,
                        format!("role {other:?} is not one of system, user, assistant"),
                    ))
                }
            };
            Ok(ChatMessage::new(role, m.content.clone()))
        })
        .collect()
}

fn completion(
    model: &str,
    text: String,
    (prompt, completion): (usize, usize),
    ragway: Option<RagwayAnswerInfo>,
) -> ChatCompletion {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ChatCompletion {
        id: format!("chatcmpl-ragway-{created}"),
        object: "chat.completion".into(),
        created,
        model: model.to_string(),
        choices: vec![ChatChoice {
            index: 0,
            message: ChatMessageOut {
                role: "assistant".into(),
                content: text,
            },
            finish_reason: "stop".into(),
        }],
        usage: ChatUsage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
        },
        ragway,
    }
}
