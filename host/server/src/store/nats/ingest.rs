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
pub(super) fn decode_batch(bytes: &[u8]) -> Vec<String> {
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
/// A claim names the ingest request that holds it: `pending:<ms>:<request>`
/// while that request stores its events, `done:<request>` after. Whether a
/// request counts is decided once, atomically, by its commit key
/// `ingest.<request>` in the same bucket: the request creates it `done`
/// after every publish succeeded, or anyone who gives up on the request (its
/// own failure path, a consumer or a later request, past the lease) creates
/// it `aborted`. Create-if-absent lets only one of them win, so a request
/// is all or nothing whatever the clocks say: JetStream cannot store
/// several messages at once, so a request that fails half-way may leave
/// batches stored, and they are inert because their request is aborted.
enum Claim {
    /// This request holds the id, as of the claim's revision.
    New(u64),
    Duplicate,
}

/// What a claim's value says.
#[derive(Debug, PartialEq, Eq)]
enum ClaimValue<'a> {
    /// Stored by a committed request.
    Done,
    /// Held by a request since this time.
    Pending { since: i64, request: &'a str },
    /// Given up by a failed request, or not a claim at all: free to take.
    Free,
}

fn read_claim(value: &str) -> ClaimValue<'_> {
    if value == "done" || value.starts_with("done:") {
        return ClaimValue::Done;
    }
    match value
        .strip_prefix("pending:")
        .and_then(|rest| rest.split_once(':'))
    {
        Some((since, request)) => match since.parse() {
            Ok(since) => ClaimValue::Pending { since, request },
            Err(_) => ClaimValue::Free,
        },
        None => ClaimValue::Free,
    }
}

/// A request's commit key in `sluice-ids`.
fn commit_key(request: &str) -> String {
    format!("ingest.{request}")
}

