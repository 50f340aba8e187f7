//! [`Queue`] on JetStream (see the module table in [`super`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{join_all, try_join_all};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{NatsError, NatsStore, failed, names};
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

/// The message of a channel's batch this node is transforming.
pub(super) struct HeldBatch {
    pub(super) message: jetstream::Message,
    stream_seq: u64,
    events: Vec<Pending>,
}

/// A delivery this node holds: its partition waits for it.
pub(super) struct HeldDelivery {
    pub(super) message: jetstream::Message,
    record: OutRecord,
    delivery: Delivery,
    history: Vec<Attempt>,
    next_ms: i64,
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
struct OutRecord {
    destination: String,
    channel: String,
    tenant: String,
    event_id: String,
    entity_key: String,
    idempotency_key: String,
    correlation_id: String,
    output: String,
    output_id: String,
    payload_at: Option<usize>,
    versions: String,
    original: String,
    created_ms: i64,
    received_ms: i64,
}

/// What a `SLUICE_DEAD` message holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeadRecord {
    tenant: String,
    channel: String,
    destination: Option<String>,
    event_id: String,
    stage: String,
    reason: String,
    created_ms: i64,
    original: String,
    detail: Value,
    versions: Vec<String>,
    attempts: Vec<Attempt>,
    /// What a resend delivers again (delivery stage only).
    delivery: Option<OutRecord>,
}

impl DeadRecord {
    /// The input event's text (a delivery-stage record keeps it once, in its delivery).
    fn original(&self) -> &str {
        match &self.delivery {
            Some(delivery) if self.original.is_empty() => &delivery.original,
            _ => &self.original,
        }
    }

    fn summary(&self, id: u64) -> DeadLetterSummary {
        DeadLetterSummary {
            id: id as i64,
            tenant: self.tenant.clone(),
            channel: self.channel.clone(),
            destination: self.destination.clone(),
            event_id: self.event_id.clone(),
            stage: self.stage.clone(),
            reason: self.reason.clone(),
            created_ms: self.created_ms,
        }
    }
}

const RECEIVED: &str = "Sluice-Received-Ms";
/// Room left in a message for headers.
const HEADROOM: usize = 16 * 1024;
/// How long an ingest's claim on an event id stands before another ingest
/// of the same id may take it over (the first one died half-way).
const CLAIM_LEASE_MS: i64 = 30_000;
/// How long a pull request waits on the server for a message.
const FETCH_EXPIRES: Duration = Duration::from_millis(50);

/// Events of one channel from one request, each as `<length>\n<text>`.
fn encode_batch(events: &[&str]) -> Bytes {
    let mut out = Vec::with_capacity(events.iter().map(|e| e.len() + 12).sum());
    for event in events {
        out.extend_from_slice(event.len().to_string().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(event.as_bytes());
    }
    out.into()
}

/// The events of a batch message; a damaged message is one (invalid) event,
/// which the transform worker dead-letters.
fn decode_batch(bytes: &[u8]) -> Vec<String> {
    let mut events = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let parsed = rest.iter().position(|&b| b == b'\n').and_then(|newline| {
            let len: usize = std::str::from_utf8(&rest[..newline]).ok()?.parse().ok()?;
            let text = rest.get(newline + 1..newline + 1 + len)?;
            Some((String::from_utf8_lossy(text).into_owned(), newline + 1 + len))
        });
        match parsed {
            Some((event, used)) => {
                events.push(event);
                rest = &rest[used..];
            }
            None => {
                events.push(String::from_utf8_lossy(rest).into_owned());
                break;
            }
        }
    }
    events
}

fn msg_id(id: String) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    headers
}

fn digest(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..16])
}

/// How an ingested id stands in `sluice-ids`.
enum Claim {
    New,
    Duplicate,
}

impl NatsStore {
    /// Publishes and waits until JetStream has stored it.
    async fn store(&self, subject: String, headers: HeaderMap, payload: Bytes) -> Result<(), NatsError> {
        self.connected()?;
        if payload.len() + HEADROOM > self.max_payload {
            return Err(NatsError::TooLarge {
                what: format!("a message to `{subject}`"),
                size: payload.len(),
                max: self.max_payload,
            });
        }
        let js = jetstream::new(self.client.clone());
        js.publish_with_headers(subject, headers, payload)
            .await
            .map_err(|err| failed("publish", err))?
            .await
            .map_err(|err| failed("store a message", err))?;
        Ok(())
    }

