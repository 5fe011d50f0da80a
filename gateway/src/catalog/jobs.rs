//! Ingestion jobs. Every ingest request becomes a job whose documents are written durably before
//! any work starts, then applied in batches (each durable before the next) off the request's task,
//! so a client that disconnects never leaves a write half-applied. Small requests wait for their
//! job and answer `200`; large ones (and `"wait": false`) answer `202` and run in the background,
//! a bounded number at a time. After a crash, unfinished jobs resume from their last finished
//! batch; re-applying a document already indexed with the same content is a no-op.
//!
//! Jobs live in a [`store`]: the data directory, or Redis shared by every replica. There a job is
//! run by the replica holding its lease; when that replica dies, another claims the job within
//! about [`LEASE_TTL`](crate::catalog::lease::LEASE_TTL) and resumes it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ragway_openapi::{DocumentInput, IngestResponse, JobState, JobStatus};
use tokio::sync::{oneshot, Semaphore};

use crate::catalog::collections::{BatchOutcome, Collection, Collections, Lookup};
use crate::catalog::lease::{Lease, WriteError};
use crate::error::{ApiError, ErrorCode};
use crate::tenancy::owner;
use crate::tenancy::quota::policy::{admit_storage, Amounts, JobQueueLimits, OverStorage};

mod import;
mod parts;
mod queue;
mod store;
pub use import::ImportSpool;
pub use parts::PART_DOCUMENTS;
use queue::{queue_full, QueueCounts, QueueSlot};
use store::{FileJobs, Hold, JobStore, Record, RedisJobs};

/// How jobs run.
#[derive(Debug, Clone, Copy)]
pub struct JobSettings {
    /// Chunks per batch (estimated from word counts before chunking).
    pub batch_chunks: usize,
    /// Chunks per batch of an import (larger: its lines often come embedded).
    pub import_batch_chunks: usize,
    pub max_concurrent: usize,
    pub keep_finished: usize,
    /// Background jobs held unfinished at most, in all and per tenant.
    pub queue: JobQueueLimits,
}

/// Where jobs live.
pub enum JobStoreKind {
    Files(PathBuf),
    Redis(ragway_cache::RedisTier),
}

/// A background job whose embedder is busy waits this long between tries, this many times.
const BUSY_WAIT: Duration = Duration::from_secs(1);
const BUSY_TRIES: u32 = 600;
/// How often a running batch's progress is written.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often a replica looks for jobs whose replica died (shared stores).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What a background job will add to its tenant's storage when it has run: counted against the
/// tenant's storage quota while it waits, so that queued work cannot slip past the quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    pub documents: u64,
    pub chunks: u64,
    pub bytes: u64,
}

impl Reservation {
    /// What a write that changes its collection by `growth` (documents, chunks, bytes; negative
    /// where it replaces larger documents) will add: none of it below zero.
    pub fn of_growth((documents, chunks, bytes): (i64, i64, i64)) -> Self {
        let adds = |n: i64| u64::try_from(n).unwrap_or(0);
        Self {
            documents: adds(documents),
            chunks: adds(chunks),
            bytes: adds(bytes),
        }
    }

    /// Documents, chunks, bytes (as a job's record keeps them).
    fn as_array(self) -> [u64; 3] {
        [self.documents, self.chunks, self.bytes]
    }

    fn from_array([documents, chunks, bytes]: [u64; 3]) -> Self {
        Self {
            documents,
            chunks,
            bytes,
        }
    }

    /// The reservation of a job of `total` documents, `done` of them applied, whose other
    /// documents will add `rest`: stated for the whole job, as [`Reservation::remaining`] reads it.
    fn of_rest(rest: Self, done: usize, total: usize) -> Self {
        let whole = |n: u64| match total.saturating_sub(done) {
            0 => 0,
            left => n.saturating_mul(total as u64).div_ceil(left as u64),
        };
        Self {
            documents: whole(rest.documents),
            chunks: whole(rest.chunks),
            bytes: whole(rest.bytes),
        }
    }

    /// The part of `self` still to come when `done` of `total` documents are applied (those are
    /// counted as stored by then).
    fn remaining(self, done: usize, total: usize) -> Self {
        let left = |n: u64| match total {
            0 => 0,
            _ => n.saturating_mul(total.saturating_sub(done) as u64) / total as u64,
        };
        Self {
            documents: left(self.documents),
            chunks: left(self.chunks),
            bytes: left(self.bytes),
        }
    }
}

