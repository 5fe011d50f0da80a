//! Scheduled snapshots, an operator's backup: every collection written to the snapshot
//! directory once per `snapshots.every_s`, the newest `snapshots.keep` of each kept; a collection
//! listed under `snapshots.collections` on its own schedule. The schedule
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

/// `[snapshots]`: every collection's schedule, and those of the collections with their own.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// `None`: collections without a schedule of their own are not snapshotted.
    pub every: Option<Duration>,
    pub keep: usize,
    pub collections: std::collections::BTreeMap<String, (Option<Duration>, usize)>,
}

impl Schedule {
    /// From `[snapshots]`: 0 seconds is no schedule; at least one snapshot is kept.
    pub fn of(config: &crate::config::SnapshotsConfig) -> Self {
        let every = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        Self {
            every: every(config.every_s),
            keep: config.keep.max(1),
            collections: config
                .collections
                .iter()
                .map(|(name, own)| {
                    let interval = own.every_s.map_or(every(config.every_s), every);
                    (name.clone(), (interval, own.keep.unwrap_or(config.keep).max(1)))
                })
                .collect(),
        }
    }

    /// How often collection `name` is snapshotted and how many are kept (`None`: never).
    pub fn of_collection(&self, name: &str) -> Option<(Duration, usize)> {
        match self.collections.get(name) {
            Some(&(every, keep)) => every.map(|every| (every, keep)),
            None => self.every.map(|every| (every, self.keep)),
        }
    }

    /// The shortest interval of any collection (`None`: nothing is ever snapshotted).
    pub fn shortest(&self) -> Option<Duration> {
        let own = self.collections.values().filter_map(|(every, _)| *every);
        self.every.into_iter().chain(own).min()
    }
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
    let Some(shortest) = schedule.shortest() else {
        return;
    };
    let look = (shortest / 2).clamp(Duration::from_millis(200), LOOK_EVERY);
    loop {
        tokio::time::sleep(look).await;
        let Ok(open) = collections.list() else { continue };
        for collection in open {
            let name = collection.name.clone();
            let Some((every, keep)) = schedule.of_collection(&name) else {
                continue;
            };
            let listed = list(&dir).await;
            let newest = listed
                .iter()
                .filter(|f| f.collection == name)
                .map(|f| f.taken_at.clone())
                .max();
            if newest.is_some_and(|taken| age(&taken) < every) {
                continue;
            }
            match collections.snapshot(&name, &dir).await {
                Ok(info) => {
                    metrics::counter!("ragway_snapshots_total", "outcome" => "ok").increment(1);
                    tracing::info!(collection = %name, snapshot = %info.snapshot, chunks = info.chunks, "scheduled snapshot written");
                    prune(&dir, &name, keep).await;
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
    fn a_collection_of_its_own_keeps_its_schedule_and_takes_the_rest_from_the_global_one() {
        use crate::config::{CollectionSnapshots, SnapshotsConfig};
        let own = |every_s, keep| CollectionSnapshots { every_s, keep };
        let config = SnapshotsConfig {
            every_s: 3600,
            keep: 5,
            collections: [
                ("t1.hot".to_string(), own(Some(60), None)),
                ("t1.cold".to_string(), own(Some(0), None)),
                ("t1.few".to_string(), own(None, Some(1))),
            ]
            .into(),
        };
        let schedule = Schedule::of(&config);
        let hour = Duration::from_secs(3600);
        assert_eq!(
            schedule.of_collection("t1.hot"),
            Some((Duration::from_secs(60), 5))
        );
        assert_eq!(schedule.of_collection("t1.cold"), None);
        assert_eq!(schedule.of_collection("t1.few"), Some((hour, 1)));
        assert_eq!(schedule.of_collection("t2.other"), Some((hour, 5)));
        assert_eq!(schedule.shortest(), Some(Duration::from_secs(60)));
        // No global schedule: only the collections with one of their own.
        let only = SnapshotsConfig {
            collections: [("hot".to_string(), own(Some(10), None))].into(),
            ..SnapshotsConfig::default()
        };
        let schedule = Schedule::of(&only);
        assert_eq!(schedule.of_collection("hot"), Some((Duration::from_secs(10), 7)));
        assert_eq!(schedule.of_collection("other"), None);
        assert_eq!(Schedule::of(&SnapshotsConfig::default()).shortest(), None);
    }

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
