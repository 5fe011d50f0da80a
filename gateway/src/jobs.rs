//! Ingestion jobs. Every ingest request becomes a job whose documents are written durably before
//! any work starts, then applied in batches (each durable before the next) off the request's task,
//! so a client that disconnects never leaves a write half-applied. Small requests wait for their
//! job and answer `200`; large ones (and `"wait": false`) answer `202` and run in the background,
//! a bounded number at a time. After a crash, unfinished jobs resume from their last finished
//! batch; re-applying a document already indexed with the same content is a no-op.
//!
//! On disk, under `<data_dir>/jobs`: `<id>.json` (the status, rewritten after each batch) and
//! `<id>.documents.json` (the request's documents, removed when the job finishes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ragway_openapi::{DocumentInput, IngestResponse, JobState, JobStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Semaphore};

use crate::collections::{BatchOutcome, Collection, Collections};
use crate::durable;
use crate::error::{ApiError, ErrorCode};

/// How jobs run.
#[derive(Debug, Clone, Copy)]
pub struct JobSettings {
    /// Chunks per batch (estimated from word counts before chunking).
    pub batch_chunks: usize,
    pub max_concurrent: usize,
    pub keep_finished: usize,
}

/// A background job whose embedder is busy waits this long between tries, this many times.
const BUSY_WAIT: Duration = Duration::from_secs(1);
const BUSY_TRIES: u32 = 600;

#[derive(Debug, Serialize, Deserialize)]
struct JobFile {
    status: JobStatus,
    /// The generation of the collection the job writes to.
    generation: String,
}

struct Job {
    status: Mutex<JobStatus>,
    generation: String,
    cancelled: AtomicBool,
}

impl Job {
    fn status(&self) -> JobStatus {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut JobStatus)) -> JobStatus {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut status);
        status.clone()
    }
}

/// What waits for a synchronous job's answer.
pub type JobResult = oneshot::Receiver<Result<IngestResponse, ApiError>>;

pub struct Jobs {
    dir: PathBuf,
    collections: Arc<Collections>,
    settings: JobSettings,
    /// Background jobs running at once.
    slots: Arc<Semaphore>,
    jobs: Mutex<BTreeMap<String, Arc<Job>>>,
}

