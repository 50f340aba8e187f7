//! Durable state of the sidecar: the ingest log, each channel's queue of
//! events to transform, the outbox of deliveries with their attempts, dead
//! letters, and the channels' ON/OFF switches.
//!
//! [`Queue`] and [`Registry`] are the seams: the embedded default is
//! [`SqliteQueue`], and [`NatsStore`] shares the work of several sidecars
//! through NATS JetStream. Their methods block (SQLite waits for a group
//! commit, JetStream for its acknowledgement); async callers run them with
//! `tokio::task::spawn_blocking`.

mod nats;
mod sqlite;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use nats::{NatsError, NatsStore};
pub use sqlite::SqliteQueue;

/// Why the store failed. Every variant is a technical failure of the
/// store itself (disk, corruption), never of the data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite answered with an error.
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store's writer has stopped (the process is shutting down).
    #[error("store: the writer has stopped")]
    Closed,
    /// The group commit failed; nothing of the batch was stored.
    #[error("store: commit failed: {0}")]
    Commit(String),
    /// NATS JetStream failed or did not answer in time.
    #[error("jetstream: {0}")]
    Nats(#[from] NatsError),
    /// This store does not keep what was asked for (JetStream keeps no
    /// ingest log once events are transformed).
    #[error("this store cannot {0}")]
    Unsupported(&'static str),
    /// A stored row cannot be read back.
    #[error("store: row {what} is corrupt: {detail}")]
    Corrupt {
        /// Which row.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
}

impl StoreError {
    /// Whether the store cannot answer for now (a shared store whose server
    /// is down or slow, or an event id being ingested by another request):
    /// the caller should retry. After a timeout part of the work may be
    /// stored already; a retry with the same event ids stores it once.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Nats(NatsError::NotConnected | NatsError::InFlight | NatsError::Timeout { .. })
        )
    }
}

/// Which events of the ingest log to read.
#[derive(Debug, Clone, Default)]
pub struct StoredQuery {
    /// The tenant whose events these are.
    pub tenant: String,
    /// Only events received at or after this time (ms since the epoch).
    pub since_ms: i64,
    /// Continue from this position (received ms, event id), exclusive:
    /// after it oldest first, before it newest first.
    pub from: Option<(i64, String)>,
    /// The newest first instead of the oldest.
    pub newest_first: bool,
    /// At most this many; and a page ends after the event that takes it
    /// past [`STORED_PAGE_BYTES`], so a page of large events stays small.
    pub limit: usize,
}

/// Bytes of events one page of the ingest log holds, about: it always
/// holds at least one event, and ends after the one that passes this.
pub const STORED_PAGE_BYTES: usize = 16 << 20;

/// One event of the ingest log.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// When it was received (ms since the epoch).
    pub received_ms: i64,
    /// Its id.
    pub id: String,
    /// Its JSON text, as ingested.
    pub event: String,
}

/// One event to ingest: its JSON text, and the channels it is queued for.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// The owning tenant (the idempotency scope).
    pub tenant: String,
    /// The event id (unique per tenant).
    pub id: String,
    /// The whole event as JSON text, stored verbatim.
    pub event: String,
    /// The channels whose queues receive it.
    pub channels: Vec<String>,
}

/// What ingest did with one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The event id.
    pub id: String,
    /// True when the id was already stored: nothing was queued again.
    pub duplicate: bool,
}

/// An event waiting in a channel's queue for its transform.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Position in the channel's queue.
    pub seq: i64,
    /// The event's JSON text, as ingested.
    pub event: String,
    /// When it was ingested (ms since the Unix epoch).
    pub received_ms: i64,
}

/// What a channel's pipeline made of one pending event.
#[derive(Debug, Clone)]
pub struct Transformed {
    /// The queue position it came from (removed in the same transaction).
    pub seq: i64,
    /// The channel.
    pub channel: String,
    /// The tenant.
    pub tenant: String,
    /// The input event's id.
    pub event_id: String,
    /// The input event's JSON text (kept in dead letters).
    pub original: String,
    /// When the input event was ingested.
    pub received_ms: i64,
    /// `module@version` of every step that ran.
    pub versions: Vec<String>,
    /// The result.
    pub disposition: Disposition,
    /// The state the event's steps wrote (contract 0.2), stored in the same commit.
    pub state: sluice_engine::state::StateChange,
}

