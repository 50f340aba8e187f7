//! Transform state (contract 0.2) in SQLite: read by a pipeline run on its
//! own connection, written in the commit that records the run's outcomes.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, params};
use sluice_engine::state::{StateReadError, StateStore, StateUsage, StateWrites};

use crate::store::StoreError;

/// One channel's state, as a run reads it.
pub(super) struct ChannelState {
    path: PathBuf,
    tenant: String,
    channel: String,
    /// Opened at the first read: most runs of a stateful step read, but a
    /// channel's batch without one pays nothing.
    connection: Mutex<Option<Connection>>,
}

impl ChannelState {
    pub(super) fn new(path: PathBuf, tenant: &str, channel: &str) -> Self {
        Self {
            path,
            tenant: tenant.into(),
            channel: channel.into(),
            connection: Mutex::new(None),
        }
    }
}

impl StateStore for ChannelState {
    fn get(&self, step: &str, key: &str, deadline: Instant) -> Result<Option<String>, StateReadError> {
        let failed = |err: rusqlite::Error| StateReadError(err.to_string());
        let mut connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        if connection.is_none() {
            let opened = Connection::open(&self.path).map_err(failed)?;
            opened.pragma_update(None, "query_only", true).map_err(failed)?;
            *connection = Some(opened);
        }
        let db = connection.as_ref().expect("opened above");
        // A read waits for a lock at most until the call's deadline.
        db.busy_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .min(std::time::Duration::from_secs(1)),
        )
        .map_err(failed)?;
        db.prepare_cached(
            "SELECT value FROM state WHERE tenant = ?1 AND channel = ?2 AND step = ?3 AND key = ?4",
        )
        .and_then(|mut query| {
            query
                .query_row(params![self.tenant, self.channel, step, key], |row| row.get(0))
                .optional()
        })
        .map_err(failed)
    }
}

/// What `tenant`'s state holds.
pub(super) fn usage(db: &Connection, tenant: &str) -> Result<StateUsage, StoreError> {
    Ok(db
        .prepare_cached("SELECT keys, bytes FROM state_usage WHERE tenant = ?1")?
        .query_row([tenant], |row| {
            Ok(StateUsage {
                keys: row.get::<_, i64>(0)?.max(0) as u64,
                bytes: row.get::<_, i64>(1)?.max(0) as u64,
            })
        })
        .optional()?
        .unwrap_or_default())
}

/// Applies one event's writes, and keeps the tenant's usage in step.
pub(super) fn write(
    db: &Connection,
    tenant: &str,
    channel: &str,
    writes: &StateWrites,
) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    let (mut keys, mut bytes) = (0i64, 0i64);
    for ((step, key), value) in writes {
        let old: Option<i64> = db
            .prepare_cached(
                "SELECT length(CAST(value AS BLOB)) FROM state
                 WHERE tenant = ?1 AND channel = ?2 AND step = ?3 AND key = ?4",
            )?
            .query_row(params![tenant, channel, step, key], |row| row.get(0))
            .optional()?;
        if let Some(old) = old {
            keys -= 1;
            bytes -= key.len() as i64 + old;
        }
        match value {
            Some(value) => {
                db.prepare_cached(
                    "INSERT INTO state (tenant, channel, step, key, value) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (tenant, channel, step, key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![tenant, channel, step, key, value])?;
                keys += 1;
                bytes += (key.len() + value.len()) as i64;
            }
            None => {
                db.prepare_cached(
                    "DELETE FROM state WHERE tenant = ?1 AND channel = ?2 AND step = ?3 AND key = ?4",
                )?
                .execute(params![tenant, channel, step, key])?;
            }
        }
    }
    db.prepare_cached(
        "INSERT INTO state_usage (tenant, keys, bytes) VALUES (?1, MAX(?2, 0), MAX(?3, 0))
         ON CONFLICT (tenant) DO UPDATE SET keys = MAX(keys + ?2, 0), bytes = MAX(bytes + ?3, 0)",
    )?
    .execute(params![tenant, keys, bytes])?;
    Ok(())
}

