//! Manifests on one machine, written at the cost of what a change touched, not of the collection:
//! `<dir>/<name>.json` holds a collection's manifest as of its last compaction, `<dir>/<name>.log`
//! one JSON line per change since (its header and the records of the documents it wrote or
//! removed), appended and fsynced before the change is acknowledged. When the log outgrows the
//! snapshot (and [`COMPACT_AFTER`]) the manifest is written whole again and the log emptied, so a
//! change costs O(its documents) amortised. Every line carries the collection's generation and the
//! number of its change: lines of an earlier collection of the name, or already in the snapshot,
//! are passed over; a last line cut off by a crash was never acknowledged and is dropped on open.
//! The file work runs on tokio's blocking threads.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use ragway_retrieval::Fusion;
use serde::{Deserialize, Serialize};

use super::manifest::{serialise, DocumentRecord, Manifest};
use super::registry::{parse, Caps, Created, Entry, Registry, WriteError};
use crate::catalog::lease::Lease;
use crate::durable;

/// The log is compacted once it is larger than this and than the snapshot.
pub const COMPACT_AFTER: u64 = 1 << 20;

pub(super) struct FileRegistry {
    dir: PathBuf,
    /// Bytes of each collection's snapshot and log, as this process wrote or found them.
    sizes: Mutex<HashMap<String, Sizes>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Sizes {
    snapshot: u64,
    log: u64,
}

/// One change, as appended.
#[derive(Serialize)]
struct Line<'a> {
    generation: &'a str,
    change: u64,
    epoch: u64,
    pending: &'a [String],
    fusion: &'a Option<Fusion>,
    put: BTreeMap<&'a str, &'a DocumentRecord>,
    removed: Vec<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    deleted: &'a BTreeMap<String, u64>,
}

/// One change, as read back.
#[derive(Deserialize)]
struct ReadLine {
    generation: String,
    change: u64,
    epoch: u64,
    pending: Vec<String>,
    fusion: Option<Fusion>,
    put: BTreeMap<String, DocumentRecord>,
    removed: Vec<String>,
    #[serde(default)]
    deleted: BTreeMap<String, u64>,
}

impl FileRegistry {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            sizes: Mutex::new(HashMap::new()),
        }
    }

    fn sizes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sizes>> {
        self.sizes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes `manifest` whole and empties its log.
    async fn compact(&self, manifest: &Manifest) -> Result<(), String> {
        let bytes = serialise(manifest)?;
        let (snapshot, log) = paths(&self.dir, &manifest.name);
        let length = bytes.len() as u64;
        blocking(move || {
            durable::write(&snapshot, &bytes)
                .map_err(|e| format!("cannot write {}: {e}", snapshot.display()))?;
            durable::remove(&log).map_err(|e| format!("cannot empty {}: {e}", log.display()))
        })
        .await?;
        let sizes = Sizes {
            snapshot: length,
            log: 0,
        };
        self.sizes().insert(manifest.name.clone(), sizes);
        Ok(())
    }
}

fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{name}.json")), dir.join(format!("{name}.log")))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("manifest file work failed: {e}"))?
}

/// `line`, appended to `path` and fsynced.
fn append(path: &Path, line: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(line)?;
    file.sync_data()
}

/// The manifest `name` as its snapshot and log have it (`None`: there is none), and the sizes of
/// both. With `repair`, a last line cut off by a crash is cut from the log file too.
fn read(dir: &Path, name: &str, repair: bool) -> Result<Option<(Manifest, Sizes)>, String> {
    let (snapshot_path, log_path) = paths(dir, name);
    let snapshot = match std::fs::read(&snapshot_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", snapshot_path.display())),
    };
    let mut manifest = parse(&snapshot, &snapshot_path.display().to_string())?;
    let log = match std::fs::read(&log_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", log_path.display())),
    };
    let whole = replay(&mut manifest, &log).map_err(|e| format!("{}: {e}", log_path.display()))?;
    if repair && whole < log.len() {
        tracing::warn!(log = %log_path.display(), "dropping a change cut off by a crash (never acknowledged)");
        let file = std::fs::OpenOptions::new().write(true).open(&log_path);
        file.and_then(|f| f.set_len(whole as u64).and_then(|()| f.sync_all()))
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
    }
    let sizes = Sizes {
        snapshot: snapshot.len() as u64,
        log: whole as u64,
    };
    Ok(Some((manifest, sizes)))
}

