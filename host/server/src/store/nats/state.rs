//! Transform state (contract 0.2) on JetStream: bucket
//! `sluice-transform-state`, one key per (tenant, channel, step, key), one
//! per tenant (`u.<tenant>`) with what the tenant holds, for its quota, and
//! one per channel (`c.<tenant>.<channel>`) with the channel's part of it,
//! so that a deleted channel gives its part back.
//!
//! One batch of a channel is in flight in the whole cluster (its consumer
//! has `max_ack_pending = 1`), so nothing else writes the channel's state
//! while a batch runs. A batch's writes are stored after every delivery and
//! dead letter of the batch, and before the batch is acknowledged. Each
//! value is stamped with the batch's stream position and keeps the value
//! from before the batch: a batch run again after a crash (its writes
//! perhaps stored, not yet acknowledged) reads the state as it was before
//! its first run, so it makes the same outputs under the same ids, and a
//! counter is never counted twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sluice_engine::state::{StateReadError, StateStore, StateUsage};
use tokio::runtime::Handle;

use super::names::token;
use super::queue::msg_id;
use super::{NatsError, NatsStore, failed, on_runtime};
use crate::store::{StoreError, Transformed};

/// The bucket.
pub(super) const BUCKET: &str = "sluice-transform-state";

/// The bucket key of one state key.
fn state_key(tenant: &str, channel: &str, step: &str, key: &str) -> String {
    format!(
        "s.{}.{}.{}.{}",
        token(tenant),
        token(channel),
        token(step),
        token(key)
    )
}

/// The bucket key of a tenant's usage.
fn usage_key(tenant: &str) -> String {
    format!("u.{}", token(tenant))
}

/// The bucket key of a channel's part of its tenant's usage.
fn channel_usage_key(tenant: &str, channel: &str) -> String {
    format!("c.{}.{}", token(tenant), token(channel))
}

/// A stored value: what batch `b` left (`v`, none if it deleted the key),
/// and what was there before that batch (`p`).
#[derive(Serialize, Deserialize)]
struct Stamped {
    b: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<Box<RawValue>>,
}

impl Stamped {
    /// The value batch `batch` sees: before itself, if it wrote this.
    fn seen_by(self, batch: u64) -> Option<Box<RawValue>> {
        if self.b == batch { self.p } else { self.v }
    }
}

/// A channel's part of the usage, stamped with the last batch that added to it.
#[derive(Default, Serialize, Deserialize)]
struct ChannelUsage {
    #[serde(flatten)]
    usage: StateUsage,
    #[serde(default)]
    b: u64,
}

fn decode(bytes: &[u8], batch: u64) -> Result<Option<String>, String> {
    let stamped: Stamped =
        serde_json::from_slice(bytes).map_err(|e| format!("a stored value is corrupt: {e}"))?;
    Ok(stamped.seen_by(batch).map(|raw| raw.get().to_string()))
}

/// One channel's state, as one batch's run reads it.
pub(super) struct ChannelState {
    kv: kv::Store,
    handle: Handle,
    tenant: String,
    channel: String,
    /// The stream position of the batch being run.
    batch: u64,
}

impl StateStore for ChannelState {
    fn get(&self, step: &str, key: &str, deadline: Instant) -> Result<Option<String>, StateReadError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let (kv, name) = (self.kv.clone(), state_key(&self.tenant, &self.channel, step, key));
        let read = async move {
            match tokio::time::timeout(wait, kv.get(name)).await {
                Ok(found) => found.map_err(|e| failed("read transform state", e)),
                Err(_) => Err(NatsError::Timeout {
                    what: "read transform state",
                    timeout: wait,
                }),
            }
        };
        let stored = on_runtime(&self.handle, "read transform state", read)
            .map_err(|e| StateReadError(e.to_string()))?;
        match stored {
            Some(bytes) => decode(&bytes, self.batch).map_err(StateReadError),
            None => Ok(None),
        }
    }
}

