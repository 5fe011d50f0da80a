//! Scheduled snapshots, an operator's backup: every collection written to the snapshot
//! directory once per `snapshots.every_s`, the newest `snapshots.keep` of each kept. The schedule
//! reads the directory, not a clock of its own: a collection whose newest snapshot is younger than
//! the interval is passed over, so a restart does not snapshot again, and replicas that share the
//! directory do not snapshot the same collection each (the collection's lease orders those that
//! start at once). A failed snapshot is logged and counted (`ragway_snapshots_total{outcome}`);
//! serving never waits on one beyond a collection's writes waiting while it is written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::catalog::collections::Collections;

/// `[snapshots]`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub every: Duration,
    pub keep: usize,
}

/// One snapshot file in the directory.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SnapshotFile {
    /// The file's name: what `restore` takes.
    pub snapshot: String,
    /// The collection's full name.
    pub collection: String,
    /// When it was taken (UTC, from its name).
    pub taken_at: String,
    pub bytes: u64,
}

/// How often the schedule looks at the directory (at most; sooner for short intervals).
const LOOK_EVERY: Duration = Duration::from_secs(30);

/// Runs the schedule until the process ends.
pub async fn run(collections: Arc<Collections>, dir: PathBuf, schedule: Schedule) {
    let look = (schedule.every / 2).clamp(Duration::from_millis(200), LOOK_EVERY);
    loop {
        tokio::time::sleep(look).await;
        let Ok(open) = collections.list() else { continue };
        for collection in open {
            let name = collection.name.clone();
            let listed = list(&dir).await;
            let newest = listed
                .iter()
                .filter(|f| f.collection == name)
                .map(|f| f.taken_at.clone())
                .max();
            if newest.is_some_and(|taken| age(&taken) < schedule.every) {
                continue;
            }
            match collections.snapshot(&name, &dir).await {
                Ok(info) => {
                    metrics::counter!("ragway_snapshots_total", "outcome" => "ok").increment(1);
                    tracing::info!(collection = %name, snapshot = %info.snapshot, chunks = info.chunks, "scheduled snapshot written");
                    prune(&dir, &name, schedule.keep).await;
                }
                Err(e) => {
                    metrics::counter!("ragway_snapshots_total", "outcome" => "failed").increment(1);
                    tracing::warn!(collection = %name, error = %e, "scheduled snapshot failed");
                }
            }
        }
    }
}

/// The snapshot files in `dir` (written by `snapshot`: `<collection>-<UTC stamp>.jsonl`), oldest
/// first.
pub async fn list(dir: &Path) -> Vec<SnapshotFile> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || list_blocking(&dir))
        .await
        .unwrap_or_default()
}

fn list_blocking(dir: &Path) -> Vec<SnapshotFile> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<SnapshotFile> = entries
        .flatten()
        .filter_map(|entry| {
            let snapshot = entry.file_name().to_str()?.to_string();
            let (collection, taken_at) = parse_name(&snapshot)?;
            let bytes = entry.metadata().ok()?.len();
            Some(SnapshotFile {
                snapshot,
                collection,
                taken_at,
                bytes,
            })
        })
        .collect();
    files.sort_by(|a, b| a.taken_at.cmp(&b.taken_at).then(a.snapshot.cmp(&b.snapshot)));
    files
}

/// `(collection, taken at as RFC 3339)` of a snapshot file's name.
fn parse_name(file: &str) -> Option<(String, String)> {
    let stem = file.strip_suffix(".jsonl")?;
    let (collection, stamp) = stem.rsplit_once('-')?;
    let taken = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%3fZ").ok()?;
    (!collection.is_empty()).then(|| (collection.to_string(), taken.and_utc().to_rfc3339()))
}

/// How long ago `taken_at` (RFC 3339) was; a time that does not parse is long ago.
fn age(taken_at: &str) -> Duration {
    chrono::DateTime::parse_from_rfc3339(taken_at)
        .ok()
        .and_then(|taken| SystemTime::from(taken).elapsed().ok())
        .unwrap_or(Duration::MAX)
}

/// Removes all but the newest `keep` snapshots of `collection`.
async fn prune(dir: &Path, collection: &str, keep: usize) {
    let mine: Vec<SnapshotFile> = list(dir)
        .await
        .into_iter()
        .filter(|f| f.collection == collection)
        .collect();
    let excess = mine.len().saturating_sub(keep);
    for old in mine.into_iter().take(excess) {
        let path = dir.join(&old.snapshot);
        if let Err(e) = tokio::fs::remove_file(&path).await {
            tracing::warn!(snapshot = %old.snapshot, error = %e, "an old snapshot could not be removed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_the_collection_and_when() {
        assert_eq!(
            parse_name("t1.docs-20261207T064213123Z.jsonl"),
            Some(("t1.docs".into(), "2026-12-07T06:42:13.123+00:00".into()))
        );
        // A collection whose own name has a dash.
        assert_eq!(
            parse_name("my-docs-20261207T064213123Z.jsonl").map(|p| p.0),
            Some("my-docs".into())
        );
        assert_eq!(parse_name("notes.txt"), None);
        assert_eq!(parse_name("docs-yesterday.jsonl"), None);
    }
}
