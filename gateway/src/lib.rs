//! The ragway gateway: configuration, HTTP routes, and the orchestration of the stage crates.

pub mod app;
pub mod collections;
pub mod config;
pub mod error;
pub mod metrics;
pub mod models;
pub mod openapi_doc;
pub mod pipeline;
pub mod report;
pub mod routes;
pub mod validate;
