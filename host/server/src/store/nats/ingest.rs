//! Ingest on JetStream: event ids claimed in `sluice-ids`, events queued in `SLUICE_IN` batches, and a channel's batch held for its transform.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::future::{join_all, try_join_all};
use sha2::{Digest, Sha256};

use super::queue::{HEADROOM, msg_id};
use super::{NatsError, NatsStore, failed, names};
use crate::store::*;

/// The message of a channel's batch this node is transforming.
pub(super) struct HeldBatch {
    pub(super) message: jetstream::Message,
    pub(super) stream_seq: u64,
    pub(super) events: Vec<Pending>,
}

pub(super) const RECEIVED: &str = "Sluice-Received-Ms";
/// How long an ingest's claim on an event id stands before another ingest
/// of the same id may take it over (the first one died half-way).
const CLAIM_LEASE_MS: i64 = 30_000;

/// Events of one channel from one request, each as `<length>\n<text>`.
pub(super) fn encode_batch(events: &[&str]) -> Bytes {
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

/// Each event's key in `sluice-ids`, and whether it is the first event of
/// the request with that key (a later one is a duplicate).
fn event_keys(events: &[Ingest]) -> Vec<(String, bool)> {
    let mut first = HashSet::new();
    events
        .iter()
        .map(|event| {
            let key = names::event_id_key(&event.tenant, &event.id);
            let fresh = first.insert(key.clone());
            (key, fresh)
        })
        .collect()
}

impl NatsStore {
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

    /// [`Queue::ingest`]: claims the events' ids, stores the new events in
    /// batches per channel, then marks their ids done.
    pub(super) fn ingest_events(&self, events: Vec<Ingest>) -> Result<Vec<Receipt>, StoreError> {
        let now = now_ms();
        let received = now.to_string();
        self.block("ingest", async {
            let keys = event_keys(&events);
            let claims = self.claim_all(&keys, now).await?;
            let batches = self.batches(&events, &claims);
            self.publish_batches(&batches, &received).await?;
            self.mark_done(&keys, &claims).await;
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

    /// Claims every key (a repeat within the request is a duplicate); if
    /// one is refused, releases the claims made and fails with why.
    async fn claim_all(&self, keys: &[(String, bool)], now: i64) -> Result<Vec<Claim>, NatsError> {
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
        Ok(claims.into_iter().map(|c| c.expect("no error")).collect())
    }

    /// The newly claimed events of each channel, cut into batches that each
    /// fit in one message.
    fn batches<'a>(&self, events: &'a [Ingest], claims: &[Claim]) -> Vec<(&'a str, Vec<&'a Ingest>)> {
        let mut by_channel: BTreeMap<&str, Vec<&Ingest>> = BTreeMap::new();
        for (event, claim) in events.iter().zip(claims) {
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
        batches
    }

    /// Stores each batch as one message on its channel's subject.
    async fn publish_batches(
        &self,
        batches: &[(&str, Vec<&Ingest>)],
        received: &str,
    ) -> Result<(), NatsError> {
        try_join_all(batches.iter().map(|(channel, chunk)| {
            let mut id_parts: Vec<&str> = vec![channel];
            id_parts.extend(chunk.iter().map(|e| e.id.as_str()));
            let mut headers = msg_id(digest(&id_parts));
            headers.insert(RECEIVED, received);
            let texts: Vec<&str> = chunk.iter().map(|e| e.event.as_str()).collect();
            self.store(names::inbound(channel), headers, encode_batch(&texts))
        }))
        .await?;
        Ok(())
    }

    /// Marks the ids this request claimed as done; a failure is only logged.
    async fn mark_done(&self, keys: &[(String, bool)], claims: &[Claim]) {
        let recorded = join_all(
            keys.iter()
                .zip(claims)
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
    }

    /// [`Queue::pending`]: the channel's held batch, or the next one
    /// fetched and held.
    pub(super) fn pending_batch(&self, channel: &str, after_seq: i64) -> Result<Vec<Pending>, StoreError> {
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
