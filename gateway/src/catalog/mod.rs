//! What a tenant stores: collections (their manifests, the write path, the shared registry,
//! snapshots), ingestion jobs, and the leases that let replicas take turns writing.

pub mod collections;
pub mod files;
pub mod jobs;
pub mod lease;
pub mod snapshots;