impl From<Reservation> for Amounts<u64> {
    fn from(r: Reservation) -> Self {
        Amounts {
            documents: r.documents,
            chunks: r.chunks,
            bytes: r.bytes,
        }
    }
}

/// A write admitted under its tenant's storage quotas, to be passed to [`Jobs::submit`]: the id
/// its job will have and what the job will add. Held room is counted from admission: in this
/// process by holding its turn at admission until the job is submitted, across replicas by a hold
/// in the shared store under the job's id.
#[derive(Default)]
pub struct Admitted {
    id: Option<String>,
    reservation: Reservation,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// A write that may not be stored: over a quota, or the shared store could not be asked.
pub enum NotAdmitted {
    Over(OverStorage),
    Store(ApiError),
}

/// What one tenant's write asks of storage admission.
pub struct StorageRequest<'a> {
    /// The id of the job the write becomes, when known already (an import's); else a new one.
    pub job: Option<&'a str>,
    /// The collection written to (its internal name).
    pub collection: &'a str,
    pub limits: Amounts<Option<u64>>,
    /// What the tenant stores, per collection, as this process knows it.
    pub stored: Vec<(String, Amounts<u64>)>,
    pub growth: Amounts<i64>,
}

struct Job {
    status: Mutex<JobStatus>,
    generation: String,
    /// An import's parts.
    parts: Option<usize>,
    /// When it was accepted (see `Collections::stamp`).
    stamp: u64,
    cancelled: AtomicBool,
    /// What the job adds to its tenant's storage (background jobs accepted by this process).
    reserved: Reservation,
}

impl Job {
    fn new(record: Record, reserved: Reservation) -> Arc<Self> {
        Arc::new(Self {
            status: Mutex::new(record.status),
            generation: record.generation,
            parts: record.parts,
            stamp: record.stamp.unwrap_or_default(),
            cancelled: AtomicBool::new(false),
            reserved,
        })
    }

    fn status(&self) -> JobStatus {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut JobStatus)) -> Record {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut status);
        Record {
            status: status.clone(),
            generation: self.generation.clone(),
            stamp: Some(self.stamp),
            parts: self.parts,
            reserved: self.parts.map(|_| self.reserved.as_array()),
        }
    }
}

/// What a job indexes.
enum Input {
    /// A request's documents, recorded with the job.
    Documents(Vec<DocumentInput>),
    /// An import's `count` parts, recorded in the store before the job (see [`parts`]), holding
    /// `documents` documents that make `chunks` chunks.
    Parts {
        count: usize,
        documents: usize,
        chunks: usize,
    },
}

impl Input {
    fn documents(&self) -> usize {
        match self {
            Self::Documents(documents) => documents.len(),
            Self::Parts { documents, .. } => *documents,
        }
    }

    fn chunks(&self, collection: &Collection) -> usize {
        match self {
            Self::Documents(documents) => documents.iter().map(|d| chunks_of(d, collection)).sum(),
            Self::Parts { chunks, .. } => *chunks,
        }
    }

    fn parts(&self) -> Option<usize> {
        match self {
            Self::Documents(_) => None,
            Self::Parts { count, .. } => Some(*count),
        }
    }
}

/// What waits for a synchronous job's answer.
pub type JobResult = oneshot::Receiver<Result<IngestResponse, ApiError>>;

/// The job store failed: trying again may work.
fn store_failed(e: String) -> ApiError {
    ApiError::Busy {
        code: ErrorCode::JobStoreUnavailable,
        message: format!("the job store cannot be reached: {e}"),
        retry_after_s: 1,
    }
}

pub struct Jobs {
    store: Box<dyn JobStore>,
    collections: Arc<Collections>,
    settings: JobSettings,
    /// Background jobs running at once.
    slots: Arc<Semaphore>,
    /// The jobs this process runs or is about to run.
    running: Mutex<BTreeMap<String, Arc<Job>>>,
    /// Background jobs held unfinished, bounded by `settings.queue`.
    queue: Arc<Mutex<QueueCounts>>,
    /// See [`Jobs::admission`].
    admission: Arc<tokio::sync::Mutex<()>>,
}

