//! Where tenant records live.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use ragway_cache::redis::AsyncCommands;
use ragway_cache::RedisTier;

use super::Tenant;
use crate::durable;

/// What a conditional write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Yes,
    /// The record's revision was not the one expected (or, for a new one, the id exists).
    Conflict,
    /// The record to change is gone.
    Gone,
    /// Another tenant has its name (names are unique: an operator tells tenants apart by them).
    NameTaken,
}

/// Whether a tenant other than `tenant` among `others` has its name.
fn name_taken<'a>(mut others: impl Iterator<Item = &'a Tenant>, tenant: &Tenant) -> bool {
    others.any(|other| other.id != tenant.id && other.name == tenant.name)
}

/// The decision of a conditional write, from the stored record's revision (`None`: no record)
/// and the one expected (`None`: a new record). The Redis script makes the same one.
fn decide(stored: Option<u64>, expected: Option<u64>) -> Stored {
    match (stored, expected) {
        (None, None) => Stored::Yes,
        (Some(_), None) => Stored::Conflict,
        (None, Some(_)) => Stored::Gone,
        (Some(stored), Some(expected)) if stored == expected => Stored::Yes,
        (Some(_), Some(_)) => Stored::Conflict,
    }
}

#[async_trait]
pub trait TenantStore: Send + Sync {
    async fn load(&self) -> Result<Vec<Tenant>, String>;
    /// The record as stored now (not a copy that may be old).
    async fn fetch(&self, id: &str) -> Result<Option<Tenant>, String>;
    /// Stores `tenant` only if the stored record's revision is `expected` (`None`: only if there
    /// is no record with its id).
    async fn save_if(&self, tenant: &Tenant, expected: Option<u64>) -> Result<Stored, String>;
    async fn remove(&self, id: &str) -> Result<(), String>;
    /// Changes whenever any process changes a tenant; `None` when the store cannot say now.
    async fn version(&self) -> Option<u64>;
}

/// All tenants in one JSON file, replaced durably on every change (one process).
pub struct FileStore {
    path: PathBuf,
    tenants: Mutex<BTreeMap<String, Tenant>>,
}

impl FileStore {
    pub fn open(path: PathBuf) -> anyhow::Result<Self> {
        let tenants: Vec<Tenant> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        };
        let tenants = tenants.into_iter().map(|t| (t.id.clone(), t)).collect();
        Ok(Self {
            path,
            tenants: Mutex::new(tenants),
        })
    }

    fn write(&self, change: impl FnOnce(&mut BTreeMap<String, Tenant>)) -> Result<(), String> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = tenants.clone();
        change(&mut changed);
        let all: Vec<&Tenant> = changed.values().collect();
        let bytes = serde_json::to_vec_pretty(&all).map_err(|e| e.to_string())?;
        durable::write(&self.path, &bytes).map_err(|e| format!("{}: {e}", self.path.display()))?;
        *tenants = changed;
        Ok(())
    }

    fn save(&self, tenant: &Tenant) -> Result<(), String> {
        self.write(|tenants| {
            tenants.insert(tenant.id.clone(), tenant.clone());
        })
    }

    /// Replaces every record (a copy of what Redis holds).
    fn mirror(&self, all: &[Tenant]) -> Result<(), String> {
        self.write(|tenants| *tenants = all.iter().map(|t| (t.id.clone(), t.clone())).collect())
    }
}

#[async_trait]
impl TenantStore for FileStore {
    async fn load(&self) -> Result<Vec<Tenant>, String> {
        let tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        Ok(tenants.values().cloned().collect())
    }
    async fn fetch(&self, id: &str) -> Result<Option<Tenant>, String> {
        let tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        Ok(tenants.get(id).cloned())
    }
    async fn save_if(&self, tenant: &Tenant, expected: Option<u64>) -> Result<Stored, String> {
        let (stored, taken) = {
            let tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
            let stored = tenants.get(&tenant.id).map(|t| t.revision);
            (stored, name_taken(tenants.values(), tenant))
        };
        let decided = match decide(stored, expected) {
            Stored::Yes if taken => Stored::NameTaken,
            decided => decided,
        };
        if decided == Stored::Yes {
            self.save(tenant)?;
        }
        Ok(decided)
    }
    async fn remove(&self, id: &str) -> Result<(), String> {
        self.write(|tenants| {
            tenants.remove(id);
        })
    }
    async fn version(&self) -> Option<u64> {
        None
    }
}

const TENANTS: &str = "ragway:tenants";
const VERSION: &str = "ragway:tenants:version";

/// A conditional write in one step: KEYS = tenants hash, version counter; ARGV = id, expected
/// revision (`""`: only if absent), record. Returns 1 stored, 0 conflict, 2 gone ([`decide`]).
const SAVE_IF: &str = r"local current = redis.call('hget', KEYS[1], ARGV[1])
if ARGV[2] == '' then
  if current then return 0 end
else
  if not current then return 2 end
  local revision = cjson.decode(current)['revision'] or 0
  if revision ~= tonumber(ARGV[2]) then return 0 end
end
local fields = redis.call('hgetall', KEYS[1])
for i = 1, #fields, 2 do
  if fields[i] ~= ARGV[1] and cjson.decode(fields[i + 1])['name'] == ARGV[4] then return 3 end
