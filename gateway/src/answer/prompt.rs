//! The prompt an LLM is given, fitted with the backend's own tokenizer to its real context
//! window: a grounded prompt gives as many of the best passages as fit (shortened if need be),
//! and a prompt that cannot fit at all is the caller's error (400 `context_length_exceeded`),
//! never a backend failure that would count against a shared breaker.

use ragway_llm::{fit_rag_messages, rag_messages, ChatMessage, GenerationRequest, Generator, Passage};
use ragway_openapi::DegradationReason;
use ragway_retrieval::ScoredChunk;

use super::conversation::Conversation;
use super::report::Report;
use crate::error::{ApiError, ErrorCode};

/// How the answer is to be written: the caller's (capped) or the configured defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub max_tokens: usize,
    pub temperature: f64,
}

/// The backend whose window is the tightest among those that may answer, and that window.
pub type Window<'a> = Option<(&'a dyn Generator, usize)>;

/// The grounded prompt for the conversation's question over `hits`, fitted to `window`, and the
/// passages it gives in prompt order. The best hits that fit are chosen in rank order, then put
/// into the prompt in a canonical order (by chunk id), so that the same passages always make
/// the same prompt prefix (L4: the local model's prefix cache, remote servers' prompt caches).
/// Shortened or left-out passages are recorded in `report` (stage `prompt`).
pub fn grounded(
    conversation: &Conversation,
    hits: &[ScoredChunk],
    sampling: Sampling,
    window: Window<'_>,
    report: &mut Report,
) -> Result<(GenerationRequest, Vec<ScoredChunk>), ApiError> {
    let question = conversation.question.as_str();
    let history = &conversation.history;
    let request = |messages| GenerationRequest {
        messages: with_history(messages, history),
        max_tokens: sampling.max_tokens,
        temperature: sampling.temperature,
        prefix_scope: None,
    };
    let Some((generator, window)) = window else {
        let given = canonical(hits);
        return Ok((request(rag_messages(question, &passages(&given))), given));
    };
    let budget = room(window, sampling.max_tokens)?;
    let all = canonical(hits);
    let whole = rag_messages(question, &passages(&all));
    if at_most_tokens(&with_history(whole.clone(), history)) <= budget {
        // It fits as it is, whatever the tokenizer says: no need to ask it.
        return Ok((request(whole), all));
    }
    let count = |m: &[ChatMessage]| {
        generator
            .count_tokens(&with_history(m.to_vec(), history))
            .unwrap_or(usize::MAX)
    };
    let chosen = fit_rag_messages(question, &passages(hits), budget, count).passages;
    let given = canonical(&hits[..chosen]);
    let fitted = fit_rag_messages(question, &passages(&given), budget, count);
    let used = count(&fitted.messages);
    if used > budget {
        return Err(too_long(used, sampling.max_tokens, window));
    }
    let given = given[..fitted.passages].to_vec();
    if fitted.shortened || given.len() < hits.len() {
        tracing::info!(
            given = given.len(),
            of = hits.len(),
            shortened = fitted.shortened,
            tokens = used,
            window,
            "passages fitted to the context window"
        );
        report.degrade("prompt", DegradationReason::ContextWindow);
    }
    Ok((request(fitted.messages), given))
}

/// A question that cannot fit `window` even without passages is the caller's error (400). Most
/// questions are far under the byte bound, and are not rendered at all.
pub fn check_question_fits(
    conversation: &Conversation,
    sampling: Sampling,
    window: Window<'_>,
) -> Result<(), ApiError> {
    let Some((_, size)) = window else {
        return Ok(());
    };
    let room = room(size, sampling.max_tokens)?;
    if bound_without_passages(conversation) <= room {
        return Ok(());
    }
    let asked = conversation.question.len() + bytes(&conversation.history);
    if let Some(least) = window.and_then(|(generator, _)| at_least_tokens(asked, generator)) {
        if least > room {
            return Err(too_long_at_least(least, sampling.max_tokens, size));
        }
    }
    grounded(conversation, &[], sampling, window, &mut Report::default()).map(drop)
}

