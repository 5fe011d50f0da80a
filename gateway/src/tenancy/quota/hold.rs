//! What work in flight holds of a tenant's limits: its open streams, and the tokens it may still
//! spend of a day's budget. A hold is taken against the limit in one step (under one lock here,
//! in one Lua script in Redis), and given back when dropped, however the work ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ragway_cache::RedisTier;

/// Amounts per tenant held by this process's work in flight.
#[derive(Default)]
pub(super) struct Holds(Arc<Mutex<HashMap<String, u64>>>);

impl Holds {
    /// Adds `amount` to `who`'s hold when `admit` allows it, given what it holds now (checked and
    /// added under one lock); the [`Held`] gives it back when dropped.
    pub(super) fn take<E>(
        &self,
        who: &str,
        amount: u64,
        admit: impl FnOnce(u64) -> Result<(), E>,
    ) -> Result<Held, E> {
        let mut holds = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let held = holds.entry(who.to_string()).or_default();
        admit(*held)?;
        *held = held.saturating_add(amount);
        Ok(Held {
            holds: self.0.clone(),
            who: who.to_string(),
            amount,
        })
    }
}

/// Part of a hold of this process, given back when dropped.
pub struct Held {
    holds: Arc<Mutex<HashMap<String, u64>>>,
    who: String,
    amount: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = holds.get_mut(&self.who) {
            *held = held.saturating_sub(self.amount);
            if *held == 0 {
                holds.remove(&self.who);
            }
        }
    }
}

/// One open stream of a tenant; dropping it frees the place.
pub type StreamPermit = Held;

/// Tokens of a day's budget held for work in flight: in Redis when it answered (every replica
/// sees it), else in this process. Dropping it gives them back; the work's real use is charged
/// before (see [`crate::tenancy::Meter::holding`]).
pub struct TokenReservation {
    pub(super) _local: Option<Held>,
    pub(super) _shared: Option<SharedHeld>,
}

/// A reservation in Redis: a member of the tenant's sorted set of reservations, which lapses at
/// its score (a replica killed mid-answer holds nothing for long) and is removed when dropped.
pub(super) struct SharedHeld {
    pub(super) redis: RedisTier,
    pub(super) key: String,
    pub(super) member: String,
}

impl Drop for SharedHeld {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the process is ending: the member lapses
        };
        let redis = self.redis.clone();
        let (key, member) = (std::mem::take(&mut self.key), std::mem::take(&mut self.member));
        runtime.spawn(async move {
            let mut connection = redis.connection();
            let removed = redis
                .bounded(
                    ragway_cache::redis::cmd("ZREM")
                        .arg(&key)
                        .arg(&member)
                        .query_async::<()>(&mut connection),
                )
                .await;
            if let Err(error) = removed {
                tracing::debug!(%error, "a token reservation lapses instead of being given back");
            }
        });
    }
}
