use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Map, Value as JsonValue};
use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::indexer::IndexWriterOptions;
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, STORED, STRING,
};
use tantivy::tokenizer::TokenStream;
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::blocking::run_blocking;
use crate::error::RetrievalError;
use crate::filter::{FilterValue, MetadataFilter};
use crate::types::{Chunk, ScoredChunk};

/// BM25 search over chunk text, one index per collection.
#[async_trait]
pub trait KeywordStore: Send + Sync {
    /// Creates the collection's index, or opens it if it already exists.
    async fn open_collection(&self, collection: &str) -> Result<(), RetrievalError>;
    async fn drop_collection(&self, collection: &str) -> Result<(), RetrievalError>;
    async fn upsert(&self, collection: &str, chunks: Vec<Chunk>) -> Result<(), RetrievalError>;
    async fn delete_documents(&self, collection: &str, doc_ids: Vec<String>) -> Result<(), RetrievalError>;
    async fn search(
        &self,
        collection: &str,
        query: String,
        filter: MetadataFilter,
        limit: usize,
    ) -> Result<Vec<ScoredChunk>, RetrievalError>;
    /// Every document id with at least one chunk in the collection (start-up reconciliation).
    async fn document_ids(&self, collection: &str) -> Result<HashSet<String>, RetrievalError>;
}

/// tantivy on disk under `root/<collection>`, English stemming, BM25 scoring. A collection costs
/// no thread while nobody writes to it: its writer (and the writer's indexing, segment-updating
/// and merging threads) is opened by a write and closed once writes have stopped for
/// [`WRITER_IDLE`].
pub struct TantivyKeywordStore {
    indexes: Arc<KeywordIndexes>,
}

struct KeywordIndexes {
    root: PathBuf,
    open: RwLock<HashMap<String, Arc<KeywordIndex>>>,
    /// The indexes whose writer is open: what the idle-writer sweeper visits, so that its cost
    /// grows with the collections being written, not with those stored.
    writing: Mutex<Vec<Weak<KeywordIndex>>>,
}

struct KeywordIndex {
    index: Index,
    reader: IndexReader,
    /// tantivy allows one writer per index; writes are serialised here. Open while written to.
    writer: Mutex<Option<OpenWriter>>,
    fields: Fields,
}

struct OpenWriter {
    writer: IndexWriter,
    last_write: Instant,
}

#[derive(Clone, Copy)]
struct Fields {
    chunk_id: Field,
    doc_id: Field,
    text: Field,
    /// Stored JSON of the document metadata, returned with hits.
    metadata: Field,
    /// One `key=value` term per filterable metadata entry.
    filter_terms: Field,
}

// A single indexing thread and a single merging thread with tantivy's minimum budget: ingest
// batches are small and the machine is shared with model inference.
const WRITER_THREADS: usize = 1;
const WRITER_MERGE_THREADS: usize = 1;
const WRITER_MEMORY: usize = 15_000_000;
/// How long a writer stays open after its last write (a burst of batches shares one).
const WRITER_IDLE: Duration = Duration::from_secs(5);

impl TantivyKeywordStore {
    pub fn new(root: &Path) -> Self {
        let indexes = Arc::new(KeywordIndexes {
            root: root.to_path_buf(),
            open: RwLock::new(HashMap::new()),
            writing: Mutex::new(Vec::new()),
        });
        close_idle_writers(Arc::downgrade(&indexes));
        Self { indexes }
    }
}

/// One thread for all collections: every second, closes the open writers idle for
/// [`WRITER_IDLE`] (their merges finish first); it ends with the store.
fn close_idle_writers(indexes: Weak<KeywordIndexes>) {
    let started = std::thread::Builder::new()
        .name("tantivy-idle".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let Some(indexes) = indexes.upgrade() else { return };
            let round = std::mem::take(&mut *indexes.lock_writing());
            let still_open: Vec<Arc<KeywordIndex>> = round
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|index| index.close_writer_if_idle())
                .collect();
            for index in &still_open {
                indexes.writing(index);
            }
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the keyword store's idle-writer sweeper: writers stay open");
    }
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let text_options = TextOptions::default().set_stored().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("en_stem")
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        chunk_id: builder.add_text_field("chunk_id", STRING | STORED),
        doc_id: builder.add_text_field("doc_id", STRING | STORED),
        text: builder.add_text_field("text", text_options),
        metadata: builder.add_text_field("metadata", STORED),
        filter_terms: builder.add_text_field("filter_terms", STRING),
    };
    (builder.build(), fields)
}

impl KeywordIndexes {
    /// `edit` applied by `index`'s writer (see [`KeywordIndex::write`]), which the sweeper then
    /// visits until it is closed.
    fn write(
        &self,
        index: &Arc<KeywordIndex>,
        edit: impl FnOnce(&mut IndexWriter, &Fields) -> Result<(), RetrievalError>,
    ) -> Result<(), RetrievalError> {
        let written = index.write(edit);
        self.writing(index);
        written
    }

