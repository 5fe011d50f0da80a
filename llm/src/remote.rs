use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs, CreateChatCompletionStreamResponse,
};
use async_openai::Client;
use async_trait::async_trait;
use futures::StreamExt;

use crate::retry_after::{RateLimited, RetryAfterCapture};
use crate::sse::Endpoint;
use serde_json::Value;

use crate::{
    ChatMessage, ChunkStream, Generation, GenerationRequest, Generator, LlmError, Relay, Retry, Role,
    StreamEvent, TokenStream, UpstreamError,
};

#[derive(Debug, Clone)]
pub struct OpenAiBackendOptions {
    /// Name in config, reported in `stages.llm`.
    pub name: String,
    /// e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub api_key: String,
    pub model: String,
    /// Only for establishing the connection: the caller bounds the whole call (the gateway's
    /// guard), so that a slow answer is reported as a timeout, not as a transport error.
    pub connect_timeout: Duration,
}

/// Any OpenAI-compatible chat completions server (vLLM, llama.cpp server, OpenAI, another ragway).
pub struct OpenAiBackend {
    client: Client<OpenAIConfig>,
    /// Streams are read here, as they are consumed ([`crate::sse`]).
    endpoint: Endpoint,
    name: String,
    model: String,
}

impl OpenAiBackend {
    fn body(
        &self,
        request: GenerationRequest,
        stream: bool,
    ) -> Result<CreateChatCompletionRequest, LlmError> {
        let messages: Vec<ChatCompletionRequestMessage> =
            request.messages.into_iter().map(to_openai).collect();
        let mut body = CreateChatCompletionRequestArgs::default();
        body.model(&self.model)
            .messages(messages)
            .max_completion_tokens(u32::try_from(request.max_tokens).unwrap_or(u32::MAX))
            .temperature(request.temperature as f32);
        if stream {
            // Set here: with the `byot` feature, `create_stream` leaves `stream` as given.
            body.stream(true).stream_options(ChatCompletionStreamOptions {
                include_usage: Some(true),
                include_obfuscation: None,
            });
        }
        body.build().map_err(|e| remote_error(&self.name, e))
    }

    pub fn new(options: OpenAiBackendOptions) -> Result<Self, LlmError> {
        // No redirects (a chat completion is a POST to where it was configured) and no retries
        // of reqwest's own: the pool decides when a backend is asked again.
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .build()
            .map_err(|e| LlmError::failed(&options.name, format!("cannot build HTTP client: {e}")))?;
        let endpoint = Endpoint::new(http.clone(), &options.base_url, options.api_key.clone())
            .map_err(|message| LlmError::failed(&options.name, message))?;
        let config = OpenAIConfig::new()
            .with_api_base(options.base_url)
            .with_api_key(options.api_key);
        Ok(Self {
            endpoint,
            client: Client::with_config(config)
                .with_http_service(RetryAfterCapture::new(ReqwestService::new(http))),
            name: options.name,
            model: options.model,
        })
    }
}

#[async_trait]
impl Generator for OpenAiBackend {
    async fn stream(&self, request: GenerationRequest) -> Result<TokenStream, LlmError> {
        let body = self.body(request, true)?;
        let data = self.endpoint.stream(&self.name, &body).await?;
        let chunks = parsed::<CreateChatCompletionStreamResponse>(data, &self.name);
        let mut usage = (0, 0);
        let mut failed = false;
        // Text pieces as they come; `Done` once the server ends the stream cleanly.
        let events = chunks
            .map(Some)
            .chain(futures::stream::once(async { None }))
            .filter_map(move |chunk| {
                let event = match chunk {
                    Some(Ok(chunk)) => {
                        if let Some(u) = chunk.usage {
                            usage = (u.prompt_tokens as usize, u.completion_tokens as usize);
                        }
                        chunk
                            .choices
                            .into_iter()
                            .next()
                            .and_then(|c| c.delta.content)
                            .filter(|t| !t.is_empty())
                            .map(|t| Ok(StreamEvent::Text(t)))
                    }
                    Some(Err(e)) => {
                        failed = true;
                        Some(Err(e))
                    }
                    None if failed => None,
                    None => Some(Ok(StreamEvent::Done {
                        prompt_tokens: usage.0,
                        completion_tokens: usage.1,
                    })),
                };
                futures::future::ready(event)
            });
        Ok(Box::pin(events))
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn relay(&self) -> Option<&dyn Relay> {
        Some(self)
    }

    fn model(&self) -> &str {
        &self.model
    }

    async fn generate(&self, request: GenerationRequest) -> Result<Generation, LlmError> {
        let body = self.body(request, false)?;
        let response = self
            .client
            .chat()
            .create(body)
            .await
            .map_err(|e| remote_error(&self.name, e))?;
        let text = response
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or_else(|| LlmError::EmptyResponse {
                backend: self.name.clone(),
            })?;
        let (prompt_tokens, completion_tokens) = response
            .usage
            .map(|u| (u.prompt_tokens as usize, u.completion_tokens as usize))
            .unwrap_or((0, 0));
        Ok(Generation {
            text: text.trim().to_string(),
            prompt_tokens,
            completion_tokens,
        })
    }
}

#[async_trait]
impl Relay for OpenAiBackend {
    async fn complete(&self, body: Value) -> Result<Value, LlmError> {
        let body = self.relayed(body, false);
        self.endpoint.complete(&self.name, &body).await
    }

