//! Leases on Redis: a key one process holds while it works on something (a collection's change, an
//! ingestion job), renewed while it works, and free again soon after that process dies, so another
//! can take over. Without Redis (one process) a lease is a no-op.
//!
//! A holder that is cut off from Redis or paused for longer than the lease lives loses it without
//! knowing, while another process takes it. So a lease fences its holder's writes two ways: every
//! write to Redis made under it is conditional on its token, in the same script ([`Lease::token`]),
//! and before each write elsewhere (a store that knows nothing of leases) the holder asks
//! [`Lease::check`] whether the lease is sure to outlive that write, by its own clock: from the
//! moment it last sent a renewal that Redis answered, the lease lives at least its time to live.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ragway_cache::redis::Script;
use ragway_cache::RedisTier;
use tokio::task::JoinHandle;

/// How long a lease lives without renewal; renewed at a third of it.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

const RENEW: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1]) else return 0 end";

/// The time to live of a lease whose holder needs `margin` left before each write it fences:
/// renewed at a third of it, a lease always has two thirds of it left after a renewal, and that
/// must exceed `margin`.
pub fn ttl_for(margin: Duration) -> Duration {
    LEASE_TTL.max(margin * 2)
}

/// Held until dropped.
pub struct Lease {
    held: Option<Held>,
}

struct Held {
    redis: RedisTier,
    key: String,
    token: String,
    life: Arc<Life>,
    renewer: JoinHandle<()>,
}

/// What the holder knows of its lease, by its own clock.
struct Life {
    /// Milliseconds since [`epoch`] until which the lease is sure to live.
    until_ms: AtomicU64,
    /// Redis said another process holds it.
    lost: AtomicBool,
}

/// The instant local lease clocks count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_millis()).unwrap_or(u64::MAX)
}

impl Life {
    /// The lease was set (or renewed) by a command sent at `sent`: Redis started its time to live
    /// after that.
    fn extend(&self, sent: Instant, ttl: Duration) {
        self.until_ms
            .fetch_max(millis_since_epoch(sent + ttl), Ordering::AcqRel);
    }
}

/// Why a write made under a lease did not happen.
#[derive(Debug)]
pub enum WriteError {
    /// The store failed or is out of reach.
    Failed(String),
    /// The writer is stale: it no longer holds the lease, or what it changed is not what is
    /// recorded now (another process changed or removed it).
    Fenced(String),
}

impl From<String> for WriteError {
    fn from(e: String) -> Self {
        Self::Failed(e)
    }
}

/// Why a holder may no longer write under its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseLost(pub String);

impl Lease {
    /// The lease of a process that shares nothing.
    pub fn local() -> Self {
        Self { held: None }
    }

    /// Takes `key` for [`LEASE_TTL`] if no process holds it (`None` if one does).
    pub async fn try_take(redis: &RedisTier, key: String) -> Result<Option<Self>, String> {
        Self::try_take_for(redis, key, LEASE_TTL).await
    }

