//! The model worker: one thread that owns a model, fed by a bounded queue with two lanes.
//!
//! Embedder, cross-encoder and local LLM all run this way. Interactive work (a query waiting on
//! its answer) is always taken before bulk work (ingestion, embedding batches), and a bulk task
//! may hand itself back after each slice so that a query never waits behind more than one slice.
//! A full lane refuses at once ([`Overloaded`]) instead of letting the queue grow, and a task
//! whose caller has gone (deadline passed, client disconnected) is dropped before it runs.
//! Within a lane, tasks are served fairly between the parties they are for ([`PARTY`], a
//! tenant): one task of each party with work waiting in turn, and no party may hold more than
//! [`QueueLimits::share`] of a lane, so one tenant's flood lengthens its own wait, not another's.
//!
//! [`onnx`] holds what every ONNX Runtime model shares: the runtime, loaded once per process, and
//! running a BERT-shaped graph on a tokenised batch; [`batch_tokenizer`] the tokenizer set-up the
//! BERT models share.
//!
//! Metrics: `ragway_worker_queue_depth{worker,lane}`, `ragway_worker_queue_wait_seconds{worker,lane}`,
//! `ragway_worker_rejected_total{worker,lane}`, `ragway_worker_abandoned_total{worker,lane}`.

pub mod onnx;

/// A tokenizer for batched encoder input, from a `tokenizer.json`: each batch padded to its longest
/// member, every input cut at `max_tokens`.
pub fn batch_tokenizer(json: &[u8], max_tokens: usize) -> Result<tokenizers::Tokenizer, String> {
    use tokenizers::{PaddingParams, PaddingStrategy, TruncationParams};
    let mut tokenizer =
        tokenizers::Tokenizer::from_bytes(json).map_err(|e| format!("bad tokenizer.json: {e}"))?;
    let padding = PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        ..tokenizer.get_padding().cloned().unwrap_or_default()
    };
    tokenizer.with_padding(Some(padding));
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            ..Default::default()
        }))
        .map_err(|e| format!("bad truncation: {e}"))?;
    Ok(tokenizer)
}

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Where a task stands, for whoever awaits its answer: set through [`PROGRESS`] when the task
/// is queued and when a worker takes it, so that a timeout can tell time spent waiting in the
/// queue (the worker is busy: not its failure) from time spent running.
#[derive(Debug, Default)]
pub struct Progress(std::sync::atomic::AtomicU8);

const QUEUED: u8 = 1;
const TAKEN: u8 = 2;

impl Progress {
    /// Queued and not yet taken by the worker.
    pub fn waiting(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire) == QUEUED
    }

    fn set(&self, state: u8) {
        self.0.store(state, std::sync::atomic::Ordering::Release);
    }
}

tokio::task_local! {
    /// The progress of the tasks a future submits while it runs in this scope (see
    /// [`Progress`]); without one, nothing is recorded.
    pub static PROGRESS: std::sync::Arc<Progress>;
    /// Whom the tasks a future submits while it runs in this scope are for (a tenant): each lane
    /// serves the parties with work waiting in turn, and one party may hold at most
    /// [`QueueLimits::share`] of a lane, so that a flood from one party lengthens only its own
    /// wait. Without one, tasks are the anonymous party's.
    pub static PARTY: Arc<str>;
}

/// Which lane a task waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Someone is waiting on the answer now (a query).
    Interactive,
    /// Throughput work (ingestion, `/v1/embeddings` batches): served when no interactive task waits.
    Bulk,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interactive => "interactive",
            Self::Bulk => "bulk",
        }
    }
}

/// How many tasks each lane holds before it refuses more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub interactive: usize,
    pub bulk: usize,
}

impl QueueLimits {
    /// The most tasks one named party may hold of a lane of `limit`: three quarters, so that a
    /// party alone can use most of it and a quarter is always left to the others (the anonymous
    /// party — a server without tenants — may use all of it).
    pub fn share(limit: usize) -> usize {
        (limit - limit / 4).max(1)
    }
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            interactive: 64,
            bulk: 8,
        }
    }
}

/// The lane was full: the task was not queued. Not the model's fault; retry later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {worker} is overloaded: its {lane} queue is full")]
pub struct Overloaded {
    pub worker: String,
    pub lane: &'static str,
}

