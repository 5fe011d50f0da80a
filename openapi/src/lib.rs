//! The request and response types of ragway's HTTP API, described for OpenAPI by utoipa.
//!
//! These are plain data: the gateway fills them, clients read them. Keeping them in one crate lets
//! the OpenAPI document be generated from exactly the types the handlers use.

mod answer;
mod chat;
mod collections;
mod embeddings;
mod error;
mod rerank;

pub use answer::*;
pub use chat::*;
pub use collections::*;
pub use embeddings::*;
pub use error::*;
pub use rerank::*;
