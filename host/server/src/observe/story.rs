//! Every event's story: when it was accepted, what each channel's pipeline
//! made of it, each delivery attempt with its request as sent and the
//! answer as received, and where it is now. Entries are written by one
//! supervised worker from a bounded queue, so recording never waits on the
//! store: when the queue is full an entry is dropped and counted
//! (`sluice_story_entries_dropped_total`), and delivery goes on.
//!
//! Bodies are kept up to `[stories] body-bytes` (64 KiB) each, the cut
//! marked; secrets are masked first ([`super::mask`]). Stories are kept for
//! `keep-hours` and at most `max-bytes-per-tenant`, the oldest removed first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::store::Queue;

/// What happened to an event, as one entry of its story.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoryKind {
    /// Stored at ingest (or recognised as a duplicate).
    Accepted,
    /// A channel's pipeline ran on it.
    Transformed,
    /// One of its outputs entered a destination's outbox.
    Queued,
    /// One request to a destination, with what came back.
    Attempt,
    /// Not sent: a newer delivery of its entity key went instead.
    Superseded,
    /// Not sent: the destination accepted the same bytes last time.
    Unchanged,
    /// It became a dead letter.
    DeadLettered,
}

/// One entry of an event's story.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoryEntry {
    /// The event's tenant.
    pub tenant: String,
    /// The input event's id.
    pub event_id: String,
    /// The channel, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The entity key of a delivery, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_key: Option<String>,
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
    /// What happened.
    pub kind: StoryKind,
    /// Its details, as the API shows them.
    pub detail: Value,
}

impl StoryEntry {
    /// An entry of `kind` now.
    pub fn new(tenant: &str, event_id: &str, kind: StoryKind, detail: Value) -> Self {
        Self {
            tenant: tenant.to_string(),
            event_id: event_id.to_string(),
            channel: None,
            entity_key: None,
            at_ms: crate::store::now_ms(),
            kind,
            detail,
        }
    }

    /// The same, for `channel`.
    pub fn on(mut self, channel: &str) -> Self {
        self.channel = Some(channel.to_string());
        self
    }

    /// The same, for entity `key`.
    pub fn about(mut self, key: &str) -> Self {
        self.entity_key = Some(key.to_string());
        self
    }

    /// Bytes it takes in the store, roughly: what retention counts.
    pub fn size(&self) -> u64 {
        (self.tenant.len()
            + self.event_id.len()
            + self.channel.as_deref().map_or(0, str::len)
            + self.entity_key.as_deref().map_or(0, str::len)
            + self.detail.to_string().len()
            + 32) as u64
    }
}

/// `[stories]` of `sluice.toml`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StoriesConfig {
    /// Whether stories are kept at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long a story is kept, in hours (a fraction is allowed).
    #[serde(default = "default_keep_hours")]
    pub keep_hours: f64,
    /// Most bytes of stories kept per tenant; the oldest go first.
    #[serde(default = "default_max_bytes")]
    pub max_bytes_per_tenant: u64,
    /// Most bytes of one request or response body kept.
    #[serde(default = "default_body_bytes")]
    pub body_bytes: usize,
}

impl Default for StoriesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            keep_hours: default_keep_hours(),
            max_bytes_per_tenant: default_max_bytes(),
            body_bytes: default_body_bytes(),
        }
    }
}

impl StoriesConfig {
    /// How long a story is kept.
    pub fn keep(&self) -> Duration {
        Duration::try_from_secs_f64(self.keep_hours * 3600.0).unwrap_or(Duration::from_secs(3600))
    }
}

fn yes() -> bool {
    true
}
fn default_keep_hours() -> f64 {
    72.0
}
fn default_max_bytes() -> u64 {
    256 << 20
}
fn default_body_bytes() -> usize {
    64 << 10
}

/// Most entries waiting for the writer; past it new ones are dropped.
const QUEUED: usize = 20_000;
/// Most entries written in one store call.
const BATCH: usize = 1_000;

/// Where entries go: a bounded queue to the writer.
pub struct StoryLog {
    config: StoriesConfig,
    sender: tokio::sync::mpsc::Sender<StoryEntry>,
    receiver: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<StoryEntry>>>,
    /// Entries dropped because the queue was full or the store failed.
    pub dropped: AtomicU64,
}

