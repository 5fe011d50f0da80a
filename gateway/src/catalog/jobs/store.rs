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

use crate::catalog::collections::storage_key;
use crate::catalog::lease::{Lease, WriteError};
use crate::durable;
use crate::tenancy::quota::policy::{Amounts, OverStorage, StorageQuota};

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
    /// An import's documents come in this many parts (see [`super::parts`]), not in one list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<usize>,
    /// What an import adds to its tenant's storage: documents, chunks, bytes (a resumed import's
    /// documents are not read whole again to know it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<[u64; 3]>,
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
    /// Writes part `n` of import `id` (see [`super::parts`]), durably, before its job is created.
    async fn put_part(&self, id: &str, n: usize, bytes: Vec<u8>) -> Result<(), String>;
    async fn part(&self, id: &str, n: usize) -> Result<Vec<u8>, String>;
    /// Forgets the first `count` parts of import `id` (it ended, or its body was refused).
    async fn drop_parts(&self, id: &str, count: usize);
    /// Records a finished job (fenced as [`JobStore::save`]), forgets its documents and the
    /// oldest finished jobs beyond `keep`.
    async fn finish(&self, record: &Record, keep: usize, lease: &Lease) -> Result<(), WriteError>;
    /// Claims an unfinished job for this process (`None`: another process runs it).
    async fn claim(&self, id: &str) -> Result<Option<Lease>, String>;
    /// Asks whichever process runs the job to stop it.
    async fn cancel(&self, id: &str) -> Result<(), String>;
    async fn cancelled(&self, id: &str) -> bool;
    /// Admits a write in one step across every process sharing the store: see [`Hold`]. `None`:
    /// the store is not shared, and the caller decides in its own process.
    async fn hold(&self, _hold: &Hold<'_>) -> Option<Result<Result<(), OverStorage>, String>> {
        None
    }
    /// Gives back what job `id` of collection `collection` held (it ended, or was never recorded).
    async fn release(&self, _collection: &str, _id: &str) {}
}

