//! An LLM backend behind its guard: [`Guarded`] is a [`Generator`] and, for a backend that
//! relays OpenAI requests, a [`Relay`]. A whole answer runs within the guard's timeout; a stream
//! must produce its first text within [`StreamLimits::first_text`], each later piece within
//! [`StreamLimits::idle`], and the whole answer within the guard's timeout from its first text
//! on. A stream that stalls is charged to the backend's breaker and ends with
//! [`Stopped::Timeout`]; one cut by the request's deadline ends with [`Stopped::Deadline`]
//! (not held against the backend). The request's deadline is [`Deadline::current`] when the
//! call is made.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use ragway_llm::{
    ChatMessage, ChunkStream, Generation, GenerationRequest, Generator, LlmError, Relay, StreamEvent,
    TokenStream,
};
use ragway_worker::Stopped;
use serde_json::Value;

use super::deadline::Deadline;
use super::guard::{Failure, Guard};
use super::guarded::{Guarded, StreamLimits};

type Items<T> = Pin<Box<dyn Stream<Item = Result<T, LlmError>> + Send>>;

impl<G: Generator + ?Sized> Guarded<G> {
    fn limits(&self) -> StreamLimits {
        self.streaming.unwrap_or(StreamLimits {
            first_text: self.guard.timeout(),
            idle: self.guard.timeout(),
            patience: self.guard.timeout(),
        })
    }

    /// As [`Generator::stream`], waiting for the first text up to [`StreamLimits::patience`]
    /// instead of the first-text limit: for the last backend a request can try, where cutting a
    /// slow but working answer would leave nothing. The breaker's probe is never so patient (a
    /// client's deadline must not hold it), and a wait cut past the first-text limit is the
    /// backend's slowness, whatever cut it.
    pub async fn stream_patiently(&self, request: GenerationRequest) -> Result<TokenStream, LlmError> {
        let open = first_text(self.inner.as_ref(), request);
        self.open_watched(true, open).await
    }

    /// As [`Relay::stream`], as patient as [`Guarded::stream_patiently`].
    pub async fn relay_stream_patiently(&self, body: Value) -> Result<ChunkStream, LlmError> {
        let relay = self.inner.relay().ok_or_else(|| not_a_relay(self.inner.name()))?;
        let open = first_chunk(self.inner.name(), relay, body);
        self.open_watched(true, open).await
    }

    /// `open` (a stream and its first item) within the first-text limit (`patient`: up to the
    /// patience), and the rest watched.
    async fn open_watched<T, F>(&self, patient: bool, open: F) -> Result<Items<T>, LlmError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<(T, Items<T>), LlmError>>,
    {
        let deadline = Deadline::current();
        let limits = self.limits();
        let patience = patient.then_some(limits.patience);
        let opened = self
            .guard
            .run_patiently(&deadline, limits.first_text, patience, open)
            .await;
        let (first, rest) = opened.map_err(Failure::into_error)?;
        let watch = Watch {
            guard: self.guard.clone(),
            whole: Deadline::after(self.guard.timeout()),
            deadline,
            idle: limits.idle,
        };
        Ok(watched(first, rest, watch))
    }
}

#[async_trait]
impl<G: Generator + ?Sized> Generator for Guarded<G> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn model(&self) -> &str {
        self.inner.model()
    }
    fn context_window(&self) -> Option<usize> {
        self.inner.context_window()
    }
    fn count_tokens(&self, messages: &[ChatMessage]) -> Option<usize> {
        self.inner.count_tokens(messages)
    }
    fn longest_token_bytes(&self) -> Option<usize> {
        self.inner.longest_token_bytes()
    }
    fn relay(&self) -> Option<&dyn Relay> {
        self.inner.relay().map(|_| self as &dyn Relay)
    }
    async fn stream(&self, request: GenerationRequest) -> Result<TokenStream, LlmError> {
        let open = first_text(self.inner.as_ref(), request);
        self.open_watched(false, open).await
    }
    async fn generate(&self, request: GenerationRequest) -> Result<Generation, LlmError> {
        self.call(self.guard.timeout(), self.inner.generate(request))
            .await
    }
}