/// Where a transformed event goes next.
#[derive(Debug, Clone)]
pub enum Disposition {
    /// Into the outbox, one delivery per emitted event.
    Deliver(Vec<NewDelivery>),
    /// Nowhere: the pipeline dropped it on purpose.
    Dropped,
    /// To dead letters: rejected by a rule, or a module fault.
    DeadLetter {
        /// `rejected` or `fault`.
        reason: String,
        /// The violations, or the fault.
        detail: Value,
    },
    /// Both: these deliveries, and a dead letter (reason `rejected`) of
    /// the input with the violations of what was left out.
    Partial {
        /// One delivery per emitted event.
        deliveries: Vec<NewDelivery>,
        /// The violations.
        detail: Value,
    },
}

impl Disposition {
    /// The deliveries it makes.
    pub fn deliveries(&self) -> &[NewDelivery] {
        match self {
            Disposition::Deliver(deliveries) | Disposition::Partial { deliveries, .. } => deliveries,
            Disposition::Dropped | Disposition::DeadLetter { .. } => &[],
        }
    }

    /// The dead letter it makes, as (reason, detail).
    pub fn dead_letter(&self) -> Option<(&str, &Value)> {
        match self {
            Disposition::DeadLetter { reason, detail } => Some((reason, detail)),
            Disposition::Partial { detail, .. } => Some(("rejected", detail)),
            Disposition::Deliver(_) | Disposition::Dropped => None,
        }
    }
}

/// One emitted event to deliver.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The destination's name.
    pub destination: String,
    /// Deliveries with the same key reach the destination in queue order.
    pub entity_key: String,
    /// Sent as `Idempotency-Key`; the same for every attempt and replay of this output.
    pub idempotency_key: String,
    /// Sent as `X-Correlation-Id`.
    pub correlation_id: String,
    /// The emitted event as JSON text; its payload is the request body.
    pub output: String,
    /// The emitted event's id (`X-Sluice-Event-Id`).
    pub output_id: String,
    /// Where the payload starts in `output`; it runs to the closing brace.
    /// Delivery sends those bytes as they are, without parsing `output`.
    pub payload_at: Option<usize>,
    /// The emitted event's kind.
    pub kind: String,
}

impl NewDelivery {
    /// Where `payload` sits in `output`, the text of an event whose last
    /// field is that payload (as `EventJson` writes it); `None` if it does not.
    pub fn payload_offset(output: &str, payload: &str) -> Option<usize> {
        let at = output.len().checked_sub(payload.len() + 1)?;
        (output.get(at..output.len() - 1) == Some(payload)).then_some(at)
    }
}

/// The `Idempotency-Key` of one output: a digest of where it goes, what it
/// came from and what it says. Retries and plain replays send the same
/// key; a re-transform that changes the output gets a new one, while an
/// unchanged output (a sibling of a fan-out) keeps its key.
pub fn idempotency_key(
    destination: &str,
    tenant: &str,
    channel: &str,
    event_id: &str,
    output: &str,
) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in [destination, tenant, channel, event_id, output] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..16])
}