    /// Fails at once while the connection is down, instead of waiting for the timeout.
    fn connected(&self) -> Result<(), NatsError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(NatsError::NotConnected),
        }
    }

    /// Claims an event id for this ingest: `pending:<ms>` until its events
    /// are stored, then `done`. An id already done is a duplicate; one
    /// pending in another ingest for less than [`CLAIM_LEASE_MS`] makes this
    /// request answer 503 (retry), so one id is never queued by two
    /// requests at once; an older claim (its ingest died) is taken over.
    async fn claim(&self, key: &str, now: i64) -> Result<Claim, NatsError> {
        self.connected()?;
        let pending = Bytes::from(format!("pending:{now}"));
        match self.ids.create(key, pending.clone()).await {
            Ok(_) => return Ok(Claim::New),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(err) => return Err(failed("claim an event id", err)),
        }
        let Some(entry) = self
            .ids
            .entry(key)
            .await
            .map_err(|err| failed("read an event id", err))?
        else {
            return Err(NatsError::InFlight);
        };
        let since = std::str::from_utf8(&entry.value)
            .ok()
            .and_then(|v| v.strip_prefix("pending:"))
            .and_then(|ms| ms.parse::<i64>().ok());
        match since {
            _ if entry.operation != kv::Operation::Put => {}
            Some(since) if now - since < CLAIM_LEASE_MS => return Err(NatsError::InFlight),
            Some(_) => {}
            None => return Ok(Claim::Duplicate),
        }
        match self.ids.update(key, pending, entry.revision).await {
            Ok(_) => Ok(Claim::New),
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(NatsError::InFlight),
            Err(err) => Err(failed("claim an event id", err)),
        }
    }

    /// One message if one is ready now. The pull request expires at once
    /// on the server, and a client-side bound covers an answer that never
    /// comes (a full `max_ack_pending` on another node).
    async fn fetch_one(&self, consumer: &jetstream::consumer::PullConsumer) -> Option<jetstream::Message> {
        let fetch = async {
            let mut batch = consumer
                .fetch()
                .max_messages(1)
                .expires(FETCH_EXPIRES)
                .messages()
                .await
                .ok()?;
            batch.next().await
        };
        match tokio::time::timeout(FETCH_EXPIRES * 10, fetch)
            .await
            .ok()
            .flatten()
        {
            Some(Ok(message)) => Some(message),
            // `409 Exceeded MaxAckPending`: another node holds the message in flight.
            Some(Err(err)) => {
                tracing::debug!(error = %err, "nothing fetched");
                None
            }
            None => None,
        }
    }

    fn switch(&self, channel: &str) -> Option<Switch> {
        self.switches.read().expect("switches lock").get(channel).cloned()
    }

    fn enabled(&self, channel: &str) -> bool {
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

    /// A dead letter's message, with the original event and the detail
    /// cut to a note if the whole would not fit in one message.
    fn fit(&self, mut letter: DeadRecord) -> Bytes {
        let payload = serde_json::to_vec(&letter).expect("a record serialises");
        if payload.len() + HEADROOM <= self.max_payload {
            return payload.into();
        }
        letter.original = format!(
            "({} bytes: too large to keep in a dead letter)",
            letter.original.len()
        );
        letter.detail = Value::String(format!(
            "({} bytes: too large to keep in a dead letter)",
            letter.detail.to_string().len()
        ));
        serde_json::to_vec(&letter).expect("a record serialises").into()
    }

    /// Dead letters on `subject` from stream position `start` on, oldest first.
    async fn dead_letters_from(
        &self,
        subject: &str,
        start: u64,
    ) -> Result<Vec<DeadLetterSummary>, NatsError> {
        let consumer = self
            .dead
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject.to_string(),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| failed("list dead letters", e))?;
        let mut letters = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(letters);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| failed("list dead letters", e))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| failed("list dead letters", e))?;
            let info = message.info().map_err(|e| failed("list dead letters", e))?;
            let (seq, left) = (info.stream_sequence, info.pending);
            if let Ok(record) = serde_json::from_slice::<DeadRecord>(&message.payload) {
                letters.push(record.summary(seq));
            }
            if left == 0 {
                break;
            }
        }
        Ok(letters)
    }

    async fn read_dead(&self, id: u64) -> Result<Option<DeadRecord>, NatsError> {
        match self.dead.get_raw_message(id).await {
            Ok(message) => Ok(serde_json::from_slice(&message.payload).ok()),
            Err(err) if err.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(failed("read a dead letter", err)),
        }
    }

    async fn count(&self, stream: &jetstream::stream::Stream, filter: String) -> Result<u64, NatsError> {
        let stream = stream.clone();
        let mut subjects = stream
            .info_with_subjects(filter)
            .await
            .map_err(|e| failed("count messages", e))?;
        let mut total = 0;
        while let Some(subject) = subjects.next().await {
            total += subject.map_err(|e| failed("count messages", e))?.1 as u64;
        }
        Ok(total)
    }
}

