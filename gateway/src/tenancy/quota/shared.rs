//! Quotas in Redis, shared by every replica: a GCRA and the day's counters, one round trip.

use ragway_cache::redis::{AsyncCommands, Script};
use ragway_cache::{RedisTier, TierError};
use std::time::Duration;

use super::{Counter, DayUsage, Rate, Spent};

/// Days a tenant's counters are kept in Redis.
const KEEP_S: u64 = 62 * 86_400;

/// KEYS: the tenant's GCRA state, its counters for today. ARGV: emission interval in µs (0: no
/// rate limit), burst, counters' TTL in s. Returns {admitted, µs to wait, llm tokens, embedding
/// tokens}. Time is Redis's own, so replicas with skewed clocks agree.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
if interval > 0 then
  local burst = tonumber(ARGV[2])
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then tat = now end
  local next_tat = tat + interval
  local allow_at = next_tat - burst * interval
  if allow_at > now then
    return {0, allow_at - now, 0, 0}
  end
  redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
end
redis.call('HINCRBY', KEYS[2], 'requests', 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
local used = redis.call('HMGET', KEYS[2], 'tokens_in', 'tokens_out', 'embedding_tokens')
return {1, 0, (tonumber(used[1]) or 0) + (tonumber(used[2]) or 0), tonumber(used[3]) or 0}
";

pub(super) struct SharedCounters {
    redis: RedisTier,
    admit: Script,
}

fn usage_key(tenant: &str, day: &str) -> String {
    format!("ragway:usage:{tenant}:{day}")
}

impl SharedCounters {
    pub(super) fn new(redis: RedisTier) -> Self {
        Self {
            redis,
            admit: Script::new(ADMIT),
        }
    }

    /// `Ok(Ok(spent))` admitted; `Ok(Err(wait))` over the rate; `Err` Redis did not answer.
    pub(super) async fn admit(
        &self,
        tenant: &str,
        rate: Option<Rate>,
        day: &str,
    ) -> Result<Result<Spent, Duration>, TierError> {
        let (interval_us, burst) = rate.map_or((0, 0), |r| ((1e6 / r.per_second).ceil() as u64, r.burst));
        let mut invocation = self.admit.prepare_invoke();
        invocation
            .key(format!("ragway:rate:{tenant}"))
            .key(usage_key(tenant, day))
            .arg(interval_us)
            .arg(burst)
            .arg(KEEP_S);
        let mut connection = self.redis.connection();
        let (admitted, wait_us, llm, embedding): (u64, u64, u64, u64) = self
            .redis
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        Ok(if admitted == 1 {
            Ok(Spent {
                llm_tokens: llm,
                embedding_tokens: embedding,
            })
        } else {
            Err(Duration::from_micros(wait_us))
        })
    }

    pub(super) async fn ping(&self) -> Result<(), TierError> {
        let mut connection = self.redis.connection();
        self.redis
            .bounded(ragway_cache::redis::cmd("PING").query_async::<()>(&mut connection))
            .await
    }

    pub(super) async fn add(
        &self,
        tenant: &str,
        day: &str,
        counter: Counter,
        n: u64,
    ) -> Result<(), TierError> {
        let mut connection = self.redis.connection();
        let key = usage_key(tenant, day);
        let mut pipe = ragway_cache::redis::pipe();
        pipe.hincr(&key, counter.field(), n)
            .ignore()
            .expire(&key, KEEP_S as i64)
            .ignore();
        self.redis.bounded(pipe.query_async::<()>(&mut connection)).await
    }

    pub(super) async fn days(&self, tenant: &str, days: &[String]) -> Result<Vec<DayUsage>, TierError> {
        let mut connection = self.redis.connection();
        let mut found = Vec::new();
        for day in days {
            let fields: std::collections::HashMap<String, u64> = self
                .redis
                .bounded(connection.hgetall(usage_key(tenant, day)))
                .await?;
            if fields.is_empty() {
                continue;
            }
            let get = |c: Counter| fields.get(c.field()).copied().unwrap_or(0);
            found.push(DayUsage {
                day: day.clone(),
                requests: get(Counter::Requests),
                tokens_in: get(Counter::TokensIn),
                tokens_out: get(Counter::TokensOut),
                embedding_tokens: get(Counter::EmbeddingTokens),
            });
        }
        Ok(found)
    }
}
