//! Where collection manifests live: files under the data directory (one process), or Redis (every
//! replica of a deployment on one Qdrant server, which then keeps nothing a request needs). Both
//! write what a change touched, not the whole collection.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use ragway_cache::redis::{AsyncCommands, Script};
use ragway_cache::RedisTier;

use ragway_retrieval::Fusion;
use serde::{Deserialize, Serialize};

use super::manifest::{DocumentRecord, Manifest};
use crate::catalog::lease::Lease;
pub(super) use crate::catalog::lease::WriteError;

/// How many collections there may be: on the server (`limits.max_collections`) and of a new
/// collection's tenant (its `limits.collections`; `None`: no limit).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub server: usize,
    pub owner: Option<u64>,
}

impl Caps {
    /// The server's cap alone.
    pub fn server(max: usize) -> Self {
        Self {
            server: max,
            owner: None,
        }
    }
}

/// How a new collection was recorded.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Created {
    Yes,
    /// The name is taken.
    Taken,
    /// The registry holds `limits.max_collections` already.
    Full,
    /// The new collection's tenant holds as many as it may (`limits.collections`).
    OwnerFull,
}

/// How a manifest held here stands against the registry's.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refreshed {
    Current,
    /// It was changed elsewhere and is now as the registry has it.
    Changed,
    /// The registry holds no collection of its name and generation.
    Gone,
}

/// A manifest, or why it cannot be read.
pub(super) type Entry = Result<Manifest, String>;

#[async_trait]
pub(super) trait Registry: Send + Sync {
    /// True when other processes change the same collections (then changes must be refreshed and
    /// leased, see [`Registry::lock`]).
    fn shared(&self) -> bool;
    /// Every collection, by name.
    async fn load(&self) -> Result<BTreeMap<String, Entry>, String>;
    /// One collection as stored now (`None`: there is none of that name).
    async fn get(&self, name: &str) -> Result<Option<Manifest>, String>;
    /// Records a new collection unless its name is taken or `max` are recorded already.
    async fn create(&self, manifest: &Manifest, caps: Caps) -> Result<Created, String>;
    /// Records a change of `manifest`: its header and the `touched` documents' records (those
    /// no longer in it were removed). A registry may write only those, or the whole manifest.
    /// A shared registry records it only while `lease` (the collection's, from
    /// [`Registry::lock`]) is held and only over the change it followed (`manifest.changes - 1`).
    async fn save(&self, manifest: &Manifest, touched: &[String], lease: &Lease) -> Result<(), WriteError>;
    /// Forgets the collection, while `lease` is held.
    async fn remove(&self, name: &str, lease: &Lease) -> Result<(), WriteError>;
    /// Brings `manifest` up to what the registry holds for its name and generation (`Gone`: it
    /// holds none of that generation). This default reads the manifest whole; a shared registry
    /// reads only what changed since.
    async fn refresh(&self, manifest: &mut Manifest) -> Result<Refreshed, String> {
        match self.get(&manifest.name).await? {
            Some(current) if current.generation == manifest.generation => {
                let changed = current.changes != manifest.changes || current.epoch != manifest.epoch;
                *manifest = current;
                Ok(if changed {
                    Refreshed::Changed
                } else {
                    Refreshed::Current
                })
            }
            _ => Ok(Refreshed::Gone),
        }
    }
    /// `<generation>:<epoch>` of every collection, and a counter every change bumps (`None` for
    /// a registry no one else changes).
    async fn heads(&self) -> Result<Option<(u64, BTreeMap<String, String>)>, String>;
    /// Holds the collection's changes, in every process, until the lease is dropped.
    async fn lock(&self, name: &str) -> Result<Lease, String>;
    /// A number larger than every one handed out before by any process sharing the registry:
    /// microseconds of the clock, made unique.
    async fn stamp(&self) -> Result<u64, String>;
}