impl Queue for NatsStore {
    fn ping(&self) -> Result<(), StoreError> {
        let client = self.client.clone();
        self.block("ping", async move {
            client.flush().await.map_err(|e| failed("ping", e))
        })
    }

    fn ingest(&self, events: Vec<Ingest>) -> Result<Vec<Receipt>, StoreError> {
        let now = now_ms();
        let received = now.to_string();
        self.block("ingest", async {
            let mut first = HashSet::new();
            let keys: Vec<(String, bool)> = events
                .iter()
                .map(|event| {
                    let key = names::event_id_key(&event.tenant, &event.id);
                    let fresh = first.insert(key.clone());
                    (key, fresh)
                })
                .collect();
            let claims = join_all(keys.iter().map(|(key, fresh)| async move {
                if *fresh {
                    self.claim(key, now).await
                } else {
                    Ok(Claim::Duplicate)
                }
            }))
            .await;
            if let Some(refused) = claims.iter().position(Result::is_err) {
                // Nothing of this request is stored: release its claims so
                // that the client's retry is not refused by them.
                let ours = keys
                    .iter()
                    .zip(&claims)
                    .filter(|(_, c)| matches!(c, Ok(Claim::New)));
                join_all(ours.map(|((key, _), _)| self.ids.purge(key))).await;
                return Err(claims
                    .into_iter()
                    .nth(refused)
                    .and_then(Result::err)
                    .expect("an error"));
            }
            let claims: Vec<Claim> = claims.into_iter().map(|c| c.expect("no error")).collect();
            let mut by_channel: BTreeMap<&str, Vec<&Ingest>> = BTreeMap::new();
            for (event, claim) in events.iter().zip(&claims) {
                if matches!(claim, Claim::New) {
                    for channel in &event.channels {
                        by_channel.entry(channel).or_default().push(event);
                    }
                }
            }
            let mut batches = Vec::new();
            for (channel, events) in by_channel {
                let mut chunk: Vec<&Ingest> = Vec::new();
                let mut size = 0;
                for event in events {
                    if size + event.event.len() + 24 + HEADROOM > self.max_payload && !chunk.is_empty() {
                        batches.push((channel, std::mem::take(&mut chunk)));
                        size = 0;
                    }
                    size += event.event.len() + 24;
                    chunk.push(event);
                }
                batches.push((channel, chunk));
            }
            try_join_all(batches.iter().map(|(channel, chunk)| {
                let mut id_parts: Vec<&str> = vec![channel];
                id_parts.extend(chunk.iter().map(|e| e.id.as_str()));
                let mut headers = msg_id(digest(&id_parts));
                headers.insert(RECEIVED, received.as_str());
                let texts: Vec<&str> = chunk.iter().map(|e| e.event.as_str()).collect();
                self.store(names::inbound(channel), headers, encode_batch(&texts))
            }))
            .await?;
            let recorded = join_all(
                keys.iter()
                    .zip(&claims)
                    .filter(|(_, claim)| matches!(claim, Claim::New))
                    .map(|((key, _), _)| self.ids.put(key, Bytes::from_static(b"done"))),
            )
            .await;
            if let Some(Err(err)) = recorded.into_iter().find(Result::is_err) {
                // The events are stored; their claims lapse after the lease,
                // and a repeat after that is queued again (the same outputs
                // with the same Idempotency-Key).
                tracing::warn!(error = %err, "cannot mark ingested event ids as done");
            }
            Ok(events
                .iter()
                .zip(&claims)
                .map(|(event, claim)| Receipt {
                    id: event.id.clone(),
                    duplicate: matches!(claim, Claim::Duplicate),
                })
                .collect())
        })
    }

