//! The embedded default store: one SQLite file in WAL mode, written by one
//! thread with group commit ([`writer`]), read on pooled reader
//! connections. Split by job: [`schema`] (numbered migrations), [`writer`],
//! the [`Queue`] ([`queue`]) and the [`Registry`] ([`registry`]).

mod queue;
mod registry;
pub mod schema;
mod state;
mod stories;
mod writer;

use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

use rusqlite::{Connection, params};
use serde_json::Value;

use super::*;
use writer::Job;

/// The SQLite [`Queue`]: `sluice.db` in the data directory.
pub struct SqliteQueue {
    jobs: Mutex<Option<Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: std::path::PathBuf,
    readers: Mutex<Vec<Connection>>,
    superseded: std::sync::Arc<crate::store::Tally>,
    /// `stories.db`, beside the file.
    stories: stories::StoryDb,
}

/// Idle read connections kept.
const READERS: usize = 4;

impl SqliteQueue {
    /// Opens (or creates) the database file and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a 202 survives power loss, not only a crash of the process.
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "busy_timeout", 5000)?;
        // 64 MiB of page cache: the working set (recent events, queues) stays in memory.
        connection.pragma_update(None, "cache_size", -65536)?;
        schema::migrate(&mut connection).map_err(|err| StoreError::Commit(err.to_string()))?;
        let stories = stories::StoryDb::open(&path.with_file_name("stories.db"))?;
        let (jobs, receiver) = std::sync::mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("sluice-store".into())
            .spawn(move || writer::write_loop(connection, receiver))
            .map_err(|err| StoreError::Commit(format!("cannot start the writer thread: {err}")))?;
        Ok(Self {
            jobs: Mutex::new(Some(jobs)),
            writer: Mutex::new(Some(writer)),
            path: path.to_path_buf(),
            readers: Mutex::new(Vec::new()),
            superseded: std::sync::Arc::default(),
            stories,
        })
    }

    /// Runs read-only `work` on a reader connection: it sees the last
    /// commit and never waits behind the writer's group (WAL lets readers
    /// and the writer run at once).
    fn read<T>(&self, work: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let pooled = self.readers.lock().expect("readers lock").pop();
        let connection = match pooled {
            Some(connection) => connection,
            None => {
                let connection = Connection::open(&self.path)?;
                connection.pragma_update(None, "busy_timeout", 5000)?;
                connection.pragma_update(None, "cache_size", -16384)?;
                connection.pragma_update(None, "query_only", true)?;
                connection
            }
        };
        let result = work(&connection);
        let mut readers = self.readers.lock().expect("readers lock");
        if readers.len() < READERS {
            readers.push(connection);
        }
        result
    }

    /// Stops the writer after every queued request is committed.
    pub fn close(&self) {
        self.jobs.lock().expect("jobs lock").take();
        if let Some(writer) = self.writer.lock().expect("writer lock").take() {
            let _ = writer.join();
        }
    }

    /// Runs `work` in the next group commit and returns its result once committed.
    fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (job, answer) = Job::new(work);
        let sent = match self.jobs.lock().expect("jobs lock").as_ref() {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(StoreError::Closed);
        }
        answer.recv().map_err(|_| StoreError::Closed)?
    }
}

impl Drop for SqliteQueue {
    fn drop(&mut self) {
        self.close();
    }
}

pub(super) fn versions_text(versions: &[String]) -> String {
    serde_json::to_string(versions).unwrap_or_else(|_| "[]".into())
}

pub(super) fn json_or_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

pub(super) fn summary_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetterSummary> {
    Ok(DeadLetterSummary {
        id: row.get("id")?,
        tenant: row.get("tenant")?,
        channel: row.get("channel")?,
        destination: row.get("destination")?,
        event_id: row.get("event_id")?,
        stage: row.get("stage")?,
        reason: row.get("reason")?,
        created_ms: row.get("created_ms")?,
    })
}

/// `WHERE` clause and parameters of a dead-letter filter.
pub(super) fn filter_clause(filter: &DeadLetterFilter) -> (String, Vec<String>) {
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    if let Some(tenant) = &filter.tenant {
        values.push(tenant.clone());
        clauses.push(format!("tenant = ?{}", values.len()));
    }
    if let Some(channel) = &filter.channel {
        values.push(channel.clone());
        clauses.push(format!("channel = ?{}", values.len()));
    }
    if clauses.is_empty() {
        (String::new(), values)
    } else {
        (format!("WHERE {}", clauses.join(" AND ")), values)
    }
}