/// [`Registry::stamp`] for one process: its clock's microseconds, one more than the last stamp
/// where the clock has not moved (or went back).
pub(super) fn clock_stamp() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let previous = LAST
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
            Some(now.max(last.saturating_add(1)))
        })
        .unwrap_or(now);
    now.max(previous.saturating_add(1))
}

pub(super) fn head(manifest: &Manifest) -> String {
    format!("{}:{}", manifest.generation, manifest.epoch)
}

pub(super) fn parse(bytes: &[u8], what: &str) -> Entry {
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|e| format!("cannot read manifest {what}: {e}"))?;
    Ok(manifest.recount())
}

/// Name → `<generation>:<epoch>`.
const HEADS: &str = "ragway:collections";
const VERSION: &str = "ragway:collections:version";
/// How long a change waits for another replica's change of the same collection.
const LOCK_WAIT: Duration = Duration::from_secs(120);
/// Changes each collection keeps listed, for replicas to catch up by (one per batch); one that
/// fell further behind reads the manifest whole.
const KEEP_CHANGES: isize = 1024;
/// Records written per command when a manifest is written whole (a restore, a migration).
const RECORDS_PER_WRITE: usize = 1000;

/// Records a new collection unless its name is taken (1), the registry is full (2) or its tenant
/// holds ARGV[6] collections (3; `-1`: no limit): its head, its header, what it stores in its
/// tenant's storage (KEYS[7], ARGV[5]), and its records, moved from where they were staged
/// (KEYS[5]) over whatever a crash left of a predecessor's records and changes; a refused
/// collection's staged records are dropped.
const CREATE: &str = r"if redis.call('hexists', KEYS[1], ARGV[1]) == 1 then redis.call('del', KEYS[5]) return 1 end
if redis.call('hlen', KEYS[1]) >= tonumber(ARGV[4]) then redis.call('del', KEYS[5]) return 2 end
if tonumber(ARGV[6]) >= 0 and redis.call('hlen', KEYS[7]) >= tonumber(ARGV[6]) then redis.call('del', KEYS[5]) return 3 end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('set', KEYS[2], ARGV[3])
redis.call('hset', KEYS[7], ARGV[1], ARGV[5])
redis.call('incr', KEYS[3])
redis.call('del', KEYS[4], KEYS[6])
if redis.call('exists', KEYS[5]) == 1 then redis.call('rename', KEYS[5], KEYS[4]) end
return 0";

/// Records a change, unless the writer is stale: returns 1 when the lease (KEYS[6]) is not held
/// with the writer's token (ARGV[1]), 2 when the collection is gone, 3 when its recorded change is
/// not the one the writer followed (ARGV[2]); else writes the header (ARGV[3]), what the
/// collection stores now in its tenant's storage (KEYS[7], ARGV[9]), ARGV[8] records (id, record
/// pairs from ARGV[10]), removes the ids after them, lists the change (ARGV[4]) among the last
/// ARGV[7], and sets the head (ARGV[5]) of the name (ARGV[6]).
const SAVE: &str = r"if redis.call('get', KEYS[6]) ~= ARGV[1] then return 1 end
local current = redis.call('get', KEYS[1])
if not current then return 2 end
if tonumber(cjson.decode(current)['changes'] or 0) ~= tonumber(ARGV[2]) then return 3 end
redis.call('set', KEYS[1], ARGV[3])
redis.call('hset', KEYS[7], ARGV[6], ARGV[9])
local i = 10
for _ = 1, tonumber(ARGV[8]) do redis.call('hset', KEYS[2], ARGV[i], ARGV[i + 1]) i = i + 2 end
while i <= #ARGV do redis.call('hdel', KEYS[2], ARGV[i]) i = i + 1 end
redis.call('rpush', KEYS[3], ARGV[4])
redis.call('ltrim', KEYS[3], -tonumber(ARGV[7]), -1)
redis.call('hset', KEYS[4], ARGV[6], ARGV[5])
redis.call('incr', KEYS[5])
return 0";