    async fn stream(&self, body: Value) -> Result<ChunkStream, LlmError> {
        let body = self.relayed(body, true);
        let data = self.endpoint.stream(&self.name, &body).await?;
        Ok(Box::pin(parsed::<Value>(data, &self.name)))
    }
}

impl OpenAiBackend {
    /// The client's body for this backend: its model, the given `stream`, usage in streams.
    fn relayed(&self, mut body: Value, stream: bool) -> Value {
        if let Some(fields) = body.as_object_mut() {
            fields.insert("model".into(), Value::String(self.model.clone()));
            fields.insert("stream".into(), Value::Bool(stream));
            if stream {
                let options = fields
                    .entry("stream_options")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Some(options) = options.as_object_mut() {
                    options.insert("include_usage".into(), Value::Bool(true));
                }
            } else {
                fields.remove("stream_options");
            }
        }
        body
    }
}

/// The chunks of a stream's event data, without the malformed ones: one that does not parse is
/// skipped and counted (`ragway_llm_malformed_chunks_total{backend}`), and the stream goes on.
fn parsed<T: serde::de::DeserializeOwned + Send + 'static>(
    data: impl futures::Stream<Item = Result<String, LlmError>> + Send + 'static,
    backend: &str,
) -> impl futures::Stream<Item = Result<T, LlmError>> + Send + 'static {
    let backend = backend.to_string();
    data.filter_map(move |data| {
        let chunk = match data {
            Ok(data) => match serde_json::from_str::<T>(&data) {
                Ok(chunk) => Some(Ok(chunk)),
                Err(error) => {
                    tracing::warn!(backend, %error, "skipped a malformed stream chunk");
                    metrics::counter!("ragway_llm_malformed_chunks_total", "backend" => backend.clone())
                        .increment(1);
                    None
                }
            },
            Err(e) => Some(Err(e)),
        };
        futures::future::ready(chunk)
    })
}

fn remote_error(backend: &str, error: OpenAIError) -> LlmError {
    let upstream = match &error {
        OpenAIError::ApiError(e) => Some(Box::new(UpstreamError {
            message: e.api_error.message.clone(),
            kind: e.api_error.r#type.clone(),
            param: e.api_error.param.clone(),
            code: e.api_error.code.clone(),
        })),
        _ => None,
    };
    LlmError::Remote {
        backend: backend.to_string(),
        retry: classify(&error),
        status: status(&error),
        message: error.to_string(),
        upstream,
    }
}

/// The HTTP status of a failed call, when the backend answered at all.
fn status(error: &OpenAIError) -> Option<u16> {
    match error {
        OpenAIError::Reqwest(e) => e.status().map(|s| s.as_u16()),
        OpenAIError::ApiError(e) => Some(e.status_code.as_u16()),
        OpenAIError::Boxed(boxed) => boxed.downcast_ref::<RateLimited>().map(|r| r.status),
        _ => None,
    }
}

/// Connection failures (refused, reset before the response headers, a connect timeout), 429 and
/// 5xx are worth retrying; other errors are not.
fn classify(error: &OpenAIError) -> Retry {
    match error {
        OpenAIError::Reqwest(e) if e.status().is_none() && (e.is_connect() || e.is_request()) => {
            Retry::Backoff
        }
        OpenAIError::Reqwest(e) => match e.status() {
            Some(s) if s.as_u16() == 429 || s.is_server_error() => Retry::Backoff,
            _ => Retry::Never,
        },
        OpenAIError::ApiError(e) if e.status_code.as_u16() == 429 || e.status_code.is_server_error() => {
            Retry::Backoff
        }
        OpenAIError::Boxed(boxed) => match boxed.downcast_ref::<RateLimited>() {
            Some(limited) => limited.retry_after.map_or(Retry::Backoff, Retry::After),
            None => Retry::Never,
        },
        _ => Retry::Never,
    }
}

fn to_openai(message: ChatMessage) -> ChatCompletionRequestMessage {
    match message.role {
        Role::System => ChatCompletionRequestSystemMessage::from(message.content).into(),
        Role::User => ChatCompletionRequestUserMessage::from(message.content).into(),
        Role::Assistant => ChatCompletionRequestAssistantMessage::from(message.content).into(),
    }
}
