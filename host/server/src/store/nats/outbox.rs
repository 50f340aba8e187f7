//! The outbox on JetStream: transform results stored as `SLUICE_OUT` deliveries, deliveries held while due, and delivery attempts recorded.

use std::collections::HashSet;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures_util::future::{join_all, try_join_all};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::dead_letters::DeadRecord;
use super::queue::{HEADROOM, msg_id};
use super::{NatsError, NatsStore, failed, names};
use crate::store::*;

/// A delivery this node holds: its partition waits for it.
pub(super) struct HeldDelivery {
    pub(super) message: jetstream::Message,
    pub(super) record: OutRecord,
    pub(super) delivery: Delivery,
    pub(super) history: Vec<Attempt>,
    pub(super) next_ms: i64,
    /// Coalescing: the position of the newer message of the key sent in
    /// its place, whose record `record` and `delivery` now hold.
    pub(super) replaced_up_to: Option<u64>,
    /// Coalescing: the last position looked at for a newer message of the key.
    pub(super) looked_up_to: u64,
}

/// What `sluice-attempts` keeps of a delivery that failed: its attempts and
/// when it is due again, so a node that takes it over keeps its backoff.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Retries {
    history: Vec<Attempt>,
    next_ms: i64,
}

/// What a `SLUICE_OUT` message holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct OutRecord {
    pub(super) destination: String,
    pub(super) channel: String,
    pub(super) tenant: String,
    pub(super) event_id: String,
    pub(super) entity_key: String,
    pub(super) idempotency_key: String,
    pub(super) correlation_id: String,
    pub(super) output: String,
    pub(super) output_id: String,
    pub(super) payload_at: Option<usize>,
    pub(super) versions: String,
    pub(super) original: String,
    pub(super) created_ms: i64,
    pub(super) received_ms: i64,
    /// Resent by hand from a dead letter.
    #[serde(default)]
    pub(super) replayed: bool,
    /// The emitted event's kind, for the destination's `priority`.
    #[serde(default)]
    pub(super) kind: String,
}

impl OutRecord {
    /// It, as a superseded delivery.
    fn superseded(&self) -> crate::store::SupersededDelivery {
        crate::store::SupersededDelivery {
            destination: self.destination.clone(),
            channel: self.channel.clone(),
            tenant: self.tenant.clone(),
            event_id: self.event_id.clone(),
            entity_key: self.entity_key.clone(),
        }
    }
}

/// A message to store: its subject, headers and payload.
type Outgoing = (String, HeaderMap, Bytes);

/// A delivery message taken from an inbox: its stream position, its
/// record, and the attempts made so far.
type Arrived = (u64, jetstream::Message, OutRecord, Retries);

/// One attempt applied to the delivery this node holds, to be recorded.
struct AttemptToRecord {
    delivery: Delivery,
    result: AttemptResult,
    message: jetstream::Message,
    record: OutRecord,
    retries: Retries,
    /// The newer message of the key that was sent in its place.
    replaced_up_to: Option<u64>,
}

/// The dead letter of a transform result, made at `now`.
fn transform_dead_letter(result: &Transformed, reason: &str, detail: Value, now: i64) -> DeadRecord {
    DeadRecord {
        tenant: result.tenant.clone(),
        channel: result.channel.clone(),
        destination: None,
        event_id: result.event_id.clone(),
        stage: "transform".into(),
        reason: reason.into(),
        created_ms: now,
        original: result.original.clone(),
        detail,
        versions: result.versions.clone(),
        attempts: Vec::new(),
        delivery: None,
    }
}