    fn pending(&self, channel: &str, after_seq: i64, _limit: usize) -> Result<Vec<Pending>, StoreError> {
        if let Some(held) = self.transform.lock().expect("transform lock").get(channel) {
            // One batch of a channel is in flight in the whole cluster; it is
            // read again only after a failed commit (`after_seq` 0).
            return Ok(if after_seq == 0 {
                held.events.clone()
            } else {
                Vec::new()
            });
        }
        let consumer = self.consumer(&names::transform_consumer(channel), names::inbound(channel))?;
        let Some(message) = self.block("fetch events", async move { Ok(self.fetch_one(&consumer).await) })?
        else {
            return Ok(Vec::new());
        };
        let stream_seq = message.info().map(|info| info.stream_sequence).unwrap_or(0);
        let received_ms = message
            .headers
            .as_ref()
            .and_then(|h| h.get(RECEIVED))
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or_else(now_ms);
        let events: Vec<Pending> = decode_batch(&message.payload)
            .into_iter()
            .map(|event| Pending {
                seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
                event,
                received_ms,
            })
            .collect();
        self.transform.lock().expect("transform lock").insert(
            channel.to_string(),
            HeldBatch {
                message,
                stream_seq,
                events: events.clone(),
            },
        );
        Ok(events)
    }

    fn transformed(&self, results: Vec<Transformed>) -> Result<(), StoreError> {
        let Some(channel) = results.first().map(|r| r.channel.clone()) else {
            return Ok(());
        };
        let (message, stream_seq) = {
            let held = self.transform.lock().expect("transform lock");
            let Some(held) = held.get(&channel) else {
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
            (held.message.clone(), held.stream_seq)
        };
        let now = now_ms();
        let dead_letter = |result: &Transformed, reason: &str, detail: Value| DeadRecord {
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
        };
        let mut messages = Vec::new();
        for (index, result) in results.iter().enumerate() {
            let dead_subject = names::dead(Some(&result.tenant), Some(&result.channel));
            match &result.disposition {
                Disposition::Dropped => {}
                Disposition::Deliver(deliveries) => {
                    for (output, new) in deliveries.iter().enumerate() {
                        let record = OutRecord {
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
                        };
                        let payload = serde_json::to_vec(&record).expect("a record serialises");
                        if payload.len() + HEADROOM > self.max_payload {
                            // Never stored as a delivery: it would stop the channel for good.
                            let detail = serde_json::json!({"output-bytes": payload.len(), "max-payload": self.max_payload});
                            let letter = dead_letter(result, "too-large-for-queue", detail);
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
                }
                Disposition::DeadLetter { reason, detail } => {
                    let letter = dead_letter(result, reason, detail.clone());
                    messages.push((
                        dead_subject,
                        msg_id(format!("t.{stream_seq}.{index}")),
                        self.fit(letter),
                    ));
                }
            }
        }
        self.block("store transform results", async {
            try_join_all(
                messages
                    .into_iter()
                    .map(|(subject, headers, payload)| self.store(subject, headers, payload)),
            )
            .await?;
            message
                .ack()
                .await
                .map_err(|e| failed("acknowledge a transformed batch", e))
        })?;
        self.transform.lock().expect("transform lock").remove(&channel);
        Ok(())
    }

    fn due(&self, destination: &str, now_ms: i64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let mut arrived = Vec::new();
        if let Some(inbox) = self.inboxes.lock().expect("inbox lock").get_mut(destination) {
            while let Ok(message) = inbox.try_recv() {
                arrived.push(message);
            }
        }
        let fetched = self.block("take deliveries", async {
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
        })?;
        let mut deliveries = self.deliveries.lock().expect("deliveries lock");
        let held = deliveries.entry(destination.to_string()).or_default();
        for (seq, message, record, retries) in fetched {
            let delivery = Delivery {
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
            };
            held.insert(
                seq,
                HeldDelivery {
                    message,
                    record,
                    delivery,
                    history: retries.history,
                    next_ms: retries.next_ms,
                },
            );
        }
        Ok(held
            .values()
            .filter(|h| h.next_ms <= now_ms && self.enabled(&h.record.channel))
            .take(limit)
            .map(|h| h.delivery.clone())
            .collect())
    }

    fn due_signal(&self, destination: &str) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        self.signals.get(destination).cloned()
    }

    fn next_due_ms(&self, destination: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .deliveries
            .lock()
            .expect("deliveries lock")
            .get(destination)
            .and_then(|held| {
                held.values()
                    .filter(|h| self.enabled(&h.record.channel))
                    .map(|h| h.next_ms)
                    .min()
            }))
    }

    fn attempted(&self, results: Vec<(Delivery, AttemptResult)>) -> Result<(), StoreError> {
        let now = now_ms();
        let mut work = Vec::new();
        {
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
                    AttemptResult::Delivered => {}
                }
                let retries = Retries {
                    history: held.history.clone(),
                    next_ms: held.next_ms,
                };
                work.push((
                    delivery,
                    result,
                    held.message.clone(),
                    held.record.clone(),
                    retries,
                ));
            }
        }
        let done = self.block("record delivery attempts", async {
            let recorded = join_all(work.iter().map(
                |(delivery, result, message, record, retries)| async move {
                    let key = format!("o{}", delivery.seq);
                    match result {
                        AttemptResult::Retry { .. } => {
                            let value = serde_json::to_vec(retries).expect("attempts serialise");
                            self.attempts
                                .put(&key, value.into())
                                .await
                                .map(|_| false)
                                .map_err(|e| failed("record an attempt", e))
                        }
                        AttemptResult::Delivered => {
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
                            // The delivery record holds the original and the output once.
                            let dead = DeadRecord {
                                tenant: record.tenant.clone(),
                                channel: record.channel.clone(),
                                destination: Some(record.destination.clone()),
                                event_id: record.event_id.clone(),
                                stage: "delivery".into(),
                                reason: reason.clone(),
                                created_ms: now,
                                original: String::new(),
                                detail: Value::Null,
                                versions: serde_json::from_str(&record.versions).unwrap_or_default(),
                                attempts: retries.history.clone(),
                                delivery: Some(record.clone()),
                            };
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
                    }
                },
            ))
            .await;
            Ok(recorded)
        })?;
        let mut deliveries = self.deliveries.lock().expect("deliveries lock");
        let mut first_error = None;
        for ((delivery, ..), recorded) in work.iter().zip(done) {
            match recorded {
                Ok(true) => {
                    if let Some(held) = deliveries.get_mut(&delivery.destination) {
                        held.remove(&(delivery.seq as u64));
                    }
                }
                Ok(false) => {}
                Err(err) => first_error = first_error.or(Some(err)),
            }
        }
        first_error.map_or(Ok(()), |err| Err(err.into()))
    }

