//! Event stories in SQLite (migration 11): one row per entry, found by
//! (tenant, event id) and by (tenant, entity key); `story_usage` keeps
//! each tenant's bytes so that retention needs no scan to know who is over.

use rusqlite::{Connection, params};

use crate::observe::story::{StoriesConfig, StoryEntry, StoryKind};
use crate::store::StoreError;

/// Rows removed per statement while pruning, so one prune never holds the
/// writer for long.
const PRUNE_BATCH: i64 = 5_000;
/// Statements of each kind one prune runs at most.
const MAX_BATCHES: usize = 20;

/// Appends `entries`, counting their bytes to their tenants.
pub(super) fn append(db: &Connection, entries: &[StoryEntry]) -> Result<(), StoreError> {
    let mut insert = db.prepare_cached(
        "INSERT INTO stories (tenant, event_id, channel, entity_key, at_ms, kind, detail, bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut usage = db.prepare_cached(
        "INSERT INTO story_usage (tenant, bytes) VALUES (?1, ?2)
         ON CONFLICT (tenant) DO UPDATE SET bytes = bytes + excluded.bytes",
    )?;
    for entry in entries {
        let bytes = entry.size() as i64;
        insert.execute(params![
            entry.tenant,
            entry.event_id,
            entry.channel,
            entry.entity_key,
            entry.at_ms,
            kind_text(entry.kind),
            entry.detail.to_string(),
            bytes,
        ])?;
        usage.execute(params![entry.tenant, bytes])?;
    }
    Ok(())
}

fn kind_text(kind: StoryKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<StoryEntry>> {
    let kind: String = row.get(5)?;
    let detail: String = row.get(6)?;
    let Ok(kind) = serde_json::from_value::<StoryKind>(serde_json::Value::String(kind)) else {
        return Ok(None);
    };
    Ok(Some(StoryEntry {
        tenant: row.get(0)?,
        event_id: row.get(1)?,
        channel: row.get(2)?,
        entity_key: row.get(3)?,
        at_ms: row.get(4)?,
        kind,
        detail: serde_json::from_str(&detail).unwrap_or_default(),
    }))
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
    let mut entries: Vec<StoryEntry> = query
        .query_map(params![tenant, event_id, limit as i64], entry_from_row)?
        .filter_map(|row| row.transpose())
        .collect::<Result<_, _>>()?;
    entries.reverse();
    Ok(entries)
}

/// The newest entries naming entity `key` (of `channel`, if given), one
/// per event, newest first, at most `limit`. Only the key's newest
/// entries are read, so a key with millions of events costs no more.
pub(super) fn of_entity(
    db: &Connection,
    tenant: &str,
    key: &str,
    channel: Option<&str>,
    limit: usize,
) -> Result<Vec<StoryEntry>, StoreError> {
    let mut query = db.prepare_cached(
        "SELECT tenant, event_id, channel, entity_key, at_ms, kind, detail FROM stories
         WHERE tenant = ?1 AND entity_key = ?2 AND (?3 IS NULL OR channel = ?3)
         ORDER BY id DESC LIMIT ?4",
    )?;
    let scanned = (limit * 20) as i64;
    let rows = query.query_map(params![tenant, key, channel, scanned], entry_from_row)?;
    let mut seen = std::collections::HashSet::new();
    let mut found = Vec::new();
    for row in rows {
        let Some(entry) = row? else { continue };
        if seen.insert(entry.event_id.clone()) {
            found.push(entry);
            if found.len() == limit {
                break;
            }
        }
    }
    Ok(found)
}

/// Removes entries older than `keep-hours`, then each tenant's oldest
/// while it holds more than `max-bytes-per-tenant`; how many went.
pub(super) fn prune(db: &Connection, config: &StoriesConfig, now_ms: i64) -> Result<u64, StoreError> {
    let cutoff = now_ms - config.keep().as_millis() as i64;
    let mut removed = 0u64;
    // Entries are appended in time order: the oldest rows come first. At
    // most `MAX_BATCHES` per call; the next tick goes on.
    for _ in 0..MAX_BATCHES {
        let n = remove(
            db,
            "SELECT id, tenant, bytes FROM stories WHERE at_ms < ?1 ORDER BY id LIMIT ?2",
            params![cutoff, PRUNE_BATCH],
        )?;
        removed += n;
        if n < PRUNE_BATCH as u64 {
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
        for _ in 0..MAX_BATCHES {
            if bytes <= target {
                break;
            }
            let ids: Vec<(i64, i64)> = db
                .prepare_cached("SELECT id, bytes FROM stories WHERE tenant = ?1 ORDER BY id LIMIT ?2")?
                .query_map(params![tenant, PRUNE_BATCH], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                db.execute("UPDATE story_usage SET bytes = 0 WHERE tenant = ?1", [&tenant])?;
                break;
            }
            let mut last = 0;
            let mut freed = 0;
            for (id, size) in ids {
                last = id;
                freed += size;
                if bytes - freed <= target {
                    break;
                }
            }
            let n = db.execute(
                "DELETE FROM stories WHERE tenant = ?1 AND id <= ?2",
                params![tenant, last],
            )?;
            db.execute(
                "UPDATE story_usage SET bytes = max(0, bytes - ?2) WHERE tenant = ?1",
                params![tenant, freed],
            )?;
            removed += n as u64;
            bytes -= freed;
        }
    }
    Ok(removed)
}

/// Deletes the rows `select` (id, tenant, bytes) names and takes their
/// bytes off their tenants; how many.
fn remove(db: &Connection, select: &str, args: impl rusqlite::Params) -> Result<u64, StoreError> {
    let rows: Vec<(i64, String, i64)> = db
        .prepare_cached(select)?
        .query_map(args, |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut delete = db.prepare_cached("DELETE FROM stories WHERE id = ?1")?;
    let mut usage =
        db.prepare_cached("UPDATE story_usage SET bytes = max(0, bytes - ?2) WHERE tenant = ?1")?;
    for (id, tenant, bytes) in &rows {
        delete.execute([id])?;
        usage.execute(params![tenant, bytes])?;
    }
    Ok(rows.len() as u64)
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
}
