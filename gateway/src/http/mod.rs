//! HTTP: the router, the layers that say who is calling, the routes, and the shapes answers take
//! on the wire. Only this module (and start-up) sees [`AppState`].

pub mod auth;
pub mod console;
pub mod errors;
pub mod mcp;
pub mod openapi_doc;
pub mod router;
pub mod routes;
pub mod serve;
pub mod shape;
pub mod uploads;

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::answer::engine::Engine;
use crate::answer::pipeline::{Pipeline, Retriever};
use crate::caches::Caches;
use crate::catalog::collections::Collections;
use crate::catalog::files::FileReader;
use crate::catalog::jobs::Jobs;
use crate::config::Config;
use crate::resilience::faults::Faults;
use crate::tenancy::quota::Quotas;
use crate::tenancy::tenants::Tenants;
use crate::tenancy::Metering;

pub use router::router;

/// Everything a route may reach, built once at start-up ([`crate::app::load`]), behind one
/// `Arc`: every layer and handler that takes it clones one pointer, not a dozen.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The models the routes call directly (`/v1/embeddings`, `/v1/rerank`), each behind its guard.
pub struct ModelStages {
    pub embedder: Arc<dyn ragway_retrieval::Embedder>,
    pub reranker: Option<Arc<dyn ragway_rerank::Reranker>>,
}

/// What [`AppState`] holds.
pub struct Shared {
    pub config: Arc<Config>,
    pub collections: Arc<Collections>,
    pub jobs: Arc<Jobs>,
    /// Reads uploaded files into documents (`/files`).
    pub files: Arc<FileReader>,
    /// Retrieval: the stages behind their decorators, and their guards.
    pub pipeline: Arc<Pipeline>,
    /// The cache layers, for invalidation and the health of their shared tier.
    pub caches: Arc<Caches>,
    pub models: ModelStages,
    pub engine: Arc<Engine>,
    /// `/search`: the pipeline behind L3, behind L1.
    pub search: Arc<dyn Retriever>,
    pub faults: Arc<Faults>,
    pub tenants: Arc<Tenants>,
    pub quotas: Arc<Quotas>,
    pub metering: Metering,
    /// From the environment variable named by `resilience.admin_key_env`; `None` closes `/admin`.
    pub admin_key: Option<Arc<str>>,
    pub metrics: PrometheusHandle,
}