impl Jobs {
    /// Loads the jobs under `dir` and resumes the unfinished ones (or marks them failed when
    /// their collection is gone).
    pub fn open(
        dir: &Path,
        collections: Arc<Collections>,
        settings: JobSettings,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let jobs = Arc::new(Self {
            dir: dir.to_path_buf(),
            collections,
            settings,
            slots: Arc::new(Semaphore::new(settings.max_concurrent.max(1))),
            jobs: Mutex::new(BTreeMap::new()),
        });
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let is_status = path.extension().is_some_and(|e| e == "json")
                && !path.to_string_lossy().ends_with(".documents.json");
            if is_status {
                if let Err(e) = jobs.load(&path) {
                    tracing::error!(path = %path.display(), error = %e, "cannot read job record; skipped");
                }
            }
        }
        Ok(jobs)
    }

    fn load(self: &Arc<Self>, path: &Path) -> anyhow::Result<()> {
        let file: JobFile = serde_json::from_slice(&std::fs::read(path)?)?;
        let id = file.status.id.clone();
        let job = Arc::new(Job {
            status: Mutex::new(file.status),
            generation: file.generation,
            cancelled: AtomicBool::new(false),
        });
        self.lock().insert(id.clone(), job.clone());
        let status = job.status();
        if status.state.is_finished() {
            return Ok(());
        }
        let collection = self
            .collections
            .get(&status.collection)
            .ok()
            .filter(|c| c.generation == job.generation);
        let documents = std::fs::read(self.documents_path(&id))
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Ok(serde_json::from_slice::<Vec<DocumentInput>>(&bytes)?));
        match (collection, documents) {
            (Some(collection), Ok(documents)) => {
                tracing::info!(
                    job = id,
                    collection = status.collection,
                    done = status.documents_done,
                    "resuming ingestion job"
                );
                self.clone().spawn(job, collection, documents, None, true);
            }
            (None, _) => self.finish(
                &job,
                Err("the collection was deleted or could not be opened".into()),
            ),
            (_, Err(e)) => self.finish(&job, Err(format!("the job's documents are unreadable: {e}"))),
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a job durably and starts it. A synchronous job (`background == false`) starts at
    /// once and its result comes through the returned receiver.
    pub fn submit(
        self: &Arc<Self>,
        collection: Arc<Collection>,
        documents: Vec<DocumentInput>,
        background: bool,
    ) -> Result<(JobStatus, Option<JobResult>), ApiError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let status = JobStatus {
            id: id.clone(),
            collection: collection.name.clone(),
            state: JobState::Queued,
            documents_total: documents.len(),
            documents_done: 0,
            indexed: 0,
            unchanged: 0,
            chunks_done: 0,
            epoch: collection.epoch(),
            errors: Vec::new(),
            created_at: now(),
            finished_at: None,
        };
        let job = Arc::new(Job {
            status: Mutex::new(status.clone()),
            generation: collection.generation.clone(),
            cancelled: AtomicBool::new(false),
        });
        let bytes = serde_json::to_vec(&documents).map_err(|e| ApiError::Internal(e.to_string()))?;
        durable::write(&self.documents_path(&id), &bytes)
            .map_err(|e| ApiError::Internal(format!("cannot record job {id}: {e}")))?;
        self.persist(&job, &status)?;
        self.lock().insert(id, job.clone());
        let (answer, result) = oneshot::channel();
        self.clone()
            .spawn(job, collection, documents, Some(answer), background);
        Ok((status, (!background).then_some(result)))
    }

    fn spawn(
        self: Arc<Self>,
        job: Arc<Job>,
        collection: Arc<Collection>,
        documents: Vec<DocumentInput>,
        answer: Option<oneshot::Sender<Result<IngestResponse, ApiError>>>,
        background: bool,
    ) {
        tokio::spawn(async move {
            // A closed semaphore never happens (it lives as long as `self`).
            let _slot = match background {
                true => self.slots.clone().acquire_owned().await.ok(),
                false => None,
            };
            let result = self.run(&job, &collection, documents, background).await;
            if let Some(answer) = answer {
                let _ = answer.send(result);
            }
        });
    }

    /// Applies the documents not yet done, batch by batch.
    async fn run(
        &self,
        job: &Job,
        collection: &Collection,
        documents: Vec<DocumentInput>,
        background: bool,
    ) -> Result<IngestResponse, ApiError> {
        let start = job.status().documents_done.min(documents.len());
        let status = job.update(|s| s.state = JobState::Running);
        self.persist(job, &status)?;
        let mut rest = documents.into_iter().skip(start).peekable();
        while rest.peek().is_some() {
            if job.cancelled.load(Ordering::Acquire) {
                self.finish(job, Ok(JobState::Cancelled));
                return Err(ApiError::Conflict {
                    code: ErrorCode::JobCancelled,
                    message: "the ingestion job was cancelled".into(),
                });
            }
            let batch = self.next_batch(&mut rest, collection);
            let size = batch.len();
            match self.apply(collection, batch, background).await {
                Ok(outcome) => {
                    let status = job.update(|s| progress(s, size, outcome));
                    self.persist(job, &status)?;
                }
                Err(e) => {
                    self.finish(job, Err(e.to_string()));
                    return Err(e);
                }
            }
        }
        self.finish(job, Ok(JobState::Done));
        let status = job.status();
        Ok(IngestResponse {
            indexed: status.indexed,
            unchanged: status.unchanged,
            chunks: status.chunks_done,
            epoch: status.epoch,
        })
    }

    /// Documents up to about `batch_chunks` chunks (at least one document).
    fn next_batch(
        &self,
        rest: &mut std::iter::Peekable<impl Iterator<Item = DocumentInput>>,
        collection: &Collection,
    ) -> Vec<DocumentInput> {
        let mut batch = Vec::new();
        let mut chunks = 0;
        while let Some(doc) = rest.peek() {
            let cost = collection
                .chunking
                .chunks_for(doc.text.split_whitespace().count());
            if !batch.is_empty() && chunks + cost > self.settings.batch_chunks {
                break;
            }
            chunks += cost;
            batch.extend(rest.next());
        }
        batch
    }

    /// One batch; a background job waits out a busy embedder instead of failing.
    async fn apply(
        &self,
        collection: &Collection,
        batch: Vec<DocumentInput>,
        background: bool,
    ) -> Result<BatchOutcome, ApiError> {
        let mut tries = 0;
        loop {
            match self.collections.apply_batch(collection, batch.clone()).await {
                Err(ApiError::Busy { .. }) if background && tries < BUSY_TRIES => {
                    tries += 1;
                    tokio::time::sleep(BUSY_WAIT).await;
                }
                result => return result,
            }
        }
    }

    /// Marks a job finished (`Ok(state)`) or failed (`Err(why)`), durably, and forgets its
    /// documents and the oldest finished jobs beyond `keep_finished`.
    fn finish(&self, job: &Job, outcome: Result<JobState, String>) {
        let status = job.update(|s| {
            match outcome {
                Ok(state) => s.state = state,
                Err(why) => {
                    s.state = JobState::Failed;
                    s.errors.push(why);
                }
            }
            s.finished_at = Some(now());
        });
        if let Err(e) = self.persist(job, &status) {
            tracing::error!(job = status.id, error = %e, "cannot record the end of a job");
        }
        if let Err(e) = durable::remove(&self.documents_path(&status.id)) {
            tracing::warn!(job = status.id, error = %e, "cannot remove a finished job's documents");
        }
        self.forget_old();
    }

    fn forget_old(&self) {
        let mut jobs = self.lock();
        let mut finished: Vec<(String, String)> = jobs
            .values()
            .map(|j| j.status())
            .filter(|s| s.state.is_finished())
            .map(|s| (s.finished_at.unwrap_or_default(), s.id))
            .collect();
        if finished.len() <= self.settings.keep_finished {
            return;
        }
        finished.sort();
        let excess = finished.len() - self.settings.keep_finished;
        for (_, id) in finished.into_iter().take(excess) {
            jobs.remove(&id);
            let _ = std::fs::remove_file(self.status_path(&id));
        }
    }

    fn persist(&self, job: &Job, status: &JobStatus) -> Result<(), ApiError> {
        let file = JobFile {
            status: status.clone(),
            generation: job.generation.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| ApiError::Internal(e.to_string()))?;
        durable::write(&self.status_path(&status.id), &bytes)
            .map_err(|e| ApiError::Internal(format!("cannot record job {}: {e}", status.id)))
    }

    pub fn get(&self, id: &str) -> Result<JobStatus, ApiError> {
        self.lock()
            .get(id)
            .map(|j| j.status())
            .ok_or_else(|| ApiError::JobNotFound(id.to_string()))
    }

    /// The jobs of a collection, oldest first.
    pub fn of_collection(&self, name: &str) -> Vec<JobStatus> {
        let mut jobs: Vec<JobStatus> = self
            .lock()
            .values()
            .map(|j| j.status())
            .filter(|s| s.collection == name)
            .collect();
        jobs.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        jobs
    }

    /// Asks a job to stop after its current batch (the batches before it stay applied).
    pub fn cancel(&self, id: &str) -> Result<JobStatus, ApiError> {
        let job = self
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::JobNotFound(id.to_string()))?;
        let status = job.status();
        if status.state.is_finished() {
            return Err(ApiError::Conflict {
                code: ErrorCode::JobFinished,
                message: format!("job `{id}` has already finished ({:?})", status.state),
            });
        }
        job.cancelled.store(true, Ordering::Release);
        Ok(status)
    }

    fn status_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn documents_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.documents.json"))
    }
}

fn progress(status: &mut JobStatus, documents: usize, outcome: BatchOutcome) {
    status.documents_done += documents;
    status.indexed += outcome.indexed;
    status.unchanged += outcome.unchanged;
    status.chunks_done += outcome.chunks;
    status.epoch = outcome.epoch;
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