/// Redis's clock in microseconds, one more than the last stamp (KEYS[1]) where it has not moved:
/// one sequence for every replica. (Below 2^53, so Lua's numbers hold it exactly.)
const STAMP: &str = r"local time = redis.call('time')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local last = tonumber(redis.call('get', KEYS[1]) or '0')
if now <= last then now = last + 1 end
redis.call('set', KEYS[1], string.format('%d', now))
return now";

/// Forgets a collection (its name ARGV[2]), and what it stored in its tenant's storage (KEYS[7]),
/// unless the lease (KEYS[5]) is not held with ARGV[1].
const REMOVE: &str = r"if redis.call('get', KEYS[5]) ~= ARGV[1] then return 1 end
redis.call('hdel', KEYS[1], ARGV[2])
redis.call('hdel', KEYS[7], ARGV[2])
redis.call('del', KEYS[2], KEYS[3], KEYS[4])
redis.call('incr', KEYS[6])
return 0";

/// The manifest's header: everything but its documents.
fn header_key(name: &str) -> String {
    format!("ragway:collection:{name}")
}

/// Collection name → what it stores (`<documents> <chunks> <bytes>`), one hash per tenant, written
/// with every change of a collection in the same script: what storage admission across replicas
/// counts (see `catalog::jobs`).
pub(crate) fn storage_key(name: &str) -> String {
    format!("ragway:storage:{}", crate::tenancy::owner(name))
}

/// What `manifest` stores, as [`storage_key`]'s hash holds it.
fn stored(manifest: &Manifest) -> String {
    format!(
        "{} {} {}",
        manifest.documents.len(),
        manifest.totals.chunks,
        manifest.totals.bytes
    )
}

/// The lease a change of the collection holds.
fn lock_key(name: &str) -> String {
    format!("{}:lock", header_key(name))
}

/// Document id → its record.
fn documents_key(name: &str) -> String {
    format!("ragway:collection:{name}:documents")
}

/// The last [`KEEP_CHANGES`] changes: their numbers and the documents they touched.
fn changes_key(name: &str) -> String {
    format!("ragway:collection:{name}:changes")
}

/// A manifest without its documents, as the header is written.
#[derive(Serialize)]
struct Header<'a> {
    name: &'a str,
    generation: &'a str,
    chunk_words: usize,
    chunk_overlap_words: usize,
    fusion: &'a Option<Fusion>,
    embedder: &'a Option<String>,
    dimension: Option<usize>,
    epoch: u64,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pending: &'a [String],
    changes: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    deleted: &'a BTreeMap<String, u64>,
}

fn header(manifest: &Manifest) -> Result<String, String> {
    let header = Header {
        name: &manifest.name,
        generation: &manifest.generation,
        chunk_words: manifest.chunk_words,
        chunk_overlap_words: manifest.chunk_overlap_words,
        fusion: &manifest.fusion,
        embedder: &manifest.embedder,
        dimension: manifest.dimension,
        epoch: manifest.epoch,
        pending: &manifest.pending,
        changes: manifest.changes,
        deleted: &manifest.deleted,
    };
    serde_json::to_string(&header).map_err(|e| e.to_string())
}

/// One recorded change: its number and the documents it wrote or removed.
#[derive(Serialize, Deserialize)]
struct Change {
    change: u64,
    touched: Vec<String>,
}

fn record(id: &str, record: &[u8]) -> Result<DocumentRecord, String> {
    serde_json::from_slice(record).map_err(|e| format!("cannot read the record of `{id}`: {e}"))
}

/// Manifests in Redis: each collection's header (`ragway:collection:<name>`), its document
/// records in a hash (`…:documents`), and its last changes (`…:changes`); a change writes its
/// header and the records it touched, in one transaction. The heads are in one hash that
/// replicas poll, changes leased per collection (`…:lock`). A replica catches up with the changes
/// listed since the one it holds, reading only the records they touched. Durable as Redis is:
/// run it with `appendonly yes` and `appendfsync always` for acknowledged writes to survive its
/// crash.
pub(super) struct RedisRegistry {
    pub redis: RedisTier,
    /// How long a collection's lease lives unrenewed (see [`crate::catalog::lease::ttl_for`]).
    pub lease_ttl: Duration,
}

