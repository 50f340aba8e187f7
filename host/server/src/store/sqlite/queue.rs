//! The durable queue on SQLite: ingest, the channels' inboxes, the outbox,
//! attempts, dead letters and channel switches.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use sluice_engine::state::{StateStore, StateUsage};

use super::{SqliteQueue, filter_clause, insert_outbox, json_or_text, summary_from_row, versions_text};
use crate::store::*;

/// A page of a tenant's ingest log, newest first, before a position.
pub(super) const LOG_PAGE_NEWEST_FIRST: &str =
    "SELECT received_ms, id, event FROM events WHERE tenant = ?1 AND received_ms >= ?2
   AND (received_ms < ?3 OR (received_ms = ?3 AND id < ?4))
 ORDER BY received_ms DESC, id DESC LIMIT ?5";
/// A page of a tenant's ingest log, oldest first, after a position.
pub(super) const LOG_PAGE_OLDEST_FIRST: &str =
    "SELECT received_ms, id, event FROM events WHERE tenant = ?1 AND received_ms >= ?2
   AND (received_ms, id) > (?3, ?4)
 ORDER BY received_ms, id LIMIT ?5";

/// Kinds queried one by one per round; a destination with more (a
/// tenant's own kinds) has the rest queried together.
const KINDS_APART: usize = 8;
/// The kinds a destination's queued deliveries have, at most one more than
/// [`KINDS_APART`]: an index seek per kind.
const KINDS: &str = "WITH RECURSIVE k(kind, n) AS (
        SELECT MIN(kind), 1 FROM outbox WHERE destination = ?1
        UNION ALL
        SELECT (SELECT MIN(kind) FROM outbox WHERE destination = ?1 AND kind > k.kind), n + 1
        FROM k WHERE k.kind IS NOT NULL AND n <= ?2
     )
     SELECT kind FROM k WHERE kind IS NOT NULL";
/// Each entity key's oldest due delivery, in queue order, with a filter
/// on its kind (`?4`) appended.
macro_rules! due_oldest {
    ($kind:literal) => {
        concat!(
            "SELECT seq, destination, channel, tenant, event_id, entity_key, idempotency_key,
                    correlation_id, output, attempts, created_ms, received_ms, versions,
                    payload_at, output_id, replayed, kind
             FROM outbox o
             WHERE destination = ?1 AND next_ms <= ?2
               AND NOT EXISTS (SELECT 1 FROM outbox p
                               WHERE p.destination = o.destination AND p.channel = o.channel
                                 AND p.entity_key = o.entity_key AND p.seq < o.seq)
               AND channel NOT IN (SELECT channel FROM channel_state WHERE enabled = 0) ",
            $kind,
            " ORDER BY seq LIMIT ?3"
        )
    };
}

/// Coalescing: each key's newest delivery of the unbroken run of its
/// oldest's kind (a delivery of another kind, or a dead letter resent by
/// hand, ends the run and keeps its place), if due, in the order of the
/// key's oldest. It walks the keys in their oldest delivery's order (an
/// index scan that stops at the limit). A key waits out the backoff of any
/// of its deliveries, and its newest carries the key's attempts, so updates
/// arriving while a destination is down neither bring its retries forward
/// nor start its count again. A filter on the oldest's kind is appended.
macro_rules! due_coalesced {
    ($kind:literal) => {
        concat!(
            "SELECT n.seq, n.destination, n.channel, n.tenant, n.event_id, n.entity_key,
                    n.idempotency_key, n.correlation_id, n.output,
                    (SELECT MAX(a.attempts) FROM outbox a
                     WHERE a.destination = o.destination AND a.channel = o.channel
                       AND a.entity_key = o.entity_key), n.created_ms,
                    n.received_ms, n.versions, n.payload_at, n.output_id, n.replayed, n.kind
             FROM outbox o
             JOIN outbox n ON n.seq = CASE WHEN o.replayed THEN o.seq ELSE
                 (SELECT MAX(m.seq) FROM outbox m
                  WHERE m.destination = o.destination AND m.channel = o.channel
                    AND m.entity_key = o.entity_key
                    AND m.seq < COALESCE((SELECT MIN(r.seq) FROM outbox r
                                          WHERE r.destination = o.destination AND r.channel = o.channel
                                            AND r.entity_key = o.entity_key AND r.seq > o.seq
                                            AND (r.replayed = 1 OR r.kind <> o.kind)),
                                         9223372036854775807)) END
             WHERE o.destination = ?1 AND n.next_ms <= ?2
               AND (SELECT MAX(b.next_ms) FROM outbox b
                    WHERE b.destination = o.destination AND b.channel = o.channel
                      AND b.entity_key = o.entity_key) <= ?2
               AND NOT EXISTS (SELECT 1 FROM outbox p
                               WHERE p.destination = o.destination AND p.channel = o.channel
                                 AND p.entity_key = o.entity_key AND p.seq < o.seq)
               AND o.channel NOT IN (SELECT channel FROM channel_state WHERE enabled = 0) ",
            $kind,
            " ORDER BY o.seq LIMIT ?3"
        )
    };
}

