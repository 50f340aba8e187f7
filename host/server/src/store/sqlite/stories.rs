//! Event stories in SQLite: a database file of their own, `stories.db`
//! beside `sluice.db`, with its own connection, so that they never wait
//! for or hold the events' writer, and with `synchronous = NORMAL`: a
//! story is a diagnostic, and a power cut may lose its last entries (the
//! events are committed with FULL in `sluice.db`). One row per entry,
//! found by (tenant, event id) and by (tenant, entity key); `story_usage`
//! keeps each tenant's bytes so that retention needs no scan to know who
//! is over.

/// The stories database's schema.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS stories (
        id INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL,
        event_id TEXT NOT NULL,
        channel TEXT,
        entity_key TEXT,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        bytes INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS stories_event ON stories (tenant, event_id);
    CREATE INDEX IF NOT EXISTS stories_entity ON stories (tenant, entity_key) WHERE entity_key IS NOT NULL;
    CREATE TABLE IF NOT EXISTS story_usage (
        tenant TEXT PRIMARY KEY,
        bytes INTEGER NOT NULL
    ) WITHOUT ROWID;";

/// `stories.db`: one connection that writes (the one story writer and
/// the prune take turns) and one that reads.
pub(super) struct StoryDb {
    writer: std::sync::Mutex<Connection>,
    reader: std::sync::Mutex<Connection>,
}

impl StoryDb {
    /// Opens (or makes) the file.
    pub(super) fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        let writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(None, "synchronous", "NORMAL")?;
        writer.pragma_update(None, "busy_timeout", 5000)?;
        writer.execute_batch(SCHEMA)?;
        let reader = Connection::open(path)?;
        reader.pragma_update(None, "busy_timeout", 5000)?;
        reader.pragma_update(None, "query_only", true)?;
        Ok(Self {
            writer: std::sync::Mutex::new(writer),
            reader: std::sync::Mutex::new(reader),
        })
    }

    /// Runs `work` in one transaction of the writer.
    pub(super) fn write<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut db = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let transaction = db.transaction()?;
        let value = work(&transaction)?;
        transaction.commit()?;
        Ok(value)
    }

    /// Runs `work` on the reader.
    pub(super) fn read<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        work(
            &self
                .reader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, params};
use serde_json::value::RawValue;

use crate::observe::story::{StoriesConfig, StoryEntry, StoryKind};
use crate::store::StoreError;

/// Rows read per step while pruning.
const PRUNE_BATCH: i64 = 5_000;
/// Most rows one prune removes, so that it never holds the writer long.
const MAX_PRUNED: u64 = 20_000;

/// Appends `entries`, counting their bytes to their tenants (one update
/// per tenant).
pub(super) fn append(db: &Connection, entries: &[StoryEntry]) -> Result<(), StoreError> {
    let mut insert = db.prepare_cached(
        "INSERT INTO stories (tenant, event_id, channel, entity_key, at_ms, kind, detail, bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut per_tenant: HashMap<&str, i64> = HashMap::new();
    for entry in entries {
        let bytes = entry.size() as i64;
        insert.execute(params![
            entry.tenant,
            entry.event_id,
            entry.channel,
            entry.entity_key,
            entry.at_ms,
            kind_text(entry.kind),
            entry.detail.get(),
            bytes,
        ])?;
        *per_tenant.entry(&entry.tenant).or_default() += bytes;
    }
    let mut usage = db.prepare_cached(
        "INSERT INTO story_usage (tenant, bytes) VALUES (?1, ?2)
         ON CONFLICT (tenant) DO UPDATE SET bytes = bytes + excluded.bytes",
    )?;
    for (tenant, bytes) in per_tenant {
        usage.execute(params![tenant, bytes])?;
    }
    Ok(())
}

fn kind_text(kind: StoryKind) -> &'static str {
    match kind {
        StoryKind::Accepted => "accepted",
        StoryKind::Transformed => "transformed",
        StoryKind::Queued => "queued",
        StoryKind::Attempt => "attempt",
        StoryKind::Superseded => "superseded",
        StoryKind::Unchanged => "unchanged",
        StoryKind::DeadLettered => "dead-lettered",
    }
}

fn kind_of(text: &str) -> Option<StoryKind> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
}

/// One event's entries, oldest first: its newest `limit`.
pub(super) fn of_event(
    db: &Connection,
    tenant: &str,
    event_id: &str,
    limit: usize,
) -> Result<Vec<StoryEntry>, StoreError> {
    let mut query = db.prepare_cached(
        "SELECT tenant, event_id, channel, entity_key, at_ms, kind, detail FROM stories
         WHERE tenant = ?1 AND event_id = ?2 ORDER BY id DESC LIMIT ?3",
    )?;
    let rows = query.query_map(params![tenant, event_id, limit as i64], |row| {
        let kind: String = row.get(5)?;
        let detail: String = row.get(6)?;
        Ok(kind_of(&kind).map(|kind| StoryEntry {
            tenant: row.get(0).unwrap_or_default(),
            event_id: row.get(1).unwrap_or_default(),
            channel: row.get(2).unwrap_or_default(),
            entity_key: row.get(3).unwrap_or_default(),
            at_ms: row.get(4).unwrap_or_default(),
            kind,
            detail: RawValue::from_string(detail)
                .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON")),
        }))
    })?;
    let mut entries: Vec<StoryEntry> = rows.filter_map(|row| row.transpose()).collect::<Result<_, _>>()?;
    entries.reverse();
    Ok(entries)
}

