//! [`Registry`] on the `sluice-registry` bucket; module bytes in the
//! `sluice-modules` object store.
//!
//! | key | value |
//! |---|---|
//! | `tenant.<tenant>` | empty |
//! | `token.<sha256>` | the tenant |
//! | `module.<tenant>.<name>.<version>` | the [`ModuleVersion`] as JSON |
//! | `pipeline.<channel>` | the channel's activated pipelines, oldest first, as a JSON array |
//! | `setting.<kind>.<tenant>.<name>` | an entry a tenant keeps through the API, as JSON |
//! | `lease.<name>` | who holds the lease and until when, as JSON |

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use super::{NatsError, NatsStore, failed, names};
use crate::store::*;

const TENANT: &str = "tenant.";
const TOKEN: &str = "token.";
const MODULE: &str = "module.";
const PIPELINE: &str = "pipeline.";
const SETTING: &str = "setting.";
const LEASE: &str = "lease.";

/// The shared change a registry entry makes, if others must apply it.
pub(super) fn change(entry: &kv::Entry) -> Option<SharedChange> {
    let key = entry.key.as_str();
    if let Some(tenant) = key.strip_prefix(TENANT) {
        return names::decode_key(Some(tenant)).map(SharedChange::Tenant);
    }
    if let Some(sha256) = key.strip_prefix(TOKEN) {
        return Some(SharedChange::Token {
            tenant: String::from_utf8(entry.value.to_vec()).ok()?,
            sha256: sha256.to_string(),
        });
    }
    if let Some(channel) = key.strip_prefix(PIPELINE) {
        return names::decode_key(Some(channel)).map(|channel| SharedChange::Pipeline { channel });
    }
    setting_change(entry)
}

/// The change a made, changed or deleted setting makes; a poll cursor
/// (which every page of a sweep rewrites) makes none.
pub(super) fn setting_change(entry: &kv::Entry) -> Option<SharedChange> {
    let kind = names::decode_key(entry.key.strip_prefix(SETTING)?.split('.').next())?;
    (kind != "poll-cursor").then_some(SharedChange::Setting { kind })
}

fn setting_key(kind: &str, tenant: &str, name: &str) -> String {
    format!(
        "{SETTING}{}.{}.{}",
        names::token(kind),
        names::token(tenant),
        names::token(name)
    )
}

/// Who holds a lease, and until when.
#[derive(serde::Serialize, serde::Deserialize)]
struct Lease {
    holder: String,
    until_ms: i64,
}

impl NatsStore {
    /// Every live key under `prefix`, with its value.
    async fn entries(&self, prefix: &str) -> Result<Vec<(String, Bytes)>, NatsError> {
        let mut keys = self
            .registry
            .keys()
            .await
            .map_err(|e| failed("list the registry", e))?;
        let mut found = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| failed("list the registry", e))?;
            if key.starts_with(prefix)
                && let Some(value) = self
                    .registry
                    .get(&key)
                    .await
                    .map_err(|e| failed("read the registry", e))?
            {
                found.push((key, value));
            }
        }
        Ok(found)
    }

    /// A channel's stack of activated pipelines and its revision (0: none yet).
    async fn pipelines(&self, channel: &str) -> Result<(Vec<String>, u64), NatsError> {
        let key = format!("{PIPELINE}{}", names::token(channel));
        match self
            .registry
            .entry(&key)
            .await
            .map_err(|e| failed("read activations", e))?
        {
            Some(entry) if entry.operation == kv::Operation::Put => Ok((
                serde_json::from_slice(&entry.value).unwrap_or_default(),
                entry.revision,
            )),
            Some(entry) => Ok((Vec::new(), entry.revision)),
            None => Ok((Vec::new(), 0)),
        }
    }

    /// Changes a channel's stack with compare-and-set; returns what `change` returned.
    async fn change_pipelines<T>(
        &self,
        channel: &str,
        change: impl Fn(&mut Vec<String>) -> T,
    ) -> Result<T, NatsError> {
        let key = format!("{PIPELINE}{}", names::token(channel));
        loop {
            let (mut stack, revision) = self.pipelines(channel).await?;
            let answer = change(&mut stack);
            let value = serde_json::to_vec(&stack).expect("strings serialise");
            match self.registry.update(&key, value.into(), revision).await {
                Ok(_) => return Ok(answer),
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(err) => return Err(failed("record an activation", err)),
            }
        }
    }
}