/// The oldest of each key whose oldest is of kind `?4` (index `outbox_kind`).
pub(super) const DUE_OLDEST_OF_KIND: &str = due_oldest!("AND kind = ?4");
/// The oldest of each key, whatever its kind (`?4` is NULL).
const DUE_OLDEST: &str = due_oldest!("AND ?4 IS NULL");
/// Coalescing, the keys whose oldest is of kind `?4` (index `outbox_kind`).
pub(super) const DUE_COALESCED_OF_KIND: &str = due_coalesced!("AND o.kind = ?4");
/// Coalescing, every key (`?4` is NULL).
pub(super) const DUE_COALESCED: &str = due_coalesced!("AND ?4 IS NULL");

impl Queue for SqliteQueue {
    fn ping(&self) -> Result<(), StoreError> {
        self.read(|db| Ok(db.query_row("SELECT 1", [], |_| Ok(()))?))
    }

    fn ingest(&self, events: Vec<Ingest>) -> Result<Vec<Receipt>, StoreError> {
        self.call(move |db| {
            let now = now_ms();
            let mut insert_event = db.prepare_cached(
                "INSERT INTO events (tenant, id, received_ms, event) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
            )?;
            let mut enqueue =
                db.prepare_cached("INSERT INTO inbox (channel, tenant, event_id) VALUES (?1, ?2, ?3)")?;
            let mut receipts = Vec::with_capacity(events.len());
            for event in events {
                let stored = insert_event.execute(params![event.tenant, event.id, now, event.event])?;
                if stored == 1 {
                    for channel in &event.channels {
                        enqueue.execute(params![channel, event.tenant, event.id])?;
                    }
                }
                receipts.push(Receipt {
                    id: event.id,
                    duplicate: stored == 0,
                });
            }
            Ok(receipts)
        })
    }