#[async_trait]
impl<G: Generator + ?Sized> Relay for Guarded<G> {
    async fn complete(&self, body: Value) -> Result<Value, LlmError> {
        let relay = self.inner.relay().ok_or_else(|| not_a_relay(self.inner.name()))?;
        self.call(self.guard.timeout(), relay.complete(body)).await
    }
    async fn stream(&self, body: Value) -> Result<ChunkStream, LlmError> {
        let relay = self.inner.relay().ok_or_else(|| not_a_relay(self.inner.name()))?;
        let open = first_chunk(self.inner.name(), relay, body);
        self.open_watched(false, open).await
    }
}

fn not_a_relay(backend: &str) -> LlmError {
    LlmError::Model(format!("backend `{backend}` does not relay OpenAI requests"))
}

/// Opens a stream and waits for its first text (or its end, for an empty answer).
async fn first_text<G: Generator + ?Sized>(
    generator: &G,
    request: GenerationRequest,
) -> Result<(StreamEvent, TokenStream), LlmError> {
    let mut stream = generator.stream(request).await?;
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Text(text) if text.is_empty() => continue,
            first => return Ok((first, stream)),
        }
    }
    Err(LlmError::EmptyResponse {
        backend: generator.name().to_string(),
    })
}

async fn first_chunk(
    backend: &str,
    relay: &dyn Relay,
    body: Value,
) -> Result<(Value, ChunkStream), LlmError> {
    let mut chunks = relay.stream(body).await?;
    match chunks.next().await {
        Some(first) => Ok((first?, chunks)),
        None => Err(LlmError::EmptyResponse {
            backend: backend.to_string(),
        }),
    }
}

/// What a stream's later pieces must keep to.
struct Watch {
    guard: Arc<Guard>,
    deadline: Deadline,
    /// The whole answer's limit, from the first text on.
    whole: Deadline,
    idle: Duration,
}

impl Watch {
    async fn next<T>(&self, items: &mut Items<T>) -> Option<Result<T, LlmError>> {
        let left = self.deadline.remaining();
        let own = self.whole.remaining();
        let limit = self.idle.min(own);
        match tokio::time::timeout(limit.min(left), items.next()).await {
            Ok(next) => next,
            Err(_) if left <= limit => Some(Err(Stopped::Deadline.into())),
            Err(_) => {
                let stalled = match own < self.idle {
                    true => "took longer than its timeout",
                    false => "stalled",
                };
                let idle_ms = self.idle.as_millis() as u64;
                tracing::warn!(backend = %self.guard.name, idle_ms, "LLM stream {stalled}");
                self.guard.charge_failure();
                Some(Err(Stopped::Timeout.into()))
            }
        }
    }
}