    /// Takes `key` for `ttl` (renewed while held) if no process holds it.
    pub async fn try_take_for(redis: &RedisTier, key: String, ttl: Duration) -> Result<Option<Self>, String> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut connection = redis.durable_connection();
        let sent = Instant::now();
        let taken: Option<String> = redis
            .call(
                ragway_cache::redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl))
                    .query_async(&mut connection),
            )
            .await?;
        if taken.is_none() {
            return Ok(None);
        }
        // A lease a promoted replica does not know of could be taken again after a failover:
        // it counts only once the replicas have it.
        if !redis.replicated().await {
            let _ = release(redis, &key, &token).await;
            return Err(format!(
                "`{key}` was taken on the Redis primary, but no replica confirmed it in time"
            ));
        }
        let life = Arc::new(Life {
            until_ms: AtomicU64::new(millis_since_epoch(sent + ttl)),
            lost: AtomicBool::new(false),
        });
        let renewer = tokio::spawn(renew(
            redis.clone(),
            key.clone(),
            token.clone(),
            ttl,
            life.clone(),
        ));
        Ok(Some(Self {
            held: Some(Held {
                redis: redis.clone(),
                key,
                token,
                life,
                renewer,
            }),
        }))
    }

    /// Takes `key` for `ttl`, waiting for whoever holds it (at most `wait`).
    pub async fn take(redis: &RedisTier, key: String, ttl: Duration, wait: Duration) -> Result<Self, String> {
        let started = tokio::time::Instant::now();
        loop {
            if let Some(lease) = Self::try_take_for(redis, key.clone(), ttl).await? {
                return Ok(lease);
            }
            if started.elapsed() > wait {
                return Err(format!("`{key}` stayed held by another process for {wait:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The lease's key and token, for a Redis write made conditional on holding it (`None`: a
    /// local lease, which fences nothing).
    pub fn token(&self) -> Option<(&str, &str)> {
        self.held.as_ref().map(|h| (h.key.as_str(), h.token.as_str()))
    }

    /// Whether the lease is sure to live `margin` longer (always, for a local lease): asked
    /// before a write that nothing else fences and that takes at most `margin`.
    pub fn check(&self, margin: Duration) -> Result<(), LeaseLost> {
        let Some(held) = &self.held else {
            return Ok(());
        };
        if held.life.lost.load(Ordering::Acquire) {
            return Err(LeaseLost(format!(
                "`{}` is held by another process now",
                held.key
            )));
        }
        let until = held.life.until_ms.load(Ordering::Acquire);
        let needed = millis_since_epoch(Instant::now() + margin);
        match needed <= until {
            true => Ok(()),
            false => Err(LeaseLost(format!(
                "`{}` could not be renewed (Redis out of reach or this process paused)",
                held.key
            ))),
        }
    }
}

/// Deletes `key` if it still holds `token` (compare-and-delete).
async fn release(redis: &RedisTier, key: &str, token: &str) -> Result<i64, ragway_cache::TierError> {
    let mut connection = redis.connection();
    let script = Script::new(RELEASE);
    let mut invocation = script.key(key);
    invocation.arg(token);
    redis
        .bounded(invocation.invoke_async::<i64>(&mut connection))
        .await
}

/// How soon a release that failed is tried again.
const RELEASE_RETRY: Duration = Duration::from_millis(250);

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Keeps the lease alive until it is dropped (or found taken over, after Redis lost it).
async fn renew(redis: RedisTier, key: String, token: String, ttl: Duration, life: Arc<Life>) {
    let script = Script::new(RENEW);
    loop {
        tokio::time::sleep(ttl / 3).await;
        let mut connection = redis.durable_connection();
        let sent = Instant::now();
        let renewed = redis
            .bounded(
                script
                    .key(&key)
                    .arg(&token)
                    .arg(millis(ttl))
                    .invoke_async::<i64>(&mut connection),
            )
            .await;
        // A renewal the replicas do not have would leave a promoted one with an earlier expiry
        // than this holder counts on: it extends nothing.
        let renewed = match renewed {
            Ok(n) if n > 0 && !redis.replicated().await => Err(ragway_cache::TierError(
                "renewed on the primary, but no replica confirmed it in time".into(),
            )),
            other => other,
        };
        match renewed {
            Ok(0) => {
                life.lost.store(true, Ordering::Release);
                tracing::warn!(key, "lease lost: another process may take over this work");
                return;
            }
            Ok(_) => life.extend(sent, ttl),
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
        // Released as long as it would still be held: when Redis is out of reach for a moment
        // (a failover), released on the primary that comes after, so that the next writer need
        // not wait out the lease.
        runtime.spawn(async move {
            loop {
                let released = release(&held.redis, &held.key, &held.token).await;
                let Err(e) = released else { return };
                let left = held.life.until_ms.load(Ordering::Acquire);
                if millis_since_epoch(Instant::now() + RELEASE_RETRY) >= left {
                    tracing::warn!(key = held.key, error = %e.0, "lease not released; it expires by itself");
                    return;
                }
                tokio::time::sleep(RELEASE_RETRY).await;
            }
        });
    }
}