    fn pending(&self, channel: &str, after_seq: i64, limit: usize) -> Result<Vec<Pending>, StoreError> {
        let channel = channel.to_string();
        self.read(move |db| {
            let mut query = db.prepare_cached(
                "SELECT i.seq, e.event, e.received_ms FROM inbox i
                 JOIN events e ON e.tenant = i.tenant AND e.id = i.event_id
                 WHERE i.channel = ?1 AND i.seq > ?2 ORDER BY i.seq LIMIT ?3",
            )?;
            let rows = query.query_map(params![channel, after_seq, limit as i64], |row| {
                Ok(Pending {
                    seq: row.get(0)?,
                    event: row.get(1)?,
                    received_ms: row.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn transformed(&self, results: Vec<Transformed>) -> Result<(), StoreError> {
        self.call(move |db| {
            let now = now_ms();
            for result in &results {
                let removed = db
                    .prepare_cached("DELETE FROM inbox WHERE seq = ?1")?
                    .execute([result.seq])?;
                if removed == 0 {
                    continue; // Already recorded: never queue its outputs twice.
                }
                for delivery in result.disposition.deliveries() {
                    insert_outbox(db, result, delivery, now, result.received_ms)?;
                }
                super::state::write(db, &result.tenant, &result.channel, &result.state.writes)?;
                if let Some((reason, detail)) = result.disposition.dead_letter() {
                    db.prepare_cached(
                        "INSERT INTO dead_letters (tenant, channel, event_id, stage, reason, original,
                             detail, versions, attempts, created_ms)
                         VALUES (?1, ?2, ?3, 'transform', ?4, ?5, ?6, ?7, '[]', ?8)",
                    )?
                    .execute(params![
                        result.tenant,
                        result.channel,
                        result.event_id,
                        reason,
                        result.original,
                        detail.to_string(),
                        versions_text(&result.versions),
                        now,
                    ])?;
                }
            }
            Ok(())
        })
    }

    fn due(
        &self,
        destination: &str,
        now_ms: i64,
        limit: usize,
        coalesce: bool,
    ) -> Result<Vec<Delivery>, StoreError> {
        let destination = destination.to_string();
        self.read(move |db| {
            // The oldest of each key; coalescing, the newest, in its key's
            // turn (its oldest's position), so a busy key is not starved.
            // One snapshot for every query of the round.
            let snapshot = db.unchecked_transaction()?;
            let db: &Connection = &snapshot;
            let mut kinds: Vec<Option<String>> = db
                .prepare_cached(KINDS)?
                .query_map(params![&destination, KINDS_APART as i64], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            if kinds.len() > KINDS_APART {
                // Every kind at once; the ones apart again are dropped below.
                kinds.truncate(KINDS_APART);
                kinds.push(None);
            }
            // Up to `limit` of each kind: the worker orders them by the
            // destination's priority and takes its round from them.
            let mut due = Vec::new();
            for kind in kinds {
                let mut query = db.prepare_cached(match (coalesce, kind.is_some()) {
                    (true, true) => DUE_COALESCED_OF_KIND,
                    (true, false) => DUE_COALESCED,
                    (false, true) => DUE_OLDEST_OF_KIND,
                    (false, false) => DUE_OLDEST,
                })?;
                let rows = query.query_map(params![destination, now_ms, limit as i64, kind], |row| {
                    Ok(Delivery {
                        seq: row.get(0)?,
                        destination: row.get(1)?,
                        channel: row.get(2)?,
                        tenant: row.get(3)?,
                        event_id: row.get(4)?,
                        entity_key: row.get(5)?,
                        idempotency_key: row.get(6)?,
                        correlation_id: row.get(7)?,
                        output: row.get(8)?,
                        attempts: row.get(9)?,
                        created_ms: row.get(10)?,
                        received_ms: row.get(11)?,
                        versions: row.get(12)?,
                        payload_at: row
                            .get::<_, Option<i64>>(13)?
                            .and_then(|at| usize::try_from(at).ok()),
                        output_id: row.get(14)?,
                        replayed: row.get(15)?,
                        kind: row.get(16)?,
                    })
                })?;
                for row in rows {
                    due.push(row?);
                }
            }
            // One delivery per key in a round (the query of every kind
            // meets the kinds queried apart again).
            let mut seen = std::collections::HashSet::new();
            due.retain(|d: &Delivery| seen.insert((d.channel.clone(), d.entity_key.clone())));
            // Queue order across kinds, for a destination whose kinds share
            // alike (coalescing keeps each kind's order of keys' turns).
            if !coalesce {
                due.sort_by_key(|d: &Delivery| d.seq);
            }
            Ok(due)
        })
    }

    fn forget_fingerprints(
        &self,
        destination: Option<&str>,
        channel: Option<&str>,
    ) -> Result<(), StoreError> {
        let (destination, channel) = (destination.map(str::to_string), channel.map(str::to_string));
        self.call(move |db| {
            db.execute(
                "DELETE FROM fingerprints WHERE (?1 IS NULL OR destination = ?1) AND (?2 IS NULL OR channel = ?2)
                   AND (?1 IS NOT NULL OR ?2 IS NOT NULL)",
                params![destination, channel],
            )?;
            Ok(())
        })
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
        let (destination, keys) = (destination.to_string(), keys.to_vec());
        self.read(move |db| {
            let mut query = db.prepare_cached(
                "SELECT digest FROM fingerprints WHERE destination = ?1 AND channel = ?2 AND entity_key = ?3",
            )?;
            let mut found = Vec::with_capacity(keys.len());
            for (channel, key) in &keys {
                found.push(
                    query
                        .query_row(params![destination, channel, key], |row| row.get(0))
                        .optional()?,
                );
            }
            Ok(found)
        })
    }

    fn next_due_ms(&self, destination: &str) -> Result<Option<i64>, StoreError> {
        let destination = destination.to_string();
        self.read(move |db| {
            Ok(db
                .prepare_cached("SELECT MIN(next_ms) FROM outbox WHERE destination = ?1")?
                .query_row([destination], |row| row.get(0))?)
        })
    }

    fn attempted(&self, results: Vec<(Delivery, AttemptResult)>) -> Result<(), StoreError> {
        let tally = self.superseded.clone();
        self.call(move |db| {
            let mut superseded = Vec::new();
            for (delivery, result) in &results {
                match result {
                    AttemptResult::Delivered { fingerprint } => {
                        remove_delivery(db, delivery.seq)?;
                        if let Some(digest) = fingerprint {
                            db.prepare_cached(
                                "INSERT INTO fingerprints (destination, channel, entity_key, digest, at_ms)
                                 VALUES (?1, ?2, ?3, ?4, ?5)
                                 ON CONFLICT DO UPDATE SET digest = ?4, at_ms = ?5",
                            )?
                            .execute(params![
                                delivery.destination,
                                delivery.channel,
                                delivery.entity_key,
                                digest,
                                now_ms()
                            ])?;
                        }
                    }
                    AttemptResult::Unchanged => remove_delivery(db, delivery.seq)?,
                    AttemptResult::Retry { attempt, next_ms } => {
                        record_attempt(db, delivery.seq, attempt)?;
                        db.prepare_cached(
                            // The count as sent (a coalesced newest carries its key's).
                            "UPDATE outbox SET attempts = ?3, next_ms = ?2 WHERE seq = ?1",
                        )?
                        .execute(params![
                            delivery.seq,
                            next_ms,
                            delivery.attempts + 1
                        ])?;
                    }
                    AttemptResult::DeadLetter { attempt, reason } => {
                        record_attempt(db, delivery.seq, attempt)?;
                        dead_letter_delivery(db, delivery, reason)?;
                    }
                }
                if !matches!(result, AttemptResult::Retry { .. }) {
                    superseded.push(supersede_older(db, delivery)?);
                }
            }
            // Counted once the commit holds.
            Ok(superseded)
        })
        .map(|superseded| {
            for (told, more) in superseded {
                if let Some(first) = told.first() {
                    tally.add(&first.destination, &first.channel, more);
                }
                for replaced in told {
                    tally.add_one(replaced);
                }
            }
        })
    }

    fn set_enabled(&self, channel: &str, enabled: bool, from_config: bool) -> Result<bool, StoreError> {
        let channel = channel.to_string();
        self.call(move |db| {
            let current: Option<(bool, Option<bool>)> = db
                .query_row(
                    "SELECT enabled, config_enabled FROM channel_state WHERE channel = ?1",
                    [&channel],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let applied = match (from_config, current) {
                // The config's value is the one last applied: an API change stands.
                (true, Some((now, Some(seen)))) if seen == enabled => now,
                (true, _) => {
                    db.execute(
                        "INSERT INTO channel_state (channel, enabled, config_enabled) VALUES (?1, ?2, ?2)
                         ON CONFLICT (channel) DO UPDATE SET enabled = ?2, config_enabled = ?2,
                           reason = CASE WHEN ?2 THEN NULL ELSE reason END",
                        params![channel, enabled],
                    )?;
                    enabled
                }
                (false, _) => {
                    db.execute(
                        "INSERT INTO channel_state (channel, enabled) VALUES (?1, ?2)
                         ON CONFLICT (channel) DO UPDATE SET enabled = ?2,
                           reason = CASE WHEN ?2 THEN NULL ELSE reason END",
                        params![channel, enabled],
                    )?;
                    enabled
                }
            };
            Ok(applied)
        })
    }

    fn trip(&self, channel: &str, reason: &str) -> Result<(), StoreError> {
        let (channel, reason) = (channel.to_string(), reason.to_string());
        self.call(move |db| {
            db.execute(
                "INSERT INTO channel_state (channel, enabled, reason) VALUES (?1, 0, ?2)
                 ON CONFLICT (channel) DO UPDATE SET enabled = 0, reason = ?2",
                params![channel, reason],
            )?;
            Ok(())
        })
    }

    fn tripped(&self, channel: &str) -> Result<Option<String>, StoreError> {
        let channel = channel.to_string();
        self.read(move |db| {
            Ok(db
                .query_row(
                    "SELECT reason FROM channel_state WHERE channel = ?1",
                    [channel],
                    |row| row.get::<_, Option<String>>(0),
                )
                .optional()?
                .flatten())
        })
    }

    fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterSummary>, StoreError> {
        let (mut clause, values) = filter_clause(filter);
        if let Some(before) = filter.before {
            let joint = if clause.is_empty() { "WHERE" } else { " AND" };
            clause.push_str(&format!("{joint} id < {before}"));
        }
        let limit = filter.limit.unwrap_or(100);
        self.read(move |db| {
            let mut query = db.prepare(&format!(
                "SELECT id, tenant, channel, destination, event_id, stage, reason, created_ms
                 FROM dead_letters {clause} ORDER BY id DESC LIMIT {limit}"
            ))?;
            let rows = query.query_map(rusqlite::params_from_iter(values), summary_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        self.read(move |db| {
            let found = db
                .query_row("SELECT * FROM dead_letters WHERE id = ?1", [id], |row| {
                    let summary = summary_from_row(row)?;
                    let original: String = row.get("original")?;
                    let output: Option<String> = row.get("output")?;
                    let detail: String = row.get("detail")?;
                    let versions: String = row.get("versions")?;
                    let attempts: String = row.get("attempts")?;
                    Ok((summary, original, output, detail, versions, attempts))
                })
                .optional()?;
            let Some((summary, original, output, detail, versions, attempts)) = found else {
                return Ok(None);
            };
            let corrupt = |detail: serde_json::Error| StoreError::Corrupt {
                what: format!("dead letter {id}"),
                detail: detail.to_string(),
            };
            Ok(Some(DeadLetter {
                summary,
                original: json_or_text(&original),
                output: output.as_deref().map(json_or_text),
                detail: json_or_text(&detail),
                versions: serde_json::from_str(&versions).map_err(corrupt)?,
                attempts: serde_json::from_str(&attempts).map_err(corrupt)?,
            }))
        })
    }

    fn purge_dead_letter(&self, id: i64) -> Result<bool, StoreError> {
        self.call(move |db| Ok(db.execute("DELETE FROM dead_letters WHERE id = ?1", [id])? == 1))
    }

    fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64, StoreError> {
        let (clause, values) = filter_clause(filter);
        self.call(move |db| {
            Ok(db.execute(
                &format!("DELETE FROM dead_letters {clause}"),
                rusqlite::params_from_iter(values),
            )? as u64)
        })
    }

    fn replay(&self, id: i64, how: Replay) -> Result<ReplayResult, StoreError> {
        self.call(move |db| {
            let now = now_ms();
            let found = db
                .query_row(
                    "SELECT tenant, channel, destination, event_id, original, output, versions,
                            entity_key, idempotency_key, correlation_id
                     FROM dead_letters WHERE id = ?1",
                    [id],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, Option<String>>(2)?,
                            row.get::<_, String>(3)?,
                            row.get::<_, String>(4)?,
                            row.get::<_, Option<String>>(5)?,
                            row.get::<_, String>(6)?,
                            row.get::<_, Option<String>>(7)?,
                            row.get::<_, Option<String>>(8)?,
                            row.get::<_, Option<String>>(9)?,
                        ))
                    },
                )
                .optional()?;
            let Some((tenant, channel, destination, event_id, original, output, versions, key, idem, corr)) =
                found
            else {
                return Ok(ReplayResult::NotFound);
            };
            match how {
                Replay::Resend => {
                    let (Some(destination), Some(output), Some(key), Some(idem), Some(corr)) =
                        (destination, output, key, idem, corr)
                    else {
                        return Ok(ReplayResult::NothingToResend);
                    };
                    db.execute(
                        "INSERT INTO outbox (destination, channel, tenant, event_id, entity_key,
                             idempotency_key, correlation_id, output, versions, next_ms, created_ms,
                             received_ms, replayed, kind)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?10, 1,
                                 COALESCE(json_extract(?8, '$.kind'), ''))",
                        params![
                            destination,
                            channel,
                            tenant,
                            event_id,
                            key,
                            idem,
                            corr,
                            output,
                            versions,
                            now
                        ],
                    )?;
                }
                Replay::Retransform => {
                    db.execute(
                        "INSERT INTO events (tenant, id, received_ms, event) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT DO NOTHING",
                        params![tenant, event_id, now, original],
                    )?;
                    db.execute(
                        "INSERT INTO inbox (channel, tenant, event_id) VALUES (?1, ?2, ?3)",
                        params![channel, tenant, event_id],
                    )?;
                }
            }
            db.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
            Ok(ReplayResult::Queued)
        })
    }

    fn depth(&self, channel: &str) -> Result<Depth, StoreError> {
        let channel = channel.to_string();
        self.read(move |db| {
            let count = |sql: &str| -> rusqlite::Result<u64> {
                let count: i64 = db.prepare_cached(sql)?.query_row([&channel], |row| row.get(0))?;
                Ok(count as u64)
            };
            Ok(Depth {
                to_transform: count("SELECT COUNT(*) FROM inbox WHERE channel = ?1")?,
                to_deliver: count("SELECT COUNT(*) FROM outbox WHERE channel = ?1")?,
                dead_letters: count("SELECT COUNT(*) FROM dead_letters WHERE channel = ?1")?,
            })
        })
    }

    fn retry_backlog(&self, destination: &str) -> Result<u64, StoreError> {
        let destination = destination.to_string();
        self.read(move |db| {
            let count: i64 = db
                .prepare_cached("SELECT COUNT(*) FROM outbox WHERE destination = ?1 AND attempts > 0")?
                .query_row([&destination], |row| row.get(0))?;
            Ok(count as u64)
        })
    }

    fn stored_events(&self, query: &StoredQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let query = query.clone();
        self.read(move |db| {
            let row = |row: &rusqlite::Row| {
                Ok(StoredEvent {
                    received_ms: row.get(0)?,
                    id: row.get(1)?,
                    event: row.get(2)?,
                })
            };
            let limit = query.limit as i64;
            let (newest_first, from) = (query.newest_first, query.from.clone());
            let (from_ms, from_id) = from.unwrap_or(if newest_first {
                (i64::MAX, String::new())
            } else {
                (i64::MIN, String::new())
            });
            let sql = if newest_first {
                LOG_PAGE_NEWEST_FIRST
            } else {
                LOG_PAGE_OLDEST_FIRST
            };
            let mut statement = db.prepare_cached(sql)?;
            let rows = statement.query_map(
                params![query.tenant, query.since_ms, from_ms, from_id, limit],
                row,
            )?;
            let (mut found, mut bytes) = (Vec::new(), 0);
            for stored in rows {
                let stored: StoredEvent = stored?;
                bytes += stored.event.len();
                found.push(stored);
                if bytes > crate::store::STORED_PAGE_BYTES {
                    break;
                }
            }
            Ok(found)
        })
    }

    fn state(&self, tenant: &str, channel: &str) -> Result<(Arc<dyn StateStore>, StateUsage), StoreError> {
        let usage = self.read(|db| super::state::usage(db, tenant))?;
        let state = super::state::ChannelState::new(self.path.clone(), tenant, channel);
        Ok((Arc::new(state), usage))
    }

    fn append_stories(
        &self,
        entries: Vec<crate::observe::story::StoryEntry>,
        _config: &crate::observe::story::StoriesConfig,
    ) -> Result<(), StoreError> {
        self.stories.write(|db| super::stories::append(db, &entries))
    }

    fn event_story(
        &self,
        tenant: &str,
        event_id: &str,
        limit: usize,
    ) -> Result<Vec<crate::observe::story::StoryEntry>, StoreError> {
        self.stories
            .read(|db| super::stories::of_event(db, tenant, event_id, limit))
    }

    fn entity_stories(
        &self,
        tenant: &str,
        key: &str,
        channel: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::observe::story::StoryEntry>, StoreError> {
        self.stories
            .read(|db| super::stories::of_entity(db, tenant, key, channel, limit))
    }

    fn prune_stories(&self, config: &crate::observe::story::StoriesConfig) -> Result<u64, StoreError> {
        self.stories
            .write(|db| super::stories::prune(db, config, now_ms()))
    }

    fn forget_state(&self, tenant: &str, channel: &str) -> Result<(), StoreError> {
        let (tenant, channel) = (tenant.to_string(), channel.to_string());
        self.call(move |db| super::state::forget(db, &tenant, &channel))
    }

    fn discard_channel(&self, _tenant: &str, channel: &str) -> Result<u64, StoreError> {
        let channel = channel.to_string();
        self.call(move |db| {
            let now = now_ms();
            let detail = serde_json::json!("the channel was deleted with ?discard=true").to_string();
            let queued = db.execute(
                "INSERT INTO dead_letters (tenant, channel, event_id, stage, reason, original, detail, versions, attempts, created_ms)
                 SELECT i.tenant, i.channel, i.event_id, 'transform', 'discarded', e.event, ?2, '[]', '[]', ?3
                 FROM inbox i JOIN events e ON e.tenant = i.tenant AND e.id = i.event_id
                 WHERE i.channel = ?1 ORDER BY i.seq",
                params![channel, detail, now],
            )?;
            db.execute("DELETE FROM inbox WHERE channel = ?1", params![channel])?;
            let outgoing = db.execute(
                "INSERT INTO dead_letters (tenant, channel, destination, event_id, stage, reason, original, output,
                     detail, versions, attempts, entity_key, idempotency_key, correlation_id, created_ms)
                 SELECT o.tenant, o.channel, o.destination, o.event_id, 'delivery', 'discarded', COALESCE(e.event, 'null'),
                     o.output, ?2, o.versions, '[]', o.entity_key, o.idempotency_key, o.correlation_id, ?3
                 FROM outbox o LEFT JOIN events e ON e.tenant = o.tenant AND e.id = o.event_id
                 WHERE o.channel = ?1 ORDER BY o.seq",
                params![channel, detail, now],
            )?;
            db.execute(
                "DELETE FROM attempts WHERE outbox_seq IN (SELECT seq FROM outbox WHERE channel = ?1)",
                params![channel],
            )?;
            db.execute("DELETE FROM outbox WHERE channel = ?1", params![channel])?;
            Ok((queued + outgoing) as u64)
        })
    }

    fn forget_before(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.call(move |db| {
            Ok(db.execute(
                "DELETE FROM events WHERE received_ms < ?1
                   AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.tenant = events.tenant AND i.event_id = events.id)
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.tenant = events.tenant AND o.event_id = events.id)",
                [before_ms],
            )? as u64)
        })
    }
}

pub(super) fn active_pipeline(db: &Connection, channel: &str) -> rusqlite::Result<Option<String>> {
    db.query_row(
        "SELECT spec FROM channel_pipelines WHERE channel = ?1 ORDER BY seq DESC LIMIT 1",
        [channel],
        |row| row.get(0),
    )
    .optional()
}

/// Takes a delivery and its attempts out of the outbox.
fn remove_delivery(db: &Connection, seq: i64) -> rusqlite::Result<()> {
    db.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?
        .execute([seq])?;
    db.prepare_cached("DELETE FROM attempts WHERE outbox_seq = ?1")?
        .execute([seq])?;
    Ok(())
}

/// Removes the deliveries of `settled`'s key and kind queued before it
/// (only coalescing leaves any; never a resend by hand): the latest won.
/// How many.
/// Most superseded deliveries of one settled delivery told to their stories.
const MAX_SUPERSEDED_TOLD: usize = 1000;

/// Deletes the queued deliveries `settled` supersedes: the first of them,
/// and how many more.
fn supersede_older(
    db: &Connection,
    settled: &Delivery,
) -> rusqlite::Result<(Vec<crate::store::SupersededDelivery>, u64)> {
    // A resend by hand replaces nothing, and nothing replaces one.
    if settled.replayed {
        return Ok((Vec::new(), 0));
    }
    let keys = params![
        settled.destination,
        settled.channel,
        settled.entity_key,
        settled.seq,
        settled.kind
    ];
    let older =
        "destination = ?1 AND channel = ?2 AND entity_key = ?3 AND seq < ?4 AND kind = ?5 AND replayed = 0";
    db.prepare_cached(&format!(
        "DELETE FROM attempts WHERE outbox_seq IN (SELECT seq FROM outbox WHERE {older})"
    ))?
    .execute(keys)?;
    let mut removed = db.prepare_cached(&format!(
        "DELETE FROM outbox WHERE {older} RETURNING tenant, event_id"
    ))?;
    let rows = removed.query_map(keys, |row| {
        Ok(crate::store::SupersededDelivery {
            destination: settled.destination.clone(),
            channel: settled.channel.clone(),
            tenant: row.get(0)?,
            event_id: row.get(1)?,
            entity_key: settled.entity_key.clone(),
        })
    })?;
    // Every row is deleted; the first thousand are kept for their stories
    // (a key coalesced while its destination was down for a day may have
    // many more), the rest only counted.
    let mut kept = Vec::new();
    let mut more = 0u64;
    for row in rows {
        let row = row?;
        if kept.len() < MAX_SUPERSEDED_TOLD {
            kept.push(row);
        } else {
            more += 1;
        }
    }
    Ok((kept, more))
}

fn record_attempt(db: &Connection, seq: i64, attempt: &Attempt) -> rusqlite::Result<()> {
    db.prepare_cached("INSERT INTO attempts (outbox_seq, at_ms, status, detail) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![seq, attempt.at_ms, attempt.status, attempt.detail])?;
    Ok(())
}

/// Moves an outbox row and its attempts to dead letters.
fn dead_letter_delivery(db: &Connection, delivery: &Delivery, reason: &str) -> Result<(), StoreError> {
    let attempts: Vec<Attempt> = db
        .prepare_cached("SELECT at_ms, status, detail FROM attempts WHERE outbox_seq = ?1 ORDER BY rowid")?
        .query_map([delivery.seq], |row| {
            Ok(Attempt {
                at_ms: row.get(0)?,
                status: row.get(1)?,
                detail: row.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let original: Option<String> = db
        .query_row(
            "SELECT event FROM events WHERE tenant = ?1 AND id = ?2",
            params![delivery.tenant, delivery.event_id],
            |row| row.get(0),
        )
        .optional()?;
    let versions: String = db.query_row(
        "SELECT versions FROM outbox WHERE seq = ?1",
        [delivery.seq],
        |row| row.get(0),
    )?;
    db.execute(
        "INSERT INTO dead_letters (tenant, channel, destination, event_id, stage, reason, original, output,
             detail, versions, attempts, entity_key, idempotency_key, correlation_id, created_ms)
         VALUES (?1, ?2, ?3, ?4, 'delivery', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            delivery.tenant,
            delivery.channel,
            delivery.destination,
            delivery.event_id,
            reason,
            original.unwrap_or_else(|| "null".into()),
            delivery.output,
            serde_json::json!({"attempts": attempts.len()}).to_string(),
            versions,
            serde_json::to_string(&attempts).unwrap_or_else(|_| "[]".into()),
            delivery.entity_key,
            delivery.idempotency_key,
            delivery.correlation_id,
            now_ms(),
        ],
    )?;
    db.execute("DELETE FROM outbox WHERE seq = ?1", [delivery.seq])?;
    db.execute("DELETE FROM attempts WHERE outbox_seq = ?1", [delivery.seq])?;
    Ok(())
}