/// Applies the log's changes after the snapshot's to `manifest` (its totals kept as they go);
/// returns the length of its whole
/// lines (a last line without its newline was cut off while it was written).
fn replay(manifest: &mut Manifest, log: &[u8]) -> Result<usize, String> {
    let whole = log.iter().rposition(|b| *b == b'\n').map_or(0, |end| end + 1);
    for (number, line) in log[..whole].split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let change: ReadLine =
            serde_json::from_slice(line).map_err(|e| format!("line {} is damaged: {e}", number + 1))?;
        if change.generation != manifest.generation || change.change <= manifest.changes {
            continue;
        }
        for id in &change.removed {
            manifest.remove(id);
        }
        for (id, record) in change.put {
            manifest.put(id, record);
        }
        manifest.changes = change.change;
        manifest.epoch = change.epoch;
        manifest.pending = change.pending;
        manifest.fusion = change.fusion;
        manifest.deleted = change.deleted;
    }
    Ok(whole)
}

#[async_trait]
impl Registry for FileRegistry {
    fn shared(&self) -> bool {
        false
    }

    async fn load(&self) -> Result<BTreeMap<String, Entry>, String> {
        let dir = self.dir.clone();
        let found = blocking(move || {
            let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mut found = BTreeMap::new();
            for entry in entries {
                let path = entry.map_err(|e| e.to_string())?.path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let manifest = read(&dir, &name, true).and_then(|m| m.ok_or_else(|| "vanished".to_string()));
                found.insert(name, manifest);
            }
            Ok(found)
        })
        .await?;
        let mut all = BTreeMap::new();
        for (name, entry) in found {
            let entry = entry.map(|(manifest, sizes)| {
                self.sizes().insert(name.clone(), sizes);
                manifest
            });
            all.insert(name, entry);
        }
        Ok(all)
    }

    async fn get(&self, name: &str) -> Result<Option<Manifest>, String> {
        let (dir, name) = (self.dir.clone(), name.to_string());
        let found = blocking(move || read(&dir, &name, false)).await?;
        Ok(found.map(|(manifest, _)| manifest))
    }

    /// The caller has checked name and count (one process: nothing changes behind its back).
    async fn create(&self, manifest: &Manifest, _caps: Caps) -> Result<Created, String> {
        self.compact(manifest).await.map(|()| Created::Yes)
    }

    /// One process writes the data directory (it is locked): a local lease fences nothing.
    async fn save(&self, manifest: &Manifest, touched: &[String], _lease: &Lease) -> Result<(), WriteError> {
        let sizes = self.sizes().get(&manifest.name).copied().unwrap_or_default();
        let line = Line {
            generation: &manifest.generation,
            change: manifest.changes,
            epoch: manifest.epoch,
            pending: &manifest.pending,
            fusion: &manifest.fusion,
            put: touched
                .iter()
                .filter_map(|id| manifest.documents.get_key_value(id))
                .map(|(id, record)| (id.as_str(), record))
                .collect(),
            removed: touched
                .iter()
                .filter(|id| !manifest.documents.contains_key(*id))
                .map(String::as_str)
                .collect(),
            deleted: &manifest.deleted,
        };
        let mut bytes = serde_json::to_vec(&line).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        let grown = sizes.log + bytes.len() as u64;
        if grown > COMPACT_AFTER.max(sizes.snapshot) {
            return Ok(self.compact(manifest).await?);
        }
        let (_, log) = paths(&self.dir, &manifest.name);
        blocking(move || append(&log, &bytes).map_err(|e| format!("cannot write {}: {e}", log.display())))
            .await?;
        self.sizes().entry(manifest.name.clone()).or_default().log = grown;
        Ok(())
    }

    async fn remove(&self, name: &str, _lease: &Lease) -> Result<(), WriteError> {
        let (snapshot, log) = paths(&self.dir, name);
        blocking(move || {
            durable::remove(&snapshot).map_err(|e| e.to_string())?;
            durable::remove(&log).map_err(|e| e.to_string())
        })
        .await?;
        self.sizes().remove(name);
        Ok(())
    }

    async fn heads(&self) -> Result<Option<(u64, BTreeMap<String, String>)>, String> {
        Ok(None)
    }

    async fn lock(&self, _name: &str) -> Result<Lease, String> {
        Ok(Lease::local())
    }

