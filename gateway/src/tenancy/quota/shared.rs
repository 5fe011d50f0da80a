//! Quotas in Redis, shared by every replica: a GCRA and the day's counters, one round trip.

use ragway_cache::redis::{AsyncCommands, Script};
use ragway_cache::{RedisTier, TierError};
use std::time::Duration;

use super::hold::SharedHeld;
use super::{Ask, Budget, Counter, DayUsage, Rate, Spent};

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

/// KEYS: the tenant's counters for today, its reservations of one budget (a sorted set of
/// `amount:id` lapsing at their score, ms). ARGV: the limit, the amount, ms until it lapses, its
/// id, tokens spent that Redis does not know of (counted here while it was unreachable), then the
/// counters' fields the budget sums. Returns {1, 0} held, or {0, where the tenant could end up}.
const RESERVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local after = tonumber(ARGV[2]) + tonumber(ARGV[5])
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  after = after + (tonumber(string.match(member, '^(%d+):')) or 0)
end
for i = 6, #ARGV do
  after = after + (tonumber(redis.call('HGET', KEYS[1], ARGV[i])) or 0)
end
if after > tonumber(ARGV[1]) then
  return {0, after}
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2] .. ':' .. ARGV[4])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]))
return {1, 0}
";

pub(super) struct SharedCounters {
    redis: RedisTier,
    admit: Script,
    reserve: Script,
}

fn usage_key(tenant: &str, day: &str) -> String {
    format!("ragway:usage:{tenant}:{day}")
}

impl SharedCounters {
    pub(super) fn new(redis: RedisTier) -> Self {
        Self {
            redis,
            admit: Script::new(ADMIT),
            reserve: Script::new(RESERVE),
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

    /// Holds `ask.amount` of `tenant`'s `budget` for `lapse` unless, with today's counters and
    /// the reservations of every replica, it would cross `ask.limit`: `Ok(Err(after))` then.
    pub(super) async fn reserve(
        &self,
        tenant: &str,
        day: &str,
        budget: Budget,
        ask: Ask,
        lapse: Duration,
    ) -> Result<Result<SharedHeld, u128>, TierError> {
        let key = format!("ragway:reserved:{tenant}:{}", budget.quota());
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut invocation = self.reserve.prepare_invoke();
        invocation
            .key(usage_key(tenant, day))
            .key(&key)
            .arg(ask.limit)
            .arg(ask.amount)
            .arg(lapse.as_millis().max(1) as u64)
            .arg(&id)
            .arg(ask.unseen);
        for counter in budget.counters() {
            invocation.arg(counter.field());
        }
        let mut connection = self.redis.connection();
        let (held, after): (u64, u64) = self
            .redis
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        Ok(match held {
            1 => Ok(SharedHeld {
                redis: self.redis.clone(),
                key,
                member: format!("{}:{id}", ask.amount),
            }),
            _ => Err(u128::from(after)),
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
