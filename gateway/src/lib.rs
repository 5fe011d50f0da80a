//! The ragway gateway: configuration, HTTP routes, and the orchestration of the stage crates.

pub mod answer_stream;
pub mod app;
pub mod auth;
pub mod breaker;
pub mod caching;
pub mod collections;
pub mod config;
pub mod conversation;
pub mod deadline;
pub mod durable;
pub mod error;
pub mod faults;
pub mod guard;
pub mod jobs;
pub mod lease;
pub mod llm_pool;
pub mod metrics;
pub mod models;
pub mod openapi_doc;
pub mod pipeline;
pub mod quota;
pub mod report;
pub mod rerank_cost;
pub mod routes;
pub mod tenants;
pub mod validate;
