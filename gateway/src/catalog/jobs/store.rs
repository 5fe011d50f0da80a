//! Where jobs live: files under the data directory (one process), or Redis (every replica, which
//! claims a job with a lease and takes over the jobs of a replica that died).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use ragway_cache::redis::{AsyncCommands, Script};
use ragway_cache::RedisTier;
use ragway_openapi::{DocumentInput, JobStatus};
use serde::{Deserialize, Serialize};

use crate::catalog::lease::{Lease, WriteError};
use crate::durable;

/// A job as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub status: JobStatus,
    /// The generation of the collection the job writes to.
    pub generation: String,
    /// When it was accepted (see `Collections::stamp`); a document another write accepted later
    /// has written or deleted is passed over. `None` in jobs accepted before stamps: stamped
    /// when resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<u64>,
}

#[async_trait]
pub(super) trait JobStore: Send + Sync {
    /// True when other processes run jobs from the same store.
    fn shared(&self) -> bool;
    /// Records a new job and its documents, durably.
    async fn create(&self, record: &Record, documents: &[DocumentInput]) -> Result<(), String>;
    /// Records the progress of a job this process runs under `lease` (from [`JobStore::claim`]):
    /// refused in a shared store once another process holds the job.
    async fn save(&self, record: &Record, lease: &Lease) -> Result<(), WriteError>;
    async fn get(&self, id: &str) -> Result<Option<Record>, String>;
    async fn all(&self) -> Result<Vec<Record>, String>;
    async fn documents(&self, id: &str) -> Result<Vec<DocumentInput>, String>;
    /// Records a finished job (fenced as [`JobStore::save`]), forgets its documents and the
    /// oldest finished jobs beyond `keep`.
    async fn finish(&self, record: &Record, keep: usize, lease: &Lease) -> Result<(), WriteError>;
    /// Claims an unfinished job for this process (`None`: another process runs it).
    async fn claim(&self, id: &str) -> Result<Option<Lease>, String>;
    /// Asks whichever process runs the job to stop it.
    async fn cancel(&self, id: &str) -> Result<(), String>;
    async fn cancelled(&self, id: &str) -> bool;
}

/// The finished jobs beyond the newest `keep` of each tenant: one tenant's many small jobs never
/// push another tenant's job records out.
fn excess(records: impl Iterator<Item = Record>, keep: usize) -> Vec<String> {
    let mut finished: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for record in records.filter(|r| r.status.state.is_finished()) {
        let tenant = crate::tenancy::owner(&record.status.collection).to_string();
        let when = record.status.finished_at.unwrap_or_default();
        finished.entry(tenant).or_default().push((when, record.status.id));
    }
    let mut excess = Vec::new();
    for mut jobs in finished.into_values() {
        jobs.sort();
        let over = jobs.len().saturating_sub(keep);
        excess.extend(jobs.into_iter().take(over).map(|(_, id)| id));
    }
    excess
}

/// `<dir>/<id>.json` (the record, rewritten after each batch) and `<id>.documents.json` (the
/// request's documents, removed when the job finishes); every record also kept in memory.
pub(super) struct FileJobs {
    dir: PathBuf,
    records: Mutex<BTreeMap<String, Record>>,
}

impl FileJobs {
    pub fn open(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut records = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let is_record = path.extension().is_some_and(|e| e == "json")
                && !path.to_string_lossy().ends_with(".documents.json");
            if !is_record {
                continue;
            }
            let read = std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| Ok(serde_json::from_slice::<Record>(&bytes)?));
            match read {
                Ok(record) => {
                    records.insert(record.status.id.clone(), record);
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot read job record; skipped")
                }
            }
        }
        Ok(Self {
            dir,
            records: Mutex::new(records),
        })
    }

    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record, durably (one process runs the data directory's jobs: nothing to fence).
    fn write(&self, record: &Record) -> Result<(), String> {
        let id = &record.status.id;
        durable::write(&self.record_path(id), &to_json(record)?)
            .map_err(|e| format!("cannot record job {id}: {e}"))?;
        self.records().insert(id.clone(), record.clone());
        Ok(())
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn documents_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.documents.json"))
    }
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| e.to_string())
}

