//! Tenants and their API keys: who a `/v1` caller is, which LLM backends it may use, and its
//! limits. Keys are shown once and kept only as SHA-256 hashes (they are 244 random bits, so a
//! plain hash is as good as a slow one). Records live in a [`TenantStore`]: a file by default,
//! Redis when one is configured, so that every replica sees a new key or a revocation within
//! [`FOLLOW_EVERY`].

mod store;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

pub use store::{FileStore, RedisStore, Stored, TenantStore};

use crate::error::{ApiError, ErrorCode};

/// How often a replica checks the store for changes made elsewhere.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// How many times a change is read and applied again when other processes keep changing the
/// same tenant in between.
const CHANGE_TRIES: usize = 16;
/// How often a process finishes deletions that were cut short (a store down, a crash).
pub const DELETION_SWEEP_EVERY: Duration = Duration::from_secs(30);

/// A tenant's quotas; each absent one is unlimited.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Sustained request rate on `/v1` (GCRA), with `burst` requests at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Prompt plus completion tokens per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_tokens_per_day: Option<u64>,
    /// Tokens embedded per UTC day (documents, queries, `/v1/embeddings`), and the
    /// cross-encoder's tokens of `/v1/rerank`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<u64>,
    /// Documents stored, over all its collections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    /// Bytes of document text stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Answers streamed at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_streams: Option<u64>,
}

impl Limits {
    /// `self` with each limit it leaves out taken from `defaults`.
    pub fn with_defaults(self, defaults: &Limits) -> Limits {
        Limits {
            requests_per_second: self.requests_per_second.or(defaults.requests_per_second),
            burst: self.burst.or(defaults.burst),
            llm_tokens_per_day: self.llm_tokens_per_day.or(defaults.llm_tokens_per_day),
            embedding_tokens_per_day: self
                .embedding_tokens_per_day
                .or(defaults.embedding_tokens_per_day),
            collections: self.collections.or(defaults.collections),
            documents: self.documents.or(defaults.documents),
            chunks: self.chunks.or(defaults.chunks),
            bytes: self.bytes.or(defaults.bytes),
            concurrent_streams: self.concurrent_streams.or(defaults.concurrent_streams),
        }
    }

    /// Limits the arithmetic can hold: a rate between 0.001 and 1e6 a second (a smaller one's
    /// period overflows a clock), a burst of at least 1.
    pub fn check(&self) -> Result<(), String> {
        if self
            .requests_per_second
            .is_some_and(|r| !(r.is_finite() && (0.001..=1e6).contains(&r)))
        {
            return Err("limits.requests_per_second must be between 0.001 and 1000000".into());
        }
        if self.burst == Some(0) {
            return Err("limits.burst must be at least 1".into());
        }
        Ok(())
    }
}

/// What a tenant over a token budget gets.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OverQuota {
    /// Still answered, by cheaper means (`cache_only`, `extractive`, `keyword_only`) with
    /// `degraded: [{"reason": "quota"}]`.
    #[default]
    Degrade,
    /// 429 with `Retry-After` and a code naming the quota.
    Reject,
}

/// A tenant as stored, with its keys' hashes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub limits: Limits,
    pub over_quota: OverQuota,
    /// The LLM backends it may use; `None`: all.
    pub llm_backends: Option<Vec<String>>,
    pub created_at: String,
    pub keys: Vec<StoredKey>,
    /// Bumped by every change: a change is stored only over the revision it was made from
    /// (compare-and-set), so two processes changing one tenant at once never lose either change.
    #[serde(default)]
    pub revision: u64,
    /// Being deleted: its keys no longer authenticate, and its collections are being dropped;
    /// the record goes once they all are (a deletion cut short is finished by a retry or by
    /// the sweep every [`DELETION_SWEEP_EVERY`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleting: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredKey {
    pub key_id: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    pub created_at: String,
}

/// `POST /admin/tenants`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub over_quota: OverQuota,
    #[serde(default)]
    pub llm_backends: Option<Vec<String>>,
}

/// `PATCH /admin/tenants/{id}`: the fields to replace.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub limits: Option<Limits>,
    #[serde(default)]
    pub over_quota: Option<OverQuota>,
    /// `null` or absent leaves it; `[]` allows no backend (answers are then extractive).
    #[serde(default)]
    pub llm_backends: Option<Vec<String>>,
}

/// A tenant as the admin API shows it: its keys without their hashes.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantInfo {
    pub id: String,
    pub name: String,
    pub limits: Limits,
    pub over_quota: OverQuota,
    pub llm_backends: Option<Vec<String>>,
    pub created_at: String,
    pub keys: Vec<KeyInfo>,
    /// Being deleted (`DELETE` answered 503 before it finished): keys refused, collections
    /// being dropped; a retry of the `DELETE` finishes it.
    pub deleting: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyInfo {
    pub key_id: String,
    pub created_at: String,
}

/// A new key: the only time `key` is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewKey {
    pub key_id: String,
    pub key: String,
}