/// The key and token of `lease`, which a shared registry's writes need.
fn fence(lease: &Lease) -> Result<(&str, &str), WriteError> {
    lease
        .token()
        .ok_or_else(|| WriteError::Fenced("a shared registry is written under a collection's lease".into()))
}

impl RedisRegistry {
    /// Writes every document record of `manifest` (a new collection's, a restored one's, or one
    /// kept whole as one value before records were kept apart) to the hash `key`, in parts.
    async fn write_records(&self, manifest: &Manifest, key: &str) -> Result<(), String> {
        let records: Vec<(&str, String)> = manifest
            .documents
            .iter()
            .map(|(id, r)| serde_json::to_string(r).map(|r| (id.as_str(), r)))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let mut connection = self.redis.durable_connection();
        for part in records.chunks(RECORDS_PER_WRITE) {
            let write = connection.hset_multiple::<_, _, _, ()>(key, part);
            self.redis.durable(write).await?;
        }
        Ok(())
    }

    /// `name`'s header, as written (`None`: there is none).
    async fn header(&self, name: &str) -> Result<Option<Manifest>, String> {
        let mut connection = self.redis.connection();
        let bytes: Option<Vec<u8>> = self.redis.call(connection.get(header_key(name))).await?;
        bytes.map(|b| parse_header(&b, name)).transpose()
    }

    /// The changes listed after `since`, up to `to`; `None` when some are no longer listed.
    async fn changes(&self, name: &str, since: u64, to: u64) -> Result<Option<Vec<Change>>, String> {
        let mut connection = self.redis.connection();
        let listed: Vec<Vec<u8>> = self
            .redis
            .call(connection.lrange(changes_key(name), 0, -1))
            .await?;
        let mut changes = Vec::new();
        for entry in listed {
            let change: Change =
                serde_json::from_slice(&entry).map_err(|e| format!("a change of `{name}`: {e}"))?;
            if change.change > since && change.change <= to {
                changes.push(change);
            }
        }
        let complete = changes.len() as u64 == to - since;
        Ok(complete.then_some(changes))
    }

    /// Applies `changes` to `manifest`: the records they touched as they are now.
    async fn catch_up(&self, manifest: &mut Manifest, changes: Vec<Change>) -> Result<(), String> {
        let mut touched: Vec<String> = changes.into_iter().flat_map(|c| c.touched).collect();
        touched.sort_unstable();
        touched.dedup();
        if touched.is_empty() {
            return Ok(());
        }
        let mut connection = self.redis.connection();
        let key = documents_key(&manifest.name);
        let records: Vec<Option<Vec<u8>>> = self.redis.call(connection.hmget(&key, &touched)).await?;
        for (id, found) in touched.into_iter().zip(records) {
            match found {
                Some(bytes) => {
                    let record = record(&id, &bytes)?;
                    manifest.put(id, record);
                }
                None => manifest.remove(&id),
            }
        }
        Ok(())
    }
}

/// A header (or a whole manifest, as kept before records were kept apart).
fn parse_header(bytes: &[u8], name: &str) -> Result<Manifest, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("cannot read manifest {name}: {e}"))
}

#[async_trait]
impl Registry for RedisRegistry {
    fn shared(&self) -> bool {
        true
    }

    async fn load(&self) -> Result<BTreeMap<String, Entry>, String> {
        let heads = self.heads().await?.map(|(_, heads)| heads).unwrap_or_default();
        let mut all = BTreeMap::new();
        for name in heads.into_keys() {
            if let Some(manifest) = self.get(&name).await.transpose() {
                all.insert(name, manifest);
            }
        }
        Ok(all)
    }

