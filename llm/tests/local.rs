//! SmolLM2-135M-Instruct (Q4_1 GGUF) on llama.cpp: answers, limits, the prefix cache (L4) and
//! answers written together.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use ragway_llm::{
    rag_messages, ChatMessage, GenerationRequest, Generator, LocalLlm, LocalLlmOptions, Passage,
    PrefixCacheOptions, Role, StreamEvent,
};

fn gguf() -> PathBuf {
    let models = std::env::var_os("RAGWAY_MODELS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/ragway/models")))
        .unwrap_or_default();
    let path = models.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    path
}

fn ask(messages: Vec<ChatMessage>, max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        messages,
        max_tokens,
        temperature: 0.0,
        prefix_scope: None,
    }
}

fn question(max_tokens: usize) -> GenerationRequest {
    ask(
        vec![ChatMessage::new(Role::User, "What is the capital of France?")],
        max_tokens,
    )
}

const FACTS: [(&str, &str); 6] = [
    (
        "zorblat",
        "The Zorblat festival is held every year in the town of Quenby.",
    ),
    (
        "espresso",
        "Espresso is brewed by forcing hot water at about nine bars through fine coffee.",
    ),
    (
        "tides",
        "Tides are caused mainly by the gravitational pull of the Moon on the oceans.",
    ),
    (
        "basalt",
        "Basalt is a dark volcanic rock formed from rapidly cooled lava.",
    ),
    (
        "kestrel",
        "The kestrel hovers in the wind while it hunts for small mammals.",
    ),
    (
        "copper",
        "Copper conducts electricity well and is used in most household wiring.",
    ),
];

fn grounded(question: &str, facts: &[(&'static str, &'static str)]) -> GenerationRequest {
    let passages: Vec<Passage<'_>> = facts
        .iter()
        .map(|(doc_id, text)| Passage { doc_id, text })
        .collect();
    ask(rag_messages(question, &passages), 40)
}

#[tokio::test]
async fn answers_and_stops_at_end_of_turn() -> Result<(), Box<dyn std::error::Error>> {
    let llm = LocalLlm::load(&gguf(), "local", LocalLlmOptions::default())?;
    assert_eq!(llm.name(), "local");
    assert_eq!(llm.model(), "SmolLM2-135M-Instruct.Q4_1");
    let answer = llm.generate(question(48)).await?;
    assert!(answer.text.contains("Paris"), "{:?}", answer.text);
    assert!(answer.prompt_tokens > 5);
    assert_eq!(
        Some(answer.prompt_tokens),
        llm.count_tokens(&question(48).messages),
        "the count quotas are charged by is the prompt the model ran"
    );
    assert!(
        answer.completion_tokens > 0 && answer.completion_tokens < 48,
        "stops at <|im_end|> before the limit: {answer:?}"
    );
    assert!(!answer.text.contains("<|im_end|>"));
    Ok(())
}

#[tokio::test]
async fn grounded_prompt_is_answered_from_the_passage_and_max_tokens_is_respected(
) -> Result<(), Box<dyn std::error::Error>> {
    let llm = LocalLlm::load(&gguf(), "local", LocalLlmOptions::default())?;
    let answer = llm
        .generate(grounded("Where is the Zorblat festival held?", &FACTS[..1]))
        .await?;
    assert!(answer.text.contains("Quenby"), "{:?}", answer.text);

    let cut = llm.generate(question(3)).await?;
    assert_eq!(cut.completion_tokens, 3);
    let none = llm.generate(question(0)).await?;
    assert_eq!((none.completion_tokens, none.text.as_str()), (0, ""));

    // A prompt longer than the context window is refused, not truncated silently.
    let huge = ask(vec![ChatMessage::new(Role::User, "word ".repeat(9_000))], 10);
    let err = llm.generate(huge).await.err().map(|e| e.code());
    assert_eq!(err, Some("prompt_too_long"));
    Ok(())
}