impl NatsStore {
    /// [`crate::store::Queue::state`], for the batch of `channel` this node holds.
    pub(super) fn channel_state(
        &self,
        tenant: &str,
        channel: &str,
    ) -> Result<(Arc<dyn StateStore>, StateUsage), StoreError> {
        let batch = self
            .transform
            .lock()
            .expect("transform lock")
            .get(channel)
            .map_or(0, |held| held.stream_seq);
        let (kv, key) = (self.transform_state.clone(), usage_key(tenant));
        let usage = self.block("read a tenant's state usage", async move {
            let entry = kv
                .get(key)
                .await
                .map_err(|e| failed("read a tenant's state usage", e))?;
            Ok(entry
                .and_then(|bytes| serde_json::from_slice::<StateUsage>(&bytes).ok())
                .unwrap_or_default())
        })?;
        let state = ChannelState {
            kv: self.transform_state.clone(),
            handle: self.handle.clone(),
            tenant: tenant.into(),
            channel: channel.into(),
            batch,
        };
        Ok((Arc::new(state), usage))
    }

    /// The messages that store a batch's state writes, the batch being the
    /// one at `stream_seq`: one per key (the last write of the batch wins),
    /// each stamped with the batch and the value from before it.
    pub(super) async fn state_messages(
        &self,
        results: &[Transformed],
        stream_seq: u64,
    ) -> Result<Vec<(String, HeaderMap, Bytes)>, NatsError> {
        let mut last: BTreeMap<String, Option<&str>> = BTreeMap::new();
        for result in results {
            for ((step, key), value) in &result.state.writes {
                last.insert(
                    state_key(&result.tenant, &result.channel, step, key),
                    value.as_deref(),
                );
            }
        }
        let mut messages = Vec::with_capacity(last.len());
        for (key, value) in last {
            let before = match self
                .transform_state
                .get(&key)
                .await
                .map_err(|e| failed("read transform state", e))?
            {
                Some(bytes) => decode(&bytes, stream_seq).map_err(|e| failed("read transform state", e))?,
                None => None,
            };
            let raw = |text: Option<&str>| text.and_then(|t| RawValue::from_string(t.to_string()).ok());
            let stamped = Stamped {
                b: stream_seq,
                v: raw(value),
                p: raw(before.as_deref()),
            };
            let payload = serde_json::to_vec(&stamped).expect("a stamped value serialises");
            let id = format!("s.{stream_seq}.{}", hex::encode(sha2_digest(key.as_bytes())));
            messages.push((format!("$KV.{BUCKET}.{key}"), msg_id(id), Bytes::from(payload)));
        }
        Ok(messages)
    }

    /// Adds what a batch changed to its channel's and its tenant's usage,
    /// once per batch: the channel's part remembers the last batch added.
    /// A crash between the two leaves the tenant's usage short by that
    /// batch: the quota bounds growth, and errs on the side of the tenant.
    pub(super) async fn add_usage(&self, results: &[Transformed], stream_seq: u64) -> Result<(), NatsError> {
        let mut by_channel: BTreeMap<(&str, &str), (i64, i64)> = BTreeMap::new();
        for result in results.iter().filter(|r| !r.state.is_empty()) {
            let entry = by_channel.entry((&result.tenant, &result.channel)).or_default();
            entry.0 += result.state.keys;
            entry.1 += result.state.bytes;
        }
        for ((tenant, channel), delta) in by_channel {
            if self
                .add_to_channel(&channel_usage_key(tenant, channel), delta, stream_seq)
                .await?
            {
                self.add_to_tenant(&usage_key(tenant), delta).await?;
            }
        }
        Ok(())
    }

    /// Adds `delta` to a channel's part unless batch `batch` already did;
    /// whether it added. A node still finishing the batch and the node it
    /// was redelivered to may both get here.
    async fn add_to_channel(
        &self,
        key: &str,
        (keys, bytes): (i64, i64),
        batch: u64,
    ) -> Result<bool, NatsError> {
        self.compare_and_set(key, |stored| {
            let mut part: ChannelUsage = stored
                .and_then(|v| serde_json::from_slice(v).ok())
                .unwrap_or_default();
            if batch != 0 && part.b == batch {
                return None;
            }
            part.usage.keys = part.usage.keys.saturating_add_signed(keys);
            part.usage.bytes = part.usage.bytes.saturating_add_signed(bytes);
            part.b = batch;
            Some(serde_json::to_vec(&part).expect("usage serialises").into())
        })
        .await
    }