/// A call stopped around its stage before or while it ran: by the gateway's guard (an open
/// breaker, the stage's timeout, the request's deadline, an injected fault) or by a budget (the
/// tenant's spent allowance, a cost that does not fit the time left). Every stage's error carries
/// one, so that a decorator around a stage answers in the stage's own error type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stopped {
    #[error("breaker open")]
    BreakerOpen,
    #[error("timed out")]
    Timeout,
    /// The request's deadline passed, or leaves too little time to start.
    #[error("request deadline reached")]
    Deadline,
    #[error("{0}")]
    Injected(String),
    /// The tenant's budget for this stage is spent.
    #[error("budget spent")]
    BudgetSpent,
}

/// A unit of work for a worker.
pub trait Task: Send + 'static {
    /// True when nobody waits for the result any more; such a task is dropped unrun.
    fn abandoned(&self) -> bool;
}

/// A task as it waits in its lane.
pub struct Queued<T> {
    pub task: T,
    pub priority: Priority,
    enqueued: Instant,
    progress: Option<std::sync::Arc<Progress>>,
    party: Arc<str>,
}

/// One lane: each party's tasks in the order they came, and the parties with tasks waiting in
/// the order they are served — one task each in turn.
struct Lane<T> {
    parties: VecDeque<(Arc<str>, VecDeque<Queued<T>>)>,
    len: usize,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Self {
            parties: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> Lane<T> {
    fn len(&self) -> usize {
        self.len
    }

    /// The tasks `party` has waiting.
    fn held_by(&self, party: &str) -> usize {
        self.tasks_of(party).map_or(0, |tasks| tasks.len())
    }

    fn tasks_of(&self, party: &str) -> Option<&VecDeque<Queued<T>>> {
        self.parties
            .iter()
            .find(|(p, _)| &**p == party)
            .map(|(_, tasks)| tasks)
    }

    /// After the party's other tasks; a party new to the lane is served after those waiting.
    fn push_back(&mut self, queued: Queued<T>) {
        self.len += 1;
        match self.parties.iter_mut().find(|(p, _)| *p == queued.party) {
            Some((_, tasks)) => tasks.push_back(queued),
            None => self
                .parties
                .push_back((queued.party.clone(), VecDeque::from([queued]))),
        }
    }

    /// Before the party's other tasks (a task handed back to be continued), in its party's turn.
    fn push_front(&mut self, queued: Queued<T>) {
        self.len += 1;
        match self.parties.iter_mut().find(|(p, _)| *p == queued.party) {
            Some((_, tasks)) => tasks.push_front(queued),
            None => self
                .parties
                .push_back((queued.party.clone(), VecDeque::from([queued]))),
        }
    }

    /// The next party's first task; that party then waits for its next turn behind the others.
    fn pop_front(&mut self) -> Option<Queued<T>> {
        let (party, mut tasks) = self.parties.pop_front()?;
        let queued = tasks.pop_front();
        if !tasks.is_empty() {
            self.parties.push_back((party, tasks));
        }
        self.len -= usize::from(queued.is_some());
        queued
    }
}

struct Lanes<T> {
    interactive: Lane<T>,
    bulk: Lane<T>,
    closed: bool,
}

impl<T> Lanes<T> {
    fn lane(&mut self, priority: Priority) -> &mut Lane<T> {
        match priority {
            Priority::Interactive => &mut self.interactive,
            Priority::Bulk => &mut self.bulk,
        }
    }
}

/// The two lanes of one worker.
pub struct Queue<T> {
    name: String,
    limits: QueueLimits,
    lanes: Mutex<Lanes<T>>,
    ready: Condvar,
}

impl<T: Task> Queue<T> {
    fn new(name: &str, limits: QueueLimits) -> Self {
        for priority in [Priority::Interactive, Priority::Bulk] {
            metrics::gauge!("ragway_worker_queue_depth", "worker" => name.to_string(), "lane" => priority.as_str())
                .set(0.0);
        }
        Self {
            name: name.to_string(),
            limits,
            lanes: Mutex::new(Lanes {
                interactive: Lane::default(),
                bulk: Lane::default(),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lanes<T>> {
        // A panic while holding this lock leaves the lanes consistent (push/pop are atomic).
        self.lanes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn limit(&self, priority: Priority) -> usize {
        match priority {
            Priority::Interactive => self.limits.interactive,
            Priority::Bulk => self.limits.bulk,
        }
    }

    fn publish_depth(&self, lanes: &Lanes<T>, priority: Priority) {
        let depth = match priority {
            Priority::Interactive => lanes.interactive.len(),
            Priority::Bulk => lanes.bulk.len(),
        };
        metrics::gauge!("ragway_worker_queue_depth", "worker" => self.name.clone(), "lane" => priority.as_str())
            .set(depth as f64);
    }

    /// Queues `task`, or refuses at once when its lane is full or its party holds its share.
    pub fn push(&self, task: T, priority: Priority) -> Result<(), Overloaded> {
        let party = PARTY.try_with(Arc::clone).unwrap_or_else(|_| Arc::from(""));
        let mut lanes = self.lock();
        let limit = self.limit(priority);
        let lane = lanes.lane(priority);
        // The anonymous party (no tenants: everything is its) may use the whole lane.
        let over_share = !party.is_empty() && lane.held_by(&party) >= QueueLimits::share(limit);
        let full = lane.len() >= limit || over_share;
        if lanes.closed || full {
            metrics::counter!("ragway_worker_rejected_total", "worker" => self.name.clone(), "lane" => priority.as_str())
                .increment(1);
            return Err(Overloaded {
                worker: self.name.clone(),
                lane: priority.as_str(),
            });
        }
        let progress = PROGRESS.try_with(std::sync::Arc::clone).ok();
        if let Some(progress) = &progress {
            progress.set(QUEUED);
        }
        lanes.lane(priority).push_back(Queued {
            progress,
            task,
            priority,
            enqueued: Instant::now(),
            party,
        });
        self.publish_depth(&lanes, priority);
        drop(lanes);
        self.ready.notify_one();
        Ok(())
    }

    /// Puts a partly done task back at the head of its party's tasks, to be continued in its
    /// party's next turn (no limit: it was already admitted).
    pub fn requeue(&self, queued: Queued<T>) {
        let mut lanes = self.lock();
        let priority = queued.priority;
        lanes.lane(priority).push_front(queued);
        self.publish_depth(&lanes, priority);
    }

    /// The next live interactive task, if one waits; for workers that merge small tasks.
    pub fn try_pop_interactive(&self) -> Option<T> {
        let mut lanes = self.lock();
        let task = self.take_live(&mut lanes, Priority::Interactive);
        task.map(|q| q.task)
    }

    /// Blocks until a task is ready (interactive first) or the queue is closed and empty.
    pub fn pop(&self) -> Option<Queued<T>> {
        let mut lanes = self.lock();
        loop {
            for priority in [Priority::Interactive, Priority::Bulk] {
                if let Some(queued) = self.take_live(&mut lanes, priority) {
                    return Some(queued);
                }
            }
            if lanes.closed {
                return None;
            }
            lanes = self
                .ready
                .wait(lanes)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Pops from one lane, dropping abandoned tasks on the way; records the wait.
    fn take_live(&self, lanes: &mut Lanes<T>, priority: Priority) -> Option<Queued<T>> {
        while let Some(queued) = lanes.lane(priority).pop_front() {
            self.publish_depth(lanes, priority);
            let lane = priority.as_str();
            if queued.task.abandoned() {
                metrics::counter!("ragway_worker_abandoned_total", "worker" => self.name.clone(), "lane" => lane)
                    .increment(1);
                continue;
            }
            metrics::histogram!("ragway_worker_queue_wait_seconds", "worker" => self.name.clone(), "lane" => lane)
                .record(queued.enqueued.elapsed().as_secs_f64());
            if let Some(progress) = &queued.progress {
                progress.set(TAKEN);
            }
            return Some(queued);
        }
        None
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

/// What a worker does with the task it took: finish it (`None`), or hand it back to be continued
/// after any interactive work that arrived meanwhile (`Some`).
pub type Step<T> = Option<Queued<T>>;

/// The handle to a worker thread; dropping it lets the thread finish its queue (tasks nobody
/// waits for any more are dropped unrun) and waits for it to stop, at most [`STOP_WAIT`]: a model
/// thread still running while the process exits would meet its libraries' teardown (llama.cpp's
/// and OpenMP's static state) and crash the process on its way out.
pub struct Worker<T: Task> {
    queue: Arc<Queue<T>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// The longest dropping a [`Worker`] waits for its thread.
pub const STOP_WAIT: Duration = Duration::from_secs(30);

impl<T: Task> Worker<T> {
    /// Starts a thread named `name` that owns `state` (the model) and runs `handle` on each task.
    pub fn spawn<S, F>(name: &str, limits: QueueLimits, mut state: S, mut handle: F) -> std::io::Result<Self>
    where
        S: Send + 'static,
        F: FnMut(&mut S, Queued<T>, &Queue<T>) -> Step<T> + Send + 'static,
    {
        Self::spawn_with(name, limits, move |queue| {
            while let Some(queued) = queue.pop() {
                if let Some(rest) = handle(&mut state, queued, queue) {
                    queue.requeue(rest);
                }
            }
        })
    }

    /// Starts a thread named `name` that runs `body` with the queue, for a worker whose state
    /// cannot move between threads or borrows from itself (a model and the context that reads
    /// it) and is therefore built on the thread. `body` takes tasks with [`Queue::pop`] until it
    /// answers `None`.
    pub fn spawn_with<F>(name: &str, limits: QueueLimits, body: F) -> std::io::Result<Self>
    where
        F: FnOnce(&Queue<T>) + Send + 'static,
    {
        let queue = Arc::new(Queue::new(name, limits));
        let worker_queue = queue.clone();
        let thread = thread::Builder::new().name(name.to_string()).spawn(move || {
            body(&worker_queue);
            tracing::debug!(worker = worker_queue.name, "worker stopped");
        })?;
        Ok(Self {
            queue,
            thread: Some(thread),
        })
    }

    /// Queues a task, or refuses at once when its lane is full.
    pub fn submit(&self, task: T, priority: Priority) -> Result<(), Overloaded> {
        self.queue.push(task, priority)
    }
}

impl<T: Task> Drop for Worker<T> {
    fn drop(&mut self) {
        self.queue.close();
        let Some(thread) = self.thread.take() else { return };
        let started = Instant::now();
        while !thread.is_finished() {
            if started.elapsed() > STOP_WAIT {
                tracing::warn!(
                    worker = self.queue.name,
                    "worker thread still busy after {STOP_WAIT:?}; left running"
                );
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let _ = thread.join();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    struct Probe {
        label: &'static str,
        done: mpsc::Sender<&'static str>,
        gone: Arc<AtomicBool>,
        /// Slices left; a bulk task hands itself back after each.
        slices: usize,
    }

    impl Task for Probe {
        fn abandoned(&self) -> bool {
            self.gone.load(Ordering::Acquire)
        }
    }

    fn probe(label: &'static str, done: &mpsc::Sender<&'static str>, slices: usize) -> Probe {
        Probe {
            label,
            done: done.clone(),
            gone: Arc::new(AtomicBool::new(false)),
            slices,
        }
    }

    /// A worker that waits on `gate` before its first task, so tasks can pile up first.
    fn gated_worker(limits: QueueLimits) -> (Worker<Probe>, mpsc::Sender<()>) {
        let (open, gate) = mpsc::channel::<()>();
        let mut gate = Some(gate);
        let worker = Worker::spawn("test", limits, (), move |_, mut queued: Queued<Probe>, _| {
            if let Some(gate) = gate.take() {
                let _ = gate.recv();
            }
            let _ = queued.task.done.send(queued.task.label);
            queued.task.slices -= 1;
            (queued.task.slices > 0).then_some(queued)
        });
        match worker {
            Ok(worker) => (worker, open),
            Err(e) => panic!("cannot spawn: {e}"),
        }
    }

    fn order(done: &mpsc::Receiver<&'static str>, n: usize) -> Vec<&'static str> {
        (0..n)
            .map(|_| done.recv_timeout(Duration::from_secs(5)).unwrap_or("timeout"))
            .collect()
    }

    #[test]
    fn interactive_work_overtakes_bulk_between_slices() -> Result<(), Overloaded> {
        let (done, results) = mpsc::channel();
        let (worker, open) = gated_worker(QueueLimits::default());
        worker.submit(probe("first", &done, 1), Priority::Interactive)?;
        worker.submit(probe("bulk", &done, 3), Priority::Bulk)?;
        worker.submit(probe("query", &done, 1), Priority::Interactive)?;
        let _ = open.send(());
        assert_eq!(order(&results, 2), ["first", "query"]);
        assert_eq!(order(&results, 1), ["bulk"]);
        // The bulk task is back at the head of its lane; a query sent now still goes first.
        worker.submit(probe("late query", &done, 1), Priority::Interactive)?;
        let rest = order(&results, 3);
        assert!(rest.contains(&"late query"), "{rest:?}");
        assert_eq!(rest.iter().filter(|l| **l == "bulk").count(), 2);
        Ok(())
    }

    /// `task` submitted for `party`.
    fn submit_for(worker: &Worker<Probe>, party: &str, task: Probe) -> Result<(), Overloaded> {
        PARTY.sync_scope(Arc::from(party), || worker.submit(task, Priority::Interactive))
    }

    #[test]
    fn parties_are_served_in_turn_and_none_holds_the_whole_lane() -> Result<(), Overloaded> {
        let (done, results) = mpsc::channel();
        let limits = QueueLimits {
            interactive: 8,
            bulk: 1,
        };
        let (worker, open) = gated_worker(limits);
        submit_for(&worker, "flood", probe("running", &done, 1))?;
        std::thread::sleep(Duration::from_millis(50)); // taken; the worker waits on the gate
        for label in ["f1", "f2", "f3", "f4", "f5", "f6"] {
            submit_for(&worker, "flood", probe(label, &done, 1))?;
        }
        let over = submit_for(&worker, "flood", probe("f7", &done, 1));
        assert!(over.is_err(), "six of eight places are the flood's share");
        submit_for(&worker, "calm", probe("c1", &done, 1))?;
        submit_for(&worker, "calm", probe("c2", &done, 1))?;
        let _ = open.send(());
        assert_eq!(
            order(&results, 9),
            ["running", "f1", "c1", "f2", "c2", "f3", "f4", "f5", "f6"],
            "one task of each party in turn"
        );
        // Without tenants, everything is the anonymous party's: the whole lane is its.
        let (worker, open) = gated_worker(limits);
        worker.submit(probe("running", &done, 1), Priority::Interactive)?;
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..8 {
            worker.submit(probe("anonymous", &done, 1), Priority::Interactive)?;
        }
        assert!(
            worker
                .submit(probe("ninth", &done, 1), Priority::Interactive)
                .is_err(),
            "full"
        );
        let _ = open.send(());
        let ran = order(&results, 9);
        assert!(
            ran.iter().all(|label| *label != "timeout"),
            "all nine ran: {ran:?}"
        );
        Ok(())
    }

    #[test]
    fn a_full_lane_refuses_at_once_and_abandoned_tasks_never_run() -> Result<(), Overloaded> {
        let (done, results) = mpsc::channel();
        let limits = QueueLimits {
            interactive: 2,
            bulk: 1,
        };
        let (worker, open) = gated_worker(limits);
        worker.submit(probe("running", &done, 1), Priority::Interactive)?;
        // Let the worker take "running" and block on the gate.
        std::thread::sleep(Duration::from_millis(50));
        let abandoned = probe("abandoned", &done, 1);
        let gone = abandoned.gone.clone();
        worker.submit(abandoned, Priority::Interactive)?;
        worker.submit(probe("kept", &done, 1), Priority::Interactive)?;
        let refused = worker.submit(probe("refused", &done, 1), Priority::Interactive);
        assert_eq!(refused.err().map(|e| e.lane), Some("interactive"));
        worker.submit(probe("bulk", &done, 1), Priority::Bulk)?;
        assert!(worker.submit(probe("bulk 2", &done, 1), Priority::Bulk).is_err());
        gone.store(true, Ordering::Release);
        let _ = open.send(());
        assert_eq!(order(&results, 3), ["running", "kept", "bulk"]);
        assert!(results.recv_timeout(Duration::from_millis(200)).is_err());
        Ok(())
    }
}
