//! Answering: the [`engine`] that every answering route shapes (JSON, SSE, chat), the retrieval
//! [`pipeline`] it runs, the [`conversation`] that makes a chat's question standalone, the LLM
//! [`pool`], the [`prompt`] fitted to the model's window, and the [`report`] the mode is derived from.

pub mod cached;
pub mod conversation;
pub mod engine;
pub mod pipeline;
pub mod pool;
pub mod prompt;
pub mod report;

use std::sync::Arc;

use ragway_retrieval::MetadataFilter;

use crate::resilience::deadline::Deadline;
use crate::tenancy::Allowance;

/// What one request brings to every stage it runs: the time it has and what its tenant may use.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub deadline: Deadline,
    pub allowance: Allowance,
}

impl RequestContext {
    /// Runs `work` with this request's deadline and allowance in scope for the decorators of the
    /// stages it calls (guards, costs, budgets, L2), which the stage traits do not carry, and its
    /// tenant as the party its model work is queued for ([`ragway_worker::PARTY`]).
    pub async fn scope<F: std::future::Future>(&self, work: F) -> F::Output {
        let allowance = self.allowance.clone();
        // Also on a task of its own (a streamed answer), its model work is its tenant's.
        let party = std::sync::Arc::from(allowance.tenant.as_str());
        let work = ragway_worker::PARTY.scope(party, allowance.scope(work));
        self.deadline.scope(work).await
    }
}

/// A search: the text, the metadata filter, and how many hits to keep.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    pub text: &'a str,
    pub filter: MetadataFilter,
    pub top_k: usize,
    /// The text's embedding, when it was made beforehand (a batch search embeds its queries as
    /// one batch); else the search embeds it.
    pub vector: Option<Arc<Vec<f32>>>,
}