    fn set_enabled(&self, channel: &str, enabled: bool, from_config: bool) -> Result<bool, StoreError> {
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

    fn trip(&self, channel: &str, reason: &str) -> Result<(), StoreError> {
        self.update_switch(channel, |current| Switch {
            enabled: false,
            config: current.and_then(|c| c.config),
            reason: Some(reason.to_string()),
        })
        .map(drop)
    }

    fn tripped(&self, channel: &str) -> Result<Option<String>, StoreError> {
        Ok(self.switch(channel).and_then(|s| s.reason))
    }

    fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterSummary>, StoreError> {
        let subject = names::dead(filter.tenant.as_deref(), filter.channel.as_deref());
        // As on SQLite: the newest 100 unless asked otherwise.
        let limit = filter.limit.unwrap_or(100) as usize;
        let filter_before = filter.before;
        self.block("list dead letters", async move {
            let state = self
                .dead
                .get_info()
                .await
                .map_err(|e| failed("list dead letters", e))?
                .state;
            let last = match filter_before {
                Some(before) => state
                    .last_sequence
                    .min(u64::try_from(before).unwrap_or(0).saturating_sub(1)),
                None => state.last_sequence,
            };
            if state.messages == 0 || limit == 0 || last < state.first_sequence {
                return Ok(Vec::new());
            }
            // Read the tail of the stream, widening it until it holds enough.
            let mut span = (limit as u64).saturating_mul(4).max(1000);
            loop {
                let start = last.saturating_sub(span - 1).max(state.first_sequence).max(1);
                let mut letters = self.dead_letters_from(&subject, start).await?;
                letters.retain(|l| l.id as u64 <= last);
                if letters.len() >= limit || start <= state.first_sequence {
                    letters.reverse();
                    letters.truncate(limit);
                    return Ok(letters);
                }
                span = span.saturating_mul(4);
            }
        })
    }

    fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        let Ok(seq) = u64::try_from(id) else {
            return Ok(None);
        };
        let record = self.block("read a dead letter", self.read_dead(seq))?;
        let parse = |text: &str| serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into()));
        Ok(record.map(|record| DeadLetter {
            summary: record.summary(seq),
            original: parse(record.original()),
            output: record.delivery.as_ref().map(|d| parse(&d.output)),
            detail: record.detail,
            versions: record.versions,
            attempts: record.attempts,
        }))
    }

    fn purge_dead_letter(&self, id: i64) -> Result<bool, StoreError> {
        let Ok(seq) = u64::try_from(id) else {
            return Ok(false);
        };
        let dead = self.dead.clone();
        self.block("purge a dead letter", async move {
            match dead.delete_message(seq).await {
                Ok(deleted) => Ok(deleted),
                Err(err)
                    if matches!(err.kind(), jetstream::stream::DeleteMessageErrorKind::JetStream(e)
                        if e.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND) =>
                {
                    Ok(false)
                }
                Err(err) => Err(failed("purge a dead letter", err)),
            }
        })
    }

    fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64, StoreError> {
        let subject = names::dead(filter.tenant.as_deref(), filter.channel.as_deref());
        let dead = self.dead.clone();
        self.block("purge dead letters", async move {
            dead.purge()
                .filter(subject)
                .await
                .map(|r| r.purged)
                .map_err(|e| failed("purge dead letters", e))
        })
    }

    fn replay(&self, id: i64, how: Replay) -> Result<ReplayResult, StoreError> {
        let Ok(seq) = u64::try_from(id) else {
            return Ok(ReplayResult::NotFound);
        };
        self.block("replay a dead letter", async move {
            let Some(record) = self.read_dead(seq).await? else {
                return Ok(ReplayResult::NotFound);
            };
            // A replay repeated within the duplicate window queues once.
            let headers = msg_id(format!("replay.{seq}"));
            match how {
                Replay::Resend => {
                    let Some(mut delivery) = record.delivery else {
                        return Ok(ReplayResult::NothingToResend);
                    };
                    delivery.created_ms = now_ms();
                    let subject = names::outbound(
                        &delivery.destination,
                        names::partition(&delivery.entity_key),
                        &delivery.channel,
                    );
                    let payload = serde_json::to_vec(&delivery).expect("a record serialises");
                    self.store(subject, headers, payload.into()).await?;
                }
                Replay::Retransform => {
                    let mut headers = headers;
                    headers.insert(RECEIVED, now_ms().to_string().as_str());
                    let payload = encode_batch(&[record.original()]);
                    self.store(names::inbound(&record.channel), headers, payload)
                        .await?;
                }
            }
            match self.dead.delete_message(seq).await {
                Ok(_) => Ok(ReplayResult::Queued),
                Err(err) => Err(failed("delete a replayed dead letter", err)),
            }
        })
    }

    fn depth(&self, channel: &str) -> Result<Depth, StoreError> {
        self.block("count a channel's events", async {
            let (to_transform, to_deliver, dead_letters) = futures_util::try_join!(
                self.count(&self.inbound, names::inbound(channel)),
                self.count(&self.outbound, names::outbound_of_channel(channel)),
                self.count(&self.dead, names::dead(None, Some(channel))),
            )?;
            Ok(Depth {
                to_transform,
                to_deliver,
                dead_letters,
            })
        })
    }

    fn retry_backlog(&self, destination: &str) -> Result<u64, StoreError> {
        // What this node holds: a node sees only its own retries.
        Ok(self
            .deliveries
            .lock()
            .expect("deliveries lock")
            .get(destination)
            .map_or(0, |held| {
                held.values().filter(|h| !h.history.is_empty()).count() as u64
            }))
    }

    fn forget_before(&self, _before_ms: i64) -> Result<u64, StoreError> {
        // `sluice-ids` forgets by itself: its max_age is the window.
        Ok(0)
    }

    fn shares_rate(&self) -> bool {
        true
    }

    fn take_rate_token(
        &self,
        destination: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<Result<(), Duration>, StoreError> {
        // GCRA on one key: it holds the theoretical arrival time (ms since
        // the epoch) of the next send; nodes move it with compare-and-set.
        let key = format!("{}{}", names::RATE, names::token(destination));
        let state = self.state.clone();
        let step = interval.as_secs_f64() * 1000.0;
        let tolerance = step * f64::from(burst.max(1) - 1);
        self.block("take a shared rate token", async move {
            loop {
                let entry = state.entry(&key).await.map_err(|e| failed("read a rate", e))?;
                let (tat, revision) = match &entry {
                    Some(entry) => (
                        std::str::from_utf8(&entry.value)
                            .ok()
                            .and_then(|v| v.parse::<f64>().ok())
                            .unwrap_or(0.0),
                        entry.revision,
                    ),
                    None => (0.0, 0),
                };
                let now = now_ms() as f64;
                let tat = tat.max(now);
                if tat - now > tolerance {
                    return Ok(Err(Duration::from_secs_f64((tat - now - tolerance) / 1000.0)));
                }
                let next = (tat + step).to_string();
                match state.update(&key, next.into(), revision).await {
                    Ok(_) => return Ok(Ok(())),
                    Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    Err(err) => return Err(failed("take a shared rate token", err)),
                }
            }
        })
    }

    fn count_faults(&self, channel: &str, trailing: u32, succeeded: bool) -> Result<Option<u32>, StoreError> {
        if trailing == 0 && !succeeded {
            return Ok(None);
        }
        let key = format!("{}{}", names::FAULTS, names::token(channel));
        let count = self.block("count faults", async move {
            loop {
                let entry = self
                    .state
                    .entry(&key)
                    .await
                    .map_err(|e| failed("read a fault count", e))?;
                let (current, revision) = match &entry {
                    Some(entry) => (
                        std::str::from_utf8(&entry.value)
                            .ok()
                            .and_then(|v| v.parse::<u32>().ok())
                            .unwrap_or(0),
                        entry.revision,
                    ),
                    None => (0, 0),
                };
                let next = if succeeded {
                    trailing
                } else {
                    current.saturating_add(trailing)
                };
                if next == current && entry.is_some() {
                    return Ok(next);
                }
                match self.state.update(&key, next.to_string().into(), revision).await {
                    Ok(_) => return Ok(next),
                    Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    Err(err) => return Err(failed("count faults", err)),
                }
            }
        })?;
        Ok(Some(count))
    }

    fn pause_destination(&self, destination: &str, until_ms: i64) -> Result<(), StoreError> {
        let key = format!("{}{}", names::PAUSE, names::token(destination));
        self.block("share a pause", async move {
            // A later pause never shortens an earlier, longer one.
            let current = self.state.get(&key).await.ok().flatten();
            let current: i64 = current
                .and_then(|v| std::str::from_utf8(&v).ok().and_then(|v| v.parse().ok()))
                .unwrap_or(0);
            if until_ms > current {
                self.state
                    .put(&key, until_ms.to_string().into())
                    .await
                    .map_err(|e| failed("share a pause", e))?;
            }
            Ok(())
        })
    }

    fn destination_paused_until(&self, destination: &str) -> Result<Option<i64>, StoreError> {
        let key = format!("{}{}", names::PAUSE, names::token(destination));
        let value = self.block("read a pause", async move {
            self.state.get(&key).await.map_err(|e| failed("read a pause", e))
        })?;
        Ok(value
            .and_then(|v| std::str::from_utf8(&v).ok().and_then(|v| v.parse().ok()))
            .filter(|until| *until > now_ms()))
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<SharedChange>> {
        // The first listener gets the receiver made before the watch began.
        let first = self.first_listener.lock().expect("listener lock").take();
        Some(first.unwrap_or_else(|| self.changes.subscribe()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_any_text() {
        let events = ["{\"a\":1}", "", "line\nbreak 12\n", "é"];
        assert_eq!(decode_batch(&encode_batch(&events)), events);
        assert_eq!(decode_batch(b"garbage"), ["garbage"]);
        assert_eq!(decode_batch(b"99\nshort"), ["99\nshort"]);
    }
}
