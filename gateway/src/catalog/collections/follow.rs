//! Following a shared registry: every replica picks up the collections other replicas create,
//! change and drop, within [`FOLLOW_EVERY`](super::FOLLOW_EVERY), and retries those it could not
//! open (Qdrant or Redis unreachable at start-up) until they open.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::registry::{Caps, Refreshed};
use super::{write, Collections, FOLLOW_EVERY};

impl Collections {
    /// Follows the registry for as long as the process runs (shared registries only).
    pub fn follow(self: &Arc<Self>) {
        if !self.registry.shared() {
            return;
        }
        let collections = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FOLLOW_EVERY).await;
                let Some(collections) = collections.upgrade() else {
                    return;
                };
                collections.follow_once().await;
            }
        });
    }

    /// One look at the registry: opens what is new, refreshes what changed, forgets what was
    /// dropped. Cheap when nothing changed (one round trip).
    pub(super) async fn follow_once(&self) {
        let (version, heads) = match self.registry.heads().await {
            Ok(Some(heads)) => heads,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "collection registry unreachable; serving what is known");
                return;
            }
        };
        if version == 0 && heads.is_empty() {
            // A Redis that never saw a change (new, or restarted without its data): give it the
            // collections this replica serves instead of forgetting them all.
            return self.reseed().await;
        }
        let followed = *self.followed.lock().unwrap_or_else(|p| p.into_inner());
        if followed == Some(version) {
            return;
        }
        let mut complete = true;
        for (name, head) in &heads {
            complete &= self.follow_one(name, head).await;
        }
        let gone: Vec<(String, String)> = self
            .list()
            .unwrap_or_default()
            .iter()
            .filter(|c| !heads.contains_key(&c.name))
            .map(|c| (c.name.clone(), c.generation.clone()))
            .collect();
        for (name, generation) in gone {
            tracing::info!(collection = name, "dropped by another replica");
            self.forget(&name, &generation);
        }
        if let Ok(mut damaged) = write(&self.damaged) {
            damaged.retain(|name, _| heads.contains_key(name));
        }
        if complete {
            *self.followed.lock().unwrap_or_else(|p| p.into_inner()) = Some(version);
        }
    }

    async fn reseed(&self) {
        for collection in self.list().unwrap_or_default() {
            let manifest = collection.manifest.lock().await.clone();
            match self.registry.create(&manifest, Caps::server(usize::MAX)).await {
                Ok(_) => tracing::warn!(
                    collection = collection.name,
                    "the registry had lost this collection; recorded it again"
                ),
                Err(e) => tracing::debug!(error = %e, "cannot re-seed the registry"),
            }
        }
    }

    /// Brings one collection in line with the registry's `head`; false when it must be looked at
    /// again (it could not be opened, or a change of it is in progress here).
    async fn follow_one(&self, name: &str, head: &str) -> bool {
        let current = self.get(name).ok();
        if let Some(collection) = &current {
            let Ok(mut mine) = collection.manifest.try_lock() else {
                // A change here holds it, and refreshes it itself.
                return collection.head() == head;
            };
            if collection.head() == head && !mine.diverged {
                return true;
            }
            match self.registry.refresh(&mut mine).await {
                Ok(Refreshed::Current | Refreshed::Changed) => {
                    collection.publish(&mine);
                    return true;
                }
                Ok(Refreshed::Gone) => {} // replaced by a collection of another generation
                Err(e) => {
                    tracing::warn!(collection = name, error = %e, "cannot read its changes");
                    return false;
                }
            }
        }
        let manifest = match self.registry.get(name).await {
            Ok(Some(manifest)) => manifest,
            Ok(None) => return true, // dropped meanwhile: the next look forgets it
            Err(e) => {
                tracing::warn!(collection = name, error = %e, "cannot read its manifest");
                return false;
            }
        };
        if let Some(previous) = current {
            previous.dropped.store(true, Ordering::Release);
        }
        match self.open_one(manifest, false).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(collection = name, error = %e, "collection cannot be opened; retrying");
                if let Ok(mut damaged) = write(&self.damaged) {
                    damaged.insert(name.to_string(), e.to_string());
                }
                false
            }
        }
    }
}
