//! SmolLM2-135M-Instruct through candle, on quantized and on dequantized (f32) weights.

use std::path::{Path, PathBuf};

use ragway_llm::{
    rag_messages, ChatMessage, GenerationRequest, Generator, LocalLlm, LocalLlmOptions, Passage, Role,
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

fn question(max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        messages: vec![ChatMessage::new(Role::User, "What is the capital of France?")],
        max_tokens,
        temperature: 0.0,
    }
}

#[tokio::test]
async fn both_weight_paths_answer_and_stop_at_end_of_turn() -> Result<(), Box<dyn std::error::Error>> {
    for dequantize in [true, false] {
        let options = LocalLlmOptions {
            dequantize,
            ..Default::default()
        };
        let llm = LocalLlm::load(&gguf(), "local", options)?;
        assert_eq!(llm.name(), "local");
        assert_eq!(llm.model(), "SmolLM2-135M-Instruct.Q4_1");
        let answer = llm.generate(question(48)).await?;
        assert!(
            answer.text.contains("Paris"),
            "dequantize={dequantize}: {:?}",
            answer.text
        );
        assert!(answer.prompt_tokens > 5);
        assert!(
            answer.completion_tokens > 0 && answer.completion_tokens < 48,
            "stops at <|im_end|> before the limit: {answer:?}"
        );
        assert!(!answer.text.contains("<|im_end|>"));
    }
    Ok(())
}

#[tokio::test]
async fn grounded_prompt_is_answered_from_the_passage_and_max_tokens_is_respected(
) -> Result<(), Box<dyn std::error::Error>> {
    let llm = LocalLlm::load(&gguf(), "local", LocalLlmOptions::default())?;
    let passages = [Passage {
        doc_id: "zorblat",
        text: "The Zorblat festival is held every year in the town of Quenby.",
    }];
    let request = GenerationRequest {
        messages: rag_messages("Where is the Zorblat festival held?", &passages),
        max_tokens: 40,
        temperature: 0.0,
    };
    let answer = llm.generate(request).await?;
    assert!(answer.text.contains("Quenby"), "{:?}", answer.text);

    let cut = llm.generate(question(3)).await?;
    assert_eq!(cut.completion_tokens, 3);

    // A prompt longer than the context window is refused, not truncated silently.
    let huge = GenerationRequest {
        messages: vec![ChatMessage::new(Role::User, "word ".repeat(9_000))],
        max_tokens: 10,
        temperature: 0.0,
    };
    let err = llm.generate(huge).await.err().map(|e| e.code());
    assert_eq!(err, Some("prompt_too_long"));
    Ok(())
}

#[tokio::test]
async fn the_window_is_what_the_model_can_address() -> Result<(), Box<dyn std::error::Error>> {
    // SmolLM2's GGUF says 8,192 tokens; candle's quantized llama has rotary tables for 4,096
    // positions, and a longer prompt fails inside the model.
    let llm = LocalLlm::load(&gguf(), "local", LocalLlmOptions::default())?;
    assert_eq!(llm.context_window(), Some(4096));
    let options = LocalLlmOptions {
        context_tokens: Some(1024),
        ..Default::default()
    };
    let narrower = LocalLlm::load(&gguf(), "local", options)?;
    assert_eq!(narrower.context_window(), Some(1024), "context_tokens narrows it");
    // A prompt past the window is refused before the model runs (the caller's error).
    let long = vec!["coffee"; 5000].join(" ");
    let request = GenerationRequest {
        messages: vec![ChatMessage::new(Role::User, long)],
        max_tokens: 8,
        temperature: 0.0,
    };
    let refused = llm.generate(request).await;
    assert!(
        matches!(
            refused,
            Err(ragway_llm::LlmError::PromptTooLong { context: 4096, .. })
        ),
        "{refused:?}"
    );
    Ok(())
}
