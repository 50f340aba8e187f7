//! [`Queue`] on JetStream (see the module table in [`super`]): the trait
//! impl, handing each job to the module that holds it, and the helpers they
//! share.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;

use super::{NatsError, NatsStore, failed, names};
use crate::store::*;

/// Room left in a message for headers.
pub(super) const HEADROOM: usize = 16 * 1024;
/// How long a pull request waits on the server for a message.
const FETCH_EXPIRES: Duration = Duration::from_millis(50);

pub(super) fn msg_id(id: String) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    headers
}

impl NatsStore {
    /// Publishes and waits until JetStream has stored it.
    pub(super) async fn store(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), NatsError> {
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

    /// Publishes `messages` in their order and waits until JetStream has
    /// stored them all. Deliveries on one subject (a partition, which is
    /// delivered by stream position) are stored strictly in order: each
    /// waits for the one before it on its subject to be stored, so a
    /// failure half-way stores nothing after it there, and the redone batch
    /// cannot put an update behind a later one of the same SKU. (Concurrent
    /// publishes did: a burst of 200 stored a SKU's fourth update after its
    /// tenth.) Messages on different subjects go out without waiting.
    pub(super) async fn store_in_order(
        &self,
        messages: Vec<(String, HeaderMap, Bytes)>,
    ) -> Result<(), NatsError> {
        self.connected()?;
        let js = jetstream::new(self.client.clone());
        let mut acks: Vec<Option<jetstream::context::PublishAckFuture>> = Vec::with_capacity(messages.len());
        let mut last_on: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (subject, headers, payload) in messages {
            if payload.len() + HEADROOM > self.max_payload {
                return Err(NatsError::TooLarge {
                    what: format!("a message to `{subject}`"),
                    size: payload.len(),
                    max: self.max_payload,
                });
            }
            // Only a partition is delivered by position; dead letters and
            // the rest go out without waiting.
            let ordered = subject.starts_with("sluice.out.");
            if ordered
                && let Some(before) = last_on
                    .get(&subject)
                    .and_then(|&i| acks.get_mut(i))
                    .and_then(Option::take)
            {
                before.await.map_err(|err| failed("store a message", err))?;
            }
            let ack = js
                .publish_with_headers(subject.clone(), headers, payload)
                .await
                .map_err(|err| failed("publish", err))?;
            if ordered {
                last_on.insert(subject, acks.len());
            }
            acks.push(Some(ack));
        }
        futures_util::future::try_join_all(
            acks.into_iter()
                .flatten()
                .map(std::future::IntoFuture::into_future),
        )
        .await
        .map_err(|err| failed("store a message", err))?;
        Ok(())
    }

    /// Fails at once while the connection is down, instead of waiting for the timeout.
    pub(super) fn connected(&self) -> Result<(), NatsError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(NatsError::NotConnected),
        }
    }

    /// One message if one is ready now. The pull request expires at once
    /// on the server, and a client-side bound covers an answer that never
    /// comes (a full `max_ack_pending` on another node).
    pub(super) async fn fetch_one(
        &self,
        consumer: &jetstream::consumer::PullConsumer,
    ) -> Option<jetstream::Message> {
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
        self.ingest_events(events)
    }

    fn pending(&self, channel: &str, after_seq: i64, _limit: usize) -> Result<Vec<Pending>, StoreError> {
        self.pending_batch(channel, after_seq)
    }

    fn transformed(&self, results: Vec<Transformed>) -> Result<(), StoreError> {
        self.record_transformed(results)
    }

    fn due(
        &self,
        destination: &str,
        now_ms: i64,
        limit: usize,
        coalesce: bool,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.due_deliveries(destination, now_ms, limit, coalesce)
    }

    fn forget_fingerprints(
        &self,
        destination: Option<&str>,
        channel: Option<&str>,
    ) -> Result<(), StoreError> {
        self.forget_fingerprints_of(destination, channel)
    }

    fn take_superseded(&self, destination: &str) -> Vec<(String, u64)> {
        self.superseded.take(destination)
    }

    fn take_superseded_deliveries(&self, destination: &str) -> Vec<crate::store::SupersededDelivery> {
        self.superseded.take_events(destination)
    }

    fn fingerprints(
        &self,
        destination: &str,
        keys: &[(String, String)],
    ) -> Result<Vec<Option<String>>, StoreError> {
        self.read_fingerprints(destination, keys)
    }

    fn due_signal(&self, destination: &str) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        self.signals
            .lock()
            .expect("signals lock")
            .get(destination)
            .cloned()
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
        self.record_attempts(results)
    }

    fn set_enabled(&self, channel: &str, enabled: bool, from_config: bool) -> Result<bool, StoreError> {
        self.set_channel_enabled(channel, enabled, from_config)
    }

    fn trip(&self, channel: &str, reason: &str) -> Result<(), StoreError> {
        self.trip_channel(channel, reason)
    }

    fn tripped(&self, channel: &str) -> Result<Option<String>, StoreError> {
        self.trip_reason(channel)
    }

    fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterSummary>, StoreError> {
        self.list_dead_letters(filter)
    }

    fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        self.read_dead_letter(id)
    }

    fn purge_dead_letter(&self, id: i64) -> Result<bool, StoreError> {
        self.purge_one_dead_letter(id)
    }

    fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64, StoreError> {
        self.purge_matching_dead_letters(filter)
    }

    fn replay(&self, id: i64, how: Replay) -> Result<ReplayResult, StoreError> {
        self.replay_dead_letter(id, how)
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

    fn append_stories(
        &self,
        entries: Vec<crate::observe::story::StoryEntry>,
        config: &crate::observe::story::StoriesConfig,
    ) -> Result<(), StoreError> {
        self.append_story_entries(entries, config)
    }

    fn event_story(
        &self,
        tenant: &str,
        event_id: &str,
        limit: usize,
    ) -> Result<Vec<crate::observe::story::StoryEntry>, StoreError> {
        self.read_event_story(tenant, event_id, limit)
    }

    fn entity_stories(
        &self,
        tenant: &str,
        key: &str,
        channel: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::observe::story::StoryEntry>, StoreError> {
        self.read_entity_stories(tenant, key, channel, limit)
    }

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
        self.channel_state(tenant, channel)
    }

    fn forget_state(&self, tenant: &str, channel: &str) -> Result<(), StoreError> {
        self.forget_channel_state(tenant, channel)
    }

    fn discard_channel(&self, tenant: &str, channel: &str) -> Result<u64, StoreError> {
        self.discard_channel_events(tenant, channel)
    }

    fn drop_route(&self, channel: &str) -> Result<(), StoreError> {
        self.unroute(channel)
    }

    fn add_route(&self, channel: &str, destination: &str) -> Result<(), StoreError> {
        self.route(channel, destination)
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<SharedChange>> {
        // The first listener gets the receiver made before the watch began.
        let first = self.first_listener.lock().expect("listener lock").take();
        Some(first.unwrap_or_else(|| self.changes.subscribe()))
    }
}
