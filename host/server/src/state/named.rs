//! The sidecar's channels and destinations by name: read by every request
//! and worker, and changed while they run (a tenant makes or deletes one
//! through the API), so each entry is shared and the map is swapped under
//! a short lock.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio::sync::Notify;

/// Entries by name.
pub struct Named<T> {
    entries: RwLock<BTreeMap<String, Arc<T>>>,
    /// Raised when an entry is added, replaced or removed: the worker
    /// fleet starts and stops workers.
    pub changed: Notify,
}

impl<T> Named<T> {
    /// The map of `entries`.
    pub fn new(entries: BTreeMap<String, T>) -> Self {
        Self {
            entries: RwLock::new(entries.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()),
            changed: Notify::new(),
        }
    }

    /// The entry `name`.
    pub fn get(&self, name: &str) -> Option<Arc<T>> {
        self.read().get(name).cloned()
    }

    /// Whether there is an entry `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.read().contains_key(name)
    }

    /// Every entry, in name order, as they are now.
    pub fn values(&self) -> std::vec::IntoIter<Arc<T>> {
        self.read().values().cloned().collect::<Vec<_>>().into_iter()
    }

    /// Every name, in order.
    pub fn keys(&self) -> std::vec::IntoIter<String> {
        self.read().keys().cloned().collect::<Vec<_>>().into_iter()
    }

    /// Every (name, entry), in name order.
    pub fn entries(&self) -> Vec<(String, Arc<T>)> {
        self.read().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Adds or replaces `name`.
    pub fn insert(&self, name: String, entry: T) -> Arc<T> {
        let entry = Arc::new(entry);
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, entry.clone());
        self.changed.notify_one();
        entry
    }

    /// Puts back an entry taken out (see [`Named::remove`]).
    pub fn insert_arc(&self, name: String, entry: Arc<T>) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, entry);
        self.changed.notify_one();
    }

    /// Removes `name`; the entry it was, if any.
    pub fn remove(&self, name: &str) -> Option<Arc<T>> {
        let removed = self
            .entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.changed.notify_one();
        removed
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, Arc<T>>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }
}