    /// The header and every record; a manifest still kept as one value is split on the way.
    async fn get(&self, name: &str) -> Result<Option<Manifest>, String> {
        let mut connection = self.redis.connection();
        let mut pipe = ragway_cache::redis::pipe();
        pipe.atomic().get(header_key(name)).hgetall(documents_key(name));
        let (bytes, records): (Option<Vec<u8>>, Vec<(String, Vec<u8>)>) =
            self.redis.call(pipe.query_async(&mut connection)).await?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let mut manifest = parse_header(&bytes, name)?;
        let whole = !manifest.documents.is_empty();
        for (id, bytes) in records {
            let record = record(&id, &bytes)?;
            manifest.documents.insert(id, record);
        }
        let manifest = manifest.recount();
        if whole {
            self.write_records(&manifest, &documents_key(name)).await?;
            let write = connection.set::<_, _, ()>(header_key(name), header(&manifest)?);
            self.redis.call(write).await?;
        }
        Ok(Some(manifest))
    }

    /// Stages the records (a restored collection has some) under a key of its generation, then
    /// records the collection in one script, unless the name was taken meanwhile or `max` are
    /// recorded: an existing collection's records are never touched.
    async fn create(&self, manifest: &Manifest, caps: Caps) -> Result<Created, String> {
        let mut connection = self.redis.durable_connection();
        let name = &manifest.name;
        let staged = format!("{}:staged:{}", documents_key(name), manifest.generation);
        self.write_records(manifest, &staged).await?;
        let script = Script::new(CREATE);
        let mut invocation = script.key(HEADS);
        invocation
            .key(header_key(name))
            .key(VERSION)
            .key(documents_key(name))
            .key(staged)
            .key(changes_key(name))
            .key(storage_key(name))
            .arg(name)
            .arg(head(manifest))
            .arg(header(manifest)?)
            .arg(caps.server)
            .arg(stored(manifest))
            .arg(caps.owner.map_or(-1, i128::from));
        let created: i64 = self
            .redis
            .durable(invocation.invoke_async(&mut connection))
            .await?;
        Ok(match created {
            0 => Created::Yes,
            1 => Created::Taken,
            2 => Created::Full,
            _ => Created::OwnerFull,
        })
    }

    /// The header, the `touched` records (written, or removed when no longer in the manifest)
    /// and the change's entry, in one script that refuses a stale writer.
    async fn save(&self, manifest: &Manifest, touched: &[String], lease: &Lease) -> Result<(), WriteError> {
        let (lock, token) = fence(lease)?;
        let name = &manifest.name;
        let mut written = Vec::new();
        let mut removed = Vec::new();
        for id in touched {
            match manifest.documents.get(id) {
                Some(r) => written.push((id.as_str(), serde_json::to_string(r).map_err(|e| e.to_string())?)),
                None => removed.push(id.as_str()),
            }
        }
        let change = Change {
            change: manifest.changes,
            touched: touched.to_vec(),
        };
        let change = serde_json::to_string(&change).map_err(|e| e.to_string())?;
        let script = Script::new(SAVE);
        let mut invocation = script.key(header_key(name));
        invocation
            .key(documents_key(name))
            .key(changes_key(name))
            .key(HEADS)
            .key(VERSION)
            .key(lock)
            .key(storage_key(name))
            .arg(token)
            .arg(manifest.changes.saturating_sub(1))
            .arg(header(manifest)?)
            .arg(change)
            .arg(head(manifest))
            .arg(name)
            .arg(KEEP_CHANGES)
            .arg(written.len())
            .arg(stored(manifest));
        for (id, record) in &written {
            invocation.arg(id).arg(record);
        }
        for id in &removed {
            invocation.arg(id);
        }
        let mut connection = self.redis.durable_connection();
        let saved: i64 = self
            .redis
            .durable(invocation.invoke_async(&mut connection))
            .await?;
        match saved {
            0 => Ok(()),
            1 => Err(WriteError::Fenced(format!(
                "the lease on `{name}` was lost before its change was recorded"
            ))),
            2 => Err(WriteError::Fenced(format!(
                "`{name}` was dropped by another process"
            ))),
            _ => Err(WriteError::Fenced(format!(
                "`{name}` was changed by another process meanwhile"
            ))),
        }
    }