/// Whether a request's stored events count.
#[derive(Debug, PartialEq, Eq)]
enum Standing {
    /// It was committed: transform them.
    Live,
    /// It may still be storing: ask again shortly.
    Undecided,
    /// It was aborted: its stored copies are inert.
    Inert,
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
    /// Claims an event id for request `ingest`. An id done by a committed
    /// request is a duplicate; one pending in a request that may still be
    /// storing makes this one answer 503 (retry), so one id is never queued
    /// by two requests at once; one whose request was aborted, or gave up
    /// past [`CLAIM_LEASE_MS`], is taken over.
    async fn claim(&self, key: &str, now: i64, ingest: &str) -> Result<Claim, NatsError> {
        self.connected()?;
        let pending = Bytes::from(format!("pending:{now}:{ingest}"));
        match self.ids.create(key, pending.clone()).await {
            Ok(revision) => return Ok(Claim::New(revision)),
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
        if entry.operation == kv::Operation::Put {
            match read_claim(std::str::from_utf8(&entry.value).unwrap_or("")) {
                ClaimValue::Done => return Ok(Claim::Duplicate),
                ClaimValue::Pending { since, request } => match self.decide(request, since, now).await? {
                    Standing::Live => return Ok(Claim::Duplicate),
                    Standing::Undecided => return Err(NatsError::InFlight),
                    Standing::Inert => {}
                },
                ClaimValue::Free => {}
            }
        }
        match self.ids.update(key, pending, entry.revision).await {
            Ok(revision) => Ok(Claim::New(revision)),
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(NatsError::InFlight),
            Err(err) => Err(failed("claim an event id", err)),
        }
    }

    /// Whether request `request`, pending since `since`, counts: its commit
    /// key says; with none, it is undecided within the lease, and past it
    /// this caller aborts it (or learns that it committed meanwhile).
    async fn decide(&self, request: &str, since: i64, now: i64) -> Result<Standing, NatsError> {
        let key = commit_key(request);
        let committed = self.commit_of(&key).await?;
        let age = now - since;
        match committed {
            Some(true) => return Ok(Standing::Live),
            Some(false) => return Ok(Standing::Inert),
            None if age < CLAIM_LEASE_MS => return Ok(Standing::Undecided),
            // Older than the bucket remembers (a channel held off for longer
            // than the idempotency window): the decision is gone, and the
            // batch counts rather than an accepted event be lost. A copy of
            // an aborted request then goes out under the same
            // Idempotency-Key as its retry's.
            None if age >= i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX) => {
                return Ok(Standing::Live);
            }
            None => {}
        }
        match self.ids.create(&key, Bytes::from_static(b"aborted")).await {
            Ok(_) => Ok(Standing::Inert),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                Ok(if self.commit_of(&key).await? == Some(true) {
                    Standing::Live
                } else {
                    Standing::Inert
                })
            }
            Err(err) => Err(failed("abort an ingest", err)),
        }
    }

    /// A commit key's decision: `Some(true)` committed, `Some(false)` aborted.
    async fn commit_of(&self, key: &str) -> Result<Option<bool>, NatsError> {
        let entry = self
            .ids
            .entry(key)
            .await
            .map_err(|err| failed("read an ingest's commit", err))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| e.value.as_ref() == b"done"))
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
                Ok(()) => self.commit(&ingest).await,
                Err(err) => Err(err),
            };
            if let Err(err) = stored {
                self.release(&keys, &claims, &ingest).await;
                return Err(err);
            }
            // Committed: the claims' `done` only spares later duplicates a
            // look at the commit key, so a failure here changes nothing.
            self.mark_done(&keys, &claims, &ingest).await;
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
                .filter(|(_, c)| matches!(c, Ok(Claim::New(_))));
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
            if matches!(claim, Claim::New(_)) {
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

    /// Commits request `ingest`: from here on its stored events count. Fails
    /// if it was aborted meanwhile (a consumer or another request gave up
    /// on it past the lease).
    async fn commit(&self, ingest: &str) -> Result<(), NatsError> {
        match self
            .ids
            .create(commit_key(ingest), Bytes::from_static(b"done"))
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => Err(NatsError::InFlight),
            Err(err) => Err(failed("commit an ingest", err)),
        }
    }

    /// Marks the ids this request claimed as done by it, each only if the
    /// claim is still the one it made; a failure is only logged, since the
    /// commit stands for them.
    async fn mark_done(&self, keys: &[(String, bool)], claims: &[Claim], ingest: &str) {
        let done = Bytes::from(format!("done:{ingest}"));
        if !self.set_own_claims(keys, claims, done).await {
            tracing::warn!("cannot mark every id of a committed ingest as done; its commit stands for them");
        }
    }

    /// Sets every claim this request made to `value`, each only at the
    /// revision it made (so never over another request's claim); whether all were set.
    async fn set_own_claims(&self, keys: &[(String, bool)], claims: &[Claim], value: Bytes) -> bool {
        let set = join_all(
            keys.iter()
                .zip(claims)
                .filter_map(|((key, _), claim)| match claim {
                    Claim::New(revision) => Some(self.ids.update(key, value.clone(), *revision)),
                    Claim::Duplicate => None,
                }),
        )
        .await;
        set.iter().all(Result::is_ok)
    }

    /// Gives up a failed request: aborts it (unless a commit that seemed
    /// to fail did land) and releases its claims, each only if it is still
    /// the one it made, so that the client's retry is taken at once.
    async fn release(&self, keys: &[(String, bool)], claims: &[Claim], ingest: &str) {
        match self
            .ids
            .create(commit_key(ingest), Bytes::from_static(b"aborted"))
            .await
        {
            Ok(_) => {}
            // Committed after all: its events count.
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot abort a failed ingest; it is aborted when its lease ends");
                return;
            }
        }
        let released = Bytes::from(format!("released:{ingest}"));
        if !self.set_own_claims(keys, claims, released).await {
            tracing::warn!(
                "cannot release every claim of a failed ingest; they are taken over when their lease ends"
            );
        }
    }

    /// Whether a fetched batch's events count: all of them if its request
    /// was committed, none if it was aborted; `None` while it may still be
    /// storing (the batch is asked for again shortly, keeping its channel's
    /// order).
    pub(super) async fn live_events(
        &self,
        headers: Option<&async_nats::HeaderMap>,
        events: Vec<String>,
    ) -> Result<Option<Vec<String>>, NatsError> {
        // Stored before batches named their request: every event counts.
        let Some(ingest) = headers
            .and_then(|h| h.get(INGEST))
            .map(|v| v.as_str().to_string())
        else {
            return Ok(Some(events));
        };
        let received: i64 = headers
            .and_then(|h| h.get(RECEIVED))
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or_else(now_ms);
        // A batch is usually fetched a moment before its request commits:
        // look again a few times before handing it back.
        let mut standing = self.decide(&ingest, received, now_ms()).await?;
        for _ in 0..5 {
            if standing != Standing::Undecided {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            standing = self.decide(&ingest, received, now_ms()).await?;
        }
        Ok(match standing {
            Standing::Live => Some(events),
            Standing::Inert => Some(Vec::new()),
            Standing::Undecided => None,
        })
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
        let live = self.block(
            "read an ingest's commit",
            self.live_events(message.headers.as_ref(), decoded),
        )?;
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
    fn claims_read_as_done_pending_or_free() {
        assert_eq!(read_claim("done"), ClaimValue::Done);
        assert_eq!(read_claim("done:r1"), ClaimValue::Done);
        assert_eq!(
            read_claim("pending:17:r1"),
            ClaimValue::Pending {
                since: 17,
                request: "r1"
            }
        );
        assert_eq!(read_claim("released:r1"), ClaimValue::Free);
        assert_eq!(read_claim("pending:soon:r1"), ClaimValue::Free);
        assert_eq!(read_claim(""), ClaimValue::Free);
    }

    #[test]
    fn batches_round_trip_any_text() {
        let events = ["{\"a\":1}", "", "line\nbreak 12\n", "é"];
        assert_eq!(decode_batch(&encode_batch(&events)), events);
        assert_eq!(decode_batch(b"garbage"), ["garbage"]);
        assert_eq!(decode_batch(b"99\nshort"), ["99\nshort"]);
    }
}