/// The delivery record of one output of a transform result, made at `now`.
fn out_record(result: &Transformed, new: &NewDelivery, now: i64) -> OutRecord {
    OutRecord {
        destination: new.destination.clone(),
        channel: result.channel.clone(),
        tenant: result.tenant.clone(),
        event_id: result.event_id.clone(),
        entity_key: new.entity_key.clone(),
        idempotency_key: new.idempotency_key.clone(),
        correlation_id: new.correlation_id.clone(),
        output: new.output.clone(),
        output_id: new.output_id.clone(),
        payload_at: new.payload_at,
        versions: serde_json::to_string(&result.versions).unwrap_or_default(),
        original: result.original.clone(),
        created_ms: now,
        received_ms: result.received_ms,
        replayed: false,
        kind: new.kind.clone(),
    }
}

/// The delivery handed to the delivery worker for a held record.
fn delivery_of(seq: u64, record: &OutRecord, retries: &Retries) -> Delivery {
    Delivery {
        seq: seq as i64,
        destination: record.destination.clone(),
        channel: record.channel.clone(),
        tenant: record.tenant.clone(),
        event_id: record.event_id.clone(),
        entity_key: record.entity_key.clone(),
        idempotency_key: record.idempotency_key.clone(),
        correlation_id: record.correlation_id.clone(),
        output: record.output.clone(),
        output_id: Some(record.output_id.clone()),
        payload_at: record.payload_at,
        attempts: retries.history.len() as u32,
        versions: record.versions.clone(),
        created_ms: record.created_ms,
        received_ms: record.received_ms,
        replayed: record.replayed,
        kind: record.kind.clone(),
    }
}

/// The dead letter of a delivery given up at `now`.
fn delivery_dead_letter(record: &OutRecord, reason: &str, retries: &Retries, now: i64) -> DeadRecord {
    // The delivery record holds the original and the output once.
    DeadRecord {
        tenant: record.tenant.clone(),
        channel: record.channel.clone(),
        destination: Some(record.destination.clone()),
        event_id: record.event_id.clone(),
        stage: "delivery".into(),
        reason: reason.to_string(),
        created_ms: now,
        original: String::new(),
        detail: Value::Null,
        versions: serde_json::from_str(&record.versions).unwrap_or_default(),
        attempts: retries.history.clone(),
        delivery: Some(record.clone()),
    }
}

impl NatsStore {
    /// [`Queue::transformed`]: stores the held batch's deliveries and dead
    /// letters, then acknowledges the batch and lets it go.
    pub(super) fn record_transformed(&self, results: Vec<Transformed>) -> Result<(), StoreError> {
        let Some(channel) = results.first().map(|r| r.channel.clone()) else {
            return Ok(());
        };
        let (message, stream_seq) = self.covered_batch(&channel, &results)?;
        let now = now_ms();
        let mut messages = Vec::new();
        for (index, result) in results.iter().enumerate() {
            self.result_messages(result, index, stream_seq, now, &mut messages);
        }
        self.block(
            "store transform results",
            self.store_and_ack(messages, &results, stream_seq, &message),
        )?;
        self.transform.lock().expect("transform lock").remove(&channel);
        Ok(())
    }

    /// The message and stream position of `channel`'s held batch, if
    /// `results` cover every event of it.
    fn covered_batch(
        &self,
        channel: &str,
        results: &[Transformed],
    ) -> Result<(jetstream::Message, u64), StoreError> {
        let held = self.transform.lock().expect("transform lock");
        let Some(held) = held.get(channel) else {
            return Err(NatsError::Failed {
                what: "store transform results",
                detail: "the batch is no longer held; it is transformed again".into(),
            }
            .into());
        };
        // The batch is one message: it is acknowledged only with a result for every event.
        let covered: HashSet<i64> = results.iter().map(|r| r.seq).collect();
        if held.events.iter().any(|e| !covered.contains(&e.seq)) {
            return Err(NatsError::Failed {
                what: "store transform results",
                detail: "results are missing for part of the batch; it is transformed again".into(),
            }
            .into());
        }
        Ok((held.message.clone(), held.stream_seq))
    }

