//! OpenAI-compatible chat: what chat frontends point at, and what lets one ragway serve as
//! another's LLM backend.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use ragway_llm::{ChatMessage, Role};
use ragway_openapi::{
    ChatChoice, ChatCompletion, ChatCompletionRequest, ChatMessageOut, ChatUsage, ErrorBody, MessageContent,
    Mode, ModelCard, ModelList, RagwayAnswerInfo, TokenUsage,
};
use serde_json::Value;

use crate::answer::conversation::Conversation;
use crate::answer::engine::{refuse_capabilities, Answer, Ask, Grounding, Source};
use crate::answer::prompt::Sampling;
use crate::answer::RequestContext;
use crate::catalog::collections::Collection;
use crate::error::{ApiError, ErrorCode};
use crate::http::auth::Caller;
use crate::http::errors::ApiJson;
use crate::http::routes::answers::{context, fusion_for};
use crate::http::routes::relay;
use crate::http::shape::{self, answer_response, cited_documents, Collected};
use crate::http::AppState;
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
    let pool = state.engine.llm();
    data.extend(
        pool.groups()
            .filter(|(_, route)| route.members().iter().any(|m| caller.may_use(&m.backend)))
            .map(|(name, _)| card(name, "group")),
    );
    data.extend(
        pool.backends()
            .iter()
            .filter(|b| caller.may_use(b.name()))
            .map(|b| card(b.name(), "llm")),
    );
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    }))
}

/// `model` is a collection (RAG over it), a model group or an LLM backend (plain chat);
/// collections win a clash (a new collection may not take a backend's or a group's name). The mode is in the `x-ragway-mode` header and, for RAG, in the `ragway` field.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", request_body = ChatCompletionRequest,
    responses((status = 200, description = "OK; with `\"stream\": true`, Server-Sent Events of `chat.completion.chunk` objects ending with `data: [DONE]`",
            content((ChatCompletion = "application/json"), (serde_json::Value = "text/event-stream")), headers(("x-ragway-mode" = String))),
        (status = 400, description = "Invalid input", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 429, description = "Over a quota (with `Retry-After`)", body = ErrorBody),
        (status = 502, description = "Every LLM backend tried refused ragway's own credentials (upstream 401/403): `llm_backend_misconfigured`", body = ErrorBody),
        (status = 503, description = "Nothing could answer (with `Retry-After`)", body = ErrorBody)))]
pub async fn chat_completions(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request = parse(&body)?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid(ErrorCode::NoMessages, "messages is empty"));
    }
    let chat = Chat {
        sampling: Sampling {
            max_tokens: max_tokens(&state, &request)?,
            temperature: temperature(&state, &request)?,
        },
        ctx: context(&state, &caller, None)?,
        model: request.model.clone(),
        stream: request.stream == Some(true),
        state,
        caller,
    };
    match chat.collection().await {
        Some(collection) => {
            refuse_capabilities(&body, "a collection (RAG)")?;
            let llm = request.llm.clone();
            chat.grounded(collection, &messages(&request)?, llm).await
        }
        None => chat.plain(&request, body).await,
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
    sampling: Sampling,
    ctx: RequestContext,
}

impl Chat {
    /// The collection `model` names, if it names one. A name the LLM pool serves is looked up
    /// only among the collections open here (no new collection may take it, so only one older
    /// than the name's configuration can have it), sparing plain chats the shared registry.
    async fn collection(&self) -> Option<Arc<Collection>> {
        if self.state.engine.llm().serves(&self.model) {
            let internal = self.caller.internal(&self.model);
            return self.state.collections.get(&internal).ok();
        }
        self.caller.collection(&self.state, &self.model).await.ok()
    }