    /// Replaces the value under `key` with what `change` makes of it (none:
    /// leave it), by compare-and-set, retried when another writer came
    /// first; whether it changed it.
    async fn compare_and_set(
        &self,
        key: &str,
        change: impl Fn(Option<&[u8]>) -> Option<Bytes>,
    ) -> Result<bool, NatsError> {
        for attempt in 0u32.. {
            let entry = self
                .transform_state
                .entry(key)
                .await
                .map_err(|e| failed("read state usage", e))?;
            let revision = entry.as_ref().map_or(0, |entry| entry.revision);
            let stored = entry
                .as_ref()
                .filter(|entry| entry.operation == kv::Operation::Put)
                .map(|entry| entry.value.as_ref());
            let Some(value) = change(stored) else {
                return Ok(false);
            };
            let written = if revision == 0 {
                self.transform_state
                    .create(key, value)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            } else {
                self.transform_state
                    .update(key, value, revision)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            };
            match written {
                Ok(()) => return Ok(true),
                Err(_) if attempt < 16 => {
                    tokio::time::sleep(Duration::from_millis(5 << attempt.min(5))).await
                }
                Err(err) => return Err(failed("update state usage", err)),
            }
        }
        unreachable!("the loop returns")
    }

    /// After the batch at `stream_seq` is acknowledged: purges the keys it
    /// deleted (stored as its stamp with the value from before, for a
    /// re-run), unless a later batch has written them since. Best effort: a
    /// crash here leaves one batch's deleted keys stored, outside the quota.
    pub(super) async fn purge_deleted(&self, results: &[Transformed], stream_seq: u64) {
        let mut deleted = Vec::new();
        for result in results {
            for ((step, key), value) in &result.state.writes {
                if value.is_none() {
                    deleted.push(state_key(&result.tenant, &result.channel, step, key));
                }
            }
        }
        for key in deleted {
            let Ok(Some(entry)) = self.transform_state.entry(&key).await else {
                continue;
            };
            let stamped = serde_json::from_slice::<Stamped>(&entry.value).ok();
            if stamped.is_some_and(|s| s.b == stream_seq && s.v.is_none())
                && let Err(err) = self
                    .transform_state
                    .purge_expect_revision(&key, Some(entry.revision))
                    .await
            {
                tracing::debug!(error = %err, "a deleted state key stays stored until it is written again");
            }
        }
    }

    /// Adds `(keys, bytes)` to a tenant's usage: several channels of a
    /// tenant may commit at once, on several nodes.
    async fn add_to_tenant(&self, key: &str, (keys, bytes): (i64, i64)) -> Result<(), NatsError> {
        self.compare_and_set(key, |stored| {
            let before: StateUsage = stored
                .and_then(|v| serde_json::from_slice(v).ok())
                .unwrap_or_default();
            let after = StateUsage {
                keys: before.keys.saturating_add_signed(keys),
                bytes: before.bytes.saturating_add_signed(bytes),
            };
            Some(serde_json::to_vec(&after).expect("usage serialises").into())
        })
        .await
        .map(drop)
    }

    /// [`crate::store::Queue::forget_state`]: purges the channel's keys,
    /// and gives what they held back to the tenant's usage.
    pub(super) fn forget_channel_state(&self, tenant: &str, channel: &str) -> Result<(), StoreError> {
        let subject = format!("$KV.{BUCKET}.s.{}.{}.>", token(tenant), token(channel));
        let js = jetstream::new(self.client.clone());
        let (channel_key, tenant_key) = (channel_usage_key(tenant, channel), usage_key(tenant));
        self.block("forget a channel's state", async move {
            let stream = js
                .get_stream(format!("KV_{BUCKET}"))
                .await
                .map_err(|e| failed("forget a channel's state", e))?;
            // The tenant gets the channel's part back first: a crash before
            // the purges errs on the side of the tenant, never against it.
            let held = self
                .transform_state
                .get(&channel_key)
                .await
                .map_err(|e| failed("read state usage", e))?
                .and_then(|bytes| serde_json::from_slice::<ChannelUsage>(&bytes).ok())
                .unwrap_or_default();
            self.add_to_tenant(
                &tenant_key,
                (-(held.usage.keys as i64), -(held.usage.bytes as i64)),
            )
            .await?;
            self.transform_state
                .purge(&channel_key)
                .await
                .map_err(|e| failed("forget a channel's state", e))?;
            stream
                .purge()
                .filter(subject)
                .await
                .map(drop)
                .map_err(|e| failed("forget a channel's state", e))
        })
    }
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