#[tokio::test]
async fn the_window_is_the_models_narrowed_by_config_and_the_kv_cache(
) -> Result<(), Box<dyn std::error::Error>> {
    // SmolLM2's GGUF says 8,192 tokens, and llama.cpp can address all of them.
    let llm = LocalLlm::load(&gguf(), "local", LocalLlmOptions::default())?;
    assert_eq!(llm.context_window(), Some(8192));
    let options = LocalLlmOptions {
        context_tokens: Some(1024),
        ..Default::default()
    };
    let narrower = LocalLlm::load(&gguf(), "local", options)?;
    assert_eq!(narrower.context_window(), Some(1024), "context_tokens narrows it");
    let options = LocalLlmOptions {
        kv_tokens: 2048,
        ..Default::default()
    };
    let small_cache = LocalLlm::load(&gguf(), "local", options)?;
    assert_eq!(
        small_cache.context_window(),
        Some(2048),
        "one answer cannot outgrow the KV cache"
    );
    // A prompt past the window is refused before the model runs (the caller's error).
    let long = vec!["coffee"; 1500].join(" ");
    let refused = narrower
        .generate(ask(vec![ChatMessage::new(Role::User, long)], 8))
        .await;
    assert!(
        matches!(
            refused,
            Err(ragway_llm::LlmError::PromptTooLong { context: 1024, .. })
        ),
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_prompt_sharing_passages_reuses_their_state_and_the_same_prompt_answers_as_cold(
) -> Result<(), Box<dyn std::error::Error>> {
    let warm = LocalLlm::load(&gguf(), "local", LocalLlmOptions::default())?;
    let first = grounded("Where is the Zorblat festival held?", &FACTS[..5]);
    // Shares the instructions and three of five passages (in order) with the first.
    let facts = [FACTS[0], FACTS[1], FACTS[2], FACTS[5], FACTS[4]];
    let second = grounded("What is copper used for?", &facts);
    warm.generate(first).await?;
    assert_eq!(warm.stats().prefix_tokens_reused, 0, "nothing kept yet");
    let answer = warm.generate(second).await?;
    let reused = warm.stats().prefix_tokens_reused as usize;
    let shared = grounded("", &FACTS[..3]).messages;
    let shared_tokens = warm.count_tokens(&shared[..1]).unwrap_or(0);
    assert!(
        reused + 12 >= shared_tokens && reused < answer.prompt_tokens,
        "reused {reused} of {} tokens; the shared passages take about {shared_tokens}",
        answer.prompt_tokens
    );

    // The same prompt again reuses all of its state (and the logits after it), and the answer is
    // byte for byte the cold one. (A prompt that shares only a prefix with a kept one may come out differently in
    // its later tokens: the reused cells were computed in another batch and sit elsewhere in
    // the cache, which changes rounding — as llama.cpp's server says of its prompt cache.)
    let fresh = LocalLlm::load(&gguf(), "local", LocalLlmOptions::default())?;
    let cold = fresh
        .generate(grounded("What is copper used for?", &facts))
        .await?;
    assert_eq!(fresh.stats().prefix_tokens_reused, 0);
    let again = fresh
        .generate(grounded("What is copper used for?", &facts))
        .await?;
    assert_eq!(
        fresh.stats().prefix_tokens_reused as usize,
        cold.prompt_tokens,
        "all of it: the logits after it are kept too"
    );
    assert_eq!(again, cold, "the state reused is the state prefill made");

    let off = LocalLlmOptions {
        prefix_cache: PrefixCacheOptions {
            entries: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let uncached = LocalLlm::load(&gguf(), "local", off)?;
    uncached
        .generate(grounded("What is copper used for?", &facts))
        .await?;
    uncached
        .generate(grounded("What is copper used for?", &facts))
        .await?;
    assert_eq!(
        uncached.stats().prefix_tokens_reused,
        0,
        "entries = 0 keeps nothing"
    );
    Ok(())
}

#[tokio::test]
async fn answers_written_together_are_each_whole_and_a_dropped_one_stops(
) -> Result<(), Box<dyn std::error::Error>> {
    let options = LocalLlmOptions {
        parallel: 4,
        ..Default::default()
    };
    let llm = LocalLlm::load(&gguf(), "local", options)?;
    let questions = [
        ("Where is the Zorblat festival held?", "Quenby"),
        ("What does the kestrel hunt?", "mammals"),
        ("What is basalt formed from?", "lava"),
        ("What is copper used for?", "wiring"),
    ];
    let mut streams = Vec::new();
    for (q, _) in questions {
        streams.push(llm.stream(grounded(q, &FACTS)).await?);
    }
    // One more, given up on after its first piece of text: its sequence is freed.
    let mut dropped = llm.stream(grounded("What causes tides?", &FACTS)).await?;
    let first = dropped.next().await;
    assert!(matches!(first, Some(Ok(StreamEvent::Text(_)))), "{first:?}");
    drop(dropped);
    for (mut stream, (q, expected)) in streams.into_iter().zip(questions) {
        let mut text = String::new();
        let mut completion = None;
        while let Some(event) = stream.next().await {
            match event? {
                StreamEvent::Text(piece) => text.push_str(&piece),
                StreamEvent::Done {
                    completion_tokens, ..
                } => completion = Some(completion_tokens),
            }
        }
        assert!(text.contains(expected), "{q}: {text:?}");
        assert!(
            completion.is_some_and(|n| n > 0 && n <= 40),
            "{q}: {completion:?}"
        );
    }
    assert_eq!(llm.stats().answers_abandoned, 1);
    Ok(())
}
