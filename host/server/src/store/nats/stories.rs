//! Event stories on JetStream: one stream per tenant (`SLUICE_STORY_<hash>`),
//! so that JetStream itself keeps each tenant's stories within
//! `keep-hours` (`max_age`) and `max-bytes-per-tenant` (`max_bytes`),
//! dropping the oldest. An entry goes to `sluice.story.<t>.e.<event>`;
//! one that names an entity key also to `sluice.story.<t>.k.<key>`, as the
//! index a search by key reads (without the entry's details). Events and
//! keys are hashed into subjects,
//! so a huge or odd id costs one token; entries are checked against the
//! exact id when read. Each subject keeps its newest
//! [`MAX_ENTRIES`](crate::observe::story::MAX_ENTRIES) messages: an event
//! retried for ever, or a key with millions of events, stays bounded.

use std::collections::{HashMap, HashSet};

use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::{NatsError, NatsStore, failed};
use crate::observe::story::{MAX_ENTRIES, StoriesConfig, StoryEntry};
use crate::store::StoreError;

/// 16 bytes of the SHA-256 of `text`, in hex: one subject token.
fn hashed(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..16])
}

fn stream_name(tenant: &str) -> String {
    format!("SLUICE_STORY_{}", hashed(tenant))
}

fn event_subject(tenant: &str, event_id: &str) -> String {
    format!("sluice.story.{}.e.{}", hashed(tenant), hashed(event_id))
}

fn key_subject(tenant: &str, key: &str) -> String {
    format!("sluice.story.{}.k.{}", hashed(tenant), hashed(key))
}

impl NatsStore {
    /// The tenant's story stream, made or brought to `config` once per process.
    async fn story_stream(&self, tenant: &str, config: &StoriesConfig) -> Result<(), NatsError> {
        if self.story_streams.lock().expect("streams lock").contains(tenant) {
            return Ok(());
        }
        let js = jetstream::new(self.client.clone());
        js.create_or_update_stream(stream::Config {
            name: stream_name(tenant),
            subjects: vec![format!("sluice.story.{}.>", hashed(tenant))],
            storage: stream::StorageType::File,
            max_age: config.keep(),
            max_bytes: i64::try_from(config.max_bytes_per_tenant).unwrap_or(i64::MAX),
            max_messages_per_subject: MAX_ENTRIES as i64,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| failed("create a story stream", e))?;
        self.story_streams
            .lock()
            .expect("streams lock")
            .insert(tenant.to_string());
        Ok(())
    }

    /// [`crate::store::Queue::append_stories`].
    pub(super) fn append_story_entries(
        &self,
        entries: Vec<StoryEntry>,
        config: &StoriesConfig,
    ) -> Result<(), StoreError> {
        self.block("append story entries", async move {
            let js = jetstream::new(self.client.clone());
            let mut acks = Vec::with_capacity(entries.len());
            let tenants: HashSet<&str> = entries.iter().map(|e| e.tenant.as_str()).collect();
            for tenant in tenants {
                self.story_stream(tenant, config).await?;
            }
            for entry in &entries {
                let payload: bytes::Bytes = serde_json::to_vec(entry).expect("an entry serialises").into();
                if let Some(key) = &entry.entity_key {
                    // The key's index holds the entry without its details.
                    let index: bytes::Bytes = serde_json::to_vec(&entry.without_detail())
                        .expect("an entry serialises")
                        .into();
                    acks.push(
                        js.publish(key_subject(&entry.tenant, key), index)
                            .await
                            .map_err(|e| failed("append a story entry", e))?,
                    );
                }
                acks.push(
                    js.publish(event_subject(&entry.tenant, &entry.event_id), payload)
                        .await
                        .map_err(|e| failed("append a story entry", e))?,
                );
            }
            for ack in acks {
                ack.await.map_err(|e| failed("append a story entry", e))?;
            }
            Ok(())
        })
    }

    /// Every entry on `subject` of the tenant's stream, oldest first.
    async fn story_subject(&self, tenant: &str, subject: String) -> Result<Vec<StoryEntry>, NatsError> {
        let js = jetstream::new(self.client.clone());
        let Ok(stream) = js.get_stream(stream_name(tenant)).await else {
            return Ok(Vec::new());
        };
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| failed("read a story", e))?;
        let mut entries = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(entries);
        }
        let mut messages = consumer.messages().await.map_err(|e| failed("read a story", e))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| failed("read a story", e))?;
            let left = message.info().map_err(|e| failed("read a story", e))?.pending;
            if let Ok(entry) = serde_json::from_slice::<StoryEntry>(&message.payload) {
                entries.push(entry);
            }
            if left == 0 || entries.len() >= MAX_ENTRIES {
                break;
            }
        }
        Ok(entries)
    }

    /// [`crate::store::Queue::event_story`].
    pub(super) fn read_event_story(
        &self,
        tenant: &str,
        event_id: &str,
        limit: usize,
    ) -> Result<Vec<StoryEntry>, StoreError> {
        let mut entries = self.block(
            "read a story",
            self.story_subject(tenant, event_subject(tenant, event_id)),
        )?;
        entries.retain(|e| e.tenant == tenant && e.event_id == event_id);
        let skip = entries.len().saturating_sub(limit);
        Ok(entries.split_off(skip))
    }

    /// [`crate::store::Queue::entity_stories`].
    pub(super) fn read_entity_stories(
        &self,
        tenant: &str,
        key: &str,
        channel: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoryEntry>, StoreError> {
        let entries = self.block(
            "find stories",
            self.story_subject(tenant, key_subject(tenant, key)),
        )?;
        let mut newest: HashMap<String, usize> = HashMap::new();
        let matching: Vec<StoryEntry> = entries
            .into_iter()
            .filter(|e| e.tenant == tenant && e.entity_key.as_deref() == Some(key))
            .filter(|e| channel.is_none_or(|c| e.channel.as_deref() == Some(c)))
            .collect();
        for (at, entry) in matching.iter().enumerate() {
            newest.insert(entry.event_id.clone(), at);
        }
        let mut found: Vec<(usize, StoryEntry)> = matching
            .into_iter()
            .enumerate()
            .filter(|(at, e)| newest.get(&e.event_id) == Some(at))
            .collect();
        found.sort_by_key(|b| std::cmp::Reverse(b.0));
        Ok(found.into_iter().take(limit).map(|(_, e)| e).collect())
    }
}
