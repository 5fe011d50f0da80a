//! OpenAI-compatible chat: what chat frontends point at, and what lets one ragway serve as
//! another's LLM backend.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use ragway_llm::{ChatMessage, GenerationRequest, Role};
use ragway_openapi::{
    ChatChoice, ChatCompletion, ChatCompletionRequest, ChatMessageOut, ChatUsage, ErrorBody, MessageContent,
    Mode, ModelCard, ModelList, RagwayAnswerInfo, TokenUsage,
};

use serde_json::{json, Value};

use crate::answer_stream::StreamJob;
use crate::app::AppState;
use crate::auth::Caller;
use crate::caching::Target;
use crate::collections::Collection;
use crate::conversation::Conversation;
use crate::deadline::Deadline;
use crate::error::{ApiError, ApiJson, ErrorCode};
use crate::llm_pool::Choice;
use crate::pipeline::Allowance;
use crate::report::Report;
use crate::routes::answers::{answer_response, citation, deadline, fusion_for};
use crate::routes::relay;
use crate::routes::streams::{self, cited_documents};
use crate::validate;

#[utoipa::path(get, path = "/v1/models", tag = "openai", responses((status = 200, description = "OK", body = ModelList)))]
pub async fn models(State(state): State<AppState>, caller: Caller) -> Result<Json<ModelList>, ApiError> {
    let card = |id: &str, kind: &str| ModelCard {
        id: id.to_string(),
        object: "model".into(),
        created: 0,
        owned_by: "ragway".into(),
        ragway_kind: kind.into(),
    };
    let collections = caller.collections(&state)?;
    let mut data: Vec<ModelCard> = collections
        .iter()
        .filter_map(|c| caller.public(&c.name))
        .map(|name| card(name, "collection"))
        .collect();
    data.extend(
        state
            .pipeline
            .llm
            .backends()
            .iter()
            .filter(|b| caller.may_use(b.name()))
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
            content((ChatCompletion = "application/json"), (serde_json::Value = "text/event-stream")), headers(("x-ragway-mode" = String))),
        (status = 400, description = "Invalid input", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 429, description = "Over a quota (with `Retry-After`)", body = ErrorBody), (status = 503, description = "Unavailable", body = ErrorBody)))]
pub async fn chat_completions(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request = parse(&body)?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid(ErrorCode::NoMessages, "messages is empty"));
    }
    let generation = GenerationRequest {
        messages: Vec::new(),
        max_tokens: max_tokens(&state, &request)?,
        temperature: temperature(&state, &request)?,
    };
    let deadline = deadline(&state, None)?;
    let allowance = caller.allowance(&state)?;
    let chat = Chat {
        state,
        caller,
        model: request.model.clone(),
        stream: request.stream == Some(true),
        deadline,
        allowance,
    };
    match chat.caller.collection(&chat.state, &chat.model).await {
        Ok(collection) => {
            relay::refuse_capabilities(&body, "a collection (RAG)")?;
            chat.grounded(&collection, &messages(&request)?).await
        }
        Err(_) => chat.bare(generation, &request, body).await,
    }
}

/// The request as ragway reads it; the raw `body` is kept for relaying.
fn parse(body: &Value) -> Result<ChatCompletionRequest, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        ApiError::invalid(
            ErrorCode::InvalidBody,
            format!("Failed to deserialize the JSON body into the target type: {e}"),
        )
    })
}

fn max_tokens(state: &AppState, request: &ChatCompletionRequest) -> Result<usize, ApiError> {
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
    Ok(max_tokens)
}

fn temperature(state: &AppState, request: &ChatCompletionRequest) -> Result<f64, ApiError> {
    let temperature = request.temperature.unwrap_or(state.config.generation.temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            ErrorCode::InvalidTemperature,
            "temperature must be between 0 and 2",
        ));
    }
    Ok(temperature)
}

/// One chat request, once validated.
struct Chat {
    state: AppState,
    caller: Caller,
    model: String,
    stream: bool,
    deadline: Deadline,
    allowance: Allowance,
}

impl Chat {
    /// RAG over a collection: the last user message is the question, searched for as the
    /// conversation makes it standalone (see `conversation`), answered with the recent turns.
    async fn grounded(self, collection: &Collection, messages: &[ChatMessage]) -> Result<Response, ApiError> {
        let mut conversation = Conversation::of(messages).ok_or_else(|| {
            ApiError::invalid(
                ErrorCode::NoUserMessage,
                "messages hold no user message to answer",
            )
        })?;
        validate::query_text(&conversation.question, self.state.config.server.max_query_chars)?;
        self.state.collections.check_embedder(collection)?;
        let pool = &self.state.pipeline.llm;
        conversation.condense(pool, &self.deadline, &self.allowance).await;
        if let Some((backend, usage)) = &conversation.rewritten_by {
            self.caller.charge_llm(&self.state, Some(backend), usage);
        }
        let passages = self.state.config.generation.default_passages;
        let target = collection.target(fusion_for(&self.state, collection, None)?);
        if self.stream {
            return self.stream_grounded(target, &conversation, passages).await;
        }
        let pipeline = &self.state.pipeline;
        let answer = pipeline
            .answer(
                target,
                &conversation,
                Vec::new(),
                passages,
                &self.deadline,
                &self.allowance,
            )
            .await;
        self.caller
            .charge_answer(&self.state, &answer.report, &answer.usage);
        let mut report = answer.report;
        report.rewrite = Some(conversation.rewrite);
        report.finish();
        let mode = report.mode();
        let info = RagwayAnswerInfo {
            mode,
            degraded: report.degraded(),
            stages: Some(report.stages()),
            citations: answer.citations.into_iter().map(citation).collect(),
            cache: report.cache.clone(),
        };
        let usage = (answer.usage.prompt_tokens, answer.usage.completion_tokens);
        Ok(answer_response(
            mode,
            completion(&self.model, answer.text, usage, Some(info)),
        ))
    }

