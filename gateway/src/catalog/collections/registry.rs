//! Where collection manifests live: files under the data directory (one process), or Redis (every
//! replica of a deployment on one Qdrant server, which then keeps nothing a request needs).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use ragway_cache::redis::{AsyncCommands, Script};
use ragway_cache::RedisTier;

use super::Manifest;
use crate::catalog::lease::Lease;

/// How a new collection was recorded.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Created {
    Yes,
    /// The name is taken.
    Taken,
    /// The registry holds `limits.max_collections` already.
    Full,
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
    async fn create(&self, manifest: &Manifest, max: usize) -> Result<Created, String>;
    /// Records a change of `manifest`: its header and the `touched` documents' records (those
    /// no longer in it were removed). A registry may write only those, or the whole manifest.
    async fn save(&self, manifest: &Manifest, touched: &[String]) -> Result<(), String>;
    async fn remove(&self, name: &str) -> Result<(), String>;
    /// `<generation>:<epoch>` of every collection, and a counter every change bumps (`None` for
    /// a registry no one else changes).
    async fn heads(&self) -> Result<Option<(u64, BTreeMap<String, String>)>, String>;
    /// Holds the collection's changes, in every process, until the lease is dropped.
    async fn lock(&self, name: &str) -> Result<Lease, String>;
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

const CREATE: &str = r"if redis.call('hexists', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('hlen', KEYS[1]) >= tonumber(ARGV[4]) then return 2 end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('set', KEYS[2], ARGV[3])
redis.call('incr', KEYS[3])
return 0";

fn manifest_key(name: &str) -> String {
    format!("ragway:collection:{name}")
}

/// Manifests in Redis (`ragway:collection:<name>`), their heads in one hash that replicas poll,
/// changes leased per collection (`ragway:collection:<name>:lock`). Durable as Redis is: run it
/// with `appendonly yes` and `appendfsync always` for acknowledged writes to survive its crash.
pub(super) struct RedisRegistry {
    pub redis: RedisTier,
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

    async fn get(&self, name: &str) -> Result<Option<Manifest>, String> {
        let mut connection = self.redis.connection();
        let bytes: Option<Vec<u8>> = self.redis.call(connection.get(manifest_key(name))).await?;
        bytes.map(|b| parse(&b, name)).transpose()
    }

    async fn create(&self, manifest: &Manifest, max: usize) -> Result<Created, String> {
        let record = serde_json::to_string(manifest).map_err(|e| e.to_string())?;
        let mut connection = self.redis.connection();
        let script = Script::new(CREATE);
        let mut invocation = script.key(HEADS);
        invocation
            .key(manifest_key(&manifest.name))
            .key(VERSION)
            .arg(&manifest.name)
            .arg(head(manifest))
            .arg(record)
            .arg(max);
        let created: i64 = self.redis.call(invocation.invoke_async(&mut connection)).await?;
        Ok(match created {
            0 => Created::Yes,
            1 => Created::Taken,
            _ => Created::Full,
        })
    }

    /// The whole manifest, as one value (per-document records are not done yet).
    async fn save(&self, manifest: &Manifest, _touched: &[String]) -> Result<(), String> {
        let record = serde_json::to_string(manifest).map_err(|e| e.to_string())?;
        let mut connection = self.redis.connection();
        let mut pipe = ragway_cache::redis::pipe();
        pipe.atomic()
            .set(manifest_key(&manifest.name), record)
            .ignore()
            .hset(HEADS, &manifest.name, head(manifest))
            .ignore()
            .incr(VERSION, 1)
            .ignore();
        self.redis.call(pipe.query_async::<()>(&mut connection)).await
    }

    async fn remove(&self, name: &str) -> Result<(), String> {
        let mut connection = self.redis.connection();
        let mut pipe = ragway_cache::redis::pipe();
        pipe.atomic()
            .hdel(HEADS, name)
            .ignore()
            .del(manifest_key(name))
            .ignore()
            .incr(VERSION, 1)
            .ignore();
        self.redis.call(pipe.query_async::<()>(&mut connection)).await
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
        Lease::take(&self.redis, format!("{}:lock", manifest_key(name)), LOCK_WAIT).await
    }
}
