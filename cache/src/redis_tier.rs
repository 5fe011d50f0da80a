use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::AsyncCommands;

use crate::{SharedTier, TierError};

/// Where Redis is: one server, or the primary that Redis Sentinel names for `master`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Url(String),
    Sentinel {
        /// The sentinels' addresses (`redis://host:port` or `host:port`).
        sentinels: Vec<String>,
        master: String,
    },
}

/// How a write that must outlive the primary is made: after it, `WAIT` until `replicas` replicas
/// have it (at most `wait`). 0 replicas: nothing waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    pub replicas: usize,
    pub wait: Duration,
}

impl Durability {
    pub const NONE: Self = Self {
        replicas: 0,
        wait: Duration::ZERO,
    };
}

/// The shared tier on a Redis server: values with a TTL (`PSETEX`), deletion by pattern (`SCAN`,
/// then `UNLINK`), and pub/sub. The connection is made lazily and re-made after a failure, so a
/// Redis that is down at start-up or restarts later is picked up without a restart of ragway;
/// every call is bounded by `timeout`.
///
/// With Sentinel, a watcher asks the sentinels every [`WATCH_EVERY`] which server is the primary
/// and moves every connection to a new one as soon as they name it (a failover needs no restart);
/// it also reads how many replicas the primary has. Writes that must survive the primary's loss
/// (collections, jobs, tenants and keys, leases) go through [`RedisTier::durable`] on a connection
/// of their own, which then waits for the replicas (`WAIT`), so a promoted replica has them;
/// caches and rate counters stay best-effort.
#[derive(Clone)]
pub struct RedisTier {
    link: Arc<Link>,
    timeout: Duration,
    durability: Durability,
}

/// How often the watcher asks the sentinels for the primary (and the primary for its replicas).
pub const WATCH_EVERY: Duration = Duration::from_millis(100);

/// The longest the watcher waits for a sentinel's or the primary's answer.
const WATCH_TIMEOUT: Duration = Duration::from_millis(500);

/// The longest a call waits, with Sentinel, for a primary that does not answer to be failed over
/// (Sentinel's `down-after-milliseconds` and an election fit well within it).
pub const FAILOVER_WAIT: Duration = Duration::from_secs(10);

struct Link {
    primary: RwLock<Primary>,
    config: ConnectionManagerConfig,
    /// Replicas connected to the primary, as it said last ([`WATCH_EVERY`]).
    replicas: AtomicUsize,
    /// Whether the primary answered last time it was asked, or a call found it gone since.
    reachable: AtomicBool,
    /// With Sentinel: a failover may be under way while the primary does not answer.
    follows_failover: bool,
}

/// The connections to one server: shared by most calls, and one for durable writes (whose `WAIT`
/// blocks the connection it is sent on, so that no cache read queues behind it).
#[derive(Clone)]
struct Primary {
    address: String,
    client: redis::Client,
    connection: ConnectionManager,
    durable: ConnectionManager,
}

fn failed(e: impl std::fmt::Display) -> TierError {
    TierError(e.to_string())
}

impl Link {
    /// The primary as the watcher last named it.
    fn primary(&self) -> RwLockReadGuard<'_, Primary> {
        self.primary.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl Primary {
    fn open(address: &str, config: &ConnectionManagerConfig) -> Result<Self, TierError> {
        let client = redis::Client::open(address).map_err(failed)?;
        let lazy = || ConnectionManager::new_lazy_with_config(client.clone(), config.clone()).map_err(failed);
        Ok(Self {
            address: address.to_string(),
            connection: lazy()?,
            durable: lazy()?,
            client,
        })
    }
}

impl RedisTier {
    /// One Redis server at `url`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, TierError> {
        Self::open(url, timeout, Durability::NONE, None)
    }

    /// Redis at `target`; with Sentinel, following the primary it names (asked once here, each
    /// sentinel for at most `timeout`; if none answers, calls fail as Redis unreachable until
    /// one does).
    pub async fn connect(
        target: &RedisTarget,
        timeout: Duration,
        durability: Durability,
    ) -> Result<Self, TierError> {
        match target {
            RedisTarget::Url(url) => Self::open(url, timeout, durability, None),
            RedisTarget::Sentinel { sentinels, master } => {
                let clients = sentinels
                    .iter()
                    .map(|s| redis::Client::open(sentinel_url(s)).map_err(failed))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut open = vec![None; clients.len()];
                let named = ask_sentinels(&clients, &mut open, master, timeout.max(WATCH_TIMEOUT)).await;
                let first = named.unwrap_or_else(|| UNKNOWN_PRIMARY.to_string());
                Self::open(&first, timeout, durability, Some((clients, master.clone())))
            }
        }
    }

