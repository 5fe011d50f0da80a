use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

use crate::{SharedTier, TierError};

/// The shared tier on a Redis server: values with a TTL (`PSETEX`), deletion by pattern (`SCAN`,
/// then `UNLINK`), and pub/sub. The connection is made lazily and re-made after a failure, so a
/// Redis that is down at start-up or restarts later is picked up without a restart of ragway;
/// every call is bounded by `timeout`.
#[derive(Clone)]
pub struct RedisTier {
    client: redis::Client,
    connection: ConnectionManager,
    timeout: Duration,
}

fn failed(e: impl std::fmt::Display) -> TierError {
    TierError(e.to_string())
}

impl RedisTier {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, TierError> {
        let client = redis::Client::open(url).map_err(failed)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(failed)?;
        Ok(Self {
            client,
            connection,
            timeout,
        })
    }

    /// A handle on the shared connection, for callers with commands of their own (tenants,
    /// quota counters); bound each call with [`RedisTier::bounded`].
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
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
    pub async fn call<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
        self.bounded(call).await.map_err(|e| format!("redis: {}", e.0))
    }

    /// Calls `on_message` with every message published on `channel`, for as long as the process
    /// runs; re-subscribes after Redis comes back.
    pub fn subscribe(&self, channel: &'static str, on_message: impl Fn(String) + Send + Sync + 'static) {
        let client = self.client.clone();
        tokio::spawn(async move {
            loop {
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

#[async_trait]
impl SharedTier for RedisTier {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, TierError> {
        let mut connection = self.connection.clone();
        self.bounded(connection.get::<_, Option<Vec<u8>>>(key)).await
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), TierError> {
        let mut connection = self.connection.clone();
        let ms = ttl.as_millis().max(1) as u64;
        self.bounded(connection.pset_ex::<_, _, ()>(key, value, ms)).await
    }

    async fn delete_matching(&self, pattern: &str) -> Result<u64, TierError> {
        let mut connection = self.connection.clone();
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
        let mut connection = self.connection.clone();
        self.bounded(connection.publish::<_, _, ()>(channel, message))
            .await
    }
}