impl Tenant {
    pub fn info(&self) -> TenantInfo {
        TenantInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            limits: self.limits.clone(),
            over_quota: self.over_quota,
            llm_backends: self.llm_backends.clone(),
            created_at: self.created_at.clone(),
            keys: self
                .keys
                .iter()
                .map(|k| KeyInfo {
                    key_id: k.key_id.clone(),
                    created_at: k.created_at.clone(),
                })
                .collect(),
            deleting: self.deleting,
        }
    }

    /// Whether this tenant may use the LLM backend `name`.
    pub fn may_use(&self, backend: &str) -> bool {
        self.llm_backends
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|b| b == backend))
    }
}

/// Every tenant, and which one each key hash belongs to.
#[derive(Default)]
struct Snapshot {
    by_id: HashMap<String, Arc<Tenant>>,
    by_key: HashMap<String, Arc<Tenant>>,
}

impl Snapshot {
    fn of(tenants: Vec<Tenant>) -> Self {
        let mut snapshot = Self::default();
        for tenant in tenants {
            snapshot.put(Arc::new(tenant));
        }
        snapshot
    }

    /// `tenant` as this copy knows it; the keys of a tenant being deleted authenticate nobody.
    fn put(&mut self, tenant: Arc<Tenant>) {
        self.by_key.retain(|_, t| t.id != tenant.id);
        if !tenant.deleting {
            for key in &tenant.keys {
                self.by_key.insert(key.hash.clone(), tenant.clone());
            }
        }
        self.by_id.insert(tenant.id.clone(), tenant);
    }
}

pub struct Tenants {
    store: Arc<dyn TenantStore>,
    snapshot: RwLock<Snapshot>,
    /// Serialises this process's changes.
    changes: tokio::sync::Mutex<()>,
}

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn unavailable(e: String) -> ApiError {
    ApiError::unavailable(
        ErrorCode::TenantStoreFailed,
        format!("the tenant store cannot be written now: {e}"),
    )
}

impl Tenants {
    /// Loads every tenant from `store`, and follows its changes made by other processes.
    pub async fn open(store: Arc<dyn TenantStore>) -> anyhow::Result<Arc<Self>> {
        let tenants = store.load().await.map_err(|e| anyhow::anyhow!("tenants: {e}"))?;
        let registry = Arc::new(Self {
            store,
            snapshot: RwLock::new(Snapshot::of(tenants)),
            changes: tokio::sync::Mutex::new(()),
        });
        registry.follow();
        Ok(registry)
    }