/// `first`, then `rest` as `watch` allows; an error is the stream's last item.
fn watched<T: Send + 'static>(first: T, rest: Items<T>, watch: Watch) -> Items<T> {
    let rest = futures::stream::unfold(Some((rest, watch)), |state| async move {
        let (mut rest, watch) = state?;
        match watch.next(&mut rest).await? {
            Ok(item) => Some((Ok(item), Some((rest, watch)))),
            Err(error) => Some((Err(error), None)),
        }
    });
    Box::pin(futures::stream::once(async { Ok(first) }).chain(rest))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ragway_llm::Role;

    use super::*;
    use crate::resilience::breaker::{BreakerSettings, BreakerState};
    use crate::resilience::faults::Faults;

    /// A backend that writes "a", then stalls forever after it (`stall`) or writes "b" and ends.
    struct Stalling {
        stall: bool,
        opened: AtomicUsize,
    }

    #[async_trait]
    impl Generator for Stalling {
        fn name(&self) -> &str {
            "stalling"
        }
        fn model(&self) -> &str {
            "test"
        }
        async fn stream(&self, _: GenerationRequest) -> Result<TokenStream, LlmError> {
            self.opened.fetch_add(1, Ordering::SeqCst);
            let first = futures::stream::iter([
                Ok(StreamEvent::Text(String::new())),
                Ok(StreamEvent::Text("a".into())),
            ]);
            let rest: TokenStream = match self.stall {
                true => Box::pin(futures::stream::pending()),
                false => Box::pin(futures::stream::iter([Ok(StreamEvent::Text("b".into()))])),
            };
            Ok(Box::pin(first.chain(rest)))
        }
    }

    fn guarded(stall: bool) -> Guarded<Stalling> {
        let settings = BreakerSettings {
            failure_threshold: 1,
            open: Duration::from_secs(60),
            max_open: Duration::from_secs(60),
        };
        let guard = Guard::new(
            "llm:stalling",
            Duration::from_secs(5),
            &settings,
            Arc::new(Faults::default()),
        );
        let inner = Stalling {
            stall,
            opened: AtomicUsize::new(0),
        };
        Guarded::new(Arc::new(inner), Arc::new(guard)).with_stream_limits(StreamLimits {
            first_text: Duration::from_secs(1),
            idle: Duration::from_millis(30),
            patience: Duration::from_secs(1),
        })
    }

    fn request() -> GenerationRequest {
        GenerationRequest {
            messages: vec![ChatMessage::new(Role::User, "hi")],
            max_tokens: 8,
            temperature: 0.0,
            prefix_scope: None,
        }
    }

    async fn drain(stream: TokenStream) -> Vec<Result<StreamEvent, LlmError>> {
        stream.collect().await
    }

    #[tokio::test]
    async fn a_stall_after_the_first_text_ends_the_stream_and_is_charged_to_the_breaker(
    ) -> Result<(), LlmError> {
        let llm = guarded(true);
        let items = drain(Generator::stream(&llm, request()).await?).await;
        assert!(
            matches!(&items[0], Ok(StreamEvent::Text(t)) if t == "a"),
            "{items:?}"
        );
        assert!(
            matches!(&items[1], Err(LlmError::Stopped(Stopped::Timeout))),
            "{items:?}"
        );
        assert_eq!(items.len(), 2, "the stall is the stream's last item");
        assert_eq!(llm.guard().state(), BreakerState::Open);
        let refused = Generator::stream(&llm, request()).await.err();
        assert!(
            matches!(refused, Some(LlmError::Stopped(Stopped::BreakerOpen))),
            "{refused:?}"
        );
        assert_eq!(
            llm.inner.opened.load(Ordering::SeqCst),
            1,
            "an open breaker stops the call"
        );
        Ok(())
    }

    #[tokio::test]
    async fn the_requests_deadline_cuts_a_stream_without_blame() -> Result<(), LlmError> {
        let llm = guarded(true);
        let deadline = Deadline::after(Duration::from_millis(10));
        let stream = deadline.scope(Generator::stream(&llm, request())).await?;
        let items = drain(stream).await;
        assert!(
            matches!(&items[1], Err(LlmError::Stopped(Stopped::Deadline))),
            "{items:?}"
        );
        assert_eq!(llm.guard().state(), BreakerState::Closed);
        Ok(())
    }

    #[tokio::test]
    async fn a_healthy_stream_passes_through_whole() -> Result<(), LlmError> {
        let items = drain(Generator::stream(&guarded(false), request()).await?).await;
        let texts: Vec<String> = items
            .into_iter()
            .map(|item| match item? {
                StreamEvent::Text(text) => Ok(text),
                done => Ok(format!("{done:?}")),
            })
            .collect::<Result<_, LlmError>>()?;
        assert_eq!(texts, ["a", "b"]);
        assert!(
            guarded(false).relay().is_none(),
            "a backend that does not relay is not made one"
        );
        Ok(())
    }
}
