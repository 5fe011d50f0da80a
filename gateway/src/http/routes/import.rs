//! `POST /v1/collections/{name}/import`: a streamed NDJSON body, one document a line
//! (`{"id", "text", "metadata"?, "vector"?, "chunks"?}`), for loads of many documents, often
//! embedded elsewhere. The body is never held whole: it is read line by line, each line checked as
//! `/documents` checks a document (and its vector against the collection's dimension), and written
//! to the job store in parts as it comes. A bad line refuses the whole import, naming its line,
//! and nothing of it is kept; an import read whole becomes one background job (`202`), which
//! indexes it part by part — lines with a vector skip the embedder.

use std::collections::HashSet;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::BytesMut;
use futures::{Stream, StreamExt};
use ragway_openapi::{DocumentInput, ErrorBody, ImportAccepted};

use crate::catalog::collections::Collection;
use crate::catalog::jobs::{ImportSpool, PART_DOCUMENTS};
use crate::error::{ApiError, ErrorCode};
use crate::http::auth::Caller;
use crate::http::AppState;
use crate::validate::{self, LimitsConfig};

#[utoipa::path(post, path = "/v1/collections/{name}/import", tag = "documents",
    request_body(content = String, content_type = "application/x-ndjson",
        description = "One document a line: `{\"id\", \"text\", \"metadata\"?, \"vector\"?}`; a `vector` (the collection's dimension, from its embedder) skips the embedder"),
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 202, description = "Read whole and recorded; indexed by the job", body = ImportAccepted),
        (status = 400, description = "A line is not a valid document (the message names it), or no lines", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 408, description = "The body stopped arriving", body = ErrorBody),
        (status = 413, description = "The body is larger than `limits.max_import_bytes`, or over a storage quota", body = ErrorBody),
        (status = 503, description = "Unavailable or busy (then with `Retry-After`)", body = ErrorBody)))]
