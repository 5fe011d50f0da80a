//! The ragway gateway. Modules, top to bottom (each imports only those below it):
//!
//! - [`app`]: start-up: config → stages → decorators → engine → [`http::AppState`].
//! - [`http`]: routes, the auth and admin layers, SSE and JSON shapes, errors → HTTP, OpenAPI.
//! - [`answer`]: the answer engine, the retrieval pipeline, conversations, the LLM pool, reports.
//! - [`catalog`]: collections, their write path and registry, ingestion jobs, leases.
//! - [`caches`]: the cache layers (L1–L3) and their invalidation.
//! - [`tenancy`]: tenants, keys, quotas, allowances and charging.
//! - [`resilience`]: guards, breakers, deadlines, injected faults.
//! - ground floor: [`config`], [`validate`], [`error`], [`durable`], [`metrics`], [`models`].

pub mod answer;
pub mod app;
pub mod caches;
pub mod catalog;
pub mod config;
pub mod durable;
pub mod error;
pub mod http;
pub mod metrics;
pub mod models;
pub mod resilience;
pub mod tenancy;
pub mod validate;
