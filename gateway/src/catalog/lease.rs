//! Leases on Redis: a key one process holds while it works on something (a collection's change, an
//! ingestion job), renewed while it works, and free again soon after that process dies, so another
//! can take over. Without Redis (one process) a lease is a no-op.

use std::time::Duration;

use ragway_cache::redis::Script;
use ragway_cache::RedisTier;
use tokio::task::JoinHandle;

/// How long a lease lives without renewal; renewed at a third of it.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

const RENEW: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1]) else return 0 end";

/// Held until dropped.
pub struct Lease {
    held: Option<Held>,
}

struct Held {
    redis: RedisTier,
    key: String,
    token: String,
    renewer: JoinHandle<()>,
}

impl Lease {
    /// The lease of a process that shares nothing.
    pub fn local() -> Self {
        Self { held: None }
    }

    /// Takes `key` if no process holds it (`None` if one does).
    pub async fn try_take(redis: &RedisTier, key: String) -> Result<Option<Self>, String> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut connection = redis.connection();
        let taken: Option<String> = redis
            .call(
                ragway_cache::redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(LEASE_TTL.as_millis() as u64)
                    .query_async(&mut connection),
            )
            .await?;
        if taken.is_none() {
            return Ok(None);
        }
        let renewer = tokio::spawn(renew(redis.clone(), key.clone(), token.clone()));
        Ok(Some(Self {
            held: Some(Held {
                redis: redis.clone(),
                key,
                token,
                renewer,
            }),
        }))
    }

    /// Takes `key`, waiting for whoever holds it (at most `wait`).
    pub async fn take(redis: &RedisTier, key: String, wait: Duration) -> Result<Self, String> {
        let started = tokio::time::Instant::now();
        loop {
            if let Some(lease) = Self::try_take(redis, key.clone()).await? {
                return Ok(lease);
            }
            if started.elapsed() > wait {
                return Err(format!("`{key}` stayed held by another process for {wait:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Keeps the lease alive until it is dropped (or found taken over, after Redis lost it).
async fn renew(redis: RedisTier, key: String, token: String) {
    let script = Script::new(RENEW);
    loop {
        tokio::time::sleep(LEASE_TTL / 3).await;
        let mut connection = redis.connection();
        let renewed = redis
            .bounded(
                script
                    .key(&key)
                    .arg(&token)
                    .arg(LEASE_TTL.as_millis() as u64)
                    .invoke_async::<i64>(&mut connection),
            )
            .await;
        match renewed {
            Ok(0) => {
                tracing::warn!(key, "lease lost: another process may take over this work");
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(key, error = %e.0, "lease not renewed; retrying"),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        held.renewer.abort();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // shutting down: the lease expires by itself
        };
        runtime.spawn(async move {
            let mut connection = held.redis.connection();
            let released = held
                .redis
                .bounded(
                    Script::new(RELEASE)
                        .key(&held.key)
                        .arg(&held.token)
                        .invoke_async::<i64>(&mut connection),
                )
                .await;
            if let Err(e) = released {
                tracing::warn!(key = held.key, error = %e.0, "lease not released; it expires by itself");
            }
        });
    }
}
