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

pub use store::{FileStore, RedisStore, TenantStore};

use crate::error::{ApiError, ErrorCode};

/// How often a replica checks the store for changes made elsewhere.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);

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
    /// Tokens embedded per UTC day (documents, queries, `/v1/embeddings`).
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
            let tenant = Arc::new(tenant);
            for key in &tenant.keys {
                snapshot.by_key.insert(key.hash.clone(), tenant.clone());
            }
            snapshot.by_id.insert(tenant.id.clone(), tenant);
        }
        snapshot
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

    pub async fn create(&self, request: CreateTenant) -> Result<Arc<Tenant>, ApiError> {
        let tenant = Tenant {
            id: format!("t{}", &random_hex()[..12]),
            name: request.name,
            limits: request.limits,
            over_quota: request.over_quota,
            llm_backends: request.llm_backends,
            created_at: now(),
            keys: Vec::new(),
        };
        let _change = self.changes.lock().await;
        self.save(tenant).await
    }

    /// Applies `change` to tenant `id` and stores the result.
    pub async fn change(&self, id: &str, change: impl FnOnce(&mut Tenant)) -> Result<Arc<Tenant>, ApiError> {
        let _change = self.changes.lock().await;
        let mut tenant = (*self.get(id)?).clone();
        change(&mut tenant);
        self.save(tenant).await
    }

    async fn save(&self, tenant: Tenant) -> Result<Arc<Tenant>, ApiError> {
        self.store.save(&tenant).await.map_err(unavailable)?;
        let tenant = Arc::new(tenant);
        let mut snapshot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        snapshot.by_key.retain(|_, t| t.id != tenant.id);
        for key in &tenant.keys {
            snapshot.by_key.insert(key.hash.clone(), tenant.clone());
        }
        snapshot.by_id.insert(tenant.id.clone(), tenant.clone());
        Ok(tenant)
    }

    /// A new key for tenant `id`: returned once, stored as a hash.
    pub async fn add_key(&self, id: &str) -> Result<NewKey, ApiError> {
        let key = format!("rgw_{}{}", random_hex(), random_hex());
        let key_id = format!("k{}", &random_hex()[..10]);
        let stored = StoredKey {
            key_id: key_id.clone(),
            hash: hash(&key),
            created_at: now(),
        };
        self.change(id, |t| t.keys.push(stored)).await?;
        Ok(NewKey { key_id, key })
    }

    /// Revokes a key at once (other replicas within [`FOLLOW_EVERY`]).
    pub async fn revoke_key(&self, id: &str, key_id: &str) -> Result<(), ApiError> {
        let tenant = self.get(id)?;
        if !tenant.keys.iter().any(|k| k.key_id == key_id) {
            return Err(ApiError::KeyNotFound(key_id.to_string()));
        }
        self.change(id, |t| t.keys.retain(|k| k.key_id != key_id)).await?;
        Ok(())
    }

    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        let _change = self.changes.lock().await;
        self.get(id)?;
        self.store.remove(id).await.map_err(unavailable)?;
        let mut snapshot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        snapshot.by_id.remove(id);
        snapshot.by_key.retain(|_, t| t.id != id);
        Ok(())
    }
}
