//! Destinations and channels a tenant keeps through the API: stored as
//! settings (so every sidecar on a shared store has them), built into the
//! same `Destination` and `Channel` as the operator's, and read-only to
//! no one but their tenant. The operator's, from `sluice.toml`, are never
//! changed here.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{App, Channel, Destination};
use crate::config::{DestinationConfig, InlineSecrets, WhenOff};
use crate::state::entity_key::EntityKey;
use sluice_engine::pipeline::{Pipeline, PipelineSpec, StepSpec};

/// The setting kind of tenants' destinations.
pub const DESTINATION_KIND: &str = "destination";
/// The setting kind of tenants' channels.
pub const CHANNEL_KIND: &str = "channel";

/// The secrets a destination entry may carry inline.
pub const DESTINATION_SECRETS: &[&str] = &[
    "auth.bearer",
    "auth.password",
    "auth.client-secret",
    "auth.refresh-token",
    "sign.secret",
    "sign.previous-secret",
];

/// What a tenant's destination was made from.
#[derive(Debug, Clone)]
pub struct Owned {
    /// Its tenant.
    pub tenant: String,
    /// Its secrets.
    pub secrets: InlineSecrets,
    /// The stored entry, as text: an unchanged entry is not rebuilt.
    pub stored: String,
}

/// A tenant's destination as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredDestination {
    /// Its tenant.
    pub tenant: String,
    /// The `[[destination]]` fields.
    pub config: DestinationConfig,
    /// Its secrets.
    pub secrets: InlineSecrets,
}

/// A tenant's channel, as `PUT /v1/channels/{name}` takes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ChannelEntry {
    /// One of the tenant's own destinations.
    pub destination: String,
    /// Only events of these sources (empty: all of the tenant's).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Uploaded modules, as `activate` takes them; none: the channel holds
    /// its events until its first activation.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// On from the start.
    #[serde(default = "switched_on")]
    pub enabled: bool,
    /// What happens to events while it is off.
    #[serde(default)]
    pub when_off: WhenOff,
}

fn switched_on() -> bool {
    true
}

/// A tenant's channel as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredChannel {
    /// Its tenant.
    pub tenant: String,
    /// What it was made with (its steps' versions resolved in full).
    pub entry: ChannelEntry,
}

impl App {
    /// The destination of a tenant's entry; the error says what is wrong.
    pub(crate) fn owned_destination(
        &self,
        stored: &StoredDestination,
        text: &str,
    ) -> Result<Destination, String> {
        let config = &stored.config;
        config.check(true)?;
        Ok(Destination {
            retry: config.retry.clone().unwrap_or_else(|| self.config.retry.clone()),
            entity_key: Arc::new(EntityKey::compile(&config.entity_key)?),
            target: Arc::new(config.target()?),
            method: config.method().ok_or("method")?,
            config: config.clone(),
            status: Default::default(),
            wake: Notify::new(),
            owned: Some(Owned {
                tenant: stored.tenant.clone(),
                secrets: stored.secrets.clone(),
                stored: text.to_string(),
            }),
        })
    }

