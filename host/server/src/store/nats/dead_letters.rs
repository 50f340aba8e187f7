//! Dead letters on JetStream: the `SLUICE_DEAD` records, listing, reading, purging and replaying them.

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ingest::{RECEIVED, encode_batch};
use super::outbox::OutRecord;
use super::queue::{HEADROOM, msg_id};
use super::{NatsError, NatsStore, failed, names};
use crate::store::*;

/// What a `SLUICE_DEAD` message holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct DeadRecord {
    pub(super) tenant: String,
    pub(super) channel: String,
    pub(super) destination: Option<String>,
    pub(super) event_id: String,
    pub(super) stage: String,
    pub(super) reason: String,
    pub(super) created_ms: i64,
    pub(super) original: String,
    pub(super) detail: Value,
    pub(super) versions: Vec<String>,
    pub(super) attempts: Vec<Attempt>,
    /// What a resend delivers again (delivery stage only).
    pub(super) delivery: Option<OutRecord>,
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

impl NatsStore {
    /// A dead letter's message, with the original event and the detail
    /// cut to a note if the whole would not fit in one message.
    pub(super) fn fit(&self, mut letter: DeadRecord) -> Bytes {
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

    /// [`Queue::dead_letters`].
    pub(super) fn list_dead_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetterSummary>, StoreError> {
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

    /// [`Queue::dead_letter`].
    pub(super) fn read_dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
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

    /// [`Queue::purge_dead_letter`].
    pub(super) fn purge_one_dead_letter(&self, id: i64) -> Result<bool, StoreError> {
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

    /// [`Queue::purge_dead_letters`].
    pub(super) fn purge_matching_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64, StoreError> {
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

    /// [`Queue::replay`].
    pub(super) fn replay_dead_letter(&self, id: i64, how: Replay) -> Result<ReplayResult, StoreError> {
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
                    delivery.replayed = true;
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
}
