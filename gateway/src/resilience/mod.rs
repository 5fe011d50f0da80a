//! What keeps a failing or slow dependency from taking answers down with it: breakers, guards
//! (breaker + timeout + deadline + injected faults), request deadlines, and the reranker's cost
//! estimate that decides whether it fits the time left. [`guarded`] puts a guard around a stage
//! as a decorator of the stage's own trait; [`rerank_cost::Costed`] does the same for the cost.

pub mod breaker;
pub mod deadline;
pub mod faults;
pub mod guard;
pub mod guarded;
pub mod guarded_llm;
pub mod rerank_cost;
