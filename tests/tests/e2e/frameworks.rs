//! The clients RAG developers build with, from PyPI (pinned in the test venv), against ragway
//! with only a base URL and a key changed: LangChain's and LlamaIndex's OpenAI integrations for
//! chat over a collection and embeddings, Haystack's OpenAI components, Cohere's SDK (v1 and v2
//! rerank) and LlamaIndex's Jina reranker (tests/frameworks/check.py). The LLM is the scripted
//! stand-in (ragway_e2e::ScriptedOpenAi); the reranker is the tiny cross-encoder fixture.

use std::path::Path;
use std::time::Duration;

use crate::common::corpus;
use ragway_e2e::{Script, ScriptedOpenAi, Server, ServerOptions, NO_ANSWER_CACHES};
use serde_json::json;

const ADMIN: &str = "frameworks-admin-key";

#[tokio::test(flavor = "multi_thread")]
async fn the_frameworks_clients_work_with_a_base_url_and_key() -> anyhow::Result<()> {
    let python = ragway_e2e::python::with(
        "langchain_openai, llama_index.llms.openai_like, haystack, cohere, llama_index.postprocessor.jinaai_rerank",
    );
    let answer = "Mount Etna erupts often.";
    let llm = ScriptedOpenAi::start(Script::Answer(answer.into())).await?;
    let dir = tempfile::tempdir()?;
    let reranker =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../rerank/tests/fixtures/tiny-bert-classifier");
    let options = ServerOptions::default()
        .with_config(NO_ANSWER_CACHES)
        .with_config(&format!("[models]\nreranker = \"{}\"", reranker.display()))
        .with_scripted_llm("scripted", &llm)
        .with_admin(ADMIN);
    let server = Server::start(dir.path(), &options).await?;
    let (_, key) = server.tenant(ADMIN, &json!({"name": "acme"})).await?;
    server.seeded(Some(&key), "facts", &corpus()).await?;
    let embedder = server.get("/readyz").await?.body["embedder"]
        .as_str()
        .unwrap_or("all-minilm-l6-v2")
        .to_string();

    let args = vec![server.url(""), key, "facts".into(), answer.into(), embedder];
    ragway_e2e::python::check(python, "frameworks/check.py", args, Duration::from_secs(300)).await?;
    assert!(llm.calls() >= 5, "each chat reached the LLM: {}", llm.calls());
    Ok(())
}