/// Rows of one entity key read to find its newest events.
const ENTITY_SCAN: i64 = 2_000;

/// The newest entry of each of the newest `limit` events naming entity
/// `key` (of `channel`, if given), newest first, without details. Only the
/// key's newest [`ENTITY_SCAN`] entries are read (by index, newest first),
/// so a key with millions of events costs no more; a channel filter looks
/// among them.
pub(super) fn of_entity(
    db: &Connection,
    tenant: &str,
    key: &str,
    channel: Option<&str>,
    limit: usize,
) -> Result<Vec<StoryEntry>, StoreError> {
    let mut query = db.prepare_cached(
        "SELECT event_id, channel, at_ms, kind FROM stories
         WHERE tenant = ?1 AND entity_key = ?2 ORDER BY id DESC LIMIT ?3",
    )?;
    let rows = query.query_map(params![tenant, key, ENTITY_SCAN], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, Option<String>>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, String>(3)?,
        ))
    })?;
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for row in rows {
        let (event_id, in_channel, at_ms, kind) = row?;
        let Some(kind) = kind_of(&kind) else { continue };
        if channel.is_some_and(|wanted| in_channel.as_deref() != Some(wanted))
            || !seen.insert(event_id.clone())
        {
            continue;
        }
        found.push(StoryEntry {
            at_ms,
            channel: in_channel,
            entity_key: Some(key.to_string()),
            ..StoryEntry::new(tenant, &event_id, kind, serde_json::Value::Null)
        });
        if found.len() == limit {
            break;
        }
    }
    Ok(found)
}

