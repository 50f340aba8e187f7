//! Discarding a deleted channel's events on JetStream: every batch still
//! waiting for its transform and every delivery still waiting becomes a
//! dead letter (reason `discarded`), and only then are those messages
//! purged. A crash half-way leaves a message and its letter both; the
//! repeat stores no letter twice, since each letter's `Nats-Msg-Id` is the
//! stream position of what it holds.

use async_nats::jetstream::{message::StreamMessage, stream};
use serde::Deserialize;
use serde_json::Value;

use super::dead_letters::DeadRecord;
use super::ingest::decode_batch;
use super::latest::next_on_subject;
use super::outbox::OutRecord;
use super::queue::msg_id;
use super::{NatsError, NatsStore, failed, names};
use crate::store::{StoreError, now_ms};

/// Why the letters exist, as each one's detail says.
const DETAIL: &str = "the channel was deleted with ?discard=true";

/// What a discarded event's letter needs of its stored text.
#[derive(Deserialize)]
struct Stored {
    #[serde(default)]
    id: String,
}

/// Messages read and letters stored per round; each round has its own call
/// timeout, and what it read is purged before the next.
const ROUND: usize = 1000;

/// Which queue a round reads.
#[derive(Clone, Copy)]
enum Side {
    /// Batches waiting for their transform.
    Inbound,
    /// Deliveries waiting.
    Outbound,
}

impl NatsStore {
    /// [`crate::store::Queue::discard_channel`]: how many events became dead letters.
    pub(super) fn discard_channel_events(&self, tenant: &str, channel: &str) -> Result<u64, StoreError> {
        // What this node holds of the channel is given up: it is purged below.
        self.transform.lock().expect("transform lock").remove(channel);
        for held in self.deliveries.lock().expect("deliveries lock").values_mut() {
            held.retain(|_, delivery| delivery.record.channel != channel);
        }
        let mut discarded = 0;
        for queue in [Side::Inbound, Side::Outbound] {
            // Up to what is stored now: a node that still queues for the
            // channel (it learns of the delete a moment later) cannot keep
            // this going.
            let stream = match queue {
                Side::Inbound => self.inbound.clone(),
                Side::Outbound => self.outbound.clone(),
            };
            let last = self.block("read a stream's last position", async move {
                let mut stream = stream;
                stream
                    .info()
                    .await
                    .map(|info| info.state.last_sequence)
                    .map_err(|e| failed("read a stream's last position", e))
            })?;
            let mut start = 1;
            while start <= last {
                let round = self.discard_round(queue, tenant, channel, start, last);
                let Some((last, letters)) = self.block("discard a channel's events", round)? else {
                    break;
                };
                discarded += letters;
                start = last + 1;
            }
        }
        Ok(discarded)
    }

    /// Up to [`ROUND`] messages of `channel` on `queue` from stream
    /// position `start` on, made dead letters and purged: the last position
    /// read and how many letters were made; `None` when none was left.
    async fn discard_round(
        &self,
        queue: Side,
        tenant: &str,
        channel: &str,
        start: u64,
        last: u64,
    ) -> Result<Option<(u64, u64)>, NatsError> {
        let (stream, subject) = match queue {
            Side::Inbound => (&self.inbound, names::inbound(channel)),
            Side::Outbound => (&self.outbound, names::outbound_of_channel(channel)),
        };
        let mut read = read_some(stream, &subject, start).await?;
        read.retain(|(seq, _)| *seq <= last);
        let Some(last) = read.last().map(|(seq, _)| *seq) else {
            return Ok(None);
        };
        let mut letters = Vec::new();
        for (seq, message) in &read {
            match queue {
                Side::Inbound => {
                    let decoded = decode_batch(&message.payload);
                    // An undecided request's events count: nothing vanishes.
                    let events = self
                        .live_events(Some(&message.headers), decoded.clone())
                        .await?
                        .unwrap_or(decoded);
                    for (index, event) in events.into_iter().enumerate() {
                        letters.push((
                            format!("discard.in.{seq}.{index}"),
                            inbound_letter(tenant, channel, event),
                        ));
                    }
                }
                Side::Outbound => {
                    let letter = match serde_json::from_slice::<OutRecord>(&message.payload) {
                        Ok(record) => outbound_letter(record),
                        // Unreadable: kept as it is, so nothing vanishes.
                        Err(_) => inbound_letter(
                            tenant,
                            channel,
                            String::from_utf8_lossy(&message.payload).into_owned(),
                        ),
                    };
                    letters.push((format!("discard.out.{seq}"), letter));
                }
            }
        }
        let made = letters.len() as u64;
        let letters = letters
            .into_iter()
            .map(|(id, letter)| {
                let subject = names::dead(Some(&letter.tenant), Some(&letter.channel));
                (subject, msg_id(id), self.fit(letter))
            })
            .collect();
        self.store_in_order(letters).await?;
        stream
            .purge()
            .filter(subject)
            .sequence(last + 1)
            .await
            .map_err(|e| failed("purge a channel's messages", e))?;
        Ok(Some((last, made)))
    }
}

/// The letter of an event that was waiting for its transform.
fn inbound_letter(tenant: &str, channel: &str, event: String) -> DeadRecord {
    let stored: Stored = serde_json::from_str(&event).unwrap_or(Stored { id: String::new() });
    DeadRecord {
        // The channel's tenant: a letter its owner could not see would vanish.
        tenant: tenant.to_string(),
        channel: channel.to_string(),
        destination: None,
        event_id: stored.id,
        stage: "transform".into(),
        reason: "discarded".into(),
        created_ms: now_ms(),
        original: event,
        detail: Value::String(DETAIL.into()),
        versions: Vec::new(),
        attempts: Vec::new(),
        delivery: None,
    }
}

/// The letter of a delivery that was waiting.
fn outbound_letter(record: OutRecord) -> DeadRecord {
    DeadRecord {
        tenant: record.tenant.clone(),
        channel: record.channel.clone(),
        destination: Some(record.destination.clone()),
        event_id: record.event_id.clone(),
        stage: "delivery".into(),
        reason: "discarded".into(),
        created_ms: now_ms(),
        original: String::new(),
        detail: Value::String(DETAIL.into()),
        versions: serde_json::from_str(&record.versions).unwrap_or_default(),
        attempts: Vec::new(),
        delivery: Some(record),
    }
}

/// Up to [`ROUND`] messages on `subject` from stream position `start` on,
/// with their positions (a work-queue stream takes no second consumer on a
/// subject: a direct get each).
async fn read_some(
    stream: &stream::Stream,
    subject: &str,
    start: u64,
) -> Result<Vec<(u64, StreamMessage)>, NatsError> {
    let (mut read, mut at) = (Vec::new(), start);
    while read.len() < ROUND {
        let Some(message) = next_on_subject(stream, subject, at).await? else {
            break;
        };
        at = message.sequence + 1;
        read.push((message.sequence, message));
    }
    Ok(read)
}