/// A delivery taken from the outbox.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Outbox position.
    pub seq: i64,
    /// The destination's name.
    pub destination: String,
    /// The channel that produced it.
    pub channel: String,
    /// The tenant.
    pub tenant: String,
    /// The input event's id.
    pub event_id: String,
    /// The entity (SKU) whose order is kept.
    pub entity_key: String,
    /// `Idempotency-Key`.
    pub idempotency_key: String,
    /// `X-Correlation-Id`.
    pub correlation_id: String,
    /// The emitted event as JSON text.
    pub output: String,
    /// The emitted event's id; `None` in rows older than migration 4.
    pub output_id: Option<String>,
    /// Where the payload starts in `output` (see [`NewDelivery::payload_at`]).
    pub payload_at: Option<usize>,
    /// Attempts made so far.
    pub attempts: u32,
    /// `module@version` of every step that produced it (a JSON array).
    pub versions: String,
    /// When it entered the outbox (ms since the Unix epoch).
    pub created_ms: i64,
    /// When its input event was ingested.
    pub received_ms: i64,
    /// Resent by hand from a dead letter: sent even if unchanged.
    pub replayed: bool,
    /// The emitted event's kind (`inventory`, `product`…), for the
    /// destination's `priority`; empty in rows stored before it was kept.
    pub kind: String,
}

/// Superseded deliveries, per (destination, channel), counted by the store
/// until the destination's worker takes them for its metrics.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    counts: std::sync::Mutex<std::collections::HashMap<(String, String), u64>>,
    /// The superseded deliveries themselves, for their events' stories
    /// (at most [`MAX_SUPERSEDED_KEPT`] waiting; past it only counted).
    events: std::sync::Mutex<Vec<SupersededDelivery>>,
}

/// One delivery a newer one of its key replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupersededDelivery {
    /// Its destination.
    pub destination: String,
    /// Its channel.
    pub channel: String,
    /// Its tenant.
    pub tenant: String,
    /// Its input event.
    pub event_id: String,
    /// Its entity key.
    pub entity_key: String,
}

/// Most superseded deliveries kept waiting for their stories.
const MAX_SUPERSEDED_KEPT: usize = 10_000;

impl Tally {
    pub(crate) fn add(&self, destination: &str, channel: &str, n: u64) {
        if n > 0 {
            *self
                .counts
                .lock()
                .expect("tally lock")
                .entry((destination.to_string(), channel.to_string()))
                .or_default() += n;
        }
    }

    /// Counts one superseded delivery and keeps it for its story.
    pub(crate) fn add_one(&self, delivery: SupersededDelivery) {
        self.add(&delivery.destination, &delivery.channel, 1);
        let mut events = self.events.lock().expect("tally lock");
        if events.len() < MAX_SUPERSEDED_KEPT {
            events.push(delivery);
        }
    }

    pub(crate) fn take(&self, destination: &str) -> Vec<(String, u64)> {
        let mut counts = self.counts.lock().expect("tally lock");
        let keys: Vec<_> = counts.keys().filter(|(d, _)| d == destination).cloned().collect();
        keys.into_iter()
            .filter_map(|key| counts.remove(&key).map(|n| (key.1, n)))
            .collect()
    }

    pub(crate) fn take_events(&self, destination: &str) -> Vec<SupersededDelivery> {
        let mut events = self.events.lock().expect("tally lock");
        let (taken, kept) = std::mem::take(&mut *events)
            .into_iter()
            .partition(|d| d.destination == destination);
        *events = kept;
        taken
    }
}

/// The fingerprint of one output as sent: a digest of its method, URL and body.
pub fn fingerprint(method: &str, url: &str, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update([0]);
    hasher.update(url.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hex::encode(&hasher.finalize()[..16])
}

/// One delivery attempt that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
    /// The HTTP status, if the destination answered.
    pub status: Option<u16>,
    /// A snippet of the response body, or the connection error.
    pub detail: String,
}

/// What became of one delivery attempt.
#[derive(Debug, Clone)]
pub enum AttemptResult {
    /// The destination accepted it: remove it from the outbox, and keep
    /// what was sent's fingerprint when the destination skips unchanged
    /// outputs.
    Delivered {
        /// The digest of the method, URL and body sent.
        fingerprint: Option<String>,
    },
    /// Not sent: the destination accepted the same output last time.
    Unchanged,
    /// Try again at `next_ms`.
    Retry {
        /// The failed attempt.
        attempt: Attempt,
        /// When to try again (ms since the Unix epoch).
        next_ms: i64,
    },
    /// Give up: move it to dead letters.
    DeadLetter {
        /// The last attempt.
        attempt: Attempt,
        /// Why it is given up (`rejected-by-destination`, `attempts-exhausted`, `too-old`).
        reason: String,
    },
}