/// A write to hold room for in a shared store: it holds `reservation` under the job id `id` if
/// what the tenant of `collection` stores, with what every unfinished job of it holds and the
/// write's `growth`, fits `limits`. What a collection stores is the store's own count (written
/// with each change of it); `known` (what this process knows of the tenant's collections) stands
/// in only for a collection the store has no count of yet.
pub(super) struct Hold<'a> {
    pub collection: &'a str,
    pub id: &'a str,
    pub limits: Amounts<Option<u64>>,
    pub known: &'a [(String, Amounts<u64>)],
    pub growth: Amounts<i64>,
    pub reservation: Amounts<u64>,
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
        // Parts of an import whose body never ended (the process died while reading it).
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let stem = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".parts"));
            if stem.is_some_and(|id| !records.contains_key(id)) {
                let _ = std::fs::remove_dir_all(&path);
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

    fn parts_dir(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.parts"))
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

    async fn put_part(&self, id: &str, n: usize, bytes: Vec<u8>) -> Result<(), String> {
        let dir = self.parts_dir(id);
        let written = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            durable::write(&dir.join(format!("{n}.part")), &bytes)
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot record part {n} of import {id}: {e}")),
            Err(e) => Err(format!("cannot record part {n} of import {id}: {e}")),
        }
    }

    async fn part(&self, id: &str, n: usize) -> Result<Vec<u8>, String> {
        let path = self.parts_dir(id).join(format!("{n}.part"));
        tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("part {n} of import {id}: {e}"))
    }

    async fn drop_parts(&self, id: &str, _count: usize) {
        let dir = self.parts_dir(id);
        let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await;
        if !matches!(removed, Ok(Ok(()))) {
            tracing::warn!(job = id, "cannot remove an import's parts");
        }
    }

    async fn finish(&self, record: &Record, keep: usize, _lease: &Lease) -> Result<(), WriteError> {
        self.write(record)?;
        let id = &record.status.id;
        durable::remove(&self.documents_path(id)).map_err(|e| format!("{id}'s documents: {e}"))?;
        if let Some(parts) = record.parts {
            self.drop_parts(id, parts).await;
        }
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

/// An import's parts expire after a week: those of a body that never became a job (its replica
/// died while reading it) go by themselves; a job still queued then fails, saying so.
const PART_TTL_S: u64 = 7 * 86_400;

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

/// The seconds a hold waits for its job's record (the write admitted, not yet submitted).
const UNRECORDED_HOLD_S: u64 = 60;

/// Storage admission across replicas. KEYS: the tenant's stored counts per collection (see
/// [`storage_key`]), its holds (job id → `<documents> <chunks> <bytes> <until>`), the job records.
/// ARGV: the limits (three, `-1`: none), the growth (three), the job id, its reservation, the
/// seconds it may wait unrecorded, then a count of known collections and their name, counts pairs.
/// A hold counts what its job has still to apply, from its record (as `Reservation::remaining`
/// does); a hold whose job ended, or that was never recorded by its `until`, is dropped here.
/// Returns `{0}` having held, or `{quota, after}` (1 documents, 2 chunks, 3 bytes), holding
/// nothing. Counts stay below 2^53, where Lua's numbers are exact.
const HOLD: &str = r"local function nums(s) local t = {} for n in string.gmatch(s, '%S+') do t[#t + 1] = tonumber(n) end return t end
local held = {0, 0, 0}
local function add(v) for q = 1, 3 do held[q] = held[q] + v[q] end end
local stored = redis.call('hgetall', KEYS[1])
local counted = {}
for i = 1, #stored, 2 do counted[stored[i]] = true add(nums(stored[i + 1])) end
local i = 11
for _ = 1, tonumber(ARGV[10]) do
  if not counted[ARGV[i]] then add(nums(ARGV[i + 1])) end
  i = i + 2
end
local now = tonumber(redis.call('time')[1])
local holds = redis.call('hgetall', KEYS[2])
for h = 1, #holds, 2 do
  local v = nums(holds[h + 1])
  local record = redis.call('hget', KEYS[3], holds[h])
  local keep = false
  if record then
    local s = cjson.decode(record)['status']
    if s['state'] == 'queued' or s['state'] == 'running' then
      keep = true
      local total = tonumber(s['documents_total'])
      if total > 0 then
        for q = 1, 3 do v[q] = math.floor(v[q] * (total - tonumber(s['documents_done'])) / total) end
      end
    end
  else
    keep = v[4] > now
  end
  if keep then add(v) else redis.call('hdel', KEYS[2], holds[h]) end
end
for q = 1, 3 do
  local limit, grows = tonumber(ARGV[q]), tonumber(ARGV[q + 3])
  if limit >= 0 and grows > 0 and held[q] + grows > limit then return {q, held[q] + grows} end
end
redis.call('hset', KEYS[2], ARGV[7], ARGV[8] .. ' ' .. (now + tonumber(ARGV[9])))
return {0}";

/// The tenant's holds on its storage (see [`HOLD`]).
fn holds_key(collection: &str) -> String {
    format!("{}:holds", storage_key(collection))
}

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
        let mut connection = self.redis.durable_connection();
        let saved: i64 = self
            .redis
            .durable(invocation.invoke_async(&mut connection))
            .await?;
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
        let mut connection = self.redis.durable_connection();
        let mut pipe = ragway_cache::redis::pipe();
        pipe.atomic()
            .set(key(id, "documents"), to_json(&documents)?)
            .ignore()
            .hset(RECORDS, id, to_json(record)?)
            .ignore();
        self.redis.durable(pipe.query_async::<()>(&mut connection)).await
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

    async fn put_part(&self, id: &str, n: usize, bytes: Vec<u8>) -> Result<(), String> {
        let mut connection = self.redis.durable_connection();
        self.redis
            .durable(connection.set_ex::<_, _, ()>(key(id, &format!("part:{n}")), bytes, PART_TTL_S))
            .await
    }

    async fn part(&self, id: &str, n: usize) -> Result<Vec<u8>, String> {
        let mut connection = self.redis.connection();
        let bytes: Option<Vec<u8>> = self
            .redis
            .call(connection.get(key(id, &format!("part:{n}"))))
            .await?;
        bytes.ok_or_else(|| format!("part {n} of import {id} is not in redis"))
    }

    async fn drop_parts(&self, id: &str, count: usize) {
        let mut connection = self.redis.connection();
        let keys: Vec<String> = (0..count).map(|n| key(id, &format!("part:{n}"))).collect();
        for keys in keys.chunks(512) {
            let dropped: Result<(), String> = self.redis.call(connection.del(keys)).await;
            if let Err(e) = dropped {
                tracing::warn!(job = id, error = %e, "cannot remove an import's parts");
            }
        }
    }

    async fn finish(&self, record: &Record, keep: usize, lease: &Lease) -> Result<(), WriteError> {
        self.fenced(record, lease, true).await?;
        if let Some(parts) = record.parts {
            self.drop_parts(&record.status.id, parts).await;
        }
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
        let mut connection = self.redis.durable_connection();
        self.redis
            .durable(connection.set_ex::<_, _, ()>(key(id, "cancel"), 1, 86_400))
            .await
    }

    async fn cancelled(&self, id: &str) -> bool {
        let mut connection = self.redis.connection();
        let cancel: Result<Option<u8>, String> = self.redis.call(connection.get(key(id, "cancel"))).await;
        matches!(cancel, Ok(Some(_)))
    }

    async fn hold(&self, hold: &Hold<'_>) -> Option<Result<Result<(), OverStorage>, String>> {
        let limit = |l: Option<u64>| l.map_or(-1, i128::from);
        let counts = |a: Amounts<u64>| format!("{} {} {}", a.documents, a.chunks, a.bytes);
        let script = Script::new(HOLD);
        let mut invocation = script.key(storage_key(hold.collection));
        invocation
            .key(holds_key(hold.collection))
            .key(RECORDS)
            .arg(limit(hold.limits.documents))
            .arg(limit(hold.limits.chunks))
            .arg(limit(hold.limits.bytes))
            .arg(hold.growth.documents)
            .arg(hold.growth.chunks)
            .arg(hold.growth.bytes)
            .arg(hold.id)
            .arg(counts(hold.reservation))
            .arg(UNRECORDED_HOLD_S)
            .arg(hold.known.len());
        for (name, known) in hold.known {
            invocation.arg(name).arg(counts(*known));
        }
        let mut connection = self.redis.connection();
        let answer: Result<Vec<i64>, String> =
            self.redis.call(invocation.invoke_async(&mut connection)).await;
        let over = |quota| {
            let (quota, limit) = match quota {
                1 => (StorageQuota::Documents, hold.limits.documents),
                2 => (StorageQuota::Chunks, hold.limits.chunks),
                _ => (StorageQuota::Bytes, hold.limits.bytes),
            };
            (quota, limit.unwrap_or_default())
        };
        Some(answer.map(|answer| match answer[..] {
            [quota, after] => {
                let (quota, limit) = over(quota);
                Err(OverStorage {
                    quota,
                    after: i128::from(after),
                    limit,
                })
            }
            _ => Ok(()),
        }))
    }

    async fn release(&self, collection: &str, id: &str) {
        let mut connection = self.redis.connection();
        let released: Result<(), String> = self.redis.call(connection.hdel(holds_key(collection), id)).await;
        if let Err(e) = released {
            // Dropped by the next admission once the job's record says it ended.
            tracing::debug!(job = id, error = %e, "cannot release a storage hold");
        }
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
                chunks_total: 1,
                epoch: 1,
                errors: Vec::new(),
                created_at: at.into(),
                finished_at: Some(at.into()),
            },
            generation: "g".into(),
            stamp: None,
            parts: None,
            reserved: None,
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
