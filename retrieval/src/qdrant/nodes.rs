//! The Qdrant nodes ragway talks to: one client per node address, requests spread over the
//! healthy ones in turn, and a node that fails at the transport (refused, reset, no answer
//! within the timeout) taken out at once, so that no later request waits for it; a probe
//! every second brings it back when it answers again. Any node of a cluster serves any
//! request (Qdrant routes it to the shards' replicas), so a request a node could not serve
//! goes to the next one.
//!
//! Metric: `ragway_store_node_up{node}` (1 up, 0 taken out).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qdrant_client::{Qdrant, QdrantError};

/// How often a node taken out is asked whether it is back (and every node's gauge set).
const PROBE_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Nodes {
    nodes: Arc<Vec<Node>>,
    next: AtomicUsize,
}

struct Node {
    url: String,
    client: Qdrant,
    up: AtomicBool,
}

/// What a failed call says about the node that served it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The node is gone or does not answer: take it out, try the next.
    Node,
    /// The node answered that it could not serve the request now (a replica it needed was
    /// failing): the next node may.
    Transient,
    /// The request itself failed (bad request, unknown collection): no other node would do
    /// better.
    Request,
}

/// Which of the three a Qdrant error is.
pub(crate) fn classify(error: &QdrantError) -> Failure {
    use tonic::Code;
    match error {
        QdrantError::ResponseError { status } => match status.code() {
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => Failure::Node,
            // qdrant-client's own words when it cannot open a connection to the node.
            Code::Internal if status.message().starts_with("Failed to connect to") => Failure::Node,
            Code::Internal | Code::Aborted => Failure::Transient,
            _ => Failure::Request,
        },
        QdrantError::ResourceExhaustedError { .. } => Failure::Transient,
        QdrantError::Io(_) => Failure::Node,
        _ => Failure::Request,
    }
}