#[async_trait]
impl JobStore for FileJobs {
    fn shared(&self) -> bool {
        false
    }

    async fn create(&self, record: &Record, documents: &[DocumentInput]) -> Result<(), String> {
        let id = &record.status.id;
        durable::write(&self.documents_path(id), &to_json(&documents)?)
            .map_err(|e| format!("cannot record job {id}: {e}"))?;
        self.write(record)
    }

    async fn save(&self, record: &Record, _lease: &Lease) -> Result<(), WriteError> {
        Ok(self.write(record)?)
    }

    async fn get(&self, id: &str) -> Result<Option<Record>, String> {
        Ok(self.records().get(id).cloned())
    }

    async fn all(&self) -> Result<Vec<Record>, String> {
        Ok(self.records().values().cloned().collect())
    }

    async fn documents(&self, id: &str) -> Result<Vec<DocumentInput>, String> {
        let bytes = std::fs::read(self.documents_path(id)).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }

    async fn finish(&self, record: &Record, keep: usize, _lease: &Lease) -> Result<(), WriteError> {
        self.write(record)?;
        let id = &record.status.id;
        durable::remove(&self.documents_path(id)).map_err(|e| format!("{id}'s documents: {e}"))?;
        let mut records = self.records();
        for old in excess(records.values().cloned(), keep) {
            records.remove(&old);
            let _ = std::fs::remove_file(self.record_path(&old));
        }
        Ok(())
    }

    async fn claim(&self, _id: &str) -> Result<Option<Lease>, String> {
        Ok(Some(Lease::local()))
    }

    /// One process runs every job: it sees the cancellation itself.
    async fn cancel(&self, _id: &str) -> Result<(), String> {
        Ok(())
    }

    async fn cancelled(&self, _id: &str) -> bool {
        false
    }
}

/// Id → record.
const RECORDS: &str = "ragway:jobs";

fn key(id: &str, part: &str) -> String {
    format!("ragway:job:{id}:{part}")
}

/// Writes a job's record (ARGV[2]) under its id (ARGV[1]) in the hash KEYS[1] while its lease
/// (KEYS[2]) is held with ARGV[3]; with ARGV[4] = 1 (finished), also forgets its documents and its
/// cancellation (KEYS[3], KEYS[4]). Returns 1, writing nothing, for a stale runner.
const SAVE: &str = r"if redis.call('get', KEYS[2]) ~= ARGV[3] then return 1 end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] == '1' then redis.call('del', KEYS[3], KEYS[4]) end
return 0";

/// Records in one Redis hash, each job's documents under `ragway:job:<id>:documents`, its lease
/// under `...:lease`, a cancellation under `...:cancel`. Durable as Redis is (see the registry).
/// Only the process holding a job's lease writes its record.
pub(super) struct RedisJobs {
    pub redis: RedisTier,
}

impl RedisJobs {
    async fn fenced(&self, record: &Record, lease: &Lease, finished: bool) -> Result<(), WriteError> {
        let id = &record.status.id;
        let Some((lease_key, token)) = lease.token() else {
            return Err(WriteError::Fenced(format!(
                "job {id} is run under a lease in a shared store"
            )));
        };
        let script = Script::new(SAVE);
        let mut invocation = script.key(RECORDS);
        invocation
            .key(lease_key)
            .key(key(id, "documents"))
            .key(key(id, "cancel"))
            .arg(id)
            .arg(to_json(record)?)
            .arg(token)
            .arg(if finished { "1" } else { "0" });
        let mut connection = self.redis.connection();
        let saved: i64 = self.redis.call(invocation.invoke_async(&mut connection)).await?;
        match saved {
            0 => Ok(()),
            _ => Err(WriteError::Fenced(format!(
                "job {id} is run by another process now"
            ))),
        }
    }
}

#[async_trait]
impl JobStore for RedisJobs {
    fn shared(&self) -> bool {
        true
    }