/// A dead letter as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetterSummary {
    /// Its id, for `show`, `replay` and `purge`.
    pub id: i64,
    /// The tenant.
    pub tenant: String,
    /// The channel.
    pub channel: String,
    /// The destination, for delivery failures.
    pub destination: Option<String>,
    /// The input event's id.
    pub event_id: String,
    /// `transform` or `delivery`.
    pub stage: String,
    /// Why: `rejected`, `fault`, `rejected-by-destination`, `attempts-exhausted`, `too-old`.
    pub reason: String,
    /// When it was dead-lettered (ms since the Unix epoch).
    pub created_ms: i64,
}

/// A dead letter with everything kept about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The listing fields.
    #[serde(flatten)]
    pub summary: DeadLetterSummary,
    /// The input event, as ingested.
    pub original: Value,
    /// The emitted event that could not be delivered (delivery stage only).
    pub output: Option<Value>,
    /// Violations or fault (transform stage).
    pub detail: Value,
    /// `module@version` of every step that produced it.
    pub versions: Vec<String>,
    /// Every failed delivery attempt.
    pub attempts: Vec<Attempt>,
}

/// Which dead letters a listing or purge covers.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only this tenant's.
    pub tenant: Option<String>,
    /// Only this channel's.
    pub channel: Option<String>,
    /// At most this many (listing only).
    pub limit: Option<u32>,
    /// Only those with a smaller id: the next page of a listing (listing only).
    pub before: Option<i64>,
}

/// How a dead letter is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Deliver the stored output again (delivery-stage letters only).
    Resend,
    /// Run the original event through the channel's current pipeline.
    Retransform,
}

/// The outcome of a replay request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayResult {
    /// Requeued; the letter is gone.
    Queued,
    /// No such letter.
    NotFound,
    /// The letter has no output to resend (it failed in its transform).
    NothingToResend,
}

/// Events waiting, per channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Depth {
    /// Waiting for their transform.
    pub to_transform: u64,
    /// Waiting for delivery (including retries).
    pub to_deliver: u64,
    /// Dead letters kept.
    pub dead_letters: u64,
}

impl Depth {
    /// Everything the channel keeps on disk for its tenant: what the storage quota counts.
    pub fn stored(&self) -> u64 {
        self.to_transform + self.to_deliver + self.dead_letters
    }
}

