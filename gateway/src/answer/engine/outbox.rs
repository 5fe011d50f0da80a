//! Where an answer's events go: a bounded channel the response body reads. A client that leaves
//! closes it; a client that stops reading (its socket full, so the body stops taking events) is
//! gone as well once it has taken nothing for `resilience.client_stall_timeout_ms` — the driver
//! then stops as for a client that left: the backend's request is dropped (its connection
//! closed), what was produced is charged and the tenant's stream place is freed. Nothing piles up
//! meanwhile: the driver reads the backend only as it sends on, so the backend is slowed through
//! TCP.

use std::time::Duration;

use tokio::sync::mpsc::{self, error::SendTimeoutError};

use super::AnswerEvent;

/// Events the channel holds before the driver waits for the client.
const BUFFERED: usize = 64;

#[derive(Clone)]
pub(super) struct Outbox {
    sender: mpsc::Sender<AnswerEvent>,
    stall: Duration,
}

/// The client left, or stopped reading.
#[derive(Debug)]
pub(super) struct Gone;

impl Outbox {
    /// An outbox whose client is gone after taking nothing for `stall`, and its receiving end.
    pub(super) fn new(stall: Duration) -> (Self, mpsc::Receiver<AnswerEvent>) {
        let (sender, receiver) = mpsc::channel(BUFFERED);
        (Self { sender, stall }, receiver)
    }

    pub(super) async fn send(&self, event: AnswerEvent) -> Result<(), Gone> {
        match self.sender.send_timeout(event, self.stall).await {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Closed(_)) => Err(Gone),
            Err(SendTimeoutError::Timeout(_)) => {
                tracing::info!(
                    stall_ms = self.stall.as_millis() as u64,
                    "a client stopped reading its stream: cut"
                );
                metrics::counter!("ragway_client_stalled_total").increment(1);
                Err(Gone)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_that_stops_reading_is_gone_after_the_stall() {
        let (outbox, mut receiver) = Outbox::new(Duration::from_millis(50));
        let event = || AnswerEvent::Delta { text: "x".into() };
        for _ in 0..BUFFERED {
            assert!(outbox.send(event()).await.is_ok(), "the buffer takes them");
        }
        assert!(outbox.send(event()).await.is_err(), "full, and nobody reads");
        assert!(receiver.recv().await.is_some());
        assert!(outbox.send(event()).await.is_ok(), "read one: room for one");
        drop(receiver);
        assert!(outbox.send(event()).await.is_err(), "left");
    }
}