    async fn stamp(&self) -> Result<u64, String> {
        Ok(super::registry::clock_stamp())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::manifest::Totals;
    use super::*;

    /// An empty manifest of `notes`.
    pub(in crate::catalog::collections) fn manifest(generation: &str) -> Manifest {
        Manifest {
            name: "notes".into(),
            generation: generation.into(),
            chunk_words: 200,
            chunk_overlap_words: 20,
            fusion: None,
            embedder: None,
            dimension: None,
            storage: None,
            epoch: 0,
            documents: BTreeMap::new(),
            pending: Vec::new(),
            changes: 0,
            deleted: BTreeMap::new(),
            diverged: false,
            totals: Totals::default(),
        }
    }

    pub(in crate::catalog::collections) fn record(chunks: usize) -> DocumentRecord {
        DocumentRecord {
            content_hash: format!("h{chunks}"),
            chunks,
            bytes: 10 * chunks as u64,
            stamp: 0,
        }
    }

    /// A change as `Collections` makes one: the documents, then the count, then the save.
    pub(in crate::catalog::collections) async fn change(
        registry: &dyn Registry,
        m: &mut Manifest,
        put: &[(&str, usize)],
        removed: &[&str],
    ) -> Result<(), String> {
        let mut touched = Vec::new();
        for (id, chunks) in put {
            m.put(id.to_string(), record(*chunks));
            touched.push(id.to_string());
        }
        for id in removed {
            m.remove(id);
            touched.push(id.to_string());
        }
        m.epoch += 1;
        m.changes += 1;
        let lease = registry.lock(&m.name).await?;
        registry
            .save(m, &touched, &lease)
            .await
            .map_err(|e| format!("{e:?}"))
    }

    fn log_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("notes.log")).map_or(0, |m| m.len())
    }

    #[tokio::test]
    async fn changes_are_appended_and_read_back_and_a_torn_last_line_is_dropped() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let registry = FileRegistry::new(dir.path().to_path_buf());
        let mut m = manifest("g1");
        registry.create(&m, Caps::server(10)).await?;
        let snapshot = std::fs::read(dir.path().join("notes.json")).map_err(|e| e.to_string())?;
        change(&registry, &mut m, &[("a", 2), ("b", 3)], &[]).await?;
        change(&registry, &mut m, &[("b", 4)], &["a"]).await?;
        let after = std::fs::read(dir.path().join("notes.json")).map_err(|e| e.to_string())?;
        assert_eq!(snapshot, after, "a change does not rewrite the snapshot");
        let whole = log_len(dir.path());
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("notes.log"))
            .map_err(|e| e.to_string())?;
        log.write_all(br#"{"generation":"g1","change":3,"epo"#)
            .map_err(|e| e.to_string())?;
        let reopened = FileRegistry::new(dir.path().to_path_buf());
        let all = reopened.load().await?;
        let read = all["notes"].clone()?;
        assert_eq!(read.documents.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!((read.epoch, read.changes, read.totals.chunks), (2, 2, 4));
        assert_eq!(log_len(dir.path()), whole, "the torn line is cut from the log");
        Ok(())
    }

    #[tokio::test]
    async fn a_log_larger_than_its_snapshot_is_compacted_and_lines_of_an_earlier_collection_are_ignored(
    ) -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let registry = FileRegistry::new(dir.path().to_path_buf());
        let mut old = manifest("old");
        registry.create(&old, Caps::server(10)).await?;
        change(&registry, &mut old, &[("stale", 1)], &[]).await?;
        // Re-created under the same name while the old log is still there (a crash in drop).
        let mut m = manifest("new");
        std::fs::write(
            dir.path().join("notes.json"),
            serde_json::to_vec(&m).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let fresh = FileRegistry::new(dir.path().to_path_buf());
        assert!(fresh
            .get("notes")
            .await?
            .is_some_and(|read| read.documents.is_empty()));
        fresh.load().await?;
        let ids: Vec<String> = (0..20_000).map(|i| format!("doc-{i:05}")).collect();
        for batch in ids.chunks(64) {
            let put: Vec<(&str, usize)> = batch.iter().map(|id| (id.as_str(), 1)).collect();
            change(&fresh, &mut m, &put, &[]).await?;
        }
        let snapshot = std::fs::metadata(dir.path().join("notes.json"))
            .map_err(|e| e.to_string())?
            .len();
        assert!(
            log_len(dir.path()) <= COMPACT_AFTER.max(snapshot),
            "the log was compacted"
        );
        assert!(snapshot > 100_000, "the snapshot holds the compacted documents");
        let read = FileRegistry::new(dir.path().to_path_buf()).get("notes").await?;
        let read = read.ok_or("gone")?;
        assert_eq!(read.documents.len(), 20_000);
        assert!(!read.documents.contains_key("stale"));
        assert_eq!(read.epoch, m.epoch);
        Ok(())
    }
}
