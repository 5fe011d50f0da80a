//! The end-to-end tests: the real `ragway` binary (and real Redis, Qdrant, client SDKs where a
//! module says so), spoken to over HTTP. One test binary, one module per part of the product.

mod answers;
mod bad_input;
mod batch_search;
mod cache;
mod common;
mod compose;
mod console;
mod durability;
mod faults;
mod files;
mod frameworks;
mod fusion;
mod ha;
mod import;
mod llm_gateway;
mod mcp;
mod openai_sdk;
mod overload;
mod pool;
mod qdrant_backend;
mod ragway_backend;
mod remote_embedder;
mod remote_llm;
mod replicas;
mod rerank;
mod schemathesis;
mod slice;
mod slow_clients;
mod snapshots;
mod stores;
mod streaming;
mod tenants;
