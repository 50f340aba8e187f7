//! Latest wins on JetStream (`coalesce`) and the fingerprints of accepted
//! outputs (`skip-unchanged`).
//!
//! A partition has one delivery in flight in the cluster, so one node
//! holds the oldest message of each entity key. Coalescing, before it sends
//! that message it looks through the partition's queued messages for a
//! newer one of the same key and sends the newest instead, with that one's
//! `Idempotency-Key`. Once the send is settled it stores the key's
//! watermark (`sluice-attempts`, `w.<destination>.<channel>.<key digest>`)
//! and only then acknowledges the held message; every message of the key
//! at or below the watermark is acknowledged on arrival without a send
//! (superseded, or the newest itself). A node that dies in between leaves
//! the held message to another node, which finds the same newest message
//! and sends it again with the same key.

use async_nats::jetstream::{self, kv};
use sha2::{Digest, Sha256};

use super::outbox::OutRecord;
use super::{NatsError, NatsStore, failed, names};
use crate::store::StoreError;

/// The bucket of what each destination last accepted.
pub(super) const FINGERPRINTS: &str = "sluice-fingerprints";

/// Queued messages of a partition looked through for a newer one of the
/// same key, per send. A key whose newest is further back is coalesced
/// in steps.
const LOOK_AHEAD: usize = 64;
/// The longest one look ahead takes (it runs inside a store call's 10 s).
const LOOK_AHEAD_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// The first message on `subject` at or after stream position `from`.
pub(super) async fn next_on_subject(
    stream: &jetstream::stream::Stream,
    subject: &str,
    from: u64,
) -> Result<Option<jetstream::message::StreamMessage>, NatsError> {
    match stream.direct_get_next_for_subject(subject, Some(from)).await {
        Ok(message) => Ok(Some(message)),
        Err(err) if err.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(err) => Err(failed("read a queued message", err)),
    }
}

/// The watermark key of `record`'s (destination, channel, entity key, kind).
fn watermark_key(record: &OutRecord) -> String {
    entity_key(
        "w.",
        &record.destination,
        &record.channel,
        &format!("{}\u{0}{}", record.kind, record.entity_key),
    )
}

/// The bucket key of what is kept for one (destination, channel, entity key).
fn entity_key(prefix: &str, destination: &str, channel: &str, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!(
        "{prefix}{}.{}.{}",
        names::token(destination),
        names::token(channel),
        hex::encode(&digest[..16])
    )
}

impl NatsStore {
    /// The newest message of `record`'s entity key queued after position
    /// `from` in the unbroken run of its kind (a message of another kind of
    /// the key, or a resend by hand, ends it and keeps its place), if there
    /// is one, and the last position looked at.
    pub(super) async fn newest_of_key(
        &self,
        from: u64,
        record: &OutRecord,
    ) -> Result<(Option<(u64, OutRecord)>, u64), NatsError> {
        if record.replayed {
            return Ok((None, from));
        }
        let subject = names::outbound(
            &record.destination,
            names::partition(&record.entity_key),
            &record.channel,
        );
        let (mut newest, mut looked) = (None, from);
        let deadline = tokio::time::Instant::now() + LOOK_AHEAD_TIME;
        // A work-queue stream takes no second consumer on a subject: read
        // message by message (a direct get each, none once nothing is left).
        for _ in 0..LOOK_AHEAD {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            let Some(message) = next_on_subject(&self.outbound, &subject, looked + 1).await? else {
                break;
            };
            if let Ok(later) = serde_json::from_slice::<OutRecord>(&message.payload)
                && later.entity_key == record.entity_key
            {
                // Another kind of the key, or a resend by hand, ends the run.
                if later.replayed || later.kind != record.kind {
                    break;
                }
                newest = Some((message.sequence, later));
            }
            looked = message.sequence;
        }
        Ok((newest, looked))
    }

