//! Files into documents: each file's text and structure ([`ragway_files`]) cut into chunks by the
//! embedder's tokens, as one document whose chunks carry their page or heading. Reading runs off
//! the runtime, a bounded number of files at a time; a file that cannot be read is refused with
//! why (its format, a password, a bomb, no text) before anything is stored. URLs are fetched only
//! where the operator allows it, each within a size and a time bound.

use std::sync::Arc;
use std::time::Duration;

use ragway_files::{extract, split, FileError, Limits, TokenCounter};
use ragway_openapi::{ChunkInput, DocumentInput, FileRead};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::error::{ApiError, ErrorCode};

/// A file as uploaded (or fetched).
pub struct Upload {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// How files are read and cut.
#[derive(Debug, Clone, Copy)]
pub struct FileSettings {
    pub max_file_bytes: usize,
    pub chunk_tokens: usize,
    pub overlap_tokens: usize,
    pub max_concurrent_reads: usize,
    pub allow_url_fetch: bool,
    pub url_fetch_timeout: Duration,
}

pub struct FileReader {
    counter: Arc<TokenCounter>,
    settings: FileSettings,
    turns: Semaphore,
    http: reqwest::Client,
}

impl FileReader {
    /// Counting tokens with `counter` (the embedder's tokenizer, or an estimate).
    pub fn new(counter: TokenCounter, settings: FileSettings) -> Self {
        Self {
            counter: Arc::new(counter),
            turns: Semaphore::new(settings.max_concurrent_reads.max(1)),
            settings,
            http: reqwest::Client::new(),
        }
    }

    /// `upload` as a document (its id the file's name) and what was read from it.
    pub async fn read(&self, upload: Upload) -> Result<(DocumentInput, FileRead), ApiError> {
        let _turn = self
            .turns
            .acquire()
            .await
            .map_err(|_| ApiError::Internal("the file readers are closed".into()))?;
        let (counter, settings) = (self.counter.clone(), self.settings);
        let name = upload.name.clone();
        // The PDF reader may panic on a malformed file: a panic on this thread is a refusal.
        let read = tokio::task::spawn_blocking(move || document(upload, &counter, settings)).await;
        match read {
            Ok(read) => read.map_err(|e| refusal(&name, e)),
            Err(e) if e.is_panic() => Err(refusal(
                &name,
                FileError::Unreadable("its structure is malformed".into()),
            )),
            Err(e) => Err(ApiError::Internal(format!("reading `{name}` stopped: {e}"))),
        }
    }

    /// The file at `url` (http or https), if the operator allows fetching; at most
    /// `limits.max_file_bytes`, within `ingest.url_fetch_timeout_ms`.
    pub async fn fetch(&self, url: &str) -> Result<Upload, ApiError> {
        if !self.settings.allow_url_fetch {
            return Err(ApiError::invalid(
                ErrorCode::UrlFetchDisabled,
                "this server does not fetch URLs (ingest.allow_url_fetch): upload the file itself",
            ));
        }
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ApiError::invalid(ErrorCode::InvalidUrl, format!("`{url}` is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ApiError::invalid(
                ErrorCode::InvalidUrl,
                format!("`{url}`: only http and https URLs are fetched"),
            ));
        }
        let failed = |why: String| ApiError::invalid(ErrorCode::UrlFetchFailed, format!("`{url}`: {why}"));
        let fetch = async {
            let mut response = self
                .http
                .get(parsed.clone())
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| failed(e.to_string()))?;
            let html = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/html"));
            let mut bytes = Vec::new();
            while let Some(piece) = response.chunk().await.map_err(|e| failed(e.to_string()))? {
                bytes.extend_from_slice(&piece);
                if bytes.len() > self.settings.max_file_bytes {
                    return Err(refusal(
                        url,
                        FileError::TooLarge(format!(
                            "more than {} bytes (limits.max_file_bytes)",
                            self.settings.max_file_bytes
                        )),
                    ));
                }
            }
            let mut name = parsed
                .path_segments()
                .and_then(|mut s| s.next_back().map(str::to_string))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| parsed.host_str().unwrap_or("download").to_string());
            if html && !name.contains('.') {
                name.push_str(".html");
            }
            Ok(Upload { name, bytes })
        };
        tokio::time::timeout(self.settings.url_fetch_timeout, fetch)
            .await
            .map_err(|_| {
                failed(format!(
                    "not fetched within {:?}",
                    self.settings.url_fetch_timeout
                ))
            })?
    }
}

/// Reads and cuts one file (blocking).
fn document(
    upload: Upload,
    counter: &TokenCounter,
    settings: FileSettings,
) -> Result<(DocumentInput, FileRead), FileError> {
    let limits = Limits {
        max_bytes: settings.max_file_bytes,
    };
    let extracted = extract(&upload.name, &upload.bytes, limits)?;
    let pieces = split(
        &extracted,
        counter,
        settings.chunk_tokens,
        settings.overlap_tokens,
    );
    let sha256 = hex::encode(Sha256::digest(&upload.bytes));
    let mut metadata = Map::new();
    metadata.insert("source".into(), json!(upload.name));
    metadata.insert("format".into(), json!(extracted.format.as_str()));
    metadata.insert("sha256".into(), json!(sha256));
    if let Some(pages) = extracted.pages {
        metadata.insert("pages".into(), json!(pages));
    }
    let chunks: Vec<ChunkInput> = pieces
        .into_iter()
        .map(|piece| {
            let mut own = Map::new();
            if let Some(page) = piece.page {
                own.insert("page".into(), json!(page));
            }
            if let Some(heading) = piece.heading {
                own.insert("heading".into(), Value::String(heading));
            }
            ChunkInput {
                text: piece.text,
                metadata: (!own.is_empty()).then_some(own),
            }
        })
        .collect();
    let text = extracted
        .sections
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join("\n\n");
    let read = FileRead {
        id: upload.name.clone(),
        format: extracted.format.as_str().into(),
        bytes: upload.bytes.len(),
        pages: extracted.pages,
        chunks: chunks.len(),
        sha256,
    };
    let document = DocumentInput {
        id: upload.name,
        text,
        metadata: Some(metadata),
        chunks: Some(chunks),
        vector: None,
    };
    Ok((document, read))
}

/// A file that was not read, as the API says it.
fn refusal(name: &str, error: FileError) -> ApiError {
    let code = match &error {
        FileError::Empty => ErrorCode::EmptyFile,
        FileError::TooLarge(_) => ErrorCode::FileTooLarge,
        FileError::Unsupported(_) => ErrorCode::UnsupportedFileType,
        FileError::Encrypted => ErrorCode::EncryptedFile,
        FileError::Unreadable(_) => ErrorCode::UnreadableFile,
        FileError::NoText => ErrorCode::NoTextInFile,
    };
    ApiError::invalid(code, format!("`{name}`: {error}"))
}