end
redis.call('hset', KEYS[1], ARGV[1], ARGV[3])
redis.call('incr', KEYS[2])
return 1";

/// Tenants in a Redis hash (`ragway:tenants`, id → record) with a version counter that every
/// change bumps, so replicas notice; a file keeps the last copy read, to start from when Redis
/// is unreachable at start-up.
pub struct RedisStore {
    redis: RedisTier,
    mirror: FileStore,
}

impl RedisStore {
    pub fn new(redis: RedisTier, mirror: FileStore) -> Self {
        Self { redis, mirror }
    }

    async fn read_all(&self) -> Result<Vec<Tenant>, String> {
        let mut connection = self.redis.durable_connection();
        let records: BTreeMap<String, String> = self
            .redis
            .bounded(connection.hgetall(TENANTS))
            .await
            .map_err(|e| e.0)?;
        records
            .values()
            .map(|r| serde_json::from_str(r).map_err(|e| format!("a tenant record in redis is damaged: {e}")))
            .collect()
    }

    /// A Redis that has never seen a change (new, or restarted without persistence) gets the
    /// tenants of the local copy, so that a Redis restart does not revoke every key.
    async fn reseed(&self) -> Result<Vec<Tenant>, String> {
        let copy = self.mirror.load().await?;
        if copy.is_empty() {
            return Ok(copy);
        }
        tracing::warn!(
            tenants = copy.len(),
            "tenants: redis holds none; restoring them from the local copy"
        );
        let mut pipe = ragway_cache::redis::pipe();
        for tenant in &copy {
            let record = serde_json::to_string(tenant).map_err(|e| e.to_string())?;
            pipe.hset(TENANTS, &tenant.id, record).ignore();
        }
        self.changed(&mut pipe).await?;
        Ok(copy)
    }

    async fn changed(&self, pipe: &mut ragway_cache::redis::Pipeline) -> Result<(), String> {
        let mut connection = self.redis.durable_connection();
        pipe.atomic().incr(VERSION, 1).ignore();
        self.redis.durable(pipe.query_async::<()>(&mut connection)).await
    }
}

#[async_trait]
impl TenantStore for RedisStore {
    async fn load(&self) -> Result<Vec<Tenant>, String> {
        match self.read_all().await {
            Ok(all) if all.is_empty() && self.version().await == Some(0) => self.reseed().await,
            Ok(all) => {
                if let Err(e) = self.mirror.mirror(&all) {
                    tracing::warn!(error = %e, "tenants: the local copy was not updated");
                }
                Ok(all)
            }
            Err(e) => {
                tracing::warn!(error = %e, "tenants: redis unreachable; using the local copy");
                self.mirror.load().await
            }
        }
    }
    async fn fetch(&self, id: &str) -> Result<Option<Tenant>, String> {
        let mut connection = self.redis.durable_connection();
        let record: Option<String> = self
            .redis
            .bounded(connection.hget(TENANTS, id))
            .await
            .map_err(|e| format!("redis: {}", e.0))?;
        record
            .map(|r| {
                serde_json::from_str(&r).map_err(|e| format!("a tenant record in redis is damaged: {e}"))
            })
            .transpose()
    }
    async fn save_if(&self, tenant: &Tenant, expected: Option<u64>) -> Result<Stored, String> {
        let record = serde_json::to_string(tenant).map_err(|e| e.to_string())?;
        let expected_arg = expected.map(|r| r.to_string()).unwrap_or_default();
        let mut connection = self.redis.durable_connection();
        let script = ragway_cache::redis::Script::new(SAVE_IF);
        let mut invocation = script.key(TENANTS);
        invocation
            .key(VERSION)
            .arg(&tenant.id)
            .arg(expected_arg)
            .arg(record)
            .arg(&tenant.name);
        let outcome: i64 = self
            .redis
            .durable(invocation.invoke_async(&mut connection))
            .await?;
        let stored = match outcome {
            1 => Stored::Yes,
            2 => Stored::Gone,
            3 => Stored::NameTaken,
            _ => Stored::Conflict,
        };
        if stored == Stored::Yes {
            self.mirror.save(tenant)?;
        }
        Ok(stored)
    }
    async fn remove(&self, id: &str) -> Result<(), String> {
        self.changed(ragway_cache::redis::pipe().hdel(TENANTS, id).ignore())
            .await?;
        self.mirror.remove(id).await
    }
    async fn version(&self) -> Option<u64> {
        let mut connection = self.redis.connection();
        self.redis
            .bounded(connection.get::<_, Option<u64>>(VERSION))
            .await
            .ok()
            .map(|v| v.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_lands_only_over_the_revision_it_was_made_from() {
        assert_eq!(decide(None, None), Stored::Yes, "a new record");
        assert_eq!(decide(Some(1), None), Stored::Conflict, "an id taken");
        assert_eq!(decide(Some(3), Some(3)), Stored::Yes);
        assert_eq!(decide(Some(4), Some(3)), Stored::Conflict, "changed meanwhile");
        assert_eq!(decide(None, Some(3)), Stored::Gone, "deleted meanwhile");
    }
}