/// [`at_most_tokens`] of the conversation's prompt without passages, from the lengths of its
/// parts: the instructions (measured once), the question, the history.
fn bound_without_passages(conversation: &Conversation) -> usize {
    static INSTRUCTIONS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let instructions = *INSTRUCTIONS.get_or_init(|| at_most_tokens(&rag_messages("", &[])));
    instructions + conversation.question.len() + at_most_tokens(&conversation.history)
}

/// A plain chat's prompt as the caller wrote it: 400 when it and `max_tokens` do not fit the
/// backend's window.
pub fn check_fits(request: &GenerationRequest, generator: &dyn Generator) -> Result<(), ApiError> {
    let Some(window) = generator.context_window() else {
        return Ok(());
    };
    let budget = room(window, request.max_tokens)?;
    if at_most_tokens(&request.messages) <= budget {
        return Ok(());
    }
    // Far too long to fit, by its length alone: refused without the cost of counting it.
    if let Some(least) = at_least_tokens(bytes(&request.messages), generator) {
        if least > budget {
            return Err(too_long_at_least(least, request.max_tokens, window));
        }
    }
    match generator.count_tokens(&request.messages) {
        Some(used) if used > budget => Err(too_long(used, request.max_tokens, window)),
        _ => Ok(()),
    }
}

/// The most tokens a generation of `request` can take of a budget: its prompt's ceiling (never
/// more than the `window` leaves it, when every backend that may write it has one) and
/// `max_tokens`; no tokenizer is asked.
pub fn ceiling(request: &GenerationRequest, window: Option<usize>) -> u64 {
    let prompt = at_most_tokens(&request.messages);
    let prompt = window.map_or(prompt, |w| prompt.min(w.saturating_sub(request.max_tokens)));
    (prompt + request.max_tokens) as u64
}

/// More tokens than `messages` can take in any byte-level tokenizer: each token covers at least
/// one byte, and the chat template adds a few tokens a message. Counting with the tokenizer
/// costs more than an L1 hit; a prompt under this bound needs no counting.
fn at_most_tokens(messages: &[ChatMessage]) -> usize {
    const TEMPLATE_TOKENS: usize = 8;
    let text: usize = messages.iter().map(|m| m.content.len() + TEMPLATE_TOKENS).sum();
    text + TEMPLATE_TOKENS
}

/// No more tokens than a text of `bytes` takes in `generator`'s tokenizer, from the most bytes
/// one of its tokens stands for (`None` when it does not say).
fn at_least_tokens(bytes: usize, generator: &dyn Generator) -> Option<usize> {
    Some(bytes / generator.longest_token_bytes()?.max(1))
}

fn bytes(messages: &[ChatMessage]) -> usize {
    messages.iter().map(|m| m.content.len()).sum()
}

/// What the window leaves for the prompt once `max_tokens` are kept for the answer.
fn room(window: usize, max_tokens: usize) -> Result<usize, ApiError> {
    window.checked_sub(max_tokens).filter(|room| *room > 0).ok_or_else(|| {
        ApiError::invalid(
            ErrorCode::ContextLengthExceeded,
            format!("max_tokens = {max_tokens} leaves no room for a prompt in the model's {window}-token context window"),
        )
    })
}

fn too_long(used: usize, max_tokens: usize, window: usize) -> ApiError {
    ApiError::invalid(
        ErrorCode::ContextLengthExceeded,
        format!("the prompt takes {used} tokens; with max_tokens = {max_tokens} it does not fit the model's {window}-token context window: send a shorter conversation or fewer max_tokens"),
    )
}

fn too_long_at_least(least: usize, max_tokens: usize, window: usize) -> ApiError {
    ApiError::invalid(
        ErrorCode::ContextLengthExceeded,
        format!("the prompt takes at least {least} tokens; with max_tokens = {max_tokens} it does not fit the model's {window}-token context window: send a shorter conversation or fewer max_tokens"),
    )
}