    /// Adds what one result (the `index`th of the batch at `stream_seq`)
    /// stores to `messages`: a delivery per output, and a dead letter of
    /// what was rejected.
    fn result_messages(
        &self,
        result: &Transformed,
        index: usize,
        stream_seq: u64,
        now: i64,
        messages: &mut Vec<Outgoing>,
    ) {
        let dead_subject = names::dead(Some(&result.tenant), Some(&result.channel));
        for (output, new) in result.disposition.deliveries().iter().enumerate() {
            let record = out_record(result, new, now);
            let payload = serde_json::to_vec(&record).expect("a record serialises");
            if payload.len() + HEADROOM > self.max_payload {
                // Never stored as a delivery: it would stop the channel for good.
                let detail =
                    serde_json::json!({"output-bytes": payload.len(), "max-payload": self.max_payload});
                let letter = transform_dead_letter(result, "too-large-for-queue", detail, now);
                let id = format!("t.{stream_seq}.{index}.{output}");
                messages.push((dead_subject.clone(), msg_id(id), self.fit(letter)));
                continue;
            }
            let subject = names::outbound(
                &new.destination,
                names::partition(&new.entity_key),
                &result.channel,
            );
            // The same batch redone yields the same ids; a replay is a new batch.
            let id = format!("{}.{stream_seq}", new.idempotency_key);
            messages.push((subject, msg_id(id), payload.into()));
        }
        if let Some((reason, detail)) = result.disposition.dead_letter() {
            let letter = transform_dead_letter(result, reason, detail.clone(), now);
            messages.push((
                dead_subject,
                msg_id(format!("t.{stream_seq}.{index}")),
                self.fit(letter),
            ));
        }
    }

    /// Stores a batch's messages, then its state writes and what they
    /// change in usage, then acknowledges the batch.
    async fn store_and_ack(
        &self,
        messages: Vec<Outgoing>,
        results: &[Transformed],
        stream_seq: u64,
        message: &jetstream::Message,
    ) -> Result<(), NatsError> {
        self.store_in_order(messages).await?;
        if results.iter().any(|result| !result.state.is_empty()) {
            let state = self.state_messages(results, stream_seq).await?;
            self.store_in_order(state).await?;
            self.add_usage(results, stream_seq).await?;
        }
        message
            .ack()
            .await
            .map_err(|e| failed("acknowledge a transformed batch", e))?;
        self.purge_deleted(results, stream_seq).await;
        Ok(())
    }

    /// [`Queue::due`]: holds what arrived in `destination`'s inbox, and
    /// returns the held deliveries due at `now_ms` of channels switched on.
    pub(super) fn due_deliveries(
        &self,
        destination: &str,
        now_ms: i64,
        limit: usize,
        coalesce: bool,
    ) -> Result<Vec<Delivery>, StoreError> {
        // Copies: the messages stay in the inbox, kept alive, until they are held.
        let arrived = self
            .inboxes
            .lock()
            .expect("inbox lock")
            .get(destination)
            .cloned()
            .unwrap_or_default();
        let taken = arrived.len();
        let fetched = self.block("take deliveries", self.read_arrived(arrived, coalesce))?;
        let mut deliveries = self.deliveries.lock().expect("deliveries lock");
        if let Some(inbox) = self.inboxes.lock().expect("inbox lock").get_mut(destination) {
            // Only ever appended to meanwhile: the first `taken` are the ones read.
            inbox.drain(..taken.min(inbox.len()));
        }
        let held = deliveries.entry(destination.to_string()).or_default();
        for (seq, message, record, retries) in fetched {
            let delivery = delivery_of(seq, &record, &retries);
            held.insert(
                seq,
                HeldDelivery {
                    message,
                    record,
                    delivery,
                    history: retries.history,
                    next_ms: retries.next_ms,
                    replaced_up_to: None,
                    looked_up_to: seq,
                },
            );
        }
        let due: Vec<u64> = held
            .iter()
            .filter(|(_, h)| h.next_ms <= now_ms && self.enabled(&h.record.channel))
            .take(limit)
            .map(|(seq, _)| *seq)
            .collect();
        if !coalesce {
            return Ok(due.iter().map(|seq| held[seq].delivery.clone()).collect());
        }
        // Each sends the newest message queued for its key instead.
        let looks: Vec<(u64, u64, OutRecord)> = due
            .iter()
            .map(|seq| {
                let h = &held[seq];
                (*seq, h.looked_up_to, h.record.clone())
            })
            .collect();
        drop(deliveries);
        let newer = self.block("look for newer deliveries", async {
            try_join_all(
                looks
                    .iter()
                    .map(|(_, from, record)| self.newest_of_key(*from, record)),
            )
            .await
        })?;
        let mut deliveries = self.deliveries.lock().expect("deliveries lock");
        let held = deliveries.entry(destination.to_string()).or_default();
        let mut sent = Vec::with_capacity(due.len());
        for ((seq, _, _), (newer, looked)) in looks.into_iter().zip(newer) {
            let Some(h) = held.get_mut(&seq) else { continue };
            h.looked_up_to = h.looked_up_to.max(looked);
            if let Some((at, record)) = newer {
                let retries = Retries {
                    history: h.history.clone(),
                    next_ms: h.next_ms,
                };
                h.delivery = Delivery {
                    seq: seq as i64,
                    ..delivery_of(seq, &record, &retries)
                };
                h.record = record;
                h.replaced_up_to = Some(at);
            }
            sent.push(h.delivery.clone());
        }
        Ok(sent)
    }

