//! An OpenAI-compatible embedding service (`POST {base_url}/embeddings`: TEI, vLLM, OpenAI, or
//! another ragway) behind the same [`Embedder`] trait as the in-process model. Its dimension is
//! learnt from one probe at start-up; vectors are normalised to unit length, as the local model's
//! are, so that cosine search sees the same geometry whatever the service returns.

use std::time::Duration;

use async_trait::async_trait;
use ragway_worker::Priority;
use serde_json::{json, Value};

use super::{Embedder, Embeddings};
use crate::error::RetrievalError;

pub struct RemoteEmbedder {
    http: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
    /// `openai:<model>@<base_url>`: the embedder id collections record.
    id: String,
    dimension: usize,
    /// Texts per request.
    batch: usize,
}

#[derive(Debug, Clone)]
pub struct RemoteEmbedderOptions {
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
    pub batch: usize,
}

fn failed(e: impl std::fmt::Display) -> RetrievalError {
    RetrievalError::Model(format!("remote embedder: {e}"))
}

impl RemoteEmbedder {
    /// Connects and learns the dimension by embedding one probe text.
    pub async fn connect(options: RemoteEmbedderOptions) -> Result<Self, RetrievalError> {
        let base = options.base_url.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(failed)?;
        let mut embedder = Self {
            http,
            url: format!("{base}/embeddings"),
            id: format!("openai:{}@{base}", options.model),
            model: options.model,
            api_key: options.api_key,
            dimension: 0,
            batch: options.batch.max(1),
        };
        let probe = embedder.request(&["dimension probe".to_string()]).await?;
        embedder.dimension = probe.vectors.first().map(Vec::len).unwrap_or(0);
        if embedder.dimension == 0 {
            return Err(failed(format!("{} returned an empty vector", embedder.url)));
        }
        Ok(embedder)
    }

    async fn request(&self, texts: &[String]) -> Result<Embeddings, RetrievalError> {
        let mut request = self
            .http
            .post(&self.url)
            .json(&json!({"model": self.model, "input": texts, "encoding_format": "float"}));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        let body: Value = response.json().await.map_err(failed)?;
        if !status.is_success() {
            return Err(failed(format!("{} answered {status}: {body}", self.url)));
        }
        let mut data: Vec<(usize, Vec<f32>)> = body["data"]
            .as_array()
            .ok_or_else(|| failed("no `data` in the answer"))?
            .iter()
            .map(|d| {
                let index = d["index"].as_u64().unwrap_or(0) as usize;
                let vector = d["embedding"]
                    .as_array()
                    .map(|v| v.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect());
                vector
                    .map(|v| (index, normalized(v)))
                    .ok_or_else(|| failed("an embedding is not a list of numbers"))
            })
            .collect::<Result<_, _>>()?;
        data.sort_by_key(|(index, _)| *index);
        if data.len() != texts.len() {
            return Err(failed(format!(
                "{} vectors for {} texts",
                data.len(),
                texts.len()
            )));
        }
        Ok(Embeddings {
            vectors: data.into_iter().map(|(_, v)| v).collect(),
            tokens: body["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize,
        })
    }
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[async_trait]
impl Embedder for RemoteEmbedder {
    fn model_id(&self) -> &str {
        &self.id
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn backend(&self) -> &str {
        "remote"
    }

    /// Batches of `batch` texts, one request each, in order; the service does its own queueing,
    /// so both lanes go straight to it.
    async fn embed(&self, texts: Vec<String>, _priority: Priority) -> Result<Embeddings, RetrievalError> {
        let mut all = Embeddings {
            vectors: Vec::with_capacity(texts.len()),
            tokens: 0,
        };
        for batch in texts.chunks(self.batch) {
            let part = self.request(batch).await?;
            if part.vectors.iter().any(|v| v.len() != self.dimension) {
                return Err(failed(format!("a vector is not {}-dimensional", self.dimension)));
            }
            all.vectors.extend(part.vectors);
            all.tokens += part.tokens;
        }
        Ok(all)
    }
}