    /// RAG over a collection: the last user message is the question, searched for as the
    /// conversation makes it standalone (see `conversation`), answered with the recent turns.
    async fn grounded(
        self,
        collection: Arc<Collection>,
        messages: &[ChatMessage],
        llm: Option<String>,
    ) -> Result<Response, ApiError> {
        let conversation = Conversation::of(messages).ok_or_else(|| {
            ApiError::invalid(
                ErrorCode::NoUserMessage,
                "messages hold no user message to answer",
            )
        })?;
        validate::query_text(&conversation.question, self.state.config.server.max_query_chars)?;
        self.state.collections.check_embedder(&collection)?;
        let grounding = Grounding {
            fusion: fusion_for(&self.state, &collection, None)?,
            collection,
            filter: Vec::new(),
            passages: self.state.config.generation.default_passages,
            conversation,
            from_chat: true,
            llm,
        };
        let answer = self.answer(Source::Collection(grounding)).await?;
        if self.stream {
            return shape::openai_chunks(answer.spawn(), self.model, false, self.sampling.max_tokens).await;
        }
        let answer = answer.collect(Collected::from).await?;
        let info = RagwayAnswerInfo {
            mode: answer.mode,
            degraded: answer.degraded.clone(),
            stages: Some(answer.stages.clone()),
            citations: answer.citations.clone(),
            cache: answer.cache.clone(),
        };
        let mode = answer.mode;
        let backend = answer.backend().map(str::to_string);
        let max_tokens = self.sampling.max_tokens;
        let mut response = answer_response(mode, completion(&self.model, answer, Some(info), max_tokens));
        shape::name_backend(&mut response, backend.as_deref());
        Ok(response)
    }

    /// Plain chat with a model group or an LLM backend the tenant may use (through any of its
    /// backends); relayed as the client wrote it when it carries what only a remote backend
    /// interprets and one of them relays (see `relay`). The answer names the model and backend
    /// that wrote it. A spent LLM budget is a 429 even under `degrade`: without passages there
    /// is nothing cheaper to give.
    async fn plain(self, asked: &ChatCompletionRequest, body: Value) -> Result<Response, ApiError> {
        let wants_usage = body["stream_options"]["include_usage"] == true;
        let source = Source::Chat {
            model: self.model.clone(),
            body,
            messages: messages(asked),
        };
        let answer = self.answer(source).await?;
        if answer.is_relayed() {
            return match self.stream {
                true => relay::stream(answer.spawn(), wants_usage).await,
                false => relay::complete(answer).await,
            };
        }
        if self.stream {
            return shape::openai_chunks(answer.spawn(), self.model, true, self.sampling.max_tokens).await;
        }
        let answer = answer.collect(Collected::from).await?;
        if answer.mode == Mode::Error {
            return Err(answer.unavailable(&self.model));
        }
        let backend = answer.backend().map(str::to_string);
        let model = answer.stages.llm_model.clone().unwrap_or(self.model);
        let max_tokens = self.sampling.max_tokens;
        let mut response = answer_response(answer.mode, completion(&model, answer, None, max_tokens));
        shape::name_backend(&mut response, backend.as_deref());
        Ok(response)
    }

    async fn answer(&self, source: Source) -> Result<Answer, ApiError> {
        let ask = Ask {
            source,
            sampling: self.sampling,
            ctx: self.ctx.clone(),
            meter: self.caller.meter(&self.state),
            permit: if self.stream {
                self.caller.stream(&self.state)?
            } else {
                None
            },
        };
        self.state.engine.answer(ask).await
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
    answer: Collected,
    ragway: Option<RagwayAnswerInfo>,
    max_tokens: usize,
) -> ChatCompletion {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let TokenUsage {
        prompt_tokens,
        completion_tokens,
    } = answer.usage;
    ChatCompletion {
        id: format!("chatcmpl-ragway-{created}"),
        object: "chat.completion".into(),
        created,
        model: model.to_string(),
        choices: vec![ChatChoice {
            index: 0,
            message: ChatMessageOut {
                role: "assistant".into(),
                content: answer.text,
            },
            finish_reason: shape::finish_reason(completion_tokens, max_tokens).into(),
        }],
        usage: ChatUsage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        },
        citations: ragway
            .as_ref()
            .map(|r| cited_documents(&r.citations))
            .unwrap_or_default(),
        ragway,
    }
}