    /// The channel of a tenant's entry, its steps loaded from the tenant's
    /// uploaded modules (or none: it holds its events until activated).
    pub(crate) fn owned_channel(
        &self,
        name: &str,
        stored: &StoredChannel,
        text: &str,
    ) -> Result<Channel, String> {
        let entry = &stored.entry;
        let own = self
            .destinations
            .get(&entry.destination)
            .is_some_and(|d| d.owned.as_ref().is_some_and(|o| o.tenant == stored.tenant));
        if !own {
            return Err(format!(
                "there is no destination `{}` of tenant `{}`",
                entry.destination, stored.tenant
            ));
        }
        if entry.steps.len() > crate::api::channels::MAX_STEPS {
            return Err(format!(
                "a channel has at most {} steps",
                crate::api::channels::MAX_STEPS
            ));
        }
        let mut channel = Channel::new(name, &stored.tenant, Pipeline::new(Vec::new()));
        channel.destination = Some(entry.destination.clone());
        channel.sources = entry.sources.clone();
        channel.when_off = entry.when_off;
        channel.limits = self.config.tenant_limits(&stored.tenant);
        channel.owned = Some(text.to_string());
        if entry.steps.is_empty() {
            channel.awaiting_activation.store(true, Ordering::Release);
        } else {
            let spec = PipelineSpec {
                steps: entry.steps.clone(),
            };
            let pipeline = self
                .load_uploaded(&channel, &spec)
                .map_err(|err| err.to_string())?;
            channel.config_pipeline = pipeline.clone();
            *channel.pipeline.write().expect("pipeline lock") = pipeline;
        }
        // On a shared store, its queue and deliveries need consumers of
        // their own: made once everything else of it checked out.
        self.queue
            .add_route(name, &entry.destination)
            .map_err(|err| err.to_string())?;
        let enabled = self
            .queue
            .set_enabled(name, entry.enabled, true)
            .map_err(|err| err.to_string())?;
        channel.enabled.store(enabled, Ordering::Release);
        *channel.tripped.lock().expect("breaker lock") =
            self.queue.tripped(name).map_err(|err| err.to_string())?;
        Ok(channel)
    }

    /// Makes the tenants' destinations and channels those in the store,
    /// keeping the operator's and every unchanged one as they are; one that
    /// no longer loads is logged and left out. Blocks (store reads, module
    /// loads): call it off the async threads.
    pub(crate) fn sync_owned(&self) {
        match self.registry.settings(DESTINATION_KIND) {
            Ok(stored) => {
                let wanted: std::collections::BTreeMap<String, String> =
                    stored.into_iter().map(|s| (s.name, s.spec)).collect();
                for (name, destination) in self.destinations.entries() {
                    if destination.owned.is_some() && !wanted.contains_key(&name) {
                        self.destinations.remove(&name);
                    }
                }
                for (name, text) in wanted {
                    let current = self.destinations.get(&name);
                    match &current {
                        Some(d) if d.owned.is_none() => continue,
                        Some(d) if d.owned.as_ref().is_some_and(|o| o.stored == text) => continue,
                        _ => {}
                    }
                    let built = serde_json::from_str::<StoredDestination>(&text)
                        .map_err(|err| err.to_string())
                        .and_then(|stored| self.owned_destination(&stored, &text));
                    match built {
                        Ok(destination) => {
                            self.destinations.insert(name, destination);
                        }
                        Err(err) => {
                            tracing::error!(destination = %name, error = %err, "a stored destination cannot be loaded")
                        }
                    }
                }
            }
            Err(err) => tracing::error!(error = %err, "cannot read the tenants' destinations"),
        }
        match self.registry.settings(CHANNEL_KIND) {
            Ok(stored) => {
                let wanted: std::collections::BTreeMap<String, String> =
                    stored.into_iter().map(|s| (s.name, s.spec)).collect();
                for channel in self.channels.values() {
                    if channel.owned.is_some() && !wanted.contains_key(&channel.name) {
                        self.channels.remove(&channel.name);
                        // Deleted on another node: no consumer or pull task stays here.
                        if let Err(err) = self.queue.drop_route(&channel.name) {
                            tracing::warn!(channel = %channel.name, error = %err, "cannot drop a deleted channel's consumers");
                        }
                    }
                }
                for (name, text) in wanted {
                    match self.channels.get(&name) {
                        Some(c) if c.owned.is_none() || c.owned.as_deref() == Some(text.as_str()) => continue,
                        _ => {}
                    }
                    let built = serde_json::from_str::<StoredChannel>(&text)
                        .map_err(|err| err.to_string())
                        .and_then(|stored| self.owned_channel(&name, &stored, &text));
                    match built {
                        Ok(channel) => {
                            self.add_tenant(&channel.tenant);
                            let channel = self.channels.insert(name.clone(), channel);
                            self.restore_activation(&channel);
                        }
                        Err(err) => {
                            tracing::error!(channel = %name, error = %err, "a stored channel cannot be loaded")
                        }
                    }
                }
            }
            Err(err) => tracing::error!(error = %err, "cannot read the tenants' channels"),
        }
    }
}