/// The grounded prompt (system with passages, then the question) with the conversation's recent
/// turns between them.
fn with_history(mut messages: Vec<ChatMessage>, history: &[ChatMessage]) -> Vec<ChatMessage> {
    let at = messages.len().min(1);
    messages.splice(at..at, history.iter().cloned());
    messages
}

/// `hits` in chunk-id order.
fn canonical(hits: &[ScoredChunk]) -> Vec<ScoredChunk> {
    let mut sorted = hits.to_vec();
    sorted.sort_by(|a, b| a.chunk.chunk_id.cmp(&b.chunk.chunk_id));
    sorted
}

fn passages(hits: &[ScoredChunk]) -> Vec<Passage<'_>> {
    hits.iter()
        .map(|h| Passage {
            doc_id: &h.chunk.doc_id,
            text: &h.chunk.text,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use ragway_llm::{LlmError, TokenStream};
    use ragway_retrieval::Chunk;

    #[test]
    fn a_generations_ceiling_is_its_prompt_in_bytes_within_the_window_and_its_limit() {
        let request = GenerationRequest {
            messages: vec![ChatMessage::new(ragway_llm::Role::User, "hi")],
            max_tokens: 200,
            temperature: 0.0,
            prefix_scope: None,
        };
        // 2 bytes, 8 template tokens for the message and 8 for the conversation.
        assert_eq!(ceiling(&request, None), 18 + 200);
        assert_eq!(ceiling(&request, Some(4_096)), 218);
        let long = GenerationRequest {
            messages: vec![ChatMessage::new(ragway_llm::Role::User, "x".repeat(10_000))],
            ..request
        };
        assert_eq!(ceiling(&long, None), 10_016 + 200);
        assert_eq!(ceiling(&long, Some(2_048)), 2_048, "never more than the window");
    }

    /// Counts one token per word, in a window of `window` tokens.
    struct Words {
        window: usize,
    }

    #[async_trait]
    impl Generator for Words {
        fn name(&self) -> &str {
            "words"
        }
        fn model(&self) -> &str {
            "words"
        }
        fn context_window(&self) -> Option<usize> {
            Some(self.window)
        }
        fn count_tokens(&self, messages: &[ChatMessage]) -> Option<usize> {
            Some(
                messages
                    .iter()
                    .map(|m| m.content.split_whitespace().count())
                    .sum(),
            )
        }
        async fn stream(&self, _: GenerationRequest) -> Result<TokenStream, LlmError> {
            Err(LlmError::WorkerGone)
        }
    }

    /// A model whose tokens stand for at most 4 bytes, counting how often it is asked to count.
    struct Counting {
        counted: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Generator for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        fn model(&self) -> &str {
            "counting"
        }
        fn context_window(&self) -> Option<usize> {
            Some(1_000)
        }
        fn count_tokens(&self, messages: &[ChatMessage]) -> Option<usize> {
            self.counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(bytes(messages).div_ceil(4))
        }
        fn longest_token_bytes(&self) -> Option<usize> {
            Some(4)
        }
        async fn stream(&self, _: GenerationRequest) -> Result<TokenStream, LlmError> {
            Err(LlmError::WorkerGone)
        }
    }

    /// Issue 40 item 1: a prompt far too long for the window is refused by its length alone,
    /// never counted (counting a 15 MB message cost seconds of CPU); one that may fit is counted.
    #[test]
    fn a_prompt_far_too_long_is_refused_without_counting_it() {
        let model = Counting {
            counted: std::sync::atomic::AtomicUsize::new(0),
        };
        let counted = || model.counted.load(std::sync::atomic::Ordering::Relaxed);
        let request = |text: String| GenerationRequest {
            messages: vec![ChatMessage::new(ragway_llm::Role::User, text)],
            max_tokens: 10,
            temperature: 0.0,
            prefix_scope: None,
        };
        let huge = request("x".repeat(1_000_000));
        let code = check_fits(&huge, &model).err().map(|e| e.code());
        assert_eq!((code, counted()), (Some(ErrorCode::ContextLengthExceeded), 0));
        // 2,000 bytes: at most ~2,016 tokens, at least 500, room for 990: only counting tells
        // (500: it fits).
        assert!(check_fits(&request("y".repeat(2_000)), &model).is_ok());
        assert_eq!(counted(), 1);
        let question = Conversation::single(&"why ".repeat(250_000));
        let window = Some((&model as &dyn Generator, 1_000));
        assert!(check_question_fits(&question, SAMPLING, window).is_err());
        assert_eq!(counted(), 1);
    }

    fn hit(id: &str, words: usize) -> ScoredChunk {
        let text = vec!["word"; words].join(" ");
        ScoredChunk {
            chunk: Chunk {
                chunk_id: id.into(),
                doc_id: id.into(),
                text,
                metadata: Default::default(),
            },
            score: 1.0,
        }
    }

    const SAMPLING: Sampling = Sampling {
        max_tokens: 100,
        temperature: 0.0,
    };

    #[test]
    fn twelve_long_passages_are_fitted_into_the_window() {
        let hits: Vec<ScoredChunk> = (0..12).map(|i| hit(&format!("c{i:02}"), 1000)).collect();
        let model = Words { window: 4096 };
        let mut report = Report::default();
        let conversation = Conversation::single("what is in the passages?");
        let fitted = grounded(&conversation, &hits, SAMPLING, Some((&model, 4096)), &mut report);
        let (request, given) = fitted.unwrap_or_else(|e| panic!("{e}"));
        let used = model.count_tokens(&request.messages).unwrap_or(usize::MAX);
        assert!(used + SAMPLING.max_tokens <= 4096, "{used} tokens do not fit");
        assert_eq!(
            given.len(),
            hits.len(),
            "passages are shortened before any is left out"
        );
        assert!(report.degraded().iter().any(|d| d.stage == "prompt"));
    }

    #[test]
    fn the_byte_bound_is_never_below_the_tokens() {
        let model = Words { window: 4096 };
        let text = "a long sentence of words, some of them short";
        let messages = [ChatMessage::new(ragway_llm::Role::User, text)];
        let counted = model.count_tokens(&messages).unwrap_or(usize::MAX);
        assert!(at_most_tokens(&messages) >= counted);
        let conversation = Conversation::single(text);
        let rendered = with_history(rag_messages(&conversation.question, &[]), &[]);
        assert!(bound_without_passages(&conversation) >= at_most_tokens(&rendered));
        assert!(at_most_tokens(&messages) >= text.len());
    }

    #[test]
    fn a_question_that_cannot_fit_is_the_callers_error() {
        let model = Words { window: 120 };
        let long = vec!["why"; 200].join(" ");
        let conversation = Conversation::single(&long);
        let mut report = Report::default();
        let fitted = grounded(
            &conversation,
            &[hit("a", 10)],
            SAMPLING,
            Some((&model, 120)),
            &mut report,
        );
        let code = fitted.err().map(|e| e.code());
        assert_eq!(code, Some(ErrorCode::ContextLengthExceeded));
        let request = GenerationRequest {
            messages: vec![ChatMessage::new(ragway_llm::Role::User, long)],
            max_tokens: 10,
            temperature: 0.0,
            prefix_scope: None,
        };
        let code = check_fits(&request, &model).err().map(|e| e.code());
        assert_eq!(code, Some(ErrorCode::ContextLengthExceeded));
        let short = GenerationRequest {
            messages: vec![ChatMessage::new(ragway_llm::Role::User, "hi")],
            ..request
        };
        assert!(check_fits(&short, &model).is_ok());
        let window = Some((&model as &dyn Generator, 120));
        assert!(check_question_fits(&conversation, SAMPLING, window).is_err());
        let roomy = Words { window: 4096 };
        let short = Conversation::single("why?");
        assert!(check_question_fits(&short, SAMPLING, Some((&roomy, 4096))).is_ok());
    }
}