pub async fn import(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let collection = caller.collection(&state, &name).await?;
    state.collections.check_embedder(&collection)?;
    let idle = Duration::from_millis(state.config.server.body_timeout_ms);
    let mut lines = Lines::new(body.into_data_stream(), &state.config.limits, idle);
    let mut spool = state.jobs.import();
    let read = match read_all(&state, &caller, &collection, &mut lines, &mut spool).await {
        Ok(read) => read,
        Err(e) => {
            // Read to its end (within the same bounds) before answering, so that a client still
            // sending gets the answer rather than a broken pipe; what was spooled is dropped.
            lines.drain().await;
            return Err(e);
        }
    };
    let documents = spool.documents();
    if documents == 0 {
        return Err(ApiError::invalid(
            ErrorCode::InvalidDocuments,
            "the body has no documents: send one JSON document a line",
        ));
    }
    if read.with_vectors < documents {
        caller.require_embedding_budget(&state)?;
    }
    let admitted = caller
        .admit_growth(&state, &collection, read.growth, Some(&spool.id))
        .await?;
    let job = state
        .jobs
        .submit_import(collection, spool, admitted)
        .await
        .map_err(|e| caller.public_error(e))?;
    let accepted = ImportAccepted {
        status_url: format!("/v1/jobs/{}", job.id),
        job_id: job.id,
        documents,
        with_vectors: read.with_vectors,
    };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// Reads, checks and records every line, part by part.
async fn read_all<S: Stream<Item = Result<Bytes, axum::Error>> + Unpin>(
    state: &AppState,
    caller: &Caller,
    collection: &Collection,
    lines: &mut Lines<S>,
    spool: &mut ImportSpool,
) -> Result<Read, ApiError> {
    let mut read = Read::default();
    let mut part = Vec::with_capacity(PART_DOCUMENTS);
    loop {
        let line = lines.next().await?;
        let end = line.is_none();
        part.extend(line);
        if part.len() == PART_DOCUMENTS || (end && !part.is_empty()) {
            let (documents, chunks);
            (documents, chunks, read) =
                check_part(state, collection, std::mem::take(&mut part), read).await?;
            if caller.has_storage_limits() {
                let (d, c, b) = state.collections.growth(collection, &documents).await?;
                read.growth = (read.growth.0 + d, read.growth.1 + c, read.growth.2 + b);
            }
            spool.push(documents, chunks).await?;
        }
        if end {
            return Ok(read);
        }
    }
}

/// What the lines read so far hold.
#[derive(Default)]
struct Read {
    /// Every id so far: one may come only once.
    ids: HashSet<Box<str>>,
    with_vectors: usize,
    /// Documents, chunks, bytes the import adds (with a storage quota only).
    growth: (i64, i64, i64),
}

/// Parses and checks one part's lines (numbered), off the runtime: its documents and the chunks
/// they make.
async fn check_part(
    state: &AppState,
    collection: &Collection,
    lines: Vec<(usize, Bytes)>,
    mut read: Read,
) -> Result<(Vec<DocumentInput>, usize, Read), ApiError> {
    let limits = state.config.limits.clone();
    let chunking = collection.chunking;
    let dimension = state.collections.dimension();
    tokio::task::spawn_blocking(move || {
        let mut documents = Vec::with_capacity(lines.len());
        let mut chunks = 0;
        for (number, line) in lines {
            let doc: DocumentInput = serde_json::from_slice(&line).map_err(|e| {
                ApiError::invalid(
                    ErrorCode::InvalidImportLine,
                    format!("line {number}: not a document ({e}); send one JSON object a line"),
                )
            })?;
            let made =
                validate::one_document(&doc, &limits, chunking, dimension).map_err(|e| at_line(number, e))?;
            if !read.ids.insert(doc.id.as_str().into()) {
                return Err(ApiError::invalid(
                    ErrorCode::DuplicateDocumentId,
                    format!(
                        "line {number}: document id {:?} came on an earlier line too",
                        doc.id
                    ),
                ));
            }
            chunks += made;
            read.with_vectors += usize::from(doc.vector.is_some());
            documents.push(doc);
        }
        Ok((documents, chunks, read))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("checking an import's lines failed: {e}")))?
}

/// A line's refusal, naming the line.
fn at_line(number: usize, error: ApiError) -> ApiError {
    match error {
        ApiError::Invalid { code, message } => ApiError::Invalid {
            code,
            message: format!("line {number}: {message}"),
        },
        other => other,
    }
}

/// The body's lines, numbered from 1, blank ones passed over; each at most
/// `limits.max_import_line_bytes`, all at most `limits.max_import_bytes`, and no wait for the next
/// piece of the body longer than `idle`.
struct Lines<S> {
    body: S,
    buffer: BytesMut,
    /// Bytes of `buffer` known to hold no newline.
    scanned: usize,
    number: usize,
    read: u64,
    ended: bool,
    max_line: usize,
    max_body: u64,
    idle: Duration,
}

impl<S: Stream<Item = Result<Bytes, axum::Error>> + Unpin> Lines<S> {
    fn new(body: S, limits: &LimitsConfig, idle: Duration) -> Self {
        Self {
            body,
            buffer: BytesMut::new(),
            scanned: 0,
            number: 0,
            read: 0,
            ended: false,
            max_line: limits.max_import_line_bytes,
            max_body: limits.max_import_bytes,
            idle,
        }
    }

    async fn next(&mut self) -> Result<Option<(usize, Bytes)>, ApiError> {
        loop {
            let newline = self.buffer[self.scanned..].iter().position(|b| *b == b'\n');
            if let Some(end) = newline.map(|i| self.scanned + i) {
                let line = self.buffer.split_to(end + 1).freeze();
                self.scanned = 0;
                self.number += 1;
                if let Some(line) = self.line(line)? {
                    return Ok(Some(line));
                }
                continue;
            }
            self.scanned = self.buffer.len();
            if self.ended {
                let rest = self.buffer.split().freeze();
                self.scanned = 0;
                if rest.is_empty() {
                    return Ok(None);
                }
                self.number += 1;
                return self.line(rest);
            }
            self.fill().await?;
        }
    }

    /// A line as read (its newline included), or `None` for a blank one.
    fn line(&self, line: Bytes) -> Result<Option<(usize, Bytes)>, ApiError> {
        if line.len() > self.max_line + 2 {
            return Err(self.too_long(self.number));
        }
        Ok((!line.trim_ascii().is_empty()).then_some((self.number, line)))
    }

    fn too_long(&self, number: usize) -> ApiError {
        ApiError::invalid(
            ErrorCode::InvalidImportLine,
            format!(
                "line {number} is longer than {} bytes (limits.max_import_line_bytes)",
                self.max_line
            ),
        )
    }

    /// Reads what is left of the body, dropping it, while it comes within the bounds.
    async fn drain(&mut self) {
        self.buffer.clear();
        while !self.ended && self.fill().await.is_ok() {
            self.buffer.clear();
        }
    }

    /// Reads the next piece of the body into the buffer.
    async fn fill(&mut self) -> Result<(), ApiError> {
        let piece = tokio::time::timeout(self.idle, self.body.next())
            .await
            .map_err(|_| {
                ApiError::invalid(
                    ErrorCode::RequestTimeout,
                    format!(
                        "the body stopped arriving: nothing for {} ms (server.body_timeout_ms)",
                        self.idle.as_millis()
                    ),
                )
            })?;
        match piece {
            None => self.ended = true,
            Some(Err(e)) => {
                return Err(ApiError::invalid(
                    ErrorCode::InvalidBody,
                    format!("cannot read the body: {e}"),
                ))
            }
            Some(Ok(bytes)) => {
                self.read += bytes.len() as u64;
                if self.read > self.max_body {
                    return Err(ApiError::BodyTooLarge);
                }
                self.buffer.extend_from_slice(&bytes);
                // A line that never ends is refused before it fills memory.
                let unfinished = match self.buffer.iter().rposition(|b| *b == b'\n') {
                    Some(i) => self.buffer.len() - i - 1,
                    None => self.buffer.len(),
                };
                if unfinished > self.max_line + 2 {
                    // After the lines the buffer holds whole, not yet taken.
                    let whole = self.buffer.iter().filter(|b| **b == b'\n').count();
                    return Err(self.too_long(self.number + whole + 1));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(
        pieces: &[&str],
        limits: &LimitsConfig,
    ) -> Lines<impl Stream<Item = Result<Bytes, axum::Error>> + Unpin> {
        let pieces: Vec<Result<Bytes, axum::Error>> =
            pieces.iter().map(|p| Ok(Bytes::from(p.to_string()))).collect();
        Lines::new(futures::stream::iter(pieces), limits, Duration::from_secs(1))
    }

    async fn all(
        mut lines: Lines<impl Stream<Item = Result<Bytes, axum::Error>> + Unpin>,
    ) -> Result<Vec<(usize, String)>, ApiError> {
        let mut out = Vec::new();
        while let Some((n, line)) = lines.next().await? {
            out.push((n, String::from_utf8_lossy(&line).trim().to_string()));
        }
        Ok(out)
    }

    #[tokio::test]
    async fn lines_are_numbered_across_pieces_and_blank_ones_passed_over() -> Result<(), ApiError> {
        let limits = LimitsConfig::default();
        let read = all(lines_of(
            &["{\"a\":", "1}\n\n  \n{\"b\"", ":2}\r\n{\"c\":3}"],
            &limits,
        ))
        .await?;
        let want = [(1, "{\"a\":1}"), (4, "{\"b\":2}"), (5, "{\"c\":3}")];
        assert_eq!(read, want.map(|(n, l)| (n, l.to_string())));
        Ok(())
    }

    #[tokio::test]
    async fn a_body_without_a_last_newline_ends_with_its_last_line() -> Result<(), ApiError> {
        let limits = LimitsConfig::default();
        let mut lines = lines_of(&["{\"a\":1}\n{\"b\":2}"], &limits);
        assert_eq!(lines.next().await?.map(|(n, _)| n), Some(1));
        assert_eq!(lines.next().await?.map(|(n, _)| n), Some(2));
        assert!(lines.next().await?.is_none());
        assert!(lines.next().await?.is_none());
        Ok(())
    }

    #[tokio::test]
    async fn a_line_or_a_body_over_its_limit_is_refused() {
        let limits = LimitsConfig {
            max_import_line_bytes: 8,
            max_import_bytes: 40,
            ..LimitsConfig::default()
        };
        let long = all(lines_of(&["{\"a\":1}\n", "{\"b\":\"0123456789\"}\n"], &limits)).await;
        assert!(
            matches!(long, Err(ApiError::Invalid { code: ErrorCode::InvalidImportLine, ref message }) if message.contains("line 2"))
        );
        let unending = all(lines_of(&["{\"b\":", "\"01234", "56789\""], &limits)).await;
        assert!(matches!(
            unending,
            Err(ApiError::Invalid {
                code: ErrorCode::InvalidImportLine,
                ..
            })
        ));
        let large = all(lines_of(&["{}\n"; 20], &limits)).await;
        assert!(matches!(large, Err(ApiError::BodyTooLarge)));
    }
}