pub(super) fn insert_outbox(
    db: &Connection,
    result: &Transformed,
    delivery: &NewDelivery,
    now: i64,
    received_ms: i64,
) -> rusqlite::Result<()> {
    db.prepare_cached(
        "INSERT INTO outbox (destination, channel, tenant, event_id, entity_key, idempotency_key,
             correlation_id, output, versions, next_ms, created_ms, received_ms, payload_at, output_id, kind)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        delivery.destination,
        result.channel,
        result.tenant,
        result.event_id,
        delivery.entity_key,
        delivery.idempotency_key,
        delivery.correlation_id,
        delivery.output,
        versions_text(&result.versions),
        now,
        received_ms,
        delivery.payload_at.map(|at| at as i64),
        delivery.output_id,
        delivery.kind,
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> (tempfile::TempDir, SqliteQueue) {
        let dir = tempfile::tempdir().unwrap();
        let queue = SqliteQueue::open(&dir.path().join("sluice.db")).unwrap();
        (dir, queue)
    }

    fn ingest(id: &str, channels: &[&str]) -> Ingest {
        Ingest {
            tenant: "acme".into(),
            id: id.into(),
            event: format!(r#"{{"id":"{id}","kind":"product","tenant":"acme","payload":{{}}}}"#),
            channels: channels.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// Records a 400 from the destination for `delivery`: a dead letter.
    fn reject(queue: &SqliteQueue, delivery: &Delivery, at_ms: i64, detail: &str) {
        let attempt = Attempt {
            at_ms,
            status: Some(400),
            detail: detail.into(),
        };
        queue
            .attempted(vec![(
                delivery.clone(),
                AttemptResult::DeadLetter {
                    attempt,
                    reason: "rejected-by-destination".into(),
                },
            )])
            .unwrap();
    }

    fn deliver(pending: &Pending, channel: &str, key: &str) -> Transformed {
        Transformed {
            seq: pending.seq,
            channel: channel.into(),
            tenant: "acme".into(),
            event_id: serde_json::from_str::<Value>(&pending.event).unwrap()["id"]
                .as_str()
                .unwrap()
                .into(),
            original: pending.event.clone(),
            received_ms: pending.received_ms,
            versions: vec!["m@1".into()],
            disposition: Disposition::Deliver(vec![NewDelivery {
                destination: "d".into(),
                entity_key: key.into(),
                idempotency_key: format!("k-{}", pending.seq),
                correlation_id: "c".into(),
                output: r#"{"id":"o","kind":"product","payload":{"sku":"A"}}"#.into(),
                output_id: "o".into(),
                payload_at: NewDelivery::payload_offset(
                    r#"{"id":"o","kind":"product","payload":{"sku":"A"}}"#,
                    r#"{"sku":"A"}"#,
                ),
                kind: "product".into(),
            }]),
            state: Default::default(),
        }
    }

    #[test]
    fn a_disabled_channel_never_blocks_the_same_sku_of_another_channel() {
        let (_dir, queue) = queue();
        queue
            .ingest(vec![ingest("1", &["a"]), ingest("2", &["b"])])
            .unwrap();
        let a = queue.pending("a", 0, 10).unwrap();
        let b = queue.pending("b", 0, 10).unwrap();
        queue
            .transformed(vec![deliver(&a[0], "a", "SKU-1"), deliver(&b[0], "b", "SKU-1")])
            .unwrap();
        // Channel a (say, another tenant's) emits SKU-1 first, then switches off.
        queue.set_enabled("a", false, false).unwrap();
        let due = queue.due("d", now_ms(), 10, false).unwrap();
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].channel, "b");
    }

    /// Coalescing: of one key's queued deliveries only the newest is due,
    /// in the key's turn; once it is settled the older ones are gone and
    /// counted superseded, and another key is untouched. Not coalescing,
    /// the oldest is due and nothing is superseded.
    #[test]
    fn coalescing_sends_the_newest_of_a_key_and_supersedes_the_older() {
        let (_dir, queue) = queue();
        queue
            .ingest((0..4).map(|n| ingest(&format!("e{n}"), &["a"])).collect())
            .unwrap();
        let pending = queue.pending("a", 0, 10).unwrap();
        let keys = ["SKU-1", "SKU-2", "SKU-1", "SKU-1"];
        queue
            .transformed(
                pending
                    .iter()
                    .zip(keys)
                    .map(|(p, key)| deliver(p, "a", key))
                    .collect(),
            )
            .unwrap();
        let oldest = queue.due("d", now_ms(), 10, false).unwrap();
        assert_eq!(oldest.iter().map(|d| d.seq).collect::<Vec<_>>(), [1, 2]);
        let newest = queue.due("d", now_ms(), 10, true).unwrap();
        // SKU-1's turn comes first (its oldest is 1), with its newest, 4.
        assert_eq!(newest.iter().map(|d| d.seq).collect::<Vec<_>>(), [4, 2]);
        queue
            .attempted(vec![(
                newest[0].clone(),
                AttemptResult::Delivered {
                    fingerprint: Some("f1".into()),
                },
            )])
            .unwrap();
        assert_eq!(queue.take_superseded("d"), [("a".to_string(), 2)]);
        assert!(queue.take_superseded("d").is_empty(), "taken once");
        let left = queue.due("d", now_ms(), 10, true).unwrap();
        assert_eq!(left.iter().map(|d| d.seq).collect::<Vec<_>>(), [2]);
        let prints = queue
            .fingerprints("d", &[("a".into(), "SKU-1".into()), ("a".into(), "SKU-2".into())])
            .unwrap();
        assert_eq!(prints, [Some("f1".to_string()), None]);
        // A deleted channel's fingerprints go with it; another's stay.
        queue.forget_fingerprints(Some("elsewhere"), None).unwrap();
        assert_eq!(
            queue.fingerprints("d", &[("a".into(), "SKU-1".into())]).unwrap(),
            [Some("f1".to_string())]
        );
        queue.forget_fingerprints(None, Some("a")).unwrap();
        assert_eq!(
            queue.fingerprints("d", &[("a".into(), "SKU-1".into())]).unwrap(),
            [None]
        );
        // Unchanged settles too: nothing older of its key survives it.
        queue
            .attempted(vec![(left[0].clone(), AttemptResult::Unchanged)])
            .unwrap();
        assert!(queue.due("d", now_ms(), 10, true).unwrap().is_empty());
    }

    /// Coalescing walks the outbox in position order by an index and stops
    /// at the limit, as the plain order does: no sort of every queued row.
    #[test]
    fn the_coalescing_order_uses_the_indexes_and_sorts_nothing() {
        let (_dir, queue) = queue();
        let plan = queue
            .read(|db| {
                let mut plans = Vec::new();
                for sql in [queue::DUE_COALESCED_OF_KIND, queue::DUE_OLDEST_OF_KIND] {
                    let mut statement = db.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    let details = statement
                        .query_map(params!["d", 0, 10, "inventory"], |row| row.get::<_, String>(3))?
                        .collect::<Result<Vec<_>, _>>()?;
                    plans.push(details.join("; "));
                }
                Ok(plans)
            })
            .unwrap();
        for plan in plan {
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
            // The kind's rows by index, not a walk of the whole outbox.
            assert!(plan.contains("USING INDEX outbox_kind"), "{plan}");
        }
    }

    /// A dead letter resent by hand keeps its place while coalescing: the
    /// newer output queued before it still goes first, the resend replaces
    /// nothing, and it is sent itself afterwards.
    #[test]
    fn a_resend_by_hand_keeps_its_place_while_coalescing() {
        let (_dir, queue) = queue();
        queue.ingest(vec![ingest("1", &["a"])]).unwrap();
        let first = queue.pending("a", 0, 10).unwrap();
        queue.transformed(vec![deliver(&first[0], "a", "SKU-1")]).unwrap();
        let due = queue.due("d", now_ms(), 10, true).unwrap();
        reject(&queue, &due[0], now_ms(), "refused");
        queue.ingest(vec![ingest("2", &["a"])]).unwrap();
        let second = queue.pending("a", first[0].seq, 10).unwrap();
        queue
            .transformed(vec![deliver(&second[0], "a", "SKU-1")])
            .unwrap();
        let newer = queue.due("d", now_ms(), 10, true).unwrap();
        let letter = queue.dead_letters(&DeadLetterFilter::default()).unwrap()[0].id;
        assert_eq!(
            queue.replay(letter, Replay::Resend).unwrap(),
            ReplayResult::Queued
        );
        let due = queue.due("d", now_ms(), 10, true).unwrap();
        assert_eq!(
            due.iter().map(|d| (d.seq, d.replayed)).collect::<Vec<_>>(),
            [(newer[0].seq, false)]
        );
        queue
            .attempted(vec![(
                due[0].clone(),
                AttemptResult::Delivered { fingerprint: None },
            )])
            .unwrap();
        assert!(
            queue.take_superseded("d").is_empty(),
            "the resend is not superseded"
        );
        let resend = queue.due("d", now_ms(), 10, true).unwrap();
        assert_eq!(resend.len(), 1);
        assert!(resend[0].replayed && resend[0].seq > newer[0].seq, "{resend:?}");
    }

    /// Coalescing keeps a key's order across kinds: a product update, a
    /// stock update, then another product update of one SKU go in that
    /// order (the stock update ends the run the first could be replaced in).
    #[test]
    fn coalescing_keeps_a_keys_order_across_kinds() {
        let (_dir, queue) = queue();
        queue
            .ingest((0..3).map(|n| ingest(&format!("e{n}"), &["a"])).collect())
            .unwrap();
        let pending = queue.pending("a", 0, 10).unwrap();
        queue
            .transformed(pending.iter().map(|p| deliver(p, "a", "SKU-1")).collect())
            .unwrap();
        queue
            .call(|db| Ok(db.execute("UPDATE outbox SET kind = 'inventory' WHERE seq = 2", [])?))
            .unwrap();
        let mut sent = Vec::new();
        for _ in 0..3 {
            let due = queue.due("d", now_ms(), 10, true).unwrap();
            assert_eq!(due.len(), 1, "{due:?}");
            sent.push((due[0].seq, due[0].kind.clone()));
            queue
                .attempted(vec![(
                    due[0].clone(),
                    AttemptResult::Delivered { fingerprint: None },
                )])
                .unwrap();
        }
        assert_eq!(
            sent,
            [
                (1, "product".to_string()),
                (2, "inventory".into()),
                (3, "product".into())
            ]
        );
    }

    /// A coalesced key whose newest is waiting for a retry sends nothing
    /// older meanwhile: the stale state never overtakes.
    #[test]
    fn a_retrying_newest_holds_its_key() {
        let (_dir, queue) = queue();
        queue
            .ingest(vec![ingest("1", &["a"]), ingest("2", &["a"])])
            .unwrap();
        let pending = queue.pending("a", 0, 10).unwrap();
        queue
            .transformed(pending.iter().map(|p| deliver(p, "a", "SKU-1")).collect())
            .unwrap();
        let newest = queue.due("d", now_ms(), 10, true).unwrap();
        assert_eq!(newest[0].seq, 2);
        let attempt = Attempt {
            at_ms: now_ms(),
            status: Some(503),
            detail: String::new(),
        };
        queue
            .attempted(vec![(
                newest[0].clone(),
                AttemptResult::Retry {
                    attempt,
                    next_ms: now_ms() + 60_000,
                },
            )])
            .unwrap();
        assert!(queue.due("d", now_ms(), 10, true).unwrap().is_empty());
        assert!(queue.take_superseded("d").is_empty());
    }

    /// Each page of a tenant's log is a range scan of one index: no
    /// table scan, and no sort of the tenant's whole log per page.
    #[test]
    fn a_page_of_the_ingest_log_is_a_range_scan_of_an_index() {
        let (_dir, queue) = queue();
        for sql in [queue::LOG_PAGE_NEWEST_FIRST, queue::LOG_PAGE_OLDEST_FIRST] {
            let plan = queue
                .read(|db| {
                    let mut statement = db.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    let details = statement
                        .query_map(params!["acme", 0, 0, "", 128], |row| row.get::<_, String>(3))?
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(details.join("; "))
                })
                .unwrap();
            assert!(plan.contains("USING INDEX events_by_tenant_received"), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }

    #[test]
    fn the_ingest_log_pages_both_ways_without_repeats_or_gaps() {
        let (_dir, queue) = queue();
        // Many in one batch: they share a received time, so ids break the tie.
        queue
            .ingest((0..25).map(|n| ingest(&format!("e{n:02}"), &["a"])).collect())
            .unwrap();
        queue
            .ingest(vec![Ingest {
                tenant: "globex".into(),
                ..ingest("other", &["a"])
            }])
            .unwrap();
        for newest_first in [false, true] {
            let mut seen = Vec::new();
            let mut from = None;
            loop {
                let page = queue
                    .stored_events(&StoredQuery {
                        tenant: "acme".into(),
                        from: from.clone(),
                        newest_first,
                        limit: 7,
                        ..StoredQuery::default()
                    })
                    .unwrap();
                let Some(last) = page.last() else { break };
                from = Some((last.received_ms, last.id.clone()));
                seen.extend(page.into_iter().map(|e| e.id));
            }
            let mut expected: Vec<String> = (0..25).map(|n| format!("e{n:02}")).collect();
            if newest_first {
                expected.reverse();
            }
            assert_eq!(seen, expected, "newest first: {newest_first}");
        }
        let later = StoredQuery {
            tenant: "acme".into(),
            since_ms: now_ms() + 60_000,
            limit: 10,
            ..StoredQuery::default()
        };
        assert!(queue.stored_events(&later).unwrap().is_empty());
    }

    #[test]
    fn forgetting_old_ids_keeps_the_originals_deliveries_still_need() {
        let (_dir, queue) = queue();
        queue.ingest(vec![ingest("1", &["a"])]).unwrap();
        let pending = queue.pending("a", 0, 10).unwrap();
        queue
            .transformed(vec![deliver(&pending[0], "a", "SKU-1")])
            .unwrap();
        // Everything is older than the window, but the delivery still waits.
        assert_eq!(queue.forget_before(now_ms() + 60_000).unwrap(), 0);
        let due = queue.due("d", now_ms(), 10, false).unwrap();
        reject(&queue, &due[0], now_ms(), "no");
        let letters = queue.dead_letters(&DeadLetterFilter::default()).unwrap();
        let letter = queue.dead_letter(letters[0].id).unwrap().unwrap();
        assert_eq!(letter.original["id"], "1", "{:?}", letter.original);
        // Once nothing needs it, it is forgotten.
        assert_eq!(queue.forget_before(now_ms() + 60_000).unwrap(), 1);
    }

    #[test]
    fn a_duplicate_id_is_stored_and_queued_once() {
        let (_dir, queue) = queue();
        let receipts = queue
            .ingest(vec![ingest("1", &["a", "b"]), ingest("1", &["a", "b"])])
            .unwrap();
        assert_eq!(
            receipts.iter().map(|r| r.duplicate).collect::<Vec<_>>(),
            [false, true]
        );
        assert!(queue.ingest(vec![ingest("1", &["a"])]).unwrap()[0].duplicate);
        assert_eq!(queue.pending("a", 0, 10).unwrap().len(), 1);
        assert_eq!(queue.pending("b", 0, 10).unwrap().len(), 1);
    }

    #[test]
    fn only_the_oldest_delivery_per_entity_is_due() {
        let (_dir, queue) = queue();
        queue
            .ingest(vec![
                ingest("1", &["a"]),
                ingest("2", &["a"]),
                ingest("3", &["a"]),
            ])
            .unwrap();
        let pending = queue.pending("a", 0, 10).unwrap();
        queue
            .transformed(vec![
                deliver(&pending[0], "a", "SKU-1"),
                deliver(&pending[1], "a", "SKU-1"),
                deliver(&pending[2], "a", "SKU-2"),
            ])
            .unwrap();
        assert!(queue.pending("a", 0, 10).unwrap().is_empty());
        let due = queue.due("d", now_ms(), 10, false).unwrap();
        assert_eq!(
            due.iter().map(|d| d.entity_key.as_str()).collect::<Vec<_>>(),
            ["SKU-1", "SKU-2"]
        );
        // The head of SKU-1 waits for a retry: the later SKU-1 must wait too.
        let head = due[0].clone();
        let attempt = Attempt {
            at_ms: now_ms(),
            status: Some(503),
            detail: "busy".into(),
        };
        queue
            .attempted(vec![(
                head.clone(),
                AttemptResult::Retry {
                    attempt,
                    next_ms: now_ms() + 60_000,
                },
            )])
            .unwrap();
        let due = queue.due("d", now_ms(), 10, false).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].entity_key, "SKU-2");
        // Switching the channel off holds its deliveries.
        queue.set_enabled("a", false, false).unwrap();
        assert!(queue.due("d", now_ms(), 10, false).unwrap().is_empty());
    }

    #[test]
    fn a_dead_letter_keeps_attempts_and_replays_once() {
        let (_dir, queue) = queue();
        queue.ingest(vec![ingest("1", &["a"])]).unwrap();
        let pending = queue.pending("a", 0, 10).unwrap();
        queue
            .transformed(vec![deliver(&pending[0], "a", "SKU-1")])
            .unwrap();
        let due = queue.due("d", now_ms(), 10, false).unwrap();
        reject(&queue, &due[0], 1, "bad sku");
        let letters = queue.dead_letters(&DeadLetterFilter::default()).unwrap();
        assert_eq!(letters.len(), 1);
        let letter = queue.dead_letter(letters[0].id).unwrap().unwrap();
        assert_eq!(letter.attempts[0].status, Some(400));
        assert_eq!(letter.versions, ["m@1"]);
        assert_eq!(letter.original["id"], "1");
        assert_eq!(
            queue.replay(letter.summary.id, Replay::Resend).unwrap(),
            ReplayResult::Queued
        );
        assert_eq!(
            queue.replay(letter.summary.id, Replay::Resend).unwrap(),
            ReplayResult::NotFound
        );
        let due = queue.due("d", now_ms(), 10, false).unwrap();
        assert_eq!(due[0].idempotency_key, "k-1");
    }

    #[test]
    fn an_api_switch_survives_until_the_config_value_changes() {
        let (_dir, queue) = queue();
        assert!(queue.set_enabled("a", true, true).unwrap());
        assert!(!queue.set_enabled("a", false, false).unwrap());
        // Restart with the same config: the API's OFF stands.
        assert!(!queue.set_enabled("a", true, true).unwrap());
        // A tripped breaker is stored with its reason; switching on clears it.
        queue.trip("a", "3 faults").unwrap();
        assert_eq!(queue.tripped("a").unwrap().as_deref(), Some("3 faults"));
        assert!(queue.set_enabled("a", true, false).unwrap());
        assert_eq!(queue.tripped("a").unwrap(), None);
        queue.set_enabled("a", false, false).unwrap();
        // The operator edits the config to false, then true: the config wins.
        assert!(!queue.set_enabled("a", false, true).unwrap());
        assert!(queue.set_enabled("a", true, true).unwrap());
    }

    #[test]
    fn pipelines_stack_and_pop_back_to_the_config() {
        let (_dir, queue) = queue();
        assert_eq!(queue.pop_pipeline("a").unwrap(), None);
        queue.push_pipeline("a", "v1").unwrap();
        queue.push_pipeline("a", "v2").unwrap();
        queue.push_pipeline("b", "other").unwrap();
        assert_eq!(queue.active_pipeline("a").unwrap().as_deref(), Some("v2"));
        assert_eq!(queue.pop_pipeline("a").unwrap(), Some(Some("v1".into())));
        assert_eq!(queue.pop_pipeline("a").unwrap(), Some(None));
        assert_eq!(queue.active_pipeline("b").unwrap().as_deref(), Some("other"));
    }

    #[test]
    fn a_module_version_is_stored_once() {
        let (_dir, queue) = queue();
        let module = ModuleVersion {
            tenant: "acme".into(),
            name: "m".into(),
            version: "ab".into(),
            size: 3,
            created_ms: 1,
        };
        assert!(queue.add_module(&module).unwrap());
        assert!(!queue.add_module(&module).unwrap());
        assert_eq!(queue.modules("acme", Some("m")).unwrap(), [module]);
        assert!(queue.modules("globex", None).unwrap().is_empty());
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.db");
        {
            let queue = SqliteQueue::open(&path).unwrap();
            queue.ingest(vec![ingest("1", &["a"])]).unwrap();
        }
        let queue = SqliteQueue::open(&path).unwrap();
        assert_eq!(queue.pending("a", 0, 10).unwrap().len(), 1);
        assert!(queue.ingest(vec![ingest("1", &["a"])]).unwrap()[0].duplicate);
    }
}