    async fn create(&self, record: &Record, documents: &[DocumentInput]) -> Result<(), String> {
        let id = &record.status.id;
        let mut connection = self.redis.connection();
        let mut pipe = ragway_cache::redis::pipe();
        pipe.atomic()
            .set(key(id, "documents"), to_json(&documents)?)
            .ignore()
            .hset(RECORDS, id, to_json(record)?)
            .ignore();
        self.redis.call(pipe.query_async::<()>(&mut connection)).await
    }

    async fn save(&self, record: &Record, lease: &Lease) -> Result<(), WriteError> {
        self.fenced(record, lease, false).await
    }

    async fn get(&self, id: &str) -> Result<Option<Record>, String> {
        let mut connection = self.redis.connection();
        let record: Option<Vec<u8>> = self.redis.call(connection.hget(RECORDS, id)).await?;
        record
            .map(|r| serde_json::from_slice(&r).map_err(|e| format!("job {id}: {e}")))
            .transpose()
    }

    async fn all(&self) -> Result<Vec<Record>, String> {
        let mut connection = self.redis.connection();
        let records: BTreeMap<String, Vec<u8>> = self.redis.call(connection.hgetall(RECORDS)).await?;
        Ok(records
            .into_iter()
            .filter_map(|(id, r)| match serde_json::from_slice(&r) {
                Ok(record) => Some(record),
                Err(e) => {
                    tracing::error!(job = id, error = %e, "cannot read job record; skipped");
                    None
                }
            })
            .collect())
    }

    async fn documents(&self, id: &str) -> Result<Vec<DocumentInput>, String> {
        let mut connection = self.redis.connection();
        let bytes: Option<Vec<u8>> = self.redis.call(connection.get(key(id, "documents"))).await?;
        let bytes = bytes.ok_or("they are not in redis")?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }

    async fn finish(&self, record: &Record, keep: usize, lease: &Lease) -> Result<(), WriteError> {
        self.fenced(record, lease, true).await?;
        let mut connection = self.redis.connection();
        let old = excess(self.all().await?.into_iter(), keep);
        if !old.is_empty() {
            self.redis.call(connection.hdel::<_, _, ()>(RECORDS, old)).await?;
        }
        Ok(())
    }

    async fn claim(&self, id: &str) -> Result<Option<Lease>, String> {
        Lease::try_take(&self.redis, key(id, "lease")).await
    }

    async fn cancel(&self, id: &str) -> Result<(), String> {
        let mut connection = self.redis.connection();
        self.redis
            .call(connection.set_ex::<_, _, ()>(key(id, "cancel"), 1, 86_400))
            .await
    }

    async fn cancelled(&self, id: &str) -> bool {
        let mut connection = self.redis.connection();
        let cancel: Result<Option<u8>, String> = self.redis.call(connection.get(key(id, "cancel"))).await;
        matches!(cancel, Ok(Some(_)))
    }
}

#[cfg(test)]
mod tests {
    use ragway_openapi::JobState;

    use super::*;

    fn finished(id: &str, collection: &str, at: &str) -> Record {
        Record {
            status: JobStatus {
                id: id.into(),
                collection: collection.into(),
                state: JobState::Done,
                documents_total: 1,
                documents_done: 1,
                indexed: 1,
                unchanged: 0,
                chunks_done: 1,
                epoch: 1,
                errors: Vec::new(),
                created_at: at.into(),
                finished_at: Some(at.into()),
            },
            generation: "g".into(),
            stamp: None,
        }
    }

    /// Issue 40 item 4: the job history is kept per tenant.
    #[test]
    fn each_tenant_keeps_its_newest_finished_jobs() {
        let mut records = vec![finished("quiet-1", "tq.notes", "2026-01-01T00:00:00Z")];
        for i in 0..5 {
            records.push(finished(
                &format!("busy-{i}"),
                "tb.notes",
                &format!("2026-01-02T00:00:0{i}Z"),
            ));
        }
        let mut running = finished("busy-running", "tb.notes", "2026-01-03T00:00:00Z");
        running.status.state = JobState::Running;
        records.push(running);
        let mut gone = excess(records.into_iter(), 2);
        gone.sort();
        assert_eq!(gone, ["busy-0", "busy-1", "busy-2"]);
    }
}