/// Removes entries older than `keep-hours`, then each tenant's oldest
/// while it holds more than `max-bytes-per-tenant`; how many went. At
/// most [`MAX_PRUNED`] rows a call, deleted by id range: the next tick
/// goes on.
pub(super) fn prune(db: &Connection, config: &StoriesConfig, now_ms: i64) -> Result<u64, StoreError> {
    let cutoff = now_ms - config.keep().as_millis() as i64;
    let mut removed = 0u64;
    // Entries are appended in time order: the oldest rows by id come
    // first, and only they are read, never the whole table.
    while removed < MAX_PRUNED {
        let oldest: Vec<(i64, String, i64, i64)> = db
            .prepare_cached("SELECT id, tenant, bytes, at_ms FROM stories ORDER BY id LIMIT ?1")?
            .query_map([PRUNE_BATCH], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        let expired = oldest.iter().take_while(|(.., at_ms)| *at_ms < cutoff).count();
        let Some(last) = oldest[..expired].last() else {
            break;
        };
        db.prepare_cached("DELETE FROM stories WHERE id <= ?1")?
            .execute([last.0])?;
        let mut freed: HashMap<&str, i64> = HashMap::new();
        for (_, tenant, bytes, _) in &oldest[..expired] {
            *freed.entry(tenant).or_default() += bytes;
        }
        take_usage(db, freed)?;
        removed += expired as u64;
        if expired < oldest.len() || oldest.len() < PRUNE_BATCH as usize {
            break;
        }
    }
    let over: Vec<(String, i64)> = db
        .prepare_cached("SELECT tenant, bytes FROM story_usage WHERE bytes > ?1")?
        .query_map([config.max_bytes_per_tenant as i64], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    for (tenant, mut bytes) in over {
        // Down to nine tenths, so that a tenant at its cap is not pruned on every tick.
        let target = (config.max_bytes_per_tenant as i64) / 10 * 9;
        while bytes > target && removed < MAX_PRUNED {
            let rows: Vec<(i64, i64)> = db
                .prepare_cached("SELECT id, bytes FROM stories WHERE tenant = ?1 ORDER BY id LIMIT ?2")?
                .query_map(params![tenant, PRUNE_BATCH], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            if rows.is_empty() {
                db.execute("UPDATE story_usage SET bytes = 0 WHERE tenant = ?1", [&tenant])?;
                break;
            }
            let (mut last, mut freed, mut count) = (0, 0, 0u64);
            for (id, size) in rows {
                last = id;
                freed += size;
                count += 1;
                if bytes - freed <= target {
                    break;
                }
            }
            db.prepare_cached("DELETE FROM stories WHERE tenant = ?1 AND id <= ?2")?
                .execute(params![tenant, last])?;
            take_usage(db, HashMap::from([(tenant.as_str(), freed)]))?;
            removed += count;
            bytes -= freed;
        }
    }
    Ok(removed)
}

/// Takes `freed` bytes off each tenant's usage.
fn take_usage(db: &Connection, freed: HashMap<&str, i64>) -> Result<(), StoreError> {
    let mut usage =
        db.prepare_cached("UPDATE story_usage SET bytes = max(0, bytes - ?2) WHERE tenant = ?1")?;
    for (tenant, bytes) in freed {
        usage.execute(params![tenant, bytes])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::observe::story::{StoriesConfig, StoryEntry, StoryKind};
    use crate::store::Queue;
    use crate::store::sqlite::SqliteQueue;

    fn entry(tenant: &str, event: &str, at_ms: i64) -> StoryEntry {
        StoryEntry {
            at_ms,
            ..StoryEntry::new(
                tenant,
                event,
                StoryKind::Accepted,
                json!({"pad": "x".repeat(100)}),
            )
        }
        .about("SKU-1")
    }

    #[test]
    fn retention_removes_what_is_too_old_then_each_tenants_oldest_past_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let queue = SqliteQueue::open(&dir.path().join("sluice.db")).unwrap();
        let now = crate::store::now_ms();
        let hour = 3_600_000;
        let config = StoriesConfig {
            keep_hours: 1.0,
            max_bytes_per_tenant: 20 * entry("big", "e-0", now).size(),
            ..Default::default()
        };
        let mut entries = vec![entry("small", "old", now - 2 * hour), entry("small", "new", now)];
        entries.extend((0..100).map(|n| entry("big", &format!("e-{n}"), now - 1000 + n)));
        queue.append_stories(entries, &config).unwrap();

        let removed = queue.prune_stories(&config).unwrap();
        assert!(
            queue.event_story("small", "old", 10).unwrap().is_empty(),
            "too old"
        );
        assert_eq!(queue.event_story("small", "new", 10).unwrap().len(), 1);
        let kept: Vec<usize> = (0..100)
            .filter(|n| {
                !queue
                    .event_story("big", &format!("e-{n}"), 10)
                    .unwrap()
                    .is_empty()
            })
            .collect();
        // Down to nine tenths of 20 entries of `e-0`'s size: the newest 17
        // (each a byte longer than `e-0`'s).
        assert_eq!(kept, (83..100).collect::<Vec<_>>());
        assert_eq!(removed, 1 + 83);
        // The key's newest events come first, one entry each, others' unseen.
        let found = queue.entity_stories("big", "SKU-1", None, 3).unwrap();
        let ids: Vec<&str> = found.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["e-99", "e-98", "e-97"]);
        assert!(
            queue
                .entity_stories("other", "SKU-1", None, 3)
                .unwrap()
                .is_empty()
        );
        assert_eq!(queue.prune_stories(&config).unwrap(), 0, "nothing more to remove");
    }

    #[test]
    fn a_key_with_a_hundred_thousand_events_is_read_through_its_index_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let queue = SqliteQueue::open(&dir.path().join("sluice.db")).unwrap();
        let mut db = rusqlite::Connection::open(dir.path().join("stories.db")).unwrap();
        let tx = db.transaction().unwrap();
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO stories (tenant, event_id, channel, entity_key, at_ms, kind, detail, bytes)
                     VALUES ('acme', ?1, 'c', 'SKU-1', ?2, 'queued', '{}', 40)",
                )
                .unwrap();
            for n in 0..100_000i64 {
                insert.execute(rusqlite::params![format!("e-{n}"), n]).unwrap();
            }
        }
        tx.commit().unwrap();
        for (sql, index) in [
            (
                "SELECT event_id, channel, at_ms, kind FROM stories WHERE tenant = ?1 AND entity_key = ?2 ORDER BY id DESC LIMIT ?3",
                "stories_entity",
            ),
            (
                "SELECT * FROM stories WHERE tenant = ?1 AND event_id = ?2 ORDER BY id DESC LIMIT ?3",
                "stories_event",
            ),
        ] {
            let mut explain = db.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> = explain
                .query_map(rusqlite::params!["acme", "SKU-1", 100], |row| row.get(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let plan = plan.join("; ");
            assert!(
                plan.contains(index) && !plan.contains("TEMP B-TREE"),
                "{sql}: {plan}"
            );
        }
        let found = queue.entity_stories("acme", "SKU-1", None, 100).unwrap();
        assert_eq!(found.len(), 100);
        assert_eq!(found[0].event_id, "e-99999");
        // A channel filter looks among the key's newest entries only.
        assert_eq!(
            queue.entity_stories("acme", "SKU-1", Some("c"), 3).unwrap().len(),
            3
        );
        assert!(
            queue
                .entity_stories("acme", "SKU-1", Some("rare"), 3)
                .unwrap()
                .is_empty()
        );
        let huge = "K".repeat(1 << 20);
        assert!(queue.entity_stories("acme", &huge, None, 100).unwrap().is_empty());
    }
}