    fn open(
        first: &str,
        timeout: Duration,
        durability: Durability,
        sentinels: Option<(Vec<redis::Client>, String)>,
    ) -> Result<Self, TierError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let link = Arc::new(Link {
            primary: RwLock::new(Primary::open(first, &config)?),
            config,
            replicas: AtomicUsize::new(0),
            reachable: AtomicBool::new(true),
            follows_failover: sentinels.is_some(),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(watch(Arc::downgrade(&link), sentinels, timeout));
        }
        Ok(Self {
            link,
            timeout,
            durability,
        })
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// A handle on the shared connection, for callers with commands of their own (tenants,
    /// quota counters); bound each call with [`RedisTier::bounded`].
    pub fn connection(&self) -> PrimaryConnection {
        PrimaryConnection {
            link: self.link.clone(),
            durable: false,
        }
    }

    /// The connection for writes that must outlive the primary: make them with
    /// [`RedisTier::durable`].
    pub fn durable_connection(&self) -> PrimaryConnection {
        PrimaryConnection {
            link: self.link.clone(),
            durable: true,
        }
    }

    /// `call`, failed after this tier's timeout.
    pub async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, TierError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(failed),
            Err(_) => Err(TierError(format!("no answer within {:?}", self.timeout))),
        }
    }

    /// As [`RedisTier::bounded`], its failure as text (`redis: ...`), for callers that report it.
    ///
    /// With Sentinel, a call made while the primary does not answer first waits for the one the
    /// sentinels name next (at most [`FAILOVER_WAIT`]), so that a write arriving during a
    /// failover goes through once it is done instead of failing.
    pub async fn call<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
        settled(&self.link).await;
        self.bounded(call).await.map_err(|e| format!("redis: {}", e.0))
    }

    /// A write that must survive the primary's loss, sent on [`RedisTier::durable_connection`]:
    /// made as [`RedisTier::call`], then waited for until the replicas have it
    /// ([`RedisTier::replicated`]). A write they did not confirm in time is on the primary alone:
    /// it is still acknowledged (it is there), counted in
    /// `ragway_redis_unreplicated_writes_total` and logged.
    pub async fn durable<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
        let value = self.call(call).await?;
        if !self.replicated().await {
            tracing::warn!(
                primary = %self.link.primary().address,
                "a write that must outlive the Redis primary is on the primary alone (no replica confirmed it in time)"
            );
        }
        Ok(value)
    }

    /// Whether the writes made so far on the durable connection are on the replicas that
    /// [`Durability`] asks for (`WAIT`, at most its `wait`); true when it asks for none, or the
    /// primary has none connected to wait for (then it cannot be failed over to one either).
    pub async fn replicated(&self) -> bool {
        let want = self.durability.replicas;
        if want == 0 {
            return true;
        }
        if self.link.replicas.load(Ordering::Relaxed) == 0 {
            metrics::counter!("ragway_redis_unreplicated_writes_total").increment(1);
            return true;
        }
        let mut connection = self.durable_connection();
        let wait = self.durability.wait;
        let mut command = redis::cmd("WAIT");
        command
            .arg(want)
            .arg(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
        let acked =
            tokio::time::timeout(wait + self.timeout, command.query_async::<usize>(&mut connection)).await;
        let replicated = matches!(acked, Ok(Ok(n)) if n >= want);
        if !replicated {
            metrics::counter!("ragway_redis_unreplicated_writes_total").increment(1);
        }
        replicated
    }

    /// Calls `on_message` with every message published on `channel`, for as long as the process
    /// runs; re-subscribes after Redis comes back (or on the new primary after a failover).
    pub fn subscribe(&self, channel: &'static str, on_message: impl Fn(String) + Send + Sync + 'static) {
        let link = Arc::downgrade(&self.link);
        tokio::spawn(async move {
            loop {
                let Some(client) = link.upgrade().map(|l| l.primary().client.clone()) else {
                    return;
                };
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(channel).await {
                        Ok(()) => {
                            let mut messages = pubsub.on_message();
                            while let Some(message) = messages.next().await {
                                if let Ok(text) = message.get_payload::<String>() {
                                    on_message(text);
                                }
                            }
                            tracing::warn!(channel, "redis subscription ended; re-subscribing");
                        }
                        Err(e) => tracing::debug!(channel, error = %e, "redis subscribe failed"),
                    },
                    Err(e) => tracing::debug!(channel, error = %e, "redis unreachable for pub/sub"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

/// Waits while a failover may be under way (Sentinel, and the primary not answering), at most
/// [`FAILOVER_WAIT`].
async fn settled(link: &Link) {
    if !link.follows_failover {
        return;
    }
    let started = tokio::time::Instant::now();
    while !link.reachable.load(Ordering::Relaxed) && started.elapsed() < FAILOVER_WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection to whichever server is the primary when a command is sent (so a command made
/// ready before a failover goes to the new primary), waiting first while one may be under way.
/// Commands that find the primary gone mark it unreachable until the watcher hears from one.
#[derive(Clone)]
pub struct PrimaryConnection {
    link: Arc<Link>,
    durable: bool,
}

impl PrimaryConnection {
    async fn current(&self) -> ConnectionManager {
        settled(&self.link).await;
        let primary = self.link.primary();
        match self.durable {
            true => primary.durable.clone(),
            false => primary.connection.clone(),
        }
    }

    fn seen<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(e) = &result {
            if e.is_connection_refusal() || e.is_connection_dropped() {
                self.link.reachable.store(false, Ordering::Relaxed);
            }
        }
        result
    }
}

impl redis::aio::ConnectionLike for PrimaryConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let mut connection = self.current().await;
            let result = connection.req_packed_command(cmd).await;
            self.seen(result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let mut connection = self.current().await;
            let result = connection.req_packed_commands(pipeline, offset, count).await;
            self.seen(result)
        })
    }

    fn get_db(&self) -> i64 {
        self.link.primary().connection.get_db()
    }
}

/// Where calls go while no sentinel has named the primary yet.
const UNKNOWN_PRIMARY: &str = "redis://127.0.0.1:0/0";

/// A sentinel's address as a URL.
fn sentinel_url(address: &str) -> String {
    match address.contains("://") {
        true => address.to_string(),
        false => format!("redis://{address}"),
    }
}

/// Every [`WATCH_EVERY`] while the tier lives: asks the sentinels (if any) which server is the
/// primary and moves to it when that changed; asks the primary how many replicas it has, and
/// pings the durable connection.
async fn watch(link: Weak<Link>, sentinels: Option<(Vec<redis::Client>, String)>, timeout: Duration) {
    // Not the callers' bound (50 ms for the cache tier): a slow answer is no sign of a failover.
    let timeout = timeout.max(WATCH_TIMEOUT);
    let mut open: Vec<Option<MultiplexedConnection>> = Vec::new();
    open.resize_with(sentinels.as_ref().map_or(0, |(c, _)| c.len()), || None);
    loop {
        let Some(link) = link.upgrade() else { return };
        if let Some((clients, master)) = &sentinels {
            if let Some(address) = ask_sentinels(clients, &mut open, master, timeout).await {
                let current = link.primary().address.clone();
                if address != current {
                    match Primary::open(&address, &link.config) {
                        Ok(primary) => {
                            *link.primary.write().unwrap_or_else(|e| e.into_inner()) = primary;
                            link.replicas.store(0, Ordering::Relaxed);
                            if current != UNKNOWN_PRIMARY {
                                metrics::counter!("ragway_redis_failovers_total").increment(1);
                            }
                            tracing::warn!(
                                master,
                                primary = address,
                                "Redis primary named by Sentinel; connections move to it"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(master, primary = address, error = %e.0, "cannot open the Redis primary Sentinel names")
                        }
                    }
                }
            }
        }
        let Primary {
            mut connection,
            mut durable,
            ..
        } = link.primary().clone();
        // The durable connection carries few calls: kept tested, so that after Redis restarts it
        // is this ping, not a client's write, that finds the old connection broken.
        let ping = redis::cmd("PING");
        let _ = tokio::time::timeout(timeout, ping.query_async::<()>(&mut durable)).await;
        let role = tokio::time::timeout(
            timeout,
            redis::cmd("ROLE").query_async::<redis::Value>(&mut connection),
        )
        .await;
        let reachable = matches!(role, Ok(Ok(_)));
        let replicas = match role {
            Ok(Ok(redis::Value::Array(parts))) => match parts.get(2) {
                Some(redis::Value::Array(replicas)) => replicas.len(),
                _ => 0,
            },
            _ => 0,
        };
        link.replicas.store(replicas, Ordering::Relaxed);
        link.reachable.store(reachable, Ordering::Relaxed);
        drop(link);
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

/// The primary's address as the first sentinel that answers names it; `open` holds a connection
/// per sentinel, kept between calls.
async fn ask_sentinels(
    clients: &[redis::Client],
    open: &mut [Option<MultiplexedConnection>],
    master: &str,
    timeout: Duration,
) -> Option<String> {
    for (client, slot) in clients.iter().zip(open.iter_mut()) {
        let asked = async {
            let mut connection = match slot.take() {
                Some(connection) => connection,
                None => client.get_multiplexed_async_connection().await?,
            };
            let named = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query_async::<Option<(String, u16)>>(&mut connection)
                .await?;
            *slot = Some(connection);
            Ok::<_, redis::RedisError>(named)
        };
        if let Ok(Ok(Some((host, port)))) = tokio::time::timeout(timeout, asked).await {
            return Some(format!("redis://{host}:{port}/0"));
        }
    }
    None
}

#[async_trait]
impl SharedTier for RedisTier {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, TierError> {
        let mut connection = self.connection();
        self.bounded(connection.get::<_, Option<Vec<u8>>>(key)).await
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), TierError> {
        let mut connection = self.connection();
        let ms = ttl.as_millis().max(1) as u64;
        self.bounded(connection.pset_ex::<_, _, ()>(key, value, ms)).await
    }

    async fn delete_matching(&self, pattern: &str) -> Result<u64, TierError> {
        let mut connection = self.connection();
        let (mut cursor, mut deleted) = (0u64, 0u64);
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
            let (next, keys) = self
                .bounded(scan.query_async::<(u64, Vec<String>)>(&mut connection))
                .await?;
            if !keys.is_empty() {
                deleted += self.bounded(connection.unlink::<_, u64>(&keys)).await?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    async fn publish(&self, channel: &str, message: String) -> Result<(), TierError> {
        let mut connection = self.connection();
        self.bounded(connection.publish::<_, _, ()>(channel, message))
            .await
    }
}