/// The durable queue between ingest, transform and delivery.
pub trait Queue: Send + Sync {
    /// Answers when the store can be read: the readiness probe.
    fn ping(&self) -> Result<(), StoreError>;
    /// Stores events and queues each for its channels, in one durable commit;
    /// an id already stored for its tenant is a duplicate and queues nothing.
    fn ingest(&self, events: Vec<Ingest>) -> Result<Vec<Receipt>, StoreError>;
    /// The oldest events waiting in `channel`'s queue after position
    /// `after_seq` (0: from the start; a worker passes the last position it
    /// has in hand, so it can read the next batch while one is being recorded).
    fn pending(&self, channel: &str, after_seq: i64, limit: usize) -> Result<Vec<Pending>, StoreError>;
    /// Records transform results: removes them from the queue and moves each
    /// to the outbox or dead letters, atomically.
    fn transformed(&self, results: Vec<Transformed>) -> Result<(), StoreError>;
    /// Deliveries for `destination` that are due at `now_ms`: for each
    /// entity key only the oldest, or with `coalesce` only the newest (its
    /// key's turn is its oldest's), and none from a switched-off channel.
    /// A delivery settled for good (delivered, unchanged or dead-lettered)
    /// supersedes the older ones of its key still queued.
    fn due(
        &self,
        destination: &str,
        now_ms: i64,
        limit: usize,
        coalesce: bool,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// Deliveries to `destination` superseded since the last call, per channel.
    fn take_superseded(&self, destination: &str) -> Vec<(String, u64)>;
    /// The fingerprint of the last output `destination` accepted for each
    /// `(channel, entity key)`, in order; `None` where there is none.
    fn fingerprints(
        &self,
        destination: &str,
        keys: &[(String, String)],
    ) -> Result<Vec<Option<String>>, StoreError>;
    /// Deliveries to `destination` that failed at least once and wait for a retry.
    fn retry_backlog(&self, destination: &str) -> Result<u64, StoreError>;
    /// Raised when a delivery to `destination` arrives from outside this
    /// process (a shared store pushes them); `None`: poll.
    fn due_signal(&self, destination: &str) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        let _ = destination;
        None
    }
    /// The earliest time a delivery to `destination` is due, if any waits.
    fn next_due_ms(&self, destination: &str) -> Result<Option<i64>, StoreError>;
    /// Records delivery attempts.
    fn attempted(&self, results: Vec<(Delivery, AttemptResult)>) -> Result<(), StoreError>;
    /// Sets a channel's switch. `from_config` marks the config's value, which
    /// only applies when it differs from the one last applied.
    fn set_enabled(&self, channel: &str, enabled: bool, from_config: bool) -> Result<bool, StoreError>;
    /// Switches a channel off because its circuit breaker opened, with why;
    /// switching it on again clears the reason.
    fn trip(&self, channel: &str, reason: &str) -> Result<(), StoreError>;
    /// Why the channel's circuit breaker holds it off, if it does.
    fn tripped(&self, channel: &str) -> Result<Option<String>, StoreError>;
    /// Dead letters, newest first.
    fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterSummary>, StoreError>;
    /// One dead letter in full.
    fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StoreError>;
    /// Deletes one dead letter; false if there was none.
    fn purge_dead_letter(&self, id: i64) -> Result<bool, StoreError>;
    /// Deletes every dead letter matching; returns how many.
    fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64, StoreError>;
    /// Requeues a dead letter and deletes it, atomically.
    fn replay(&self, id: i64, how: Replay) -> Result<ReplayResult, StoreError>;
    /// Events waiting for `channel`.
    fn depth(&self, channel: &str) -> Result<Depth, StoreError>;
    /// Forgets ids of events ingested before `before_ms` that nothing still
    /// needs: the window in which a redelivered webhook is recognised.
    fn forget_before(&self, before_ms: i64) -> Result<u64, StoreError>;

