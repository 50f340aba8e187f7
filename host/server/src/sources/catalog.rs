//! Every source the sidecar knows: the operator's from `sluice.toml`,
//! read-only to tenants, and those tenants keep through the API, stored
//! as settings of kind `source` (so every sidecar on a shared store has them).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::Source;
use crate::config::{InlineSecrets, SourceConfig};
use crate::outbound::guard::NetworkPolicy;
use crate::store::Setting;

/// The setting kind of tenants' sources.
pub const SETTING_KIND: &str = "source";

/// A tenant's source as stored: its settings and its secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSource {
    /// The settings, as `PUT /v1/sources/{name}` took them.
    pub config: SourceConfig,
    /// The secrets sent with them.
    pub secrets: InlineSecrets,
}

/// The sources, by (tenant, name).
#[derive(Default)]
pub struct Catalog {
    sources: RwLock<BTreeMap<(String, String), Arc<Source>>>,
    /// Raised when the sources change: the poll supervisor starts and stops pollers.
    pub changed: Notify,
}

impl Catalog {
    /// The source `name` of `tenant`.
    pub fn get(&self, tenant: &str, name: &str) -> Option<Arc<Source>> {
        self.read().get(&(tenant.to_string(), name.to_string())).cloned()
    }

    /// Every source.
    pub fn all(&self) -> Vec<Arc<Source>> {
        self.read().values().cloned().collect()
    }

    /// A tenant's sources.
    pub fn of(&self, tenant: &str) -> Vec<Arc<Source>> {
        self.read()
            .values()
            .filter(|source| source.config.tenant == tenant)
            .cloned()
            .collect()
    }

    /// Adds or replaces a source.
    pub fn insert(&self, source: Source) {
        let key = (source.config.tenant.clone(), source.config.name.clone());
        self.write().insert(key, Arc::new(source));
        self.changed.notify_one();
    }

    /// Removes a tenant's source (never an operator's).
    pub fn remove(&self, tenant: &str, name: &str) {
        let mut sources = self.write();
        let key = (tenant.to_string(), name.to_string());
        if sources.get(&key).is_some_and(|source| source.inline.is_some()) {
            sources.remove(&key);
        }
        drop(sources);
        self.changed.notify_one();
    }

    /// Makes the tenants' sources those of `stored` (read from the store),
    /// keeping every operator's and every unchanged one as it is. A stored
    /// source that no longer loads is logged and left out.
    pub fn sync(&self, stored: &[Setting], base: &Path, policy: &Arc<NetworkPolicy>) {
        let mut wanted = BTreeMap::new();
        for setting in stored {
            match serde_json::from_str::<StoredSource>(&setting.spec) {
                Ok(entry) => {
                    wanted.insert((setting.tenant.clone(), setting.name.clone()), entry);
                }
                Err(err) => {
                    tracing::error!(tenant = %setting.tenant, source = %setting.name, error = %err, "a stored source cannot be read")
                }
            }
        }
        // Loaded outside the lock: a load reads certificates and compiles paths.
        let to_load: Vec<((String, String), StoredSource)> = {
            let sources = self.read();
            wanted
                .iter()
                .filter(|(key, entry)| match sources.get(*key) {
                    Some(current) if current.inline.is_none() => false,
                    Some(current) => {
                        current.inline.as_ref() != Some(&entry.secrets)
                            || serde_json::to_value(&current.config).ok()
                                != serde_json::to_value(&entry.config).ok()
                    }
                    None => true,
                })
                .map(|(key, entry)| (key.clone(), entry.clone()))
                .collect()
        };
        let loaded: Vec<((String, String), Option<Source>)> = to_load
            .into_iter()
            .map(|(key, entry)| match Source::load(&entry.config, Some(entry.secrets), base, policy) {
                Ok(source) => (key, Some(source)),
                Err(err) => {
                    tracing::error!(tenant = %key.0, source = %key.1, error = %err, "a stored source cannot be loaded");
                    (key, None)
                }
            })
            .collect();
        let mut sources = self.write();
        sources.retain(|key, source| source.inline.is_none() || wanted.contains_key(key));
        for (key, source) in loaded {
            match source {
                Some(source) => {
                    sources.insert(key, Arc::new(source));
                }
                None => {
                    sources.remove(&key);
                }
            }
        }
        drop(sources);
        self.changed.notify_one();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<(String, String), Arc<Source>>> {
        self.sources.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<(String, String), Arc<Source>>> {
        self.sources.write().unwrap_or_else(|e| e.into_inner())
    }
}