    /// Adds `index` to the writers the sweeper visits, once.
    fn writing(&self, index: &Arc<KeywordIndex>) {
        let mut writing = self.lock_writing();
        if !writing
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(index)))
        {
            writing.push(Arc::downgrade(index));
        }
    }

    fn lock_writing(&self) -> std::sync::MutexGuard<'_, Vec<Weak<KeywordIndex>>> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, collection: &str) -> Result<Arc<KeywordIndex>, RetrievalError> {
        let open = self.open.read().map_err(|_| poisoned())?;
        open.get(collection)
            .cloned()
            .ok_or_else(|| RetrievalError::UnknownCollection(collection.to_string()))
    }

    fn open_blocking(&self, collection: &str) -> Result<(), RetrievalError> {
        let mut open = self.open.write().map_err(|_| poisoned())?;
        if open.contains_key(collection) {
            return Ok(());
        }
        let path = self.root.join(collection);
        std::fs::create_dir_all(&path).map_err(|e| RetrievalError::Keyword(e.to_string()))?;
        let (schema, fields) = schema();
        let dir = tantivy::directory::MmapDirectory::open(&path)
            .map_err(|e| RetrievalError::Keyword(e.to_string()))?;
        let index = Index::open_or_create(dir, schema)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        open.insert(
            collection.to_string(),
            Arc::new(KeywordIndex {
                index,
                reader,
                writer: Mutex::new(None),
                fields,
            }),
        );
        Ok(())
    }

    fn drop_blocking(&self, collection: &str) -> Result<(), RetrievalError> {
        let removed = self.open.write().map_err(|_| poisoned())?.remove(collection);
        drop(removed);
        let path = self.root.join(collection);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| RetrievalError::Keyword(e.to_string()))?;
        }
        Ok(())
    }
}

impl KeywordIndex {
    /// Applies `edit` to the writer, commits, and makes the result visible to searches.
    fn write(
        &self,
        edit: impl FnOnce(&mut IndexWriter, &Fields) -> Result<(), RetrievalError>,
    ) -> Result<(), RetrievalError> {
        let mut open = self.writer.lock().map_err(|_| poisoned())?;
        let writer = match &mut *open {
            Some(open) => open,
            None => open.insert(OpenWriter {
                writer: self.index.writer_with_options(writer_options())?,
                last_write: Instant::now(),
            }),
        };
        writer.last_write = Instant::now();
        if let Err(e) = edit(&mut writer.writer, &self.fields) {
            writer.writer.rollback()?;
            return Err(e);
        }
        writer.writer.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Closes the writer when nothing was written for [`WRITER_IDLE`] (the next write opens one);
    /// whether one is still open. A writer busy with a write is not idle.
    fn close_writer_if_idle(&self) -> bool {
        let mut open = match self.writer.try_lock() {
            Ok(open) => open,
            Err(std::sync::TryLockError::WouldBlock) => return true,
            Err(std::sync::TryLockError::Poisoned(_)) => return false,
        };
        if open.as_ref().is_none_or(|w| w.last_write.elapsed() < WRITER_IDLE) {
            return open.is_some();
        }
        if let Some(idle) = open.take() {
            // Under the lock: the index's lock file is the writer's until its merges end.
            if let Err(e) = idle.writer.wait_merging_threads() {
                tracing::warn!(error = %e, "closing an idle keyword writer");
            }
        }
        false
    }

    fn search(
        &self,
        query: &str,
        filter: &MetadataFilter,
        limit: usize,
    ) -> Result<Vec<ScoredChunk>, RetrievalError> {
        let Some(text_query) = self.text_query(query)? else {
            return Ok(Vec::new());
        };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, text_query)];
        for (key, value) in filter {
            let term = Term::from_field_text(self.fields.filter_terms, &value.term(key));
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(term, IndexRecordOption::Basic)),
            ));
        }
        let searcher = self.reader.searcher();
        let top = searcher.search(
            &BooleanQuery::new(clauses),
            &TopDocs::with_limit(limit).order_by_score(),
        )?;
        top.into_iter()
            .map(|(score, address)| {
                let doc: TantivyDocument = searcher.doc(address)?;
                Ok(ScoredChunk {
                    chunk: self.chunk_from_doc(&doc)?,
                    score,
                })
            })
            .collect()
    }

    /// Any query term may match (BM25 over the analysed terms). Built from tokens rather than
    /// tantivy's query parser so that user text is never read as query syntax.
    fn text_query(&self, query: &str) -> Result<Option<Box<dyn Query>>, RetrievalError> {
        let mut analyzer = self.index.tokenizer_for_field(self.fields.text)?;
        let mut stream = analyzer.token_stream(query);
        let mut terms = Vec::new();
        while stream.advance() {
            terms.push(Term::from_field_text(self.fields.text, &stream.token().text));
        }
        terms.sort();
        terms.dedup();
        if terms.is_empty() {
            return Ok(None);
        }
        let should: Vec<(Occur, Box<dyn Query>)> = terms
            .into_iter()
            .map(|t| {
                (
                    Occur::Should,
                    Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs)) as Box<dyn Query>,
                )
            })
            .collect();
        Ok(Some(Box::new(BooleanQuery::new(should))))
    }

    fn document_ids(&self) -> Result<HashSet<String>, RetrievalError> {
        let searcher = self.reader.searcher();
        let mut ids = HashSet::new();
        for address in searcher.search(&AllQuery, &DocSetCollector)? {
            let doc: TantivyDocument = searcher.doc(address)?;
            if let Some(id) = doc.get_first(self.fields.doc_id).and_then(|v| v.as_str()) {
                ids.insert(id.to_string());
            }
        }
        Ok(ids)
    }

    fn chunk_from_doc(&self, doc: &TantivyDocument) -> Result<Chunk, RetrievalError> {
        let text = |field: Field, name: &str| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| RetrievalError::Keyword(format!("stored document lacks `{name}`")))
        };
        let metadata: Map<String, JsonValue> = serde_json::from_str(&text(self.fields.metadata, "metadata")?)
            .map_err(|e| RetrievalError::Keyword(format!("stored metadata is not JSON: {e}")))?;
        Ok(Chunk {
            chunk_id: text(self.fields.chunk_id, "chunk_id")?,
            doc_id: text(self.fields.doc_id, "doc_id")?,
            text: text(self.fields.text, "text")?,
            metadata,
        })
    }
}