    /// Reads the record of each arrived message (a corrupt one is dropped)
    /// and, for a redelivered one, the attempts made on another node.
    async fn read_arrived(
        &self,
        arrived: Vec<jetstream::Message>,
        coalesce: bool,
    ) -> Result<Vec<Arrived>, NatsError> {
        let mut fetched = Vec::new();
        for message in arrived {
            let (seq, redelivered) = message
                .info()
                .map(|info| (info.stream_sequence, info.delivered > 1))
                .unwrap_or((0, false));
            let Ok(record) = serde_json::from_slice::<OutRecord>(&message.payload) else {
                tracing::error!(seq, "a delivery message is corrupt; it is dropped");
                let _ = message.ack_with(AckKind::Term).await;
                continue;
            };
            // Coalescing: a newer one of its key went instead (or it went itself).
            if coalesce
                && !record.replayed
                && let Some(up_to) = self.settled_up_to(&record).await?
                && seq <= up_to
            {
                // Counted once acknowledged; one that fails comes back and is counted then.
                match message.ack().await {
                    Ok(()) if seq < up_to => self.superseded.add_one(record.superseded()),
                    Ok(()) => {}
                    Err(err) => tracing::warn!(seq, error = %err, "cannot acknowledge a superseded delivery"),
                }
                continue;
            }
            // A node that takes over a redelivered message continues its
            // count and keeps its backoff.
            let retries: Retries = if redelivered {
                match self.attempts.get(format!("o{seq}")).await {
                    Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
                    _ => Retries::default(),
                }
            } else {
                Retries::default()
            };
            fetched.push((seq, message, record, retries));
        }
        Ok(fetched)
    }

    /// [`Queue::attempted`]: applies the results to the held deliveries,
    /// records them in JetStream, and lets go of the finished ones.
    pub(super) fn record_attempts(&self, results: Vec<(Delivery, AttemptResult)>) -> Result<(), StoreError> {
        let now = now_ms();
        let work = self.apply_attempts(results);
        let done = self.block("record delivery attempts", async {
            let recorded = join_all(work.iter().map(|attempt| self.record_attempt(attempt, now))).await;
            Ok(recorded)
        })?;
        self.release_finished(&work, done)
    }

