//! The tenant's LLM budget for a generation about to start: the most it can take (its prompt's
//! ceiling and `max_tokens`) is reserved before any backend is asked, against what the tenant
//! spent today and what all its answers in flight hold; the answer is charged what it really
//! took, and the reservation given back after that. Work that cannot fit the rest of the day's
//! budget gets what the tenant's `over_quota` says: under `degrade` the cheaper (unmetered)
//! backends it may use, or the quoted passages, with the degradation `quota`; else 429.

use std::sync::Arc;

use ragway_llm::{GenerationRequest, Generator};

use crate::answer::pool::{LlmPool, Route};
use crate::answer::prompt;
use crate::tenancy::quota::{Budget, OverBudget};
use crate::tenancy::tenants::OverQuota;
use crate::tenancy::{Choice, Meter};

/// What the budget leaves a generation.
pub(super) enum Spend {
    /// Go on as planned: the meter holds the reservation (or nothing metered may write it).
    Held(Meter),
    /// Only these unmetered backends may write it (none: the passages are quoted), degraded for
    /// `quota`.
    Cheaper(Vec<String>),
}

/// Reserves what `request` may take of the LLM budget of `meter`'s tenant, when a metered backend
/// of `route` that `choice` allows may write it; `quotable`: there are passages to quote instead.
pub(super) async fn reserve(
    pool: &LlmPool,
    meter: &Meter,
    route: &Route,
    choice: &Choice,
    request: &GenerationRequest,
    quotable: bool,
) -> Result<Spend, OverBudget> {
    if !meter.budgets(Budget::Llm) {
        return Ok(Spend::Held(meter.clone()));
    }
    let allowed: Vec<&str> = route
        .members()
        .iter()
        .map(|m| m.backend.as_str())
        .filter(|b| choice.allows(b))
        .collect();
    if !allowed.iter().any(|b| meter.metered(b)) {
        return Ok(Spend::Held(meter.clone()));
    }
    let window = pool.widest_context(route, choice).map(|(_, w)| w);
    let ceiling = prompt::ceiling(request, window);
    let over = match meter.reserve(Budget::Llm, ceiling).await {
        Ok(held) => return Ok(Spend::Held(held)),
        Err(over) => over,
    };
    // The ceiling counts a token a byte; counted by a tokenizer the prompt may still fit.
    let counter = allowed
        .iter()
        .filter_map(|b| pool.backend(b))
        .map(|b| b.generator.clone() as Arc<dyn Generator>)
        .next();
    let over = match counted(counter, request).await {
        Some(tokens) if tokens < ceiling => match meter.reserve(Budget::Llm, tokens).await {
            Ok(held) => return Ok(Spend::Held(held)),
            Err(over) => over,
        },
        _ => over,
    };
    let cheaper: Vec<String> = allowed
        .into_iter()
        .filter(|b| !meter.metered(b))
        .map(str::to_string)
        .collect();
    let degrade = meter.tenant().is_some_and(|t| t.over_quota == OverQuota::Degrade);
    match degrade && (quotable || !cheaper.is_empty()) {
        true => Ok(Spend::Cheaper(cheaper)),
        false => Err(over),
    }
}

/// The request's prompt counted by `generator`'s tokenizer (off the runtime), with its
/// `max_tokens`; `None` when it cannot count.
async fn counted(generator: Option<Arc<dyn Generator>>, request: &GenerationRequest) -> Option<u64> {
    let generator = generator?;
    let messages = request.messages.clone();
    let prompt = tokio::task::spawn_blocking(move || generator.count_tokens(&messages))
        .await
        .ok()??;
    Some((prompt + request.max_tokens) as u64)
}