    async fn remove(&self, name: &str, lease: &Lease) -> Result<(), WriteError> {
        let (lock, token) = fence(lease)?;
        let script = Script::new(REMOVE);
        let mut invocation = script.key(HEADS);
        invocation
            .key(header_key(name))
            .key(documents_key(name))
            .key(changes_key(name))
            .key(lock)
            .key(VERSION)
            .key(storage_key(name))
            .arg(token)
            .arg(name);
        let mut connection = self.redis.durable_connection();
        let removed: i64 = self
            .redis
            .durable(invocation.invoke_async(&mut connection))
            .await?;
        match removed {
            0 => Ok(()),
            _ => Err(WriteError::Fenced(format!(
                "the lease on `{name}` was lost before it was dropped"
            ))),
        }
    }

    /// The header, then only the records the changes since `manifest`'s touched; the manifest is
    /// read whole only when some of those changes are no longer listed.
    async fn refresh(&self, manifest: &mut Manifest) -> Result<Refreshed, String> {
        let name = manifest.name.clone();
        let Some(current) = self.header(&name).await? else {
            return Ok(Refreshed::Gone);
        };
        if current.generation != manifest.generation {
            return Ok(Refreshed::Gone);
        }
        if manifest.diverged {
            return match self.get(&name).await? {
                Some(whole) if whole.generation == manifest.generation => {
                    *manifest = whole;
                    Ok(Refreshed::Changed)
                }
                _ => Ok(Refreshed::Gone),
            };
        }
        if current.changes == manifest.changes && current.documents.is_empty() {
            return Ok(Refreshed::Current);
        }
        let listed = match current.changes > manifest.changes && current.documents.is_empty() {
            true => self.changes(&name, manifest.changes, current.changes).await?,
            false => None,
        };
        match listed {
            Some(changes) => {
                self.catch_up(manifest, changes).await?;
                manifest.adopt_header(current);
            }
            None => match self.get(&name).await? {
                Some(whole) if whole.generation == manifest.generation => *manifest = whole,
                _ => return Ok(Refreshed::Gone),
            },
        }
        Ok(Refreshed::Changed)
    }

    async fn heads(&self) -> Result<Option<(u64, BTreeMap<String, String>)>, String> {
        let mut connection = self.redis.connection();
        let mut pipe = ragway_cache::redis::pipe();
        pipe.atomic().get(VERSION).hgetall(HEADS);
        let (version, heads): (Option<u64>, BTreeMap<String, String>) =
            self.redis.call(pipe.query_async(&mut connection)).await?;
        Ok(Some((version.unwrap_or(0), heads)))
    }

    async fn lock(&self, name: &str) -> Result<Lease, String> {
        Lease::take(&self.redis, lock_key(name), self.lease_ttl, LOCK_WAIT).await
    }

    async fn stamp(&self) -> Result<u64, String> {
        let mut connection = self.redis.durable_connection();
        let script = Script::new(STAMP);
        let invocation = script.key("ragway:stamp");
        self.redis.durable(invocation.invoke_async(&mut connection)).await
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};

    use super::super::file_registry::tests::{change, manifest};
    use super::*;

    /// A real `redis-server` (Debian's package) on a free port, killed when dropped.
    struct Server(Child, u16);

