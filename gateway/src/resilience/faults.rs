//! Operator fault injection: make a stage fail, hang or slow down for a while. Faults act inside
//! the stage's guard, right around the real call, so breakers and deadlines see them exactly as
//! they would see a real fault.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The call fails at once.
    Error,
    /// The call never returns; the stage's timeout ends it.
    Timeout,
    /// The call runs after `delay_ms`.
    Delay,
}

/// `POST /admin/faults`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// `embedder`, `dense`, `keyword`, `reranker` or `llm:<backend name>`.
    pub stage: String,
    pub kind: FaultKind,
    #[serde(default)]
    pub delay_ms: u64,
    /// How long the fault lasts.
    pub duration_s: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActiveFault {
    pub stage: String,
    pub kind: FaultKind,
    pub delay_ms: u64,
    pub remaining_s: f64,
}

#[derive(Debug, Clone)]
struct Fault {
    kind: FaultKind,
    delay: Duration,
    until: Instant,
}

#[derive(Default)]
pub struct Faults {
    active: RwLock<BTreeMap<String, Fault>>,
}

impl Faults {
    pub fn set(&self, request: &FaultRequest) {
        let fault = Fault {
            kind: request.kind,
            delay: Duration::from_millis(request.delay_ms),
            until: Instant::now() + Duration::from_secs_f64(request.duration_s),
        };
        if let Ok(mut active) = self.active.write() {
            active.insert(request.stage.clone(), fault);
        }
    }

    pub fn clear(&self) {
        if let Ok(mut active) = self.active.write() {
            active.clear();
        }
    }

    pub fn list(&self) -> Vec<ActiveFault> {
        let now = Instant::now();
        let Ok(active) = self.active.read() else {
            return Vec::new();
        };
        active
            .iter()
            .filter(|(_, f)| f.until > now)
            .map(|(stage, f)| ActiveFault {
                stage: stage.clone(),
                kind: f.kind,
                delay_ms: f.delay.as_millis() as u64,
                remaining_s: (f.until - now).as_secs_f64(),
            })
            .collect()
    }

    /// Whether a fault is injected into `stage` now.
    pub fn active(&self, stage: &str) -> bool {
        self.current(stage).is_some()
    }

    fn current(&self, stage: &str) -> Option<Fault> {
        let active = self.active.read().ok()?;
        active.get(stage).filter(|f| f.until > Instant::now()).cloned()
    }

    /// Runs `call` as the active fault for `stage` (if any) says. The outer error is an injected
    /// failure; the inner result is the real call's.
    pub async fn apply<T>(
        &self,
        stage: &str,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T, String> {
        match self.current(stage) {
            None => Ok(call.await),
            Some(Fault {
                kind: FaultKind::Error,
                ..
            }) => Err(format!("injected fault: {stage} fails")),
            Some(Fault {
                kind: FaultKind::Timeout,
                ..
            }) => std::future::pending().await,
            Some(Fault {
                kind: FaultKind::Delay,
                delay,
                ..
            }) => {
                tokio::time::sleep(delay).await;
                Ok(call.await)
            }
        }
    }
}