impl Nodes {
    pub(crate) fn new(
        urls: &[String],
        build: impl Fn(&str) -> Result<Qdrant, String>,
    ) -> Result<Self, String> {
        if urls.is_empty() {
            return Err("no Qdrant address is given".into());
        }
        let nodes = urls
            .iter()
            .map(|url| {
                let client = build(url)?;
                metrics::gauge!("ragway_store_node_up", "node" => url.clone()).set(1.0);
                Ok(Node {
                    url: url.clone(),
                    client,
                    up: AtomicBool::new(true),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let nodes = Arc::new(nodes);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(probe(Arc::downgrade(&nodes)));
        }
        Ok(Self {
            nodes,
            next: AtomicUsize::new(0),
        })
    }

    /// Each node's address and whether it is in use.
    #[cfg(test)]
    fn health(&self) -> Vec<(String, bool)> {
        self.nodes
            .iter()
            .map(|n| (n.url.clone(), n.up.load(Ordering::Relaxed)))
            .collect()
    }

    /// The order in which a request tries the nodes: the healthy ones, starting with the next
    /// in turn; those taken out only when none is healthy (one of them may be back).
    fn order(&self) -> Vec<usize> {
        let count = self.nodes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let turn = (0..count).map(|i| (start + i) % count);
        let (up, down): (Vec<usize>, Vec<usize>) =
            turn.partition(|&i| self.nodes[i].up.load(Ordering::Relaxed));
        up.into_iter().chain(down).collect()
    }

    /// Sends `request` (through `op`) to one node after another until one serves it. Every
    /// request ragway sends may be sent again: searches and reads, and writes that name their
    /// points (upserts by id, deletes by document).
    pub(crate) async fn send<R, T, Fut>(
        &self,
        request: &R,
        op: impl Fn(Qdrant, R) -> Fut,
    ) -> Result<T, QdrantError>
    where
        R: Clone,
        Fut: Future<Output = Result<T, QdrantError>>,
    {
        let mut last = None;
        for i in self.order() {
            let node = &self.nodes[i];
            match op(node.client.clone(), request.clone()).await {
                Ok(value) => {
                    node.mark(true);
                    return Ok(value);
                }
                Err(error) => match classify(&error) {
                    Failure::Node => {
                        node.mark(false);
                        last = Some(error);
                    }
                    Failure::Transient => last = Some(error),
                    Failure::Request => return Err(error),
                },
            }
        }
        Err(last.unwrap_or_else(|| QdrantError::ResponseError {
            status: tonic::Status::unavailable("no Qdrant node"),
        }))
    }
}

impl Node {
    fn mark(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(node = self.url, "Qdrant node is back in use");
            } else {
                tracing::warn!(node = self.url, "Qdrant node failed; requests go to the others");
            }
        }
        metrics::gauge!("ragway_store_node_up", "node" => self.url.clone()).set(if up { 1.0 } else { 0.0 });
    }
}

/// Asks each node taken out whether it answers again, every [`PROBE_EVERY`], for as long as
/// the store lives.
async fn probe(nodes: std::sync::Weak<Vec<Node>>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(nodes) = nodes.upgrade() else { return };
        for node in nodes.iter().filter(|n| !n.up.load(Ordering::Relaxed)) {
            let answered = tokio::time::timeout(PROBE_EVERY, node.client.health_check()).await;
            if matches!(answered, Ok(Ok(_))) {
                node.mark(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code) -> QdrantError {
        QdrantError::ResponseError {
            status: tonic::Status::new(code, "x"),
        }
    }

    #[test]
    fn transport_failures_take_the_node_out_and_bad_requests_do_not_move_on() {
        assert_eq!(classify(&status(tonic::Code::Unavailable)), Failure::Node);
        assert_eq!(classify(&status(tonic::Code::Cancelled)), Failure::Node);
        assert_eq!(classify(&status(tonic::Code::Internal)), Failure::Transient);
        let refused = tonic::Status::internal("Failed to connect to http://127.0.0.1:1: ConnectError");
        assert_eq!(
            classify(&QdrantError::ResponseError { status: refused }),
            Failure::Node
        );
        assert_eq!(classify(&status(tonic::Code::NotFound)), Failure::Request);
        assert_eq!(classify(&status(tonic::Code::InvalidArgument)), Failure::Request);
    }

    #[tokio::test]
    async fn a_failed_node_is_skipped_and_the_request_goes_on_to_the_next() -> anyhow::Result<()> {
        let urls = ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"].map(String::from);
        let nodes = Nodes::new(&urls, |url| {
            Qdrant::from_url(url)
                .skip_compatibility_check()
                .build()
                .map_err(|e| e.to_string())
        })
        .map_err(anyhow::Error::msg)?;
        let served_by = |fails: &'static str| {
            let nodes = &nodes;
            async move {
                nodes
                    .send(&fails, |client: Qdrant, fails| async move {
                        let url = client.config.uri.clone();
                        match url.ends_with(fails) {
                            true => Err(status(tonic::Code::Unavailable)),
                            false => Ok(url),
                        }
                    })
                    .await
            }
        };
        // The first request starts at node 1, which is down: node 2 serves it.
        assert_eq!(served_by(":1").await?, urls[1]);
        assert_eq!(nodes.health()[0], (urls[0].clone(), false));
        // Node 1 is not asked again while it is out, whoever's turn it is.
        for _ in 0..6 {
            let served = served_by("none").await?;
            assert_ne!(served, urls[0]);
        }
        // A request that finds every node out still tries them (one may be back).
        for node in nodes.nodes.iter() {
            node.mark(false);
        }
        assert!(served_by("none").await.is_ok());
        // A bad request is not sent to the other nodes.
        let asked = AtomicUsize::new(0);
        let refused = nodes
            .send(&(), |_, ()| {
                asked.fetch_add(1, Ordering::Relaxed);
                async { Err::<(), _>(status(tonic::Code::InvalidArgument)) }
            })
            .await;
        assert!(refused.is_err());
        assert_eq!(asked.into_inner(), 1);
        Ok(())
    }
}
