//! Channel switches and circuit breakers on JetStream, shared in `sluice-state` with compare-and-set.

use std::collections::HashMap;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{NatsStore, failed, names};
use crate::store::*;

/// A channel's switch as shared in `sluice-state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Switch {
    pub enabled: bool,
    /// The config's value last applied (an API change stands until it changes).
    pub config: Option<bool>,
    /// Why the circuit breaker holds the channel off.
    pub reason: Option<String>,
}

impl NatsStore {
    fn switch(&self, channel: &str) -> Option<Switch> {
        self.switches.read().expect("switches lock").get(channel).cloned()
    }

    pub(super) fn enabled(&self, channel: &str) -> bool {
        self.switch(channel).is_none_or(|s| s.enabled)
    }

    /// Reads every channel's switch into this node's view.
    pub(super) fn load_switches(&self) -> Result<(), StoreError> {
        let state = self.state.clone();
        let loaded = self.block("read switches", async move {
            let mut keys = state.keys().await.map_err(|e| failed("list switches", e))?;
            let mut found = HashMap::new();
            while let Some(key) = keys.next().await {
                let key = key.map_err(|e| failed("list switches", e))?;
                let Some(channel) = names::decode_key(key.strip_prefix(names::SWITCH)) else {
                    continue;
                };
                if let Some(value) = state.get(&key).await.map_err(|e| failed("read a switch", e))?
                    && let Ok(switch) = serde_json::from_slice::<Switch>(&value)
                {
                    found.insert(channel, switch);
                }
            }
            Ok(found)
        })?;
        self.switches.write().expect("switches lock").extend(loaded);
        Ok(())
    }

    /// Changes a channel's switch with compare-and-set; returns it as stored.
    fn update_switch(
        &self,
        channel: &str,
        change: impl Fn(Option<Switch>) -> Switch + Send + Sync,
    ) -> Result<Switch, StoreError> {
        let key = format!("{}{}", names::SWITCH, names::token(channel));
        let state = self.state.clone();
        let switch = self.block("set a switch", async move {
            loop {
                let entry = state.entry(&key).await.map_err(|e| failed("read a switch", e))?;
                let (current, revision) = match &entry {
                    Some(entry) if entry.operation == kv::Operation::Put => {
                        (serde_json::from_slice(&entry.value).ok(), entry.revision)
                    }
                    Some(entry) => (None, entry.revision),
                    None => (None, 0),
                };
                let next = change(current);
                let value = serde_json::to_vec(&next).expect("a switch serialises");
                match state.update(&key, value.into(), revision).await {
                    Ok(_) => return Ok(next),
                    Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    Err(err) => return Err(failed("set a switch", err)),
                }
            }
        })?;
        self.switches
            .write()
            .expect("switches lock")
            .insert(channel.to_string(), switch.clone());
        Ok(switch)
    }

    /// [`Queue::set_enabled`].
    pub(super) fn set_channel_enabled(
        &self,
        channel: &str,
        enabled: bool,
        from_config: bool,
    ) -> Result<bool, StoreError> {
        let switch = self.update_switch(channel, |current| match (from_config, current) {
            // The config's value is the one last applied: an API change stands.
            (true, Some(current)) if current.config == Some(enabled) => current,
            (true, current) => Switch {
                enabled,
                config: Some(enabled),
                reason: if enabled {
                    None
                } else {
                    current.and_then(|c| c.reason)
                },
            },
            (false, current) => Switch {
                enabled,
                config: current.as_ref().and_then(|c| c.config),
                reason: if enabled {
                    None
                } else {
                    current.and_then(|c| c.reason)
                },
            },
        })?;
        Ok(switch.enabled)
    }

    /// [`Queue::trip`].
    pub(super) fn trip_channel(&self, channel: &str, reason: &str) -> Result<(), StoreError> {
        self.update_switch(channel, |current| Switch {
            enabled: false,
            config: current.and_then(|c| c.config),
            reason: Some(reason.to_string()),
        })
        .map(drop)
    }

    /// [`Queue::tripped`].
    pub(super) fn trip_reason(&self, channel: &str) -> Result<Option<String>, StoreError> {
        Ok(self.switch(channel).and_then(|s| s.reason))
    }
}