impl Registry for NatsStore {
    fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let found = self.block("list tenants", self.entries(TENANT))?;
        Ok(found
            .into_iter()
            .filter_map(|(key, _)| names::decode_key(key.strip_prefix(TENANT)))
            .collect())
    }

    fn add_tenant(&self, name: &str) -> Result<bool, StoreError> {
        let key = format!("{TENANT}{}", names::token(name));
        self.block("create a tenant", async move {
            match self.registry.create(&key, Bytes::new()).await {
                Ok(_) => Ok(true),
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(err) => Err(failed("create a tenant", err)),
            }
        })
    }

    fn tokens(&self) -> Result<Vec<(String, String)>, StoreError> {
        let found = self.block("list tokens", self.entries(TOKEN))?;
        Ok(found
            .into_iter()
            .filter_map(|(key, value)| {
                let sha256 = key.strip_prefix(TOKEN)?.to_string();
                Some((String::from_utf8(value.to_vec()).ok()?, sha256))
            })
            .collect())
    }

    fn add_token(&self, tenant: &str, sha256: &str) -> Result<(), StoreError> {
        let key = format!("{TOKEN}{}", names::token(sha256));
        let value = Bytes::from(tenant.to_string());
        self.block("issue a token", async move {
            self.registry
                .create(&key, value)
                .await
                .map(drop)
                .map_err(|e| failed("issue a token", e))
        })
    }

    fn add_module(&self, module: &ModuleVersion) -> Result<bool, StoreError> {
        let key = format!(
            "{MODULE}{}.{}.{}",
            names::token(&module.tenant),
            names::token(&module.name),
            names::token(&module.version)
        );
        let value = Bytes::from(serde_json::to_vec(module).expect("a module version serialises"));
        self.block("record a module", async move {
            match self.registry.create(&key, value).await {
                Ok(_) => Ok(true),
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(err) => Err(failed("record a module", err)),
            }
        })
    }

    fn modules(&self, tenant: &str, name: Option<&str>) -> Result<Vec<ModuleVersion>, StoreError> {
        let prefix = match name {
            Some(name) => format!("{MODULE}{}.{}.", names::token(tenant), names::token(name)),
            None => format!("{MODULE}{}.", names::token(tenant)),
        };
        let found = self.block("list modules", async move { self.entries(&prefix).await })?;
        let mut modules: Vec<ModuleVersion> = found
            .into_iter()
            .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
            .collect();
        modules.sort_by(|a, b| (&a.name, a.created_ms).cmp(&(&b.name, b.created_ms)));
        Ok(modules)
    }

    fn push_pipeline(&self, channel: &str, spec: &str) -> Result<(), StoreError> {
        self.block("record an activation", async move {
            self.change_pipelines(channel, |stack| stack.push(spec.to_string()))
                .await
        })
    }

    fn pop_pipeline(&self, channel: &str) -> Result<Option<Option<String>>, StoreError> {
        self.block("roll back an activation", async move {
            self.change_pipelines(channel, |stack| stack.pop().map(|_| stack.last().cloned()))
                .await
        })
    }

    fn active_pipeline(&self, channel: &str) -> Result<Option<String>, StoreError> {
        let (stack, _) = self.block("read activations", self.pipelines(channel))?;
        Ok(stack.last().cloned())
    }

    fn settings(&self, kind: &str) -> Result<Vec<Setting>, StoreError> {
        let prefix = format!("{SETTING}{}.", names::token(kind));
        let found = self.block("list settings", async move { self.entries(&prefix).await })?;
        Ok(found
            .into_iter()
            .filter_map(|(key, value)| {
                let mut parts = key.split('.').skip(2);
                Some(Setting {
                    tenant: names::decode_key(parts.next())?,
                    name: names::decode_key(parts.next())?,
                    spec: String::from_utf8(value.to_vec()).ok()?,
                })
            })
            .collect())
    }

    fn setting(&self, kind: &str, tenant: &str, name: &str) -> Result<Option<String>, StoreError> {
        let key = setting_key(kind, tenant, name);
        let value = self.block("read a setting", async move {
            self.registry
                .get(&key)
                .await
                .map_err(|e| failed("read a setting", e))
        })?;
        Ok(value.and_then(|v| String::from_utf8(v.to_vec()).ok()))
    }

    fn put_setting(&self, kind: &str, tenant: &str, name: &str, spec: &str) -> Result<(), StoreError> {
        let key = setting_key(kind, tenant, name);
        let value = Bytes::from(spec.to_string());
        self.block("store a setting", async move {
            self.registry
                .put(&key, value)
                .await
                .map(drop)
                .map_err(|e| failed("store a setting", e))
        })
    }

    fn delete_setting(&self, kind: &str, tenant: &str, name: &str) -> Result<bool, StoreError> {
        let key = setting_key(kind, tenant, name);
        self.block("delete a setting", async move {
            let existed = self
                .registry
                .get(&key)
                .await
                .map_err(|e| failed("delete a setting", e))?
                .is_some();
            if existed {
                self.registry
                    .delete(&key)
                    .await
                    .map_err(|e| failed("delete a setting", e))?;
            }
            Ok(existed)
        })
    }

    fn take_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        let key = format!("{LEASE}{}", names::token(name));
        let lease = Lease {
            holder: holder.to_string(),
            until_ms: now_ms() + ttl.as_millis() as i64,
        };
        let value = Bytes::from(serde_json::to_vec(&lease).expect("a lease serialises"));
        self.block("take a lease", async move {
            let current = self
                .registry
                .entry(&key)
                .await
                .map_err(|e| failed("read a lease", e))?;
            let written = match current {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    let held: Option<Lease> = serde_json::from_slice(&entry.value).ok();
                    if held.is_some_and(|held| held.holder != lease.holder && held.until_ms > now_ms()) {
                        return Ok(false);
                    }
                    self.registry.update(&key, value, entry.revision).await.is_ok()
                }
                Some(entry) => self.registry.update(&key, value, entry.revision).await.is_ok(),
                None => self.registry.create(&key, value).await.is_ok(),
            };
            // Losing the compare-and-set means another holder took it first.
            Ok(written)
        })
    }

    fn share_module(&self, version: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let mut reader = bytes;
        self.block("share a module", async move {
            if self.modules.info(version).await.is_ok() {
                return Ok(());
            }
            self.modules
                .put(version, &mut reader)
                .await
                .map(drop)
                .map_err(|e| failed("share a module", e))
        })
    }

    fn shared_module(&self, version: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.block("fetch a shared module", async move {
            let Ok(mut object) = self.modules.get(version).await else {
                return Ok(None);
            };
            let mut bytes = Vec::new();
            object
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| failed("fetch a shared module", e))?;
            Ok(Some(bytes))
        })
    }
}