impl StoryLog {
    /// A log with `config`; [`run_writer`] drains it.
    pub fn new(config: StoriesConfig) -> Self {
        let (sender, receiver) = tokio::sync::mpsc::channel(QUEUED);
        Self {
            config,
            sender,
            receiver: std::sync::Mutex::new(Some(receiver)),
            dropped: AtomicU64::new(0),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &StoriesConfig {
        &self.config
    }

    /// Records `entry`, or drops and counts it when the writer is behind.
    pub fn record(&self, entry: StoryEntry) {
        if !self.config.enabled {
            return;
        }
        if self.sender.try_send(entry).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A body as a story keeps it: masked, then cut at `body-bytes` on a
    /// character boundary, the cut marked with how long it was.
    pub fn body(&self, bytes: &[u8], complete: bool) -> Value {
        let limit = self.config.body_bytes;
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(limit.saturating_mul(2))]);
        let masked = super::mask::body(&text);
        let mut end = masked.len().min(limit);
        while !masked.is_char_boundary(end) {
            end -= 1;
        }
        let truncated = end < masked.len() || !complete;
        let mut value = json!({"text": &masked[..end]});
        if truncated {
            value["truncated"] = json!(true);
            value["bytes_seen"] = json!(bytes.len());
        }
        value
    }
}

/// The story writer: takes queued entries in batches and appends them to
/// the store until told to stop, then writes what is queued. A failed
/// write drops its batch, counted.
pub async fn run_writer(
    log: Arc<StoryLog>,
    queue: Arc<dyn Queue>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let Some(mut receiver) = log.receiver.lock().expect("receiver lock").take() else {
        // Restarted by the supervisor after a panic: the receiver went with it.
        let _ = stopped.wait_for(|stop| *stop).await;
        return;
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let stopping = tokio::select! {
            n = receiver.recv_many(&mut batch, BATCH) => n == 0,
            _ = stopped.wait_for(|stop| *stop) => true,
        };
        if stopping {
            while let Ok(entry) = receiver.try_recv() {
                batch.push(entry);
            }
        }
        if !batch.is_empty() {
            let entries = std::mem::take(&mut batch);
            let count = entries.len() as u64;
            let (queue, config) = (queue.clone(), log.config);
            let stored = crate::store::in_store(move || queue.append_stories(entries, &config)).await;
            if let Err(err) = stored {
                log.dropped.fetch_add(count, Ordering::Relaxed);
                tracing::warn!(error = %err, entries = count, "cannot store story entries; dropped");
            }
        }
        if stopping {
            return;
        }
    }
}

/// Most entries of one event read; the newest are kept.
pub const MAX_ENTRIES: usize = 500;
/// Most events one search by entity key answers.
pub const MAX_FOUND: usize = 100;

/// The API's view of one event's entries (oldest first): the entries, and
/// per channel where it is now.
pub fn view(entries: &[StoryEntry], in_flight: bool) -> Value {
    let accepted = entries
        .iter()
        .find(|e| e.kind == StoryKind::Accepted)
        .map(|e| e.at_ms);
    let mut channels = serde_json::Map::new();
    for entry in entries {
        let Some(channel) = &entry.channel else { continue };
        let now = match entry.kind {
            StoryKind::Accepted => continue,
            StoryKind::Transformed => match entry.detail["outcome"].as_str() {
                Some("drop") => "dropped",
                // On the durable path both become dead letters.
                Some("reject") | Some("error") => "dead-lettered",
                _ => "transformed",
            },
            StoryKind::Queued => "queued",
            StoryKind::Attempt => match entry.detail["result"].as_str() {
                Some("delivered") => "delivered",
                Some("retry") => "waiting-for-retry",
                _ => "failed",
            },
            StoryKind::Superseded => "superseded",
            StoryKind::Unchanged => "unchanged",
            StoryKind::DeadLettered => "dead-lettered",
        };
        channels.insert(channel.clone(), json!(now));
    }
    if in_flight {
        for now in channels.values_mut() {
            if now == "queued" || now == "waiting-for-retry" {
                *now = json!("in-flight");
            }
        }
    }
    let first = entries.first();
    json!({
        "tenant": first.map(|e| e.tenant.as_str()),
        "event_id": first.map(|e| e.event_id.as_str()),
        "accepted_ms": accepted,
        // Per channel; none yet while it waits for its transform.
        "now": Value::Object(channels),
        "entries": entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_masked_and_cut_on_a_character_boundary_with_the_cut_marked() {
        let log = StoryLog::new(StoriesConfig {
            body_bytes: 8,
            ..Default::default()
        });
        let kept = log.body("ééééé-and-more".as_bytes(), true);
        assert_eq!(kept["text"], "éééé");
        assert_eq!(kept["truncated"], true);
        assert_eq!(kept["bytes_seen"], 19);
        let whole = log.body(b"{\"a\":1}", true);
        assert_eq!(whole, json!({"text": "{\"a\":1}"}));
        assert_eq!(
            log.body(b"{}", false)["truncated"],
            true,
            "a read that stopped early is marked"
        );
        let secret = log.body(br#"{"token":"abc"}"#, true);
        assert!(!secret.to_string().contains("abc"), "{secret}");
    }

    #[test]
    fn where_an_event_is_now_follows_its_latest_entry_per_channel() {
        let entry = |kind, channel: Option<&str>, detail| StoryEntry {
            channel: channel.map(str::to_string),
            ..StoryEntry::new("t", "e", kind, detail)
        };
        let entries = vec![
            entry(StoryKind::Accepted, None, json!({})),
            entry(StoryKind::Transformed, Some("a"), json!({"outcome": "emit"})),
            entry(StoryKind::Transformed, Some("b"), json!({"outcome": "reject"})),
            entry(StoryKind::Attempt, Some("a"), json!({"result": "retry"})),
            entry(StoryKind::Attempt, Some("a"), json!({"result": "delivered"})),
        ];
        let shown = view(&entries, false);
        assert_eq!(shown["now"], json!({"a": "delivered", "b": "dead-lettered"}));
        assert_eq!(shown["entries"].as_array().unwrap().len(), 5);
        let waiting = view(&entries[..4], true);
        assert_eq!(waiting["now"]["a"], "in-flight");
    }
}