    /// Events of the ingest log (kept for the idempotency window), in
    /// order of receipt, either way, from `query.from`.
    fn stored_events(&self, query: &StoredQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let _ = query;
        Err(StoreError::Unsupported("read back ingested events"))
    }
    /// Whether a destination's rate limit is shared with other sidecars
    /// through the store ([`Queue::take_rate_token`]); otherwise each
    /// sidecar paces itself.
    fn shares_rate(&self) -> bool {
        false
    }
    /// Takes one send from `destination`'s shared budget of one send per
    /// `interval`, at most `burst` at once; otherwise how long to wait.
    fn take_rate_token(
        &self,
        destination: &str,
        interval: std::time::Duration,
        burst: u32,
    ) -> Result<Result<(), std::time::Duration>, StoreError> {
        let _ = (destination, interval, burst);
        Ok(Ok(()))
    }
    /// Counts a channel's consecutive module faults across every sidecar
    /// sharing the store: resets the count if the batch had a success, then
    /// adds its trailing faults; `None` for a store only this sidecar uses
    /// (which counts in memory).
    fn count_faults(&self, channel: &str, trailing: u32, succeeded: bool) -> Result<Option<u32>, StoreError> {
        let _ = (channel, trailing, succeeded);
        Ok(None)
    }
    /// Pauses `destination` for every sidecar until `until_ms` (a
    /// `Retry-After`); a store used by one sidecar keeps nothing.
    fn pause_destination(&self, destination: &str, until_ms: i64) -> Result<(), StoreError> {
        let _ = (destination, until_ms);
        Ok(())
    }
    /// Until when another sidecar paused `destination`, if it did.
    fn destination_paused_until(&self, destination: &str) -> Result<Option<i64>, StoreError> {
        let _ = destination;
        Ok(None)
    }
    /// Moves every event `channel` (of `tenant`) still holds (to transform
    /// or to deliver) into dead letters (reason `discarded`); how many.
    fn discard_channel(&self, tenant: &str, channel: &str) -> Result<u64, StoreError>;
    /// The deliveries of `destination` superseded since it was last asked,
    /// for their events' stories (counted by [`Queue::take_superseded`] too).
    fn take_superseded_deliveries(&self, destination: &str) -> Vec<SupersededDelivery>;
    /// Appends entries to events' stories (see [`crate::observe::story`]);
    /// `config` says how long and how much of them the store keeps.
    fn append_stories(
        &self,
        entries: Vec<crate::observe::story::StoryEntry>,
        config: &crate::observe::story::StoriesConfig,
    ) -> Result<(), StoreError>;
    /// One event's story entries, oldest first: its newest `limit`.
    fn event_story(
        &self,
        tenant: &str,
        event_id: &str,
        limit: usize,
    ) -> Result<Vec<crate::observe::story::StoryEntry>, StoreError>;
    /// The newest entry of each of the newest `limit` events whose
    /// deliveries had entity key `key` (in `channel`, if given), newest first.
    fn entity_stories(
        &self,
        tenant: &str,
        key: &str,
        channel: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::observe::story::StoryEntry>, StoreError>;
    /// Removes stories past `config`'s time and size; how many entries went.
    /// A store whose streams keep their own limits removes nothing here.
    fn prune_stories(&self, config: &crate::observe::story::StoriesConfig) -> Result<u64, StoreError> {
        let _ = config;
        Ok(0)
    }
    /// The durable state of `channel`'s steps (contract 0.2), for one
    /// pipeline run to read, and what `tenant`'s state holds for its quota.
    /// Writes come back with [`Transformed::state`].
    fn state(
        &self,
        tenant: &str,
        channel: &str,
    ) -> Result<
        (
            std::sync::Arc<dyn sluice_engine::state::StateStore>,
            sluice_engine::state::StateUsage,
        ),
        StoreError,
    > {
        let _ = (tenant, channel);
        Err(StoreError::Unsupported(
            "keep transform state (contract 0.2) yet: run a stateful pipeline on the SQLite store",
        ))
    }
    /// Forgets the state (contract 0.2) of a deleted channel.
    fn forget_state(&self, tenant: &str, channel: &str) -> Result<(), StoreError> {
        let _ = (tenant, channel);
        Ok(())
    }
    /// Forgets the fingerprints kept for `skip-unchanged` of a deleted
    /// destination or channel (whichever is given), so one made again
    /// under the name starts with none.
    fn forget_fingerprints(&self, destination: Option<&str>, channel: Option<&str>)
    -> Result<(), StoreError>;
    /// Sets up what a channel made while the sidecar runs needs: for a
    /// shared store, the consumers of its queue and of its deliveries to
    /// `destination`. A store only this sidecar uses needs nothing.
    fn add_route(&self, channel: &str, destination: &str) -> Result<(), StoreError> {
        let _ = (channel, destination);
        Ok(())
    }
    /// Undoes [`Queue::add_route`] for a deleted channel (every destination
    /// of it): a shared store stops pulling for it and deletes its
    /// consumers. A store only this sidecar uses needs nothing.
    fn drop_route(&self, channel: &str) -> Result<(), StoreError> {
        let _ = channel;
        Ok(())
    }
    /// Changes that other sidecars made to shared state, for a store that
    /// is shared; `None` for one that only this sidecar uses.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<SharedChange>> {
        None
    }
}

/// A change to state that several sidecars share, seen by each of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedChange {
    /// A channel was switched on or off, or its circuit breaker opened.
    Switch {
        /// The channel.
        channel: String,
        /// Whether it is on.
        enabled: bool,
        /// Why the circuit breaker holds it off, if it does.
        tripped: Option<String>,
    },
    /// A channel's activated pipelines changed (activation or rollback).
    Pipeline {
        /// The channel.
        channel: String,
    },
    /// A tenant was created.
    Tenant(String),
    /// An entry tenants keep through the API was made, changed or deleted.
    Setting {
        /// Its kind (`source`).
        kind: String,
    },
    /// A token was issued.
    Token {
        /// Its tenant.
        tenant: String,
        /// SHA-256 of the token, in hex.
        sha256: String,
    },
}

