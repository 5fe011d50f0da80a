//! Prometheus metrics: every name is declared here once, with its help text.

use metrics::{describe_counter, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Stage latencies span sub-millisecond lookups to multi-second generation.
const STAGE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the process-wide recorder. Returns the handle `/metrics` renders from.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("ragway_stage_duration_seconds".into()),
            STAGE_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("ragway_request_duration_seconds".into()),
            STAGE_BUCKETS,
        )?
        .install_recorder()?;
    describe_counter!(
        "ragway_requests_total",
        "HTTP requests by route template and status code"
    );
    describe_histogram!(
        "ragway_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by route template, until the response head"
    );
    describe_histogram!(
        "ragway_stage_duration_seconds",
        Unit::Seconds,
        "Time spent per pipeline stage"
    );
    describe_counter!("ragway_answers_total", "Search and query answers by mode");
    describe_counter!(
        "ragway_cache_requests_total",
        "Cache lookups by layer (l1, l2, l3, l4) and result: hit, miss, stale (an expired entry answered because retrieval could not), error (the shared tier failed)"
    );
    describe_counter!(
        "ragway_llm_tokens_total",
        "LLM tokens by backend and kind (prompt, completion)"
    );
    // Every mode is exported from the start, so a dashboard can tell zero from missing.
    for mode in ragway_openapi::Mode::ALL {
        metrics::counter!("ragway_answers_total", "mode" => mode.as_str()).increment(0);
    }
    Ok(handle)
}