#[async_trait]
impl KeywordStore for TantivyKeywordStore {
    async fn open_collection(&self, collection: &str) -> Result<(), RetrievalError> {
        let indexes = self.indexes.clone();
        let collection = collection.to_string();
        run_blocking(RetrievalError::Keyword, move || {
            indexes.open_blocking(&collection)
        })
        .await
    }

    async fn drop_collection(&self, collection: &str) -> Result<(), RetrievalError> {
        let indexes = self.indexes.clone();
        let collection = collection.to_string();
        run_blocking(RetrievalError::Keyword, move || {
            indexes.drop_blocking(&collection)
        })
        .await
    }

    async fn upsert(&self, collection: &str, chunks: Vec<Chunk>) -> Result<(), RetrievalError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let index = self.indexes.get(collection)?;
        let indexes = self.indexes.clone();
        run_blocking(RetrievalError::Keyword, move || {
            indexes.write(&index, |writer, f| {
                for chunk in chunks {
                    // Upsert: a chunk id is written at most once.
                    writer.delete_term(Term::from_field_text(f.chunk_id, &chunk.chunk_id));
                    let mut document = doc!(
                        f.chunk_id => chunk.chunk_id.as_str(),
                        f.doc_id => chunk.doc_id.as_str(),
                        f.text => chunk.text.as_str(),
                        f.metadata => JsonValue::Object(chunk.metadata.clone()).to_string(),
                    );
                    for (key, value) in &chunk.metadata {
                        if let Some(value) = FilterValue::from_json(value) {
                            document.add_text(f.filter_terms, value.term(key));
                        }
                    }
                    writer.add_document(document)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn delete_documents(&self, collection: &str, doc_ids: Vec<String>) -> Result<(), RetrievalError> {
        if doc_ids.is_empty() {
            return Ok(());
        }
        let index = self.indexes.get(collection)?;
        let indexes = self.indexes.clone();
        run_blocking(RetrievalError::Keyword, move || {
            indexes.write(&index, |writer, f| {
                for id in &doc_ids {
                    writer.delete_term(Term::from_field_text(f.doc_id, id));
                }
                Ok(())
            })
        })
        .await
    }

    async fn search(
        &self,
        collection: &str,
        query: String,
        filter: MetadataFilter,
        limit: usize,
    ) -> Result<Vec<ScoredChunk>, RetrievalError> {
        let index = self.indexes.get(collection)?;
        run_blocking(RetrievalError::Keyword, move || {
            index.search(&query, &filter, limit)
        })
        .await
    }

    async fn document_ids(&self, collection: &str) -> Result<HashSet<String>, RetrievalError> {
        let index = self.indexes.get(collection)?;
        run_blocking(RetrievalError::Keyword, move || index.document_ids()).await
    }
}

fn writer_options() -> IndexWriterOptions {
    IndexWriterOptions::builder()
        .memory_budget_per_thread(WRITER_MEMORY)
        .num_worker_threads(WRITER_THREADS)
        .num_merge_threads(WRITER_MERGE_THREADS)
        .build()
}

fn poisoned() -> RetrievalError {
    RetrievalError::Keyword("index lock poisoned".into())
}