/// One stored version of a tenant's module (the bytes live in the data
/// dir as `modules/<version>.wasm`, named by their SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleVersion {
    /// The owning tenant.
    pub tenant: String,
    /// The module's name.
    pub name: String,
    /// SHA-256 of the component, in hex.
    pub version: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was uploaded (ms since the Unix epoch).
    pub created_ms: i64,
}

/// One entry a tenant keeps through the API, as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The owning tenant.
    pub tenant: String,
    /// Its name, unique per tenant and kind.
    pub name: String,
    /// Its settings, as JSON text.
    pub spec: String,
}

/// Tenants, tokens, uploaded modules, channels' activated pipelines, and
/// the entries tenants keep through the API.
pub trait Registry: Send + Sync {
    /// Tenants created through the admin API.
    fn tenants(&self) -> Result<Vec<String>, StoreError>;
    /// Creates a tenant; false if it existed.
    fn add_tenant(&self, name: &str) -> Result<bool, StoreError>;
    /// Token hashes created through the admin API, with their tenants.
    fn tokens(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Stores a token's hash for a tenant.
    fn add_token(&self, tenant: &str, sha256: &str) -> Result<(), StoreError>;
    /// Records a module version; false if that tenant already had it under that name.
    fn add_module(&self, module: &ModuleVersion) -> Result<bool, StoreError>;
    /// A tenant's module versions (of one name, or all), oldest first.
    fn modules(&self, tenant: &str, name: Option<&str>) -> Result<Vec<ModuleVersion>, StoreError>;
    /// Makes `spec` (a pipeline as JSON) the channel's active pipeline.
    fn push_pipeline(&self, channel: &str, spec: &str) -> Result<(), StoreError>;
    /// Drops the channel's active pipeline. `None`: there was none to drop;
    /// `Some(None)`: back to the config's pipeline; `Some(Some(spec))`: back to that one.
    fn pop_pipeline(&self, channel: &str) -> Result<Option<Option<String>>, StoreError>;
    /// The channel's active pipeline, if one was activated.
    fn active_pipeline(&self, channel: &str) -> Result<Option<String>, StoreError>;
    /// Every entry of one kind that tenants keep through the API
    /// (`source`, and a poll source's `poll-cursor`), oldest first.
    fn settings(&self, kind: &str) -> Result<Vec<Setting>, StoreError>;
    /// One entry, if it is kept.
    fn setting(&self, kind: &str, tenant: &str, name: &str) -> Result<Option<String>, StoreError>;
    /// Creates or replaces an entry.
    fn put_setting(&self, kind: &str, tenant: &str, name: &str, spec: &str) -> Result<(), StoreError>;
    /// Deletes an entry; false if there was none.
    fn delete_setting(&self, kind: &str, tenant: &str, name: &str) -> Result<bool, StoreError>;
    /// Takes or keeps the lease `name` for `holder` for `ttl`: false while
    /// another holder's lease runs. A store only this sidecar uses has one
    /// holder, which always has the lease.
    fn take_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        let _ = (name, holder, ttl);
        Ok(true)
    }
    /// Shares an accepted module's bytes with other sidecars (a shared
    /// registry keeps them; the SQLite one has the data dir's file).
    fn share_module(&self, version: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let _ = (version, bytes);
        Ok(())
    }
    /// A module's bytes as shared by another sidecar, if the registry keeps them.
    fn shared_module(&self, version: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = version;
        Ok(None)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs blocking store work off the async threads; a store error or a
/// failed task comes back as its text (workers log it).
pub(crate) async fn in_store<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|err| err.to_string()),
        Err(join) => Err(format!("a store task failed: {join}")),
    }
}
