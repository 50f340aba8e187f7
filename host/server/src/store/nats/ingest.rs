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
/// The ingest request that stored a batch; its events count only while
/// their claims name it as done (see [`Claim`]).
const INGEST: &str = "Sluice-Ingest";
/// How soon a batch whose request may still be storing is asked for again.
const UNDECIDED_RETRY: std::time::Duration = std::time::Duration::from_millis(200);
/// How long an ingest's claim on an event id stands before another ingest
/// of the same id may take it over (the first one died half-way), and
/// before the batches it stored count as inert. An ingest stores nothing
/// after its call timeout (10 s); a channel whose batch waits on a dead
/// request's claims waits at most this long.
const CLAIM_LEASE_MS: i64 = 15_000;

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
///
/// A claim names the ingest request that holds it: `pending:<ms>:<ingest>`
/// while that request stores its events, `done:<ingest>` once every event
/// of the request is stored. JetStream cannot store several messages at
/// once, so a request whose publishes fail half-way may leave some of its
/// batches stored; they are inert, because a batch's events are
/// transformed only while their claims say `done` by the batch's own
/// request ([`claim_standing`]). A failed request releases its claims, so
/// the client's retry is taken at once and its copy is the one that counts.
enum Claim {
    New,
    Duplicate,
}

/// What a batch of ingest request `ingest` may do with an event whose
/// claim reads `value` (`None`: no claim) at `now`.
#[derive(Debug, PartialEq, Eq)]
enum Standing {
    /// The request stored all its events: transform it.
    Live,
    /// The request may still be storing: ask again shortly.
    Undecided,
    /// The request failed, or another one holds the id: an inert copy.
    Inert,
}

fn claim_standing(value: Option<&str>, ingest: &str, now: i64) -> Standing {
    let Some(value) = value else {
        return Standing::Inert;
    };
    if let Some(by) = value.strip_prefix("done:") {
        return if by == ingest {
            Standing::Live
        } else {
            Standing::Inert
        };
    }
    // Stored before claims named their request: the only copy.
    if value == "done" {
        return Standing::Live;
    }
    match value
        .strip_prefix("pending:")
        .and_then(|rest| rest.split_once(':'))
    {
        Some((since, by)) if by == ingest => match since.parse::<i64>() {
            Ok(since) if now - since < CLAIM_LEASE_MS => Standing::Undecided,
            _ => Standing::Inert,
        },
        _ => Standing::Inert,
    }
}