impl Jobs {
    /// Opens the job store and resumes the unfinished jobs (or marks them failed when their
    /// collection is gone); with a shared store, keeps looking for jobs whose replica died.
    pub async fn open(
        store: JobStoreKind,
        collections: Arc<Collections>,
        settings: JobSettings,
    ) -> anyhow::Result<Arc<Self>> {
        let store: Box<dyn JobStore> = match store {
            JobStoreKind::Files(dir) => Box::new(FileJobs::open(dir)?),
            JobStoreKind::Redis(redis) => Box::new(RedisJobs { redis }),
        };
        let jobs = Arc::new(Self {
            store,
            collections,
            settings,
            slots: Arc::new(Semaphore::new(settings.max_concurrent.max(1))),
            running: Mutex::new(BTreeMap::new()),
            queue: Arc::default(),
            admission: Arc::default(),
        });
        jobs.resume_unfinished().await;
        if jobs.store.shared() {
            let weak = Arc::downgrade(&jobs);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(SWEEP_EVERY).await;
                    let Some(jobs) = weak.upgrade() else { return };
                    jobs.resume_unfinished().await;
                }
            });
        }
        Ok(jobs)
    }

    /// Claims and resumes every unfinished job no process runs.
    async fn resume_unfinished(self: &Arc<Self>) {
        let records = match self.store.all().await {
            Ok(records) => records,
            Err(e) => return tracing::warn!(error = %e, "cannot read the job store"),
        };
        for record in records {
            let id = record.status.id.clone();
            if record.status.state.is_finished() || self.lock().contains_key(&id) {
                continue;
            }
            match self.store.claim(&id).await {
                Ok(Some(lease)) => self.resume(record, lease).await,
                Ok(None) => {}
                Err(e) => tracing::warn!(job = id, error = %e, "cannot claim job"),
            }
        }
    }

    async fn resume(self: &Arc<Self>, mut record: Record, lease: Lease) {
        let (id, name) = (record.status.id.clone(), record.status.collection.clone());
        if record.stamp.is_none() {
            // Accepted before jobs were stamped: taken as accepted now.
            match self.collections.stamp().await {
                Ok(stamp) => record.stamp = Some(stamp),
                Err(e) => return tracing::warn!(job = id, error = %e, "cannot resume job yet"),
            }
        }
        let lookup = self.collections.lookup(&name, &record.generation).await;
        let (done, total) = (record.status.documents_done, record.status.documents_total);
        match lookup {
            Lookup::Open(collection) if record.parts.is_some() => {
                let input = Input::Parts {
                    count: record.parts.unwrap_or_default(),
                    documents: total,
                    chunks: record.status.chunks_total,
                };
                let reserved = record.reserved.map(Reservation::from_array).unwrap_or_default();
                let job = Job::new(record, reserved);
                tracing::info!(job = id, collection = name, done, "resuming import job");
                self.lock().insert(id, job.clone());
                let slot = QueueSlot::take(&self.queue, owner(&name), None).ok();
                self.clone().spawn(job, collection, input, None, slot, lease);
            }
            Lookup::Open(collection) => match self.store.documents(&id).await {
                Ok(documents) => {
                    // What its documents still to come will add counts against its tenant's
                    // storage quota again, as it did before the restart.
                    let rest = documents.get(done..).unwrap_or_default();
                    let growth = self.collections.growth(&collection, rest).await;
                    let rest = Reservation::of_growth(growth.unwrap_or_default());
                    let job = Job::new(record, Reservation::of_rest(rest, done, total));
                    tracing::info!(job = id, collection = name, done, "resuming ingestion job");
                    self.lock().insert(id, job.clone());
                    // Accepted before: it counts, but is never refused now.
                    let slot = QueueSlot::take(&self.queue, owner(&name), None).ok();
                    self.clone()
                        .spawn(job, collection, Input::Documents(documents), None, slot, lease);
                }
                Err(e) => {
                    let why = format!("the job's documents are unreadable: {e}");
                    let job = Job::new(record, Reservation::default());
                    self.finish(&job, Err(why), &lease).await
                }
            },
            Lookup::Gone => {
                let why = "the collection was deleted or could not be opened";
                let job = Job::new(record, Reservation::default());
                self.finish(&job, Err(why.into()), &lease).await;
            }
            // Created by another replica an instant ago: the next sweep finds it here.
            Lookup::NotYet => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Job>>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a job durably and starts it. A synchronous job (`background == false`) starts at
    /// once and its result comes through the returned receiver. A background job takes a place
    /// in the bounded queue first: past it, it is refused and nothing is stored.
    pub async fn submit(
        self: &Arc<Self>,
        collection: Arc<Collection>,
        documents: Vec<DocumentInput>,
        background: bool,
        admitted: Admitted,
    ) -> Result<(JobStatus, Option<JobResult>), ApiError> {
        let id = match &admitted.id {
            Some(id) => id.clone(),
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        self.submit_input(collection, Input::Documents(documents), background, &id, admitted)
            .await
    }

    /// [`Jobs::submit_admitted`]; what a job that was never recorded held is given back now, not
    /// when its hold lapses.
    async fn submit_input(
        self: &Arc<Self>,
        collection: Arc<Collection>,
        input: Input,
        background: bool,
        id: &str,
        admitted: Admitted,
    ) -> Result<(JobStatus, Option<JobResult>), ApiError> {
        let submitted = self
            .submit_admitted(collection.clone(), input, background, id, admitted)
            .await;
        if submitted.is_err() {
            self.store.release(&collection.name, id).await;
        }
        submitted
    }

    async fn submit_admitted(
        self: &Arc<Self>,
        collection: Arc<Collection>,
        input: Input,
        background: bool,
        id: &str,
        admitted: Admitted,
    ) -> Result<(JobStatus, Option<JobResult>), ApiError> {
        let limits = self.settings.queue;
        let slot = match background {
            true => Some(
                QueueSlot::take(&self.queue, owner(&collection.name), Some(limits))
                    .map_err(|full| queue_full(full, limits))?,
            ),
            false => None,
        };
        let id = id.to_string();
        let stamp = self.collections.stamp().await?;
        let record = Record {
            status: JobStatus {
                id: id.clone(),
                collection: collection.name.clone(),
                state: JobState::Queued,
                documents_total: input.documents(),
                documents_done: 0,
                indexed: 0,
                unchanged: 0,
                chunks_done: 0,
                chunks_total: input.chunks(&collection),
                epoch: collection.epoch(),
                errors: Vec::new(),
                created_at: now(),
                finished_at: None,
            },
            generation: collection.generation.clone(),
            stamp: Some(stamp),
            parts: input.parts(),
            reserved: input.parts().map(|_| admitted.reservation.as_array()),
        };
        let status = record.status.clone();
        // Held before the record exists, so that no process resuming unfinished jobs can take a
        // job that is only being started.
        let lease = self
            .store
            .claim(&id)
            .await
            .map_err(|e| self.failed(e))?
            .ok_or_else(|| ApiError::Internal(format!("job {id} was claimed by another process")))?;
        let documents = match &input {
            Input::Documents(documents) => documents.as_slice(),
            Input::Parts { .. } => &[],
        };
        self.store
            .create(&record, documents)
            .await
            .map_err(|e| self.failed(e))?;
        let job = Job::new(record, admitted.reservation);
        self.lock().insert(id, job.clone());
        // In `pending` now: the next write may be admitted.
        drop(admitted);
        let (answer, result) = oneshot::channel();
        self.clone()
            .spawn(job, collection, input, Some(answer), slot, lease);
        Ok((status, (!background).then_some(result)))
    }

    /// What the unfinished jobs of `owner` (a tenant's id) will still add to its storage.
    pub fn pending(&self, owner_id: &str) -> Amounts<u64> {
        self.lock()
            .values()
            .filter_map(|job| {
                let status = job.status();
                (owner(&status.collection) == owner_id).then(|| {
                    job.reserved
                        .remaining(status.documents_done, status.documents_total)
                        .into()
                })
            })
            .fold(Amounts::default(), Amounts::plus)
    }

    /// Admits a write whose tenant has storage quotas, or says which quota it would cross: what
    /// the tenant stores, with what its unfinished jobs will still add and the write's growth,
    /// must fit. Across replicas (a shared store) in one step in the store, which holds the
    /// write's room under its job's id until the job ends; in one process under this process's
    /// turn at admission, held until the job is in [`Jobs::pending`].
    pub async fn admit_storage(&self, request: StorageRequest<'_>) -> Result<Admitted, NotAdmitted> {
        let reservation = Reservation::of_growth((
            request.growth.documents,
            request.growth.chunks,
            request.growth.bytes,
        ));
        let id = match request.job {
            Some(id) => id.to_string(),
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        let hold = Hold {
            collection: request.collection,
            id: &id,
            limits: request.limits,
            known: &request.stored,
            growth: request.growth,
            reservation: reservation.into(),
        };
        if let Some(held) = self.store.hold(&hold).await {
            held.map_err(|e| NotAdmitted::Store(store_failed(e)))?
                .map_err(NotAdmitted::Over)?;
            return Ok(Admitted {
                id: Some(id),
                reservation,
                _turn: None,
            });
        }
        let turn = self.admission.clone().lock_owned().await;
        let stored = request
            .stored
            .iter()
            .map(|(_, a)| *a)
            .fold(Amounts::default(), Amounts::plus);
        let holds = stored.plus(self.pending(owner(request.collection)));
        admit_storage(request.limits, holds, request.growth).map_err(NotAdmitted::Over)?;
        Ok(Admitted {
            id: Some(id),
            reservation,
            _turn: Some(turn),
        })
    }

    /// The stamp of the oldest unfinished job of collection `name`, in any process (`None`:
    /// none is unfinished).
    pub async fn oldest_unfinished(&self, name: &str) -> Result<Option<u64>, ApiError> {
        let records = self.store.all().await.map_err(|e| self.failed(e))?;
        Ok(records
            .into_iter()
            .filter(|r| r.status.collection == name && !r.status.state.is_finished())
            .filter_map(|r| r.stamp)
            .min())
    }

    /// A store failure as the client sees it: worth retrying when the store is shared (Redis).
    fn failed(&self, e: String) -> ApiError {
        match self.store.shared() {
            true => store_failed(e),
            false => ApiError::Internal(e),
        }
    }

    fn spawn(
        self: Arc<Self>,
        job: Arc<Job>,
        collection: Arc<Collection>,
        input: Input,
        answer: Option<oneshot::Sender<Result<IngestResponse, ApiError>>>,
        // Background jobs hold a place in the queue until they end.
        slot: Option<QueueSlot>,
        lease: Lease,
    ) {
        let background = slot.is_some();
        tokio::spawn(async move {
            let _queued = slot;
            // A closed semaphore never happens (it lives as long as `self`).
            let _running = match background {
                true => self.slots.clone().acquire_owned().await.ok(),
                false => None,
            };
            // Its model work waits in the model queues as its tenant's, beside the others'.
            let party = Arc::from(owner(&collection.name));
            let run = self.run(&job, &collection, input, background, &lease);
            let result = ragway_worker::PARTY.scope(party, run).await;
            // Ended without being recorded as ended (its record could not be written, or
            // another process runs it now): no longer this process's.
            self.lock().remove(&job.status().id);
            drop(lease);
            if let Some(answer) = answer {
                let _ = answer.send(result);
            }
        });
    }

    /// Applies the documents not yet done, batch by batch (an import's, part by part).
    async fn run(
        &self,
        job: &Job,
        collection: &Collection,
        input: Input,
        background: bool,
        lease: &Lease,
    ) -> Result<IngestResponse, ApiError> {
        let done = job.status().documents_done;
        self.persist(&job.update(|s| s.state = JobState::Running), lease)
            .await?;
        match input {
            Input::Documents(documents) => {
                let rest = documents.into_iter().skip(done);
                let batch = self.settings.batch_chunks;
                self.apply_all(job, collection, rest, batch, background, lease)
                    .await?
            }
            Input::Parts { count, .. } => {
                let batch = self.settings.import_batch_chunks;
                for n in done / PART_DOCUMENTS..count {
                    let documents = match self.read_part(&job.status().id, n).await {
                        Ok(documents) => documents,
                        Err(why) => {
                            self.finish(job, Err(why.clone()), lease).await;
                            return Err(ApiError::Internal(why));
                        }
                    };
                    let skip = match n == done / PART_DOCUMENTS {
                        true => done % PART_DOCUMENTS,
                        false => 0,
                    };
                    let rest = documents.into_iter().skip(skip);
                    self.apply_all(job, collection, rest, batch, background, lease)
                        .await?;
                }
            }
        }
        self.finish(job, Ok(JobState::Done), lease).await;
        let status = job.status();
        Ok(IngestResponse {
            indexed: status.indexed,
            unchanged: status.unchanged,
            chunks: status.chunks_done,
            epoch: status.epoch,
        })
    }

    /// Applies `documents` in batches of about `batch_chunks` chunks, each recorded as done when
    /// applied; stops at a cancellation, or the first batch that fails (the job then failed).
    async fn apply_all(
        &self,
        job: &Job,
        collection: &Collection,
        documents: impl Iterator<Item = DocumentInput>,
        batch_chunks: usize,
        background: bool,
        lease: &Lease,
    ) -> Result<(), ApiError> {
        let mut rest = documents.peekable();
        while rest.peek().is_some() {
            if self.cancelled(job).await {
                self.finish(job, Ok(JobState::Cancelled), lease).await;
                return Err(ApiError::Conflict {
                    code: ErrorCode::JobCancelled,
                    message: "the ingestion job was cancelled".into(),
                });
            }
            let batch = next_batch(&mut rest, collection, batch_chunks);
            let size = batch.len();
            let before = job.status().chunks_done;
            let embedded = AtomicUsize::new(0);
            let applying = self.apply(collection, batch, background, job.stamp, &embedded);
            tokio::pin!(applying);
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.tick().await;
            // While a large batch (a file of many chunks) is embedded, its progress is written
            // every PROGRESS_EVERY, best effort; the batch's outcome is what counts.
            let applied = loop {
                tokio::select! {
                    applied = &mut applying => break applied,
                    _ = tick.tick() => {
                        let so_far = embedded.load(Ordering::Relaxed);
                        let update = job.update(|s| s.chunks_done = before + so_far);
                        let _ = self.persist(&update, lease).await;
                    }
                }
            };
            match applied {
                Ok(outcome) => {
                    let update = job.update(|s| {
                        s.chunks_done = before;
                        progress(s, size, outcome);
                    });
                    self.persist(&update, lease).await?
                }
                // Cut off from the registry mid-batch: the job is not failed; whichever process
                // holds its lease next resumes it.
                Err(
                    e @ ApiError::Busy {
                        code: ErrorCode::WriteFenced,
                        ..
                    },
                ) => return Err(e),
                Err(e) => {
                    self.finish(job, Err(e.to_string()), lease).await;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Cancelled here, or (shared store) through another replica.
    async fn cancelled(&self, job: &Job) -> bool {
        job.cancelled.load(Ordering::Acquire) || self.store.cancelled(&job.status().id).await
    }

    /// One batch; a background job waits out a busy embedder instead of failing.
    async fn apply(
        &self,
        collection: &Collection,
        batch: Vec<DocumentInput>,
        background: bool,
        stamp: u64,
        embedded: &AtomicUsize,
    ) -> Result<BatchOutcome, ApiError> {
        let mut tries = 0;
        loop {
            match self
                .collections
                .apply_batch(collection, batch.clone(), stamp, embedded)
                .await
            {
                // A busy dependency, not a lost lease: a fenced batch is another process's now.
                Err(ApiError::Busy { code, .. })
                    if code != ErrorCode::WriteFenced && background && tries < BUSY_TRIES =>
                {
                    tries += 1;
                    tokio::time::sleep(BUSY_WAIT).await;
                }
                result => return result,
            }
        }
    }

    /// Marks a job finished (`Ok(state)`) or failed (`Err(why)`), durably, and forgets its
    /// documents and the oldest finished jobs beyond `keep_finished`.
    async fn finish(&self, job: &Job, outcome: Result<JobState, String>, lease: &Lease) {
        let record = job.update(|s| {
            match outcome {
                Ok(state) => s.state = state,
                Err(why) => {
                    s.state = JobState::Failed;
                    s.errors.push(why);
                }
            }
            s.finished_at = Some(now());
        });
        let id = &record.status.id;
        match self
            .store
            .finish(&record, self.settings.keep_finished, lease)
            .await
        {
            Ok(()) => self.store.release(&record.status.collection, id).await,
            Err(WriteError::Fenced(e)) => tracing::warn!(
                job = id,
                reason = e,
                "another process runs this job now; its end is theirs to record"
            ),
            Err(WriteError::Failed(e)) => {
                tracing::error!(job = id, error = %e, "cannot record the end of a job")
            }
        }
        self.lock().remove(id);
    }

    async fn persist(&self, record: &Record, lease: &Lease) -> Result<(), ApiError> {
        match self.store.save(record, lease).await {
            Ok(()) => Ok(()),
            Err(WriteError::Failed(e)) => Err(self.failed(e)),
            Err(WriteError::Fenced(e)) => {
                tracing::warn!(
                    job = record.status.id,
                    reason = e,
                    "stopping a job another process runs now"
                );
                Err(ApiError::Busy {
                    code: ErrorCode::WriteFenced,
                    message: "this server lost its hold on the ingestion job (cut off from the job store, or paused); another server goes on with it".into(),
                    retry_after_s: 1,
                })
            }
        }
    }

    pub async fn get(&self, id: &str) -> Result<JobStatus, ApiError> {
        if let Some(job) = self.lock().get(id) {
            return Ok(job.status());
        }
        let record = self.store.get(id).await.map_err(|e| self.failed(e))?;
        record
            .map(|r| r.status)
            .ok_or_else(|| ApiError::JobNotFound(id.to_string()))
    }

    /// The jobs of a collection, oldest first.
    pub async fn of_collection(&self, name: &str) -> Result<Vec<JobStatus>, ApiError> {
        let mut jobs: BTreeMap<String, JobStatus> = BTreeMap::new();
        for record in self.store.all().await.map_err(|e| self.failed(e))? {
            jobs.insert(record.status.id.clone(), record.status);
        }
        for job in self.lock().values() {
            let status = job.status();
            jobs.insert(status.id.clone(), status);
        }
        let mut jobs: Vec<JobStatus> = jobs.into_values().filter(|s| s.collection == name).collect();
        jobs.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(jobs)
    }

    /// Asks a job to stop after its current batch (the batches before it stay applied), in
    /// whichever process runs it.
    pub async fn cancel(&self, id: &str) -> Result<JobStatus, ApiError> {
        let status = self.get(id).await?;
        if status.state.is_finished() {
            return Err(ApiError::Conflict {
                code: ErrorCode::JobFinished,
                message: format!("job `{id}` has already finished ({:?})", status.state),
            });
        }
        if let Some(job) = self.lock().get(id) {
            job.cancelled.store(true, Ordering::Release);
        }
        self.store.cancel(id).await.map_err(|e| self.failed(e))?;
        Ok(status)
    }
}

/// Documents up to about `batch_chunks` chunks (at least one document).
fn next_batch(
    rest: &mut std::iter::Peekable<impl Iterator<Item = DocumentInput>>,
    collection: &Collection,
    batch_chunks: usize,
) -> Vec<DocumentInput> {
    let mut batch = Vec::new();
    let mut chunks = 0;
    while let Some(doc) = rest.peek() {
        let cost = chunks_of(doc, collection);
        if !batch.is_empty() && chunks + cost > batch_chunks {
            break;
        }
        chunks += cost;
        batch.extend(rest.next());
    }
    batch
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

/// The chunks `doc` makes in `collection`: as its sender cut it, else by the collection's chunking.
fn chunks_of(doc: &DocumentInput, collection: &Collection) -> usize {
    match &doc.chunks {
        Some(given) => given.len(),
        None => collection
            .chunking
            .chunks_for(doc.text.split_whitespace().count()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_jobs_reservation_is_what_its_rest_adds() {
        let rest = Reservation {
            documents: 30,
            chunks: 61,
            bytes: 1_000,
        };
        // 40 of 100 done: stated for the whole job, it reads back as what the 60 others add.
        let whole = Reservation::of_rest(rest, 40, 100);
        let left = whole.remaining(40, 100);
        assert!(
            left.documents >= 30 && left.chunks >= 61 && left.bytes >= 1_000,
            "{left:?}"
        );
        assert!(
            left.documents <= 31 && left.chunks <= 62 && left.bytes <= 1_001,
            "{left:?}"
        );
        assert_eq!(Reservation::of_rest(rest, 100, 100), Reservation::default());
    }

    #[test]
    fn a_reservation_shrinks_as_its_documents_are_applied() {
        let whole = Reservation {
            documents: 10,
            chunks: 40,
            bytes: 4_000,
        };
        assert_eq!(whole.remaining(0, 10), whole);
        assert_eq!(
            whole.remaining(5, 10),
            Reservation {
                documents: 5,
                chunks: 20,
                bytes: 2_000
            }
        );
        assert_eq!(whole.remaining(10, 10), Reservation::default());
        assert_eq!(
            whole.remaining(0, 0),
            Reservation::default(),
            "an empty job adds nothing"
        );
    }
}