    /// RAG chat, streamed as OpenAI chunks.
    async fn stream_grounded(
        self,
        target: Target<'_>,
        conversation: &Conversation,
        passages: usize,
    ) -> Result<Response, ApiError> {
        let tenant = self.caller.stream(&self.state)?;
        let pipeline = &self.state.pipeline;
        let search = &conversation.search;
        let mut retrieved = pipeline
            .retrieve(
                target,
                search,
                Vec::new(),
                passages,
                &self.deadline,
                &self.allowance,
            )
            .await;
        self.caller
            .charge_answer(&self.state, &retrieved.report, &Default::default());
        if retrieved.report.mode() == Mode::Error {
            let mut report = retrieved.report;
            report.finish();
            let body = json!({
                "error": {"code": ErrorCode::NoRetrievalPath.as_str(), "message": "neither retrieval engine is available (mode: error)"},
                "ragway": {"mode": Mode::Error, "degraded": report.degraded(), "citations": []},
            });
            return Ok(answer_response(Mode::Error, body));
        }
        retrieved.report.rewrite = Some(conversation.rewrite);
        let job = StreamJob::grounded(self.state, conversation, retrieved, self.deadline)
            .within(self.allowance, tenant);
        streams::openai_chunks(job, self.model, false).await
    }

    /// Plain chat with one LLM backend the tenant may use; relayed as the client wrote it when it
    /// carries what only the backend interprets (see `relay`). A spent LLM budget is a 429 even
    /// under `degrade`: without passages there is nothing cheaper to give.
    async fn bare(
        self,
        mut request: GenerationRequest,
        asked: &ChatCompletionRequest,
        body: Value,
    ) -> Result<Response, ApiError> {
        let pool = &self.state.pipeline.llm;
        let Some(backend) = pool
            .backends()
            .iter()
            .find(|b| b.name() == self.model && self.caller.may_use(b.name()))
        else {
            return Err(ApiError::ModelNotFound(self.model));
        };
        let cheaper_left = self.allowance.cheaper_only && self.allowance.llm.allows(backend.name());
        if self.allowance.budget_spent() && !cheaper_left {
            return Err(self.caller.llm_budget_spent(&self.state));
        }
        if let Some(relay) = backend.generator.relay().filter(|_| relay::wanted(&body)) {
            let (state, to) = (&self.state, (backend, relay));
            return if self.stream {
                relay::stream(state.clone(), self.caller, to, self.model, body, self.deadline).await
            } else {
                relay::complete(state, &self.caller, to, &self.model, body, &self.deadline).await
            };
        }
        relay::refuse_capabilities(&body, "a local LLM backend")?;
        request.messages = messages(asked)?;
        let choice = Choice::Only(vec![backend.name().to_string()]);
        if self.stream {
            let job = StreamJob {
                request,
                report: Report::bare_llm(),
                citations: Vec::new(),
                fallback_text: String::new(),
                choice,
                deadline: self.deadline,
                tenant: self.caller.stream(&self.state)?,
                cheaper_only: false,
                state: self.state.clone(),
            };
            return streams::openai_chunks(job, self.model, true).await;
        }
        let mut report = Report::bare_llm();
        let Some(generation) = pool
            .generate(&request, &self.deadline, &mut report, &choice)
            .await
        else {
            let reasons: Vec<String> = report
                .degraded()
                .iter()
                .map(|d| format!("{:?}", d.reason))
                .collect();
            return Err(ApiError::Unavailable {
                code: ErrorCode::LlmUnavailable,
                message: format!("backend `{}` did not answer ({})", self.model, reasons.join(", ")),
            });
        };
        let usage = TokenUsage {
            prompt_tokens: generation.prompt_tokens,
            completion_tokens: generation.completion_tokens,
        };
        self.caller.charge_answer(&self.state, &report, &usage);
        let usage = (generation.prompt_tokens, generation.completion_tokens);
        Ok(answer_response(
            Mode::Normal,
            completion(&self.model, generation.text, usage, None),
        ))
    }
}

fn messages(request: &ChatCompletionRequest) -> Result<Vec<ChatMessage>, ApiError> {
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(
            ErrorCode::UnsupportedParameter,
            "n: only one choice per request is supported; send n = 1 (or leave it out)",
        ));
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
            Ok(ChatMessage::new(role, text_of(m.content.as_ref())?))
        })
        .collect()
}

/// A message's text: the string, or its text parts joined by newlines; other parts are refused.
fn text_of(content: Option<&MessageContent>) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(MessageContent::Text(text)) => Ok(text.clone()),
        Some(MessageContent::Parts(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(text)) => texts.push(text.as_str()),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            ErrorCode::UnsupportedContentPart,
                            format!("content part of type {kind:?} is not supported: send {{\"type\": \"text\", \"text\": ...}} parts"),
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
    }
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
        citations: ragway
            .as_ref()
            .map(|r| cited_documents(&r.citations))
            .unwrap_or_default(),
        ragway,
    }
}