/// Forgets a deleted channel's state.
pub(super) fn forget(db: &Connection, tenant: &str, channel: &str) -> Result<(), StoreError> {
    let (keys, bytes): (i64, i64) = db
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(length(CAST(key AS BLOB)) + length(CAST(value AS BLOB))), 0)
             FROM state WHERE tenant = ?1 AND channel = ?2",
        )?
        .query_row(params![tenant, channel], |row| Ok((row.get(0)?, row.get(1)?)))?;
    if keys == 0 {
        return Ok(());
    }
    db.prepare_cached("DELETE FROM state WHERE tenant = ?1 AND channel = ?2")?
        .execute(params![tenant, channel])?;
    db.prepare_cached(
        "UPDATE state_usage SET keys = MAX(keys - ?2, 0), bytes = MAX(bytes - ?3, 0) WHERE tenant = ?1",
    )?
    .execute(params![tenant, keys, bytes])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Disposition, Queue, Transformed};

    fn result(seq: i64, writes: &[(&str, Option<&str>)]) -> Transformed {
        Transformed {
            seq,
            channel: "c".into(),
            tenant: "acme".into(),
            event_id: format!("e-{seq}"),
            original: "{}".into(),
            received_ms: 0,
            versions: vec![],
            disposition: Disposition::Dropped,
            state: sluice_engine::state::StateChange {
                writes: writes
                    .iter()
                    .map(|(key, value)| (("step".to_string(), key.to_string()), value.map(str::to_string)))
                    .collect(),
                ..Default::default()
            },
        }
    }

    fn queued(queue: &crate::store::sqlite::SqliteQueue, ids: &[&str]) -> Vec<i64> {
        let ingest = ids
            .iter()
            .map(|id| crate::store::Ingest {
                tenant: "acme".into(),
                id: id.to_string(),
                event: format!(r#"{{"id":"{id}"}}"#),
                channels: vec!["c".into()],
            })
            .collect();
        queue.ingest(ingest).unwrap();
        queue
            .pending("c", 0, 100)
            .unwrap()
            .iter()
            .map(|p| p.seq)
            .collect()
    }

    #[test]
    fn writes_commit_with_the_outcome_and_the_usage_follows() {
        let dir = tempfile::tempdir().unwrap();
        let queue = crate::store::sqlite::SqliteQueue::open(&dir.path().join("s.db")).unwrap();
        let seqs = queued(&queue, &["1", "2"]);
        queue
            .transformed(vec![result(seqs[0], &[("a", Some("1")), ("b", Some("\"xy\""))])])
            .unwrap();
        let (state, usage) = queue.state("acme", "c").unwrap();
        assert_eq!(
            state.get("step", "a", Instant::now()).unwrap().as_deref(),
            Some("1")
        );
        assert_eq!(state.get("other-step", "a", Instant::now()).unwrap(), None);
        assert_eq!(usage, StateUsage { keys: 2, bytes: 7 });
        // Recorded twice (a retried commit): the queue row is gone, so the
        // writes are not applied again.
        queue
            .transformed(vec![result(seqs[0], &[("a", Some("99"))])])
            .unwrap();
        queue
            .transformed(vec![result(seqs[1], &[("a", Some("22")), ("b", None)])])
            .unwrap();
        let (state, usage) = queue.state("acme", "c").unwrap();
        assert_eq!(
            state.get("step", "a", Instant::now()).unwrap().as_deref(),
            Some("22")
        );
        assert_eq!(state.get("step", "b", Instant::now()).unwrap(), None);
        assert_eq!(usage, StateUsage { keys: 1, bytes: 3 });
        assert_eq!(
            queue
                .state("acme", "other")
                .unwrap()
                .0
                .get("step", "a", Instant::now())
                .unwrap(),
            None
        );
        queue.forget_state("acme", "c").unwrap();
        let (state, usage) = queue.state("acme", "c").unwrap();
        assert_eq!(state.get("step", "a", Instant::now()).unwrap(), None);
        assert_eq!(usage, StateUsage::default());
    }

    #[test]
    fn a_read_among_a_million_keys_is_one_index_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let queue = crate::store::sqlite::SqliteQueue::open(&path).unwrap();
        let mut db = Connection::open(&path).unwrap();
        let tx = db.transaction().unwrap();
        {
            let mut insert = tx
                .prepare("INSERT INTO state (tenant, channel, step, key, value) VALUES ('acme', 'c', 'step', ?1, '1')")
                .unwrap();
            for n in 0..1_000_000 {
                insert.execute([format!("k{n}")]).unwrap();
            }
        }
        tx.commit().unwrap();
        let plan: String = db
            .query_row(
                "EXPLAIN QUERY PLAN SELECT value FROM state WHERE tenant = 'acme' AND channel = 'c' AND step = 's' AND key = 'k'",
                [],
                |row| row.get(3),
            )
            .unwrap();
        assert!(plan.contains("USING PRIMARY KEY"), "{plan}");
        let (state, _) = queue.state("acme", "c").unwrap();
        assert_eq!(
            state.get("step", "k999999", Instant::now()).unwrap().as_deref(),
            Some("1")
        );
        assert_eq!(state.get("step", "k1000000", Instant::now()).unwrap(), None);
    }
}