    /// The position at or below which `record`'s key and kind are
    /// settled, if any.
    pub(super) async fn settled_up_to(&self, record: &OutRecord) -> Result<Option<u64>, NatsError> {
        let value = self
            .attempts
            .get(watermark_key(record))
            .await
            .map_err(|e| failed("read a key's watermark", e))?;
        Ok(value.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()))
    }

    /// Raises the watermark of `record`'s key and kind to `seq`; never
    /// lowers it (a node that took over a message past `ack_wait` may have
    /// settled a newer one meanwhile).
    pub(super) async fn settle_up_to(&self, record: &OutRecord, seq: u64) -> Result<(), NatsError> {
        let key = watermark_key(record);
        for _ in 0..10 {
            let entry = self
                .attempts
                .entry(&key)
                .await
                .map_err(|e| failed("read a key's watermark", e))?;
            let written = match entry.filter(|e| e.operation == kv::Operation::Put) {
                Some(entry) => {
                    let current: u64 = std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if current >= seq {
                        return Ok(());
                    }
                    self.attempts
                        .update(&key, seq.to_string().into(), entry.revision)
                        .await
                        .is_ok()
                }
                None => self.attempts.create(&key, seq.to_string().into()).await.is_ok(),
            };
            if written {
                return Ok(());
            }
        }
        Err(NatsError::Failed {
            what: "store a key's watermark",
            detail: "it kept changing under concurrent writers".into(),
        })
    }

    /// Stores the fingerprint of the output `record`'s destination accepted.
    pub(super) async fn keep_fingerprint(&self, record: &OutRecord, digest: &str) -> Result<(), NatsError> {
        let key = entity_key("", &record.destination, &record.channel, &record.entity_key);
        self.fingerprints
            .put(key, digest.to_string().into())
            .await
            .map(drop)
            .map_err(|e| failed("store a fingerprint", e))
    }

    /// [`crate::store::Queue::forget_fingerprints`]: one purge of the
    /// bucket's stream by subject.
    pub(super) fn forget_fingerprints_of(
        &self,
        destination: Option<&str>,
        channel: Option<&str>,
    ) -> Result<(), StoreError> {
        if destination.is_none() && channel.is_none() {
            return Ok(());
        }
        let part = |name: Option<&str>| name.map_or("*".to_string(), names::token);
        let subject = format!("$KV.{FINGERPRINTS}.{}.{}.*", part(destination), part(channel));
        let js = jetstream::new(self.client.clone());
        self.block("forget fingerprints", async move {
            let stream = js
                .get_stream(format!("KV_{FINGERPRINTS}"))
                .await
                .map_err(|e| failed("forget fingerprints", e))?;
            stream
                .purge()
                .filter(subject)
                .await
                .map(drop)
                .map_err(|e| failed("forget fingerprints", e))
        })
    }

    /// [`crate::store::Queue::fingerprints`].
    pub(super) fn read_fingerprints(
        &self,
        destination: &str,
        keys: &[(String, String)],
    ) -> Result<Vec<Option<String>>, StoreError> {
        let bucket = self.fingerprints.clone();
        let keys: Vec<String> = keys
            .iter()
            .map(|(channel, key)| entity_key("", destination, channel, key))
            .collect();
        self.block("read fingerprints", async move {
            let reads = keys.iter().map(|key| bucket.get(key));
            let found = futures_util::future::join_all(reads).await;
            found
                .into_iter()
                .map(|value| {
                    value
                        .map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned()))
                        .map_err(|e| failed("read a fingerprint", e))
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_keys_are_bounded_and_cannot_add_tokens() {
        let huge = "x".repeat(1 << 20);
        let key = entity_key("w.", "portal", "a.b", &huge);
        assert!(key.len() < 100, "{key}");
        assert_eq!(key.matches('.').count(), 3, "{key}");
        assert_ne!(
            entity_key("w.", "portal", "stock", "A"),
            entity_key("w.", "portal", "stock", "B")
        );
    }
}
