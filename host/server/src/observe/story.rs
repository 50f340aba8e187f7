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
use serde_json::value::RawValue;
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Its details, as the API shows them: JSON text, written once when
    /// the entry is made and stored as it is.
    pub detail: Box<RawValue>,
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
            detail: serde_json::value::to_raw_value(&detail).expect("a JSON value serialises"),
        }
    }

    /// The same without its details: what an index of entries needs.
    pub fn without_detail(&self) -> Self {
        Self {
            detail: RawValue::from_string("null".into()).expect("null is JSON"),
            ..self.clone()
        }
    }

    /// Its details, parsed.
    pub fn detail_value(&self) -> Value {
        serde_json::from_str(self.detail.get()).unwrap_or_default()
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
            + self.detail.get().len()
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
        // At most ten years (what a store's `max_age` takes); a negative or
        // unreadable value keeps an hour.
        const LONGEST: f64 = 10.0 * 365.0 * 24.0 * 3600.0;
        let seconds = self.keep_hours * 3600.0;
        if seconds.is_nan() || seconds < 0.0 {
            return Duration::from_secs(3600);
        }
        Duration::from_secs_f64(seconds.min(LONGEST))
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
/// Most bytes of entries waiting for the writer; past it new ones are dropped.
const QUEUED_BYTES: u64 = 64 << 20;
/// Most entries written in one store call.
const BATCH: usize = 256;
/// Largest entry kept; a larger one keeps its kind and size only (each
/// body is capped, but an entry listing many is not), so that every entry
/// fits one message of a store.
const MAX_ENTRY_BYTES: u64 = 512 << 10;

/// Where entries go: a bounded queue to the writer.
pub struct StoryLog {
    config: StoriesConfig,
    sender: tokio::sync::mpsc::Sender<StoryEntry>,
    /// Held by the one writer; a writer restarted after a panic takes it again.
    receiver: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<StoryEntry>>,
    /// Bytes of the entries waiting for the writer.
    queued_bytes: AtomicU64,
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
            receiver: tokio::sync::Mutex::new(receiver),
            queued_bytes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &StoriesConfig {
        &self.config
    }

    /// Records `entry`, or drops and counts it when the writer is behind.
    pub fn record(&self, mut entry: StoryEntry) {
        if !self.config.enabled {
            return;
        }
        let mut size = entry.size();
        if size > MAX_ENTRY_BYTES {
            entry.detail = serde_json::value::to_raw_value(&json!({"too_large": size}))
                .expect("a JSON value serialises");
            size = entry.size();
        }
        if self.queued_bytes.fetch_add(size, Ordering::AcqRel) + size > QUEUED_BYTES {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.sender.try_send(entry).is_err() {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A body as a story keeps it: masked, then cut at `body-bytes` on a
    /// character boundary, the cut marked with how long it was.
    pub fn body(&self, bytes: &[u8], complete: bool) -> KeptBody {
        let limit = self.config.body_bytes;
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(limit.saturating_mul(2))]);
        let mut masked = super::mask::body(&text);
        let mut end = masked.len().min(limit);
        while !masked.is_char_boundary(end) {
            end -= 1;
        }
        let truncated = end < masked.len() || !complete;
        masked.truncate(end);
        KeptBody {
            text: masked,
            truncated: truncated.then_some(true),
            bytes_seen: truncated.then_some(bytes.len()),
        }
    }
}

/// A request's or response's body as a story keeps it.
#[derive(Debug, Serialize)]
pub struct KeptBody {
    /// The text, masked and cut.
    pub text: String,
    /// Set when it was cut (or the read stopped early).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    /// How many bytes there were, when it was cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_seen: Option<usize>,
}

impl StoryEntry {
    /// An entry of `kind` now whose details are already JSON text.
    pub fn with_detail(tenant: &str, event_id: &str, kind: StoryKind, detail: Box<RawValue>) -> Self {
        Self {
            detail,
            ..Self::new(tenant, event_id, kind, Value::Null)
        }
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
    let mut receiver = log.receiver.lock().await;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let stopping = super::next_batch(&mut receiver, &mut batch, BATCH, usize::MAX, &mut stopped).await;
        if !batch.is_empty() {
            let entries = std::mem::take(&mut batch);
            let count = entries.len() as u64;
            let bytes: u64 = entries.iter().map(StoryEntry::size).sum();
            log.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
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
/// per channel where it is now; `in_flight` says whether this node is
/// sending one of the event's deliveries of a channel.
pub fn view(entries: &[StoryEntry], in_flight: impl Fn(&str) -> bool) -> Value {
    let accepted = entries
        .iter()
        .find(|e| e.kind == StoryKind::Accepted)
        .map(|e| e.at_ms);
    let mut channels = serde_json::Map::new();
    for entry in entries {
        let Some(channel) = &entry.channel else { continue };
        let now = match entry.kind {
            StoryKind::Accepted => continue,
            StoryKind::Transformed => {
                let detail = entry.detail_value();
                match detail["outcome"].as_str() {
                    Some("drop") => "dropped",
                    // On the durable path both become dead letters.
                    Some("reject") | Some("error") => "dead-lettered",
                    _ if detail.get("deliveries").is_some() => "queued",
                    _ => "transformed",
                }
            }
            StoryKind::Queued => "queued",
            StoryKind::Attempt => match entry.detail_value()["result"].as_str() {
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
    for (channel, now) in channels.iter_mut() {
        if (now == "queued" || now == "waiting-for-retry") && in_flight(channel) {
            *now = json!("in-flight");
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
        let body = |bytes: &[u8], complete| serde_json::to_value(log.body(bytes, complete)).unwrap();
        let kept = body("ééééé-and-more".as_bytes(), true);
        assert_eq!(kept["text"], "éééé");
        assert_eq!(kept["truncated"], true);
        assert_eq!(kept["bytes_seen"], 19);
        let whole = body(b"{\"a\":1}", true);
        assert_eq!(whole, json!({"text": "{\"a\":1}"}));
        assert_eq!(
            body(b"{}", false)["truncated"],
            true,
            "a read that stopped early is marked"
        );
        let secret = body(br#"{"token":"abc"}"#, true);
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
        let shown = view(&entries, |_| false);
        assert_eq!(shown["now"], json!({"a": "delivered", "b": "dead-lettered"}));
        assert_eq!(shown["entries"].as_array().unwrap().len(), 5);
        let waiting = view(&entries[..4], |channel| channel == "a");
        assert_eq!(waiting["now"]["a"], "in-flight");
    }
}