/// A new ingest request's id: 128 random bits, hex.
fn new_ingest_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    hex::encode(bytes)
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
    async fn claim(&self, key: &str, now: i64, ingest: &str) -> Result<Claim, NatsError> {
        self.connected()?;
        let pending = Bytes::from(format!("pending:{now}:{ingest}"));
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
            .map(|rest| rest.split_once(':').map_or(rest, |(ms, _)| ms))
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
    /// batches per channel, then marks their ids done. All or nothing: if a
    /// publish or a mark fails, the claims not yet done are released and
    /// the request fails; what it stored stays inert (see [`Claim`]).
    pub(super) fn ingest_events(&self, events: Vec<Ingest>) -> Result<Vec<Receipt>, StoreError> {
        let now = now_ms();
        let received = now.to_string();
        let ingest = new_ingest_id();
        self.block("ingest", async {
            let keys = event_keys(&events);
            let claims = self.claim_all(&keys, now, &ingest).await?;
            let batches = self.batches(&events, &claims);
            let stored = match self.publish_batches(&batches, &received, &ingest).await {
                Ok(()) => self.mark_done(&keys, &claims, &ingest).await,
                Err(err) => Err(err),
            };
            if let Err(err) = stored {
                self.release(&keys, &claims, &ingest).await;
                return Err(err);
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

    /// Claims every key (a repeat within the request is a duplicate); if
    /// one is refused, releases the claims made and fails with why.
    async fn claim_all(
        &self,
        keys: &[(String, bool)],
        now: i64,
        ingest: &str,
    ) -> Result<Vec<Claim>, NatsError> {
        let claims = join_all(keys.iter().map(|(key, fresh)| async move {
            if *fresh {
                self.claim(key, now, ingest).await
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
        ingest: &str,
    ) -> Result<(), NatsError> {
        try_join_all(batches.iter().map(|(channel, chunk)| {
            // The request is in the id: a retry of a failed request stores
            // its own copy, not one JetStream takes for a duplicate.
            let mut id_parts: Vec<&str> = vec![channel, ingest];
            id_parts.extend(chunk.iter().map(|e| e.id.as_str()));
            let mut headers = msg_id(digest(&id_parts));
            headers.insert(RECEIVED, received);
            headers.insert(INGEST, ingest);
            let texts: Vec<&str> = chunk.iter().map(|e| e.event.as_str()).collect();
            self.store(names::inbound(channel), headers, encode_batch(&texts))
        }))
        .await?;
        Ok(())
    }

    /// Marks the ids this request claimed as done by it.
    async fn mark_done(
        &self,
        keys: &[(String, bool)],
        claims: &[Claim],
        ingest: &str,
    ) -> Result<(), NatsError> {
        let done = Bytes::from(format!("done:{ingest}"));
        try_join_all(
            keys.iter()
                .zip(claims)
                .filter(|(_, claim)| matches!(claim, Claim::New))
                .map(|((key, _), _)| self.ids.put(key, done.clone())),
        )
        .await
        .map_err(|err| failed("mark ingested event ids as done", err))?;
        Ok(())
    }

    /// Releases this request's claims that are not done (best effort: a
    /// claim left pending lapses after [`CLAIM_LEASE_MS`]), so that the
    /// client's retry is taken at once.
    async fn release(&self, keys: &[(String, bool)], claims: &[Claim], ingest: &str) {
        let ours = keys
            .iter()
            .zip(claims)
            .filter(|(_, claim)| matches!(claim, Claim::New));
        let released = join_all(ours.map(|((key, _), _)| async move {
            let entry = self.ids.entry(key).await.ok().flatten()?;
            let value = std::str::from_utf8(&entry.value).ok()?;
            // Only our own pending claim, and only as we read it.
            if claim_standing(Some(value), ingest, now_ms()) == Standing::Undecided {
                self.ids
                    .purge_expect_revision(key, Some(entry.revision))
                    .await
                    .ok()?;
            }
            Some(())
        }))
        .await;
        if released.iter().any(Option::is_none) {
            tracing::warn!("cannot release every claim of a failed ingest; they lapse after their lease");
        }
    }

    /// The events of a fetched batch that count, by their claims; `None`
    /// while its request may still be storing (the batch is asked for
    /// again shortly, keeping its channel's order).
    async fn live_events(&self, message: &jetstream::Message, events: Vec<String>) -> Option<Vec<String>> {
        // Stored before batches named their request: every event counts.
        let Some(ingest) = message
            .headers
            .as_ref()
            .and_then(|h| h.get(INGEST))
            .map(|v| v.as_str().to_string())
        else {
            return Some(events);
        };
        // A batch is usually fetched a moment before its request marks it
        // done: look again a few times before handing it back.
        let mut standings = self.standings(&events, &ingest).await;
        for _ in 0..5 {
            if !standings.contains(&Standing::Undecided) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            standings = self.standings(&events, &ingest).await;
        }
        if standings.contains(&Standing::Undecided) {
            return None;
        }
        let live: Vec<String> = events
            .into_iter()
            .zip(standings)
            .filter_map(|(event, standing)| (standing == Standing::Live).then_some(event))
            .collect();
        Some(live)
    }

    /// Each event's [`Standing`] for a batch of request `ingest`.
    async fn standings(&self, events: &[String], ingest: &str) -> Vec<Standing> {
        let now = now_ms();
        join_all(events.iter().map(|event| {
            let ingest = ingest.to_string();
            async move {
                #[derive(serde::Deserialize)]
                struct Named {
                    #[serde(default)]
                    id: String,
                    #[serde(default)]
                    tenant: String,
                }
                // An unreadable event came as the request stored it: the
                // transform dead-letters it.
                let Ok(named) = serde_json::from_str::<Named>(event) else {
                    return Standing::Live;
                };
                let key = names::event_id_key(&named.tenant, &named.id);
                match self.ids.entry(&key).await {
                    Ok(entry) => {
                        let value = entry.filter(|e| e.operation == kv::Operation::Put);
                        let value = value.as_ref().and_then(|e| std::str::from_utf8(&e.value).ok());
                        claim_standing(value, &ingest, now)
                    }
                    // Asked again when the store answers.
                    Err(_) => Standing::Undecided,
                }
            }
        }))
        .await
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
        let decoded = decode_batch(&message.payload);
        let live = self.block("read event claims", async {
            Ok(self.live_events(&message, decoded).await)
        })?;
        let Some(live) = live else {
            // Its request may still be storing: ask again shortly, in order.
            let nak = message.ack_with(jetstream::AckKind::Nak(Some(UNDECIDED_RETRY)));
            let _ = self.block("return an undecided batch", async move {
                nak.await.map_err(|err| failed("return an undecided batch", err))
            });
            return Ok(Vec::new());
        };
        if live.is_empty() {
            // Every event is an inert copy of a failed request.
            let ack = message.ack();
            self.block("drop an inert batch", async move {
                ack.await.map_err(|err| failed("drop an inert batch", err))
            })?;
            return Ok(Vec::new());
        }
        let events: Vec<Pending> = live
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
    fn a_batch_counts_only_while_its_own_request_holds_its_claims_as_done() {
        let now = 1_000_000;
        assert_eq!(claim_standing(Some("done:a"), "a", now), Standing::Live);
        assert_eq!(claim_standing(Some("done"), "a", now), Standing::Live);
        assert_eq!(claim_standing(Some("done:b"), "a", now), Standing::Inert);
        assert_eq!(claim_standing(None, "a", now), Standing::Inert);
        assert_eq!(
            claim_standing(Some(&format!("pending:{}:a", now - 10)), "a", now),
            Standing::Undecided
        );
        assert_eq!(
            claim_standing(Some(&format!("pending:{}:a", now - CLAIM_LEASE_MS)), "a", now),
            Standing::Inert
        );
        assert_eq!(
            claim_standing(Some(&format!("pending:{}:b", now - 10)), "a", now),
            Standing::Inert
        );
        assert_eq!(claim_standing(Some("garbage"), "a", now), Standing::Inert);
    }

    #[test]
    fn batches_round_trip_any_text() {
        let events = ["{\"a\":1}", "", "line\nbreak 12\n", "é"];
        assert_eq!(decode_batch(&encode_batch(&events)), events);
        assert_eq!(decode_batch(b"garbage"), ["garbage"]);
        assert_eq!(decode_batch(b"99\nshort"), ["99\nshort"]);
    }
}