    /// Applies each result to the delivery this node holds (one it no
    /// longer holds is skipped), and takes what is to be recorded.
    fn apply_attempts(&self, results: Vec<(Delivery, AttemptResult)>) -> Vec<AttemptToRecord> {
        let mut work = Vec::new();
        let mut deliveries = self.deliveries.lock().expect("deliveries lock");
        for (delivery, result) in results {
            let Some(held) = deliveries
                .get_mut(&delivery.destination)
                .and_then(|held| held.get_mut(&(delivery.seq as u64)))
            else {
                continue;
            };
            match &result {
                AttemptResult::Retry { attempt, next_ms } => {
                    held.history.push(attempt.clone());
                    held.next_ms = *next_ms;
                    held.delivery.attempts += 1;
                }
                AttemptResult::DeadLetter { attempt, .. } => held.history.push(attempt.clone()),
                AttemptResult::Delivered { .. } | AttemptResult::Unchanged => {}
            }
            let retries = Retries {
                history: held.history.clone(),
                next_ms: held.next_ms,
            };
            work.push(AttemptToRecord {
                delivery,
                result,
                message: held.message.clone(),
                record: held.record.clone(),
                retries,
                replaced_up_to: held.replaced_up_to,
            });
        }
        work
    }

    /// Records one attempt: a retry's attempts are kept; a delivered or
    /// dead-lettered delivery is acknowledged. True when it is finished.
    async fn record_attempt(&self, attempt: &AttemptToRecord, now: i64) -> Result<bool, NatsError> {
        let AttemptToRecord {
            delivery,
            result,
            message,
            record,
            retries,
            replaced_up_to,
        } = attempt;
        let key = format!("o{}", delivery.seq);
        // Settled for good: first what later messages of its key must know.
        if !matches!(result, AttemptResult::Retry { .. }) {
            if let AttemptResult::Delivered {
                fingerprint: Some(digest),
            } = result
            {
                self.keep_fingerprint(record, digest).await?;
            }
            if let Some(up_to) = replaced_up_to {
                self.settle_up_to(record, *up_to).await?;
            }
        }
        let finished = match result {
            AttemptResult::Retry { .. } => {
                let value = serde_json::to_vec(retries).expect("attempts serialise");
                self.attempts
                    .put(&key, value.into())
                    .await
                    .map(|_| false)
                    .map_err(|e| failed("record an attempt", e))
            }
            AttemptResult::Delivered { .. } | AttemptResult::Unchanged => {
                message
                    .ack()
                    .await
                    .map_err(|e| failed("acknowledge a delivery", e))?;
                if !retries.history.is_empty() {
                    let _ = self.attempts.purge(&key).await;
                }
                Ok(true)
            }
            AttemptResult::DeadLetter { reason, .. } => {
                let dead = delivery_dead_letter(record, reason, retries, now);
                let subject = names::dead(Some(&record.tenant), Some(&record.channel));
                let payload = serde_json::to_vec(&dead).expect("a record serialises");
                self.store(subject, msg_id(format!("d.{}", delivery.seq)), payload.into())
                    .await?;
                message
                    .ack()
                    .await
                    .map_err(|e| failed("acknowledge a delivery", e))?;
                let _ = self.attempts.purge(&key).await;
                Ok(true)
            }
        };
        // Counted once acknowledged: the held message itself was superseded by the one sent.
        if replaced_up_to.is_some() && matches!(finished, Ok(true)) {
            self.superseded.add_one(record.superseded());
        }
        finished
    }

    /// Lets go of each delivery whose attempt finished it; fails with the
    /// first error of any recording.
    fn release_finished(
        &self,
        work: &[AttemptToRecord],
        done: Vec<Result<bool, NatsError>>,
    ) -> Result<(), StoreError> {
        let mut deliveries = self.deliveries.lock().expect("deliveries lock");
        let mut first_error = None;
        for (attempt, recorded) in work.iter().zip(done) {
            match recorded {
                Ok(true) => {
                    if let Some(held) = deliveries.get_mut(&attempt.delivery.destination) {
                        held.remove(&(attempt.delivery.seq as u64));
                    }
                }
                Ok(false) => {}
                Err(err) => first_error = first_error.or(Some(err)),
            }
        }
        first_error.map_or(Ok(()), |err| Err(err.into()))
    }
}