    impl Server {
        async fn start() -> Result<Self, String> {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| e.to_string())?
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("redis-server is needed (scripts/test.sh installs it): {e}"))?;
            let server = Self(child, port);
            for _ in 0..200 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(server);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(format!("redis-server on port {port} did not start"))
        }

        fn registry(&self) -> Result<RedisRegistry, String> {
            let url = format!("redis://127.0.0.1:{}/0", self.1);
            let redis = RedisTier::new(&url, Duration::from_secs(2)).map_err(|e| e.0)?;
            Ok(RedisRegistry {
                redis,
                lease_ttl: crate::catalog::lease::LEASE_TTL,
            })
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn ids(manifest: &Manifest) -> Vec<&str> {
        manifest.documents.keys().map(String::as_str).collect()
    }

    /// A record only the hash has (no change touched it): what reading the manifest whole sees
    /// and catching up does not.
    async fn plant(registry: &RedisRegistry, id: &str) -> Result<(), String> {
        let mut connection = registry.redis.connection();
        let record = serde_json::to_string(&super::super::file_registry::tests::record(9))
            .map_err(|e| e.to_string())?;
        let write = connection.hset::<_, _, _, ()>(documents_key("notes"), id, record);
        registry.redis.call(write).await
    }

    #[tokio::test]
    async fn a_replica_catches_up_by_the_records_the_changes_touched() -> Result<(), String> {
        let server = Server::start().await?;
        let (writer, follower) = (server.registry()?, server.registry()?);
        let mut written = manifest("g1");
        assert_eq!(writer.create(&written, Caps::server(10)).await?, Created::Yes);
        let mut followed = follower.get("notes").await?.ok_or("created")?;
        assert_eq!(follower.refresh(&mut followed).await?, Refreshed::Current);

        change(&writer, &mut written, &[("a", 2), ("b", 3)], &[]).await?;
        change(&writer, &mut written, &[("b", 4)], &["a"]).await?;
        plant(&writer, "ghost").await?;
        change(&writer, &mut written, &[("c", 1)], &[]).await?;
        assert_eq!(follower.refresh(&mut followed).await?, Refreshed::Changed);
        assert_eq!(ids(&followed), ["b", "c"], "only the touched records were read");
        assert_eq!(
            (followed.epoch, followed.changes, followed.totals.chunks),
            (3, 3, 5)
        );
        assert_eq!(follower.refresh(&mut followed).await?, Refreshed::Current);
        let whole = follower.get("notes").await?.ok_or("kept")?;
        assert_eq!(ids(&whole), ["b", "c", "ghost"], "the hash holds every record");

        // A create of the taken name (a replica re-seeding an empty-looking registry) is refused
        // and leaves the collection's records as they are.
        let mut rival = manifest("g9");
        rival.put("x".into(), super::super::file_registry::tests::record(1));
        assert_eq!(writer.create(&rival, Caps::server(10)).await?, Created::Taken);
        let kept = follower.get("notes").await?.ok_or("kept")?;
        assert_eq!(
            (ids(&kept), kept.generation.as_str()),
            (vec!["b", "c", "ghost"], "g1")
        );

        // Changes no longer listed: the manifest is read whole.
        change(&writer, &mut written, &[("d", 1)], &[]).await?;
        let mut connection = writer.redis.connection();
        writer
            .redis
            .call(connection.del::<_, ()>(changes_key("notes")))
            .await?;
        assert_eq!(follower.refresh(&mut followed).await?, Refreshed::Changed);
        assert_eq!(ids(&followed), ["b", "c", "d", "ghost"]);
        assert_eq!(followed.totals.chunks, 15);

        // Dropped and created again: the old manifest is gone, and so are its records.
        let lease = writer.lock("notes").await?;
        writer
            .remove("notes", &lease)
            .await
            .map_err(|e| format!("{e:?}"))?;
        drop(lease);
        assert_eq!(follower.refresh(&mut followed).await?, Refreshed::Gone);
        writer.create(&manifest("g2"), Caps::server(10)).await?;
        assert_eq!(follower.refresh(&mut followed).await?, Refreshed::Gone);
        let fresh = follower.get("notes").await?.ok_or("re-created")?;
        assert!(fresh.documents.is_empty(), "{:?}", ids(&fresh));
        Ok(())
    }

    /// A writer whose lease expired (cut off from Redis, or paused) while another took it over
    /// and recorded a change: its own change is refused, and the registry keeps the other's.
    #[tokio::test]
    async fn a_stale_writer_is_refused() -> Result<(), String> {
        let server = Server::start().await?;
        let (stale, current) = (server.registry()?, server.registry()?);
        let mut created = manifest("g1");
        assert_eq!(stale.create(&created, Caps::server(10)).await?, Created::Yes);
        change(&stale, &mut created, &[("keep", 1)], &[]).await?;
        let mut old = stale.get("notes").await?.ok_or("created")?;
        let old_lease = stale.lock("notes").await?;
        // The lease lapses: Redis forgets it, as it would after its time to live.
        let mut connection = stale.redis.connection();
        let lapsed = connection.del::<_, ()>(lock_key("notes"));
        stale.redis.call(lapsed).await?;
        let mut newer = current.get("notes").await?.ok_or("created")?;
        change(&current, &mut newer, &[("b", 2)], &["keep"]).await?;

        old.put("a".into(), super::super::file_registry::tests::record(3));
        old.changes += 1;
        old.epoch += 1;
        let refused = stale.save(&old, &["a".to_string()], &old_lease).await;
        assert!(matches!(refused, Err(WriteError::Fenced(_))), "{refused:?}");
        let refused = stale.remove("notes", &old_lease).await;
        assert!(matches!(refused, Err(WriteError::Fenced(_))), "{refused:?}");
        drop(old_lease);

        // Holding the lease again, but over a manifest older than the registry's: refused too.
        let lease = stale.lock("notes").await?;
        let refused = stale.save(&old, &["a".to_string()], &lease).await;
        assert!(matches!(refused, Err(WriteError::Fenced(_))), "{refused:?}");
        drop(lease);

        let kept = current.get("notes").await?.ok_or("kept")?;
        assert_eq!((ids(&kept), kept.changes, kept.epoch), (vec!["b"], 2, 2));
        let changes: Vec<Vec<u8>> = stale
            .redis
            .call(connection.lrange(changes_key("notes"), 0, -1))
            .await?;
        assert_eq!(changes.len(), 2, "only the two recorded changes are listed");
        Ok(())
    }

    #[tokio::test]
    async fn a_manifest_kept_as_one_value_is_split_into_records_when_read() -> Result<(), String> {
        let server = Server::start().await?;
        let registry = server.registry()?;
        let mut whole = manifest("g1");
        whole.put("a".into(), super::super::file_registry::tests::record(2));
        whole.changes = 4;
        let value = serde_json::to_string(&whole).map_err(|e| e.to_string())?;
        let mut connection = registry.redis.connection();
        registry
            .redis
            .call(connection.set::<_, _, ()>(header_key("notes"), value))
            .await?;
        let mut read = registry.get("notes").await?.ok_or("kept")?;
        assert_eq!((ids(&read), read.totals.chunks, read.changes), (vec!["a"], 2, 4));
        let header: Option<String> = registry.redis.call(connection.get(header_key("notes"))).await?;
        assert!(
            !header.unwrap_or_default().contains("documents"),
            "the header was rewritten without them"
        );
        change(&registry, &mut read, &[("b", 1)], &[]).await?;
        let again = registry.get("notes").await?.ok_or("kept")?;
        assert_eq!(ids(&again), ["a", "b"]);
        Ok(())
    }

    #[test]
    fn the_header_holds_every_field_of_a_manifest_but_its_documents() -> Result<(), String> {
        let mut full = manifest("g1");
        full.put("a".into(), super::super::file_registry::tests::record(1));
        full.pending = vec!["p".into()];
        let mut expected = serde_json::to_value(&full).map_err(|e| e.to_string())?;
        if let Some(fields) = expected.as_object_mut() {
            fields.remove("documents");
        }
        let written: serde_json::Value = serde_json::from_str(&header(&full)?).map_err(|e| e.to_string())?;
        assert_eq!(written, expected);
        Ok(())
    }
}
