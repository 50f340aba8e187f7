//! The embedded default store: one SQLite file in WAL mode, written by one
//! thread that commits every request waiting at the time in a single
//! transaction (group commit), so a burst of ingests pays one fsync.
//!
//! Each request runs in its own savepoint inside the shared transaction:
//! one that fails rolls back alone, and every caller hears only after the
//! commit (or its failure).

use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, sync_channel};
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde_json::Value;

use super::*;

/// Most requests committed together.
const GROUP_LIMIT: usize = 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_received ON events (received_ms);

CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    tenant TEXT NOT NULL,
    event_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_channel ON inbox (channel, seq);
CREATE INDEX IF NOT EXISTS inbox_event ON inbox (tenant, event_id);

CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    channel TEXT NOT NULL,
    tenant TEXT NOT NULL,
    event_id TEXT NOT NULL,
    entity_key TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    output TEXT NOT NULL,
    versions TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL
);
DROP INDEX IF EXISTS outbox_order;
CREATE INDEX IF NOT EXISTS outbox_entity ON outbox (destination, channel, entity_key, seq);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (destination, seq);
CREATE INDEX IF NOT EXISTS outbox_event ON outbox (tenant, event_id);

CREATE TABLE IF NOT EXISTS attempts (
    outbox_seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    status INTEGER,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_outbox ON attempts (outbox_seq);

CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    channel TEXT NOT NULL,
    destination TEXT,
    event_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    reason TEXT NOT NULL,
    original TEXT NOT NULL,
    output TEXT,
    detail TEXT NOT NULL,
    versions TEXT NOT NULL,
    attempts TEXT NOT NULL,
    entity_key TEXT,
    idempotency_key TEXT,
    correlation_id TEXT,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_channel ON dead_letters (tenant, channel);
CREATE INDEX IF NOT EXISTS dead_letters_by_channel ON dead_letters (channel);

CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS tokens (
    sha256 TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS modules (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, name, version)
);

CREATE TABLE IF NOT EXISTS channel_pipelines (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS channel_state (
    channel TEXT PRIMARY KEY,
    enabled INTEGER NOT NULL,
    config_enabled INTEGER,
    reason TEXT
);
";

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

/// A request to the writer: the work, run inside the group's transaction,
/// returns how to answer once the group is committed; `fail` answers when
/// the transaction could not even begin.
struct Job {
    work: Box<dyn FnOnce(&mut Transaction) -> Reply + Send>,
    fail: Box<dyn FnOnce(String) + Send>,
}

/// The SQLite [`Queue`]: `sluice.db` in the data directory.
pub struct SqliteQueue {
    jobs: Mutex<Option<Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: std::path::PathBuf,
    readers: Mutex<Vec<Connection>>,
}

/// Idle read connections kept.
const READERS: usize = 4;

impl SqliteQueue {
    /// Opens (or creates) the database file and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a 202 survives power loss, not only a crash of the process.
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "busy_timeout", 5000)?;
        // 64 MiB of page cache: the working set (recent events, queues) stays in memory.
        connection.pragma_update(None, "cache_size", -65536)?;
        connection.execute_batch(SCHEMA)?;
        // Databases made before channel_state had `reason` (the circuit breaker's) get it now.
        let has_reason: i64 = connection.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('channel_state') WHERE name = 'reason'",
            [],
            |row| row.get(0),
        )?;
        if has_reason == 0 {
            connection.execute_batch("ALTER TABLE channel_state ADD COLUMN reason TEXT")?;
        }
        let (jobs, receiver) = std::sync::mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("sluice-store".into())
            .spawn(move || write_loop(connection, receiver))
            .map_err(|err| StoreError::Commit(format!("cannot start the writer thread: {err}")))?;
        Ok(Self {
            jobs: Mutex::new(Some(jobs)),
            writer: Mutex::new(Some(writer)),
            path: path.to_path_buf(),
            readers: Mutex::new(Vec::new()),
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
        let (reply, answer) = sync_channel(1);
        let failed = reply.clone();
        let fail = Box::new(move |message: String| {
            let _ = failed.send(Err(StoreError::Commit(message)));
        });
        let work = Box::new(move |transaction: &mut Transaction| -> Reply {
            let result = match transaction.savepoint() {
                Ok(mut savepoint) => {
                    let result = work(&savepoint);
                    if result.is_err() {
                        let _ = savepoint.rollback();
                    }
                    result.and_then(|value| savepoint.commit().map(|()| value).map_err(StoreError::from))
                }
                Err(err) => Err(err.into()),
            };
            Box::new(move |committed: Result<(), String>| {
                let _ = reply.send(committed.map_err(StoreError::Commit).and(result));
            })
        });
        let job = Job { work, fail };
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

fn write_loop(mut connection: Connection, jobs: Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_LIMIT {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut transaction = match connection.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(transaction) => transaction,
            Err(err) => {
                for job in group {
                    (job.fail)(format!("cannot begin a transaction: {err}"));
                }
                continue;
            }
        };
        let replies: Vec<Reply> = group
            .into_iter()
            .map(|job| (job.work)(&mut transaction))
            .collect();
        let committed = transaction.commit().map_err(|err| err.to_string());
        for reply in replies {
            reply(committed.clone());
        }
    }
}

fn versions_text(versions: &[String]) -> String {
    serde_json::to_string(versions).unwrap_or_else(|_| "[]".into())
}

fn json_or_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn summary_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetterSummary> {
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
fn filter_clause(filter: &DeadLetterFilter) -> (String, Vec<String>) {
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

fn insert_outbox(
    db: &Connection,
    result: &Transformed,
    delivery: &NewDelivery,
    now: i64,
    received_ms: i64,
) -> rusqlite::Result<()> {
    db.prepare_cached(
        "INSERT INTO outbox (destination, channel, tenant, event_id, entity_key, idempotency_key,
             correlation_id, output, versions, next_ms, created_ms, received_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11)",
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
    ])?;
    Ok(())
}

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
                match &result.disposition {
                    Disposition::Dropped => {}
                    Disposition::Deliver(deliveries) => {
                        for delivery in deliveries {
                            insert_outbox(db, result, delivery, now, result.received_ms)?;
                        }
                    }
                    Disposition::DeadLetter { reason, detail } => {
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
            }
            Ok(())
        })
    }

    fn due(&self, destination: &str, now_ms: i64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let destination = destination.to_string();
        self.read(move |db| {
            let mut query = db.prepare_cached(
                "SELECT seq, destination, channel, tenant, event_id, entity_key, idempotency_key,
                        correlation_id, output, attempts, created_ms, received_ms, versions
                 FROM outbox o
                 WHERE destination = ?1 AND next_ms <= ?2
                   AND NOT EXISTS (SELECT 1 FROM outbox p
                                   WHERE p.destination = o.destination AND p.channel = o.channel
                                     AND p.entity_key = o.entity_key AND p.seq < o.seq)
                   AND channel NOT IN (SELECT channel FROM channel_state WHERE enabled = 0)
                 ORDER BY seq LIMIT ?3",
            )?;
            let rows = query.query_map(params![destination, now_ms, limit as i64], |row| {
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
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
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
        self.call(move |db| {
            for (delivery, result) in &results {
                match result {
                    AttemptResult::Delivered => {
                        db.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?
                            .execute([delivery.seq])?;
                        db.prepare_cached("DELETE FROM attempts WHERE outbox_seq = ?1")?
                            .execute([delivery.seq])?;
                    }
                    AttemptResult::Retry { attempt, next_ms } => {
                        record_attempt(db, delivery.seq, attempt)?;
                        db.prepare_cached(
                            "UPDATE outbox SET attempts = attempts + 1, next_ms = ?2 WHERE seq = ?1",
                        )?
                        .execute(params![delivery.seq, next_ms])?;
                    }
                    AttemptResult::DeadLetter { attempt, reason } => {
                        record_attempt(db, delivery.seq, attempt)?;
                        dead_letter_delivery(db, delivery, reason)?;
                    }
                }
            }
            Ok(())
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
        let (clause, values) = filter_clause(filter);
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
                             received_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?10)",
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

impl Registry for SqliteQueue {
    fn tenants(&self) -> Result<Vec<String>, StoreError> {
        self.read(|db| {
            let mut query = db.prepare("SELECT name FROM tenants ORDER BY name")?;
            let rows = query.query_map([], |row| row.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn add_tenant(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.call(move |db| {
            Ok(db.execute(
                "INSERT INTO tenants (name, created_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![name, now_ms()],
            )? == 1)
        })
    }

    fn tokens(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|db| {
            let mut query = db.prepare("SELECT tenant, sha256 FROM tokens")?;
            let rows = query.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn add_token(&self, tenant: &str, sha256: &str) -> Result<(), StoreError> {
        let (tenant, sha256) = (tenant.to_string(), sha256.to_string());
        self.call(move |db| {
            db.execute(
                "INSERT INTO tokens (sha256, tenant, created_ms) VALUES (?1, ?2, ?3)",
                params![sha256, tenant, now_ms()],
            )?;
            Ok(())
        })
    }

    fn add_module(&self, module: &ModuleVersion) -> Result<bool, StoreError> {
        let module = module.clone();
        self.call(move |db| {
            Ok(db.execute(
                "INSERT INTO modules (tenant, name, version, size, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO NOTHING",
                params![
                    module.tenant,
                    module.name,
                    module.version,
                    module.size as i64,
                    module.created_ms
                ],
            )? == 1)
        })
    }

    fn modules(&self, tenant: &str, name: Option<&str>) -> Result<Vec<ModuleVersion>, StoreError> {
        let (tenant, name) = (tenant.to_string(), name.map(str::to_string));
        self.read(move |db| {
            let mut query = db.prepare(
                "SELECT tenant, name, version, size, created_ms FROM modules
                 WHERE tenant = ?1 AND (?2 IS NULL OR name = ?2) ORDER BY name, created_ms, rowid",
            )?;
            let rows = query.query_map(params![tenant, name], |row| {
                Ok(ModuleVersion {
                    tenant: row.get(0)?,
                    name: row.get(1)?,
                    version: row.get(2)?,
                    size: row.get::<_, i64>(3)? as u64,
                    created_ms: row.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn push_pipeline(&self, channel: &str, spec: &str) -> Result<(), StoreError> {
        let (channel, spec) = (channel.to_string(), spec.to_string());
        self.call(move |db| {
            db.execute(
                "INSERT INTO channel_pipelines (channel, spec, created_ms) VALUES (?1, ?2, ?3)",
                params![channel, spec, now_ms()],
            )?;
            Ok(())
        })
    }

    fn pop_pipeline(&self, channel: &str) -> Result<Option<Option<String>>, StoreError> {
        let channel = channel.to_string();
        self.call(move |db| {
            let removed = db.execute(
                "DELETE FROM channel_pipelines WHERE seq =
                   (SELECT MAX(seq) FROM channel_pipelines WHERE channel = ?1)",
                [&channel],
            )?;
            if removed == 0 {
                return Ok(None);
            }
            Ok(Some(active_pipeline(db, &channel)?))
        })
    }

    fn active_pipeline(&self, channel: &str) -> Result<Option<String>, StoreError> {
        let channel = channel.to_string();
        self.read(move |db| Ok(active_pipeline(db, &channel)?))
    }
}

fn active_pipeline(db: &Connection, channel: &str) -> rusqlite::Result<Option<String>> {
    db.query_row(
        "SELECT spec FROM channel_pipelines WHERE channel = ?1 ORDER BY seq DESC LIMIT 1",
        [channel],
        |row| row.get(0),
    )
    .optional()
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
            }]),
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
        let due = queue.due("d", now_ms(), 10).unwrap();
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].channel, "b");
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
        let due = queue.due("d", now_ms(), 10).unwrap();
        let attempt = Attempt {
            at_ms: now_ms(),
            status: Some(400),
            detail: "no".into(),
        };
        queue
            .attempted(vec![(
                due[0].clone(),
                AttemptResult::DeadLetter {
                    attempt,
                    reason: "rejected-by-destination".into(),
                },
            )])
            .unwrap();
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
        let due = queue.due("d", now_ms(), 10).unwrap();
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
        let due = queue.due("d", now_ms(), 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].entity_key, "SKU-2");
        // Switching the channel off holds its deliveries.
        queue.set_enabled("a", false, false).unwrap();
        assert!(queue.due("d", now_ms(), 10).unwrap().is_empty());
    }

    #[test]
    fn a_dead_letter_keeps_attempts_and_replays_once() {
        let (_dir, queue) = queue();
        queue.ingest(vec![ingest("1", &["a"])]).unwrap();
        let pending = queue.pending("a", 0, 10).unwrap();
        queue
            .transformed(vec![deliver(&pending[0], "a", "SKU-1")])
            .unwrap();
        let due = queue.due("d", now_ms(), 10).unwrap();
        let attempt = Attempt {
            at_ms: 1,
            status: Some(400),
            detail: "bad sku".into(),
        };
        queue
            .attempted(vec![(
                due[0].clone(),
                AttemptResult::DeadLetter {
                    attempt,
                    reason: "rejected-by-destination".into(),
                },
            )])
            .unwrap();
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
        let due = queue.due("d", now_ms(), 10).unwrap();
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