    fn follow(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut seen = None;
            loop {
                tokio::time::sleep(FOLLOW_EVERY).await;
                let Some(registry) = weak.upgrade() else { return };
                let Some(version) = registry.store.version().await else {
                    continue;
                };
                if seen != Some(version) {
                    if let Ok(tenants) = registry.store.load().await {
                        registry.replace(Snapshot::of(tenants));
                        seen = Some(version);
                    }
                }
            }
        });
    }

    fn replace(&self, snapshot: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = snapshot;
    }

    fn read<T>(&self, f: impl FnOnce(&Snapshot) -> T) -> T {
        f(&self.snapshot.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The tenant a key belongs to.
    pub fn authenticate(&self, key: &str) -> Option<Arc<Tenant>> {
        let hashed = hash(key);
        self.read(|s| s.by_key.get(&hashed).cloned())
    }

    pub fn get(&self, id: &str) -> Result<Arc<Tenant>, ApiError> {
        self.read(|s| s.by_id.get(id).cloned())
            .ok_or_else(|| ApiError::TenantNotFound(id.to_string()))
    }

    pub fn list(&self) -> Vec<Arc<Tenant>> {
        let mut all: Vec<Arc<Tenant>> = self.read(|s| s.by_id.values().cloned().collect());
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        all
    }

    /// Creates a tenant; 409 `tenant_name_taken` when another tenant (on any replica) has its
    /// name.
    pub async fn create(&self, request: CreateTenant) -> Result<Arc<Tenant>, ApiError> {
        let tenant = Tenant {
            id: format!("t{}", &random_hex()[..12]),
            name: request.name,
            limits: request.limits,
            over_quota: request.over_quota,
            llm_backends: request.llm_backends,
            created_at: now(),
            keys: Vec::new(),
            revision: 1,
            deleting: false,
        };
        let _change = self.changes.lock().await;
        match self.store.save_if(&tenant, None).await.map_err(unavailable)? {
            Stored::Yes => Ok(self.publish(tenant)),
            Stored::NameTaken => Err(name_taken(&tenant.name)),
            // A 48-bit random id taken already: vanishingly rare, and said as what it is.
            Stored::Conflict | Stored::Gone => Err(unavailable("a tenant id was taken twice".into())),
        }
    }

    /// Applies `change` to the stored record of tenant `id` (read afresh, not from this process's
    /// copy) and stores the result only over the revision it read; when another process changed
    /// the tenant in between, reads and applies again. Each change of keys or limits therefore
    /// keeps every other change, whichever replica made it.
    /// A change that finds the tenant unable to take it (a limit of its own) refuses with its
    /// error, and nothing is stored.
    pub async fn change(
        &self,
        id: &str,
        change: impl Fn(&mut Tenant) -> Result<(), ApiError>,
    ) -> Result<Arc<Tenant>, ApiError> {
        let _change = self.changes.lock().await;
        for _ in 0..CHANGE_TRIES {
            let Some(stored) = self.store.fetch(id).await.map_err(unavailable)? else {
                return Err(ApiError::TenantNotFound(id.to_string()));
            };
            let read = stored.revision;
            let mut tenant = stored;
            change(&mut tenant)?;
            tenant.revision = read + 1;
            match self
                .store
                .save_if(&tenant, Some(read))
                .await
                .map_err(unavailable)?
            {
                Stored::Yes => return Ok(self.publish(tenant)),
                Stored::Gone => return Err(ApiError::TenantNotFound(id.to_string())),
                Stored::NameTaken => return Err(name_taken(&tenant.name)),
                Stored::Conflict => continue,
            }
        }
        Err(unavailable(format!(
            "tenant {id} kept changing under {CHANGE_TRIES} tries; try again"
        )))
    }

    /// This process's copy of `tenant`, as just stored.
    fn publish(&self, tenant: Tenant) -> Arc<Tenant> {
        let tenant = Arc::new(tenant);
        let mut snapshot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        snapshot.put(tenant.clone());
        tenant
    }

    /// A new key for tenant `id`: returned once, stored as a hash; 409 `too_many_keys` when it
    /// holds `max_keys` already.
    pub async fn add_key(&self, id: &str, max_keys: usize) -> Result<NewKey, ApiError> {
        let key = format!("rgw_{}{}", random_hex(), random_hex());
        let key_id = format!("k{}", &random_hex()[..10]);
        let stored = StoredKey {
            key_id: key_id.clone(),
            hash: hash(&key),
            created_at: now(),
        };
        self.change(id, |t| {
            if t.keys.len() >= max_keys {
                return Err(ApiError::Conflict {
                    code: ErrorCode::TooManyKeys,
                    message: format!(
                        "tenant `{}` holds {max_keys} keys (quotas.max_keys_per_tenant): revoke one first",
                        t.name
                    ),
                });
            }
            t.keys.push(stored.clone());
            Ok(())
        })
        .await?;
        Ok(NewKey { key_id, key })
    }

    /// Revokes a key at once (other replicas within [`FOLLOW_EVERY`]).
    pub async fn revoke_key(&self, id: &str, key_id: &str) -> Result<(), ApiError> {
        self.change(id, |t| {
            let before = t.keys.len();
            t.keys.retain(|k| k.key_id != key_id);
            match t.keys.len() < before {
                true => Ok(()),
                false => Err(ApiError::KeyNotFound(key_id.to_string())),
            }
        })
        .await
        .map(drop)
    }

    /// Forgets tenant `id`'s record: the last step of a deletion, once its collections are gone
    /// (see [`Tenant::deleting`]).
    pub async fn remove(&self, id: &str) -> Result<(), ApiError> {
        let _change = self.changes.lock().await;
        self.store.remove(id).await.map_err(unavailable)?;
        let mut snapshot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        snapshot.by_id.remove(id);
        snapshot.by_key.retain(|_, t| t.id != id);
        Ok(())
    }
}

/// 409: tenant names are unique.
fn name_taken(name: &str) -> ApiError {
    ApiError::Conflict {
        code: ErrorCode::TenantNameTaken,
        message: format!("a tenant named `{name}` exists already: names tell tenants apart, choose another"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_left_out_is_the_default_and_one_given_is_kept() {
        let defaults = Limits {
            requests_per_second: Some(100.0),
            burst: Some(200),
            collections: Some(64),
            ..Limits::default()
        };
        let given = Limits {
            burst: Some(5),
            llm_tokens_per_day: Some(1_000),
            ..Limits::default()
        };
        assert_eq!(
            given.with_defaults(&defaults),
            Limits {
                requests_per_second: Some(100.0),
                burst: Some(5),
                llm_tokens_per_day: Some(1_000),
                collections: Some(64),
                ..Limits::default()
            }
        );
        assert_eq!(
            Limits::default().with_defaults(&Limits::default()),
            Limits::default()
        );
    }

    #[test]
    fn limits_the_arithmetic_cannot_hold_are_refused() {
        let rate = |r: f64| Limits {
            requests_per_second: Some(r),
            ..Limits::default()
        };
        assert!(rate(1e-20).check().is_err());
        assert!(rate(f64::NAN).check().is_err());
        assert!(rate(2e6).check().is_err());
        assert!(rate(0.5).check().is_ok());
        let burst = Limits {
            burst: Some(0),
            ..Limits::default()
        };
        assert!(burst.check().is_err());
    }
}
