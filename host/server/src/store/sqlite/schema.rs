//! The schema of `sluice.db`, as numbered migrations. The database's
//! `user_version` says how many have run; opening a database runs the rest,
//! in order, in one transaction. Never edit a migration that has shipped:
//! add the next one.

use rusqlite::{Connection, TransactionBehavior};

/// One step of the schema's history.
enum Migration {
    /// Plain SQL.
    Sql(&'static str),
    /// A step that must look before it changes (older databases differ).
    Code(fn(&Connection) -> rusqlite::Result<()>),
}

/// Every migration, oldest first; `user_version` N means the first N ran.
const MIGRATIONS: &[Migration] = &[
    // 1: events, queues, dead letters, tenants, tokens, modules, pipelines, switches.
    Migration::Sql(V1),
    // 2: the circuit breaker's reason. Databases made before migrations
    // existed may have it already.
    Migration::Code(add_breaker_reason),
    // 3: delivery order per (destination, channel, entity key); the
    // outbox's input events (kept while a delivery needs them); dead
    // letters counted per channel.
    Migration::Sql(
        "DROP INDEX IF EXISTS outbox_order;
         CREATE INDEX IF NOT EXISTS outbox_entity ON outbox (destination, channel, entity_key, seq);
         CREATE INDEX IF NOT EXISTS outbox_event ON outbox (tenant, event_id);
         CREATE INDEX IF NOT EXISTS dead_letters_by_channel ON dead_letters (channel);",
    ),
    // 4: where each output's payload starts, and its event id, so that
    // delivery sends the stored bytes without parsing them.
    Migration::Sql(
        "ALTER TABLE outbox ADD COLUMN payload_at INTEGER;
         ALTER TABLE outbox ADD COLUMN output_id TEXT;",
    ),
    // 5: events in a rowid table. A WITHOUT ROWID table keeps rows in an
    // index b-tree, whose cells hold about 1 kB on 4 kB pages: a 2.6 kB
    // product spilled into two overflow pages, written on ingest and read
    // back on every transform. A rowid table keeps it in one cell.
    Migration::Sql(
        "CREATE TABLE events_by_rowid (
             tenant TEXT NOT NULL,
             id TEXT NOT NULL,
             received_ms INTEGER NOT NULL,
             event TEXT NOT NULL,
             UNIQUE (tenant, id)
         );
         INSERT INTO events_by_rowid (tenant, id, received_ms, event)
             SELECT tenant, id, received_ms, event FROM events ORDER BY received_ms;
         DROP TABLE events;
         ALTER TABLE events_by_rowid RENAME TO events;
         CREATE INDEX events_received ON events (received_ms);",
    ),
    // 6: a tenant's log in received order, so each page of a backfill or
    // `record --last` is a range scan; without it every page read and
    // sorted the tenant's whole log (144 ms a page at 100k events).
    Migration::Sql("CREATE INDEX events_by_tenant_received ON events (tenant, received_ms, id);"),
    // 7: entries tenants keep through the API (sources, and poll cursors).
    Migration::Sql(
        "CREATE TABLE settings (
             kind TEXT NOT NULL,
             tenant TEXT NOT NULL,
             name TEXT NOT NULL,
             spec TEXT NOT NULL,
             updated_ms INTEGER NOT NULL,
             PRIMARY KEY (kind, tenant, name)
         );",
    ),
    // 8: deliveries resent by hand (sent even if unchanged), and the
    // fingerprint of the last output each destination accepted per
    // (channel, entity key), for `skip-unchanged`.
    Migration::Sql(
        "ALTER TABLE outbox ADD COLUMN replayed INTEGER NOT NULL DEFAULT 0;
         CREATE TABLE fingerprints (
             destination TEXT NOT NULL,
             channel TEXT NOT NULL,
             entity_key TEXT NOT NULL,
             digest TEXT NOT NULL,
             at_ms INTEGER NOT NULL,
             PRIMARY KEY (destination, channel, entity_key)
         ) WITHOUT ROWID;",
    ),
    // 9: each delivery's event kind, for the destination's `priority`
    // (rows from before read as the empty kind, with a share of 1).
    Migration::Sql(
        "ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT '';
         CREATE INDEX outbox_kind ON outbox (destination, kind, seq);",
    ),
    // 10: transform state (contract 0.2), per tenant, channel and step,
    // and what each tenant holds, for its quota.
    Migration::Sql(
        "CREATE TABLE state (
             tenant TEXT NOT NULL,
             channel TEXT NOT NULL,
             step TEXT NOT NULL,
             key TEXT NOT NULL,
             value TEXT NOT NULL,
             PRIMARY KEY (tenant, channel, step, key)
         ) WITHOUT ROWID;
         CREATE TABLE state_usage (
             tenant TEXT PRIMARY KEY,
             keys INTEGER NOT NULL,
             bytes INTEGER NOT NULL
         ) WITHOUT ROWID;",
    ),
];

/// Why the schema cannot be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The database is newer than this build.
    #[error("the database has schema version {found}, newer than this sluice's {known}: use a newer sluice")]
    TooNew {
        /// Its `user_version`.
        found: usize,
        /// The migrations this build knows.
        known: usize,
    },
    /// A migration failed; nothing of it was applied.
    #[error("schema migration {number} failed: {error}")]
    Failed {
        /// The migration's number (1-based).
        number: usize,
        /// Why.
        error: rusqlite::Error,
    },
}

/// Runs every migration the database has not had, in one transaction.
pub fn migrate(connection: &mut Connection) -> Result<(), MigrationError> {
    let failed = |number| move |error| MigrationError::Failed { number, error };
    // Read inside the write transaction: two processes opening at once
    // cannot both run the same migration.
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(failed(0))?;
    let current: usize = transaction
        .pragma_query_value(None, "user_version", |row| row.get::<_, i64>(0))
        .map_err(failed(0))? as usize;
    if current > MIGRATIONS.len() {
        return Err(MigrationError::TooNew {
            found: current,
            known: MIGRATIONS.len(),
        });
    }
    if current == MIGRATIONS.len() {
        return Ok(());
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(current) {
        let number = index + 1;
        match migration {
            Migration::Sql(sql) => transaction.execute_batch(sql),
            Migration::Code(step) => step(&transaction),
        }
        .map_err(failed(number))?;
    }
    transaction
        .pragma_update(None, "user_version", MIGRATIONS.len() as i64)
        .map_err(failed(MIGRATIONS.len()))?;
    transaction.commit().map_err(failed(MIGRATIONS.len()))
}

fn add_breaker_reason(db: &Connection) -> rusqlite::Result<()> {
    let has_reason: i64 = db.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('channel_state') WHERE name = 'reason'",
        [],
        |row| row.get(0),
    )?;
    if has_reason == 0 {
        db.execute_batch("ALTER TABLE channel_state ADD COLUMN reason TEXT")?;
    }
    Ok(())
}

const V1: &str = "
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
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (destination, entity_key, seq);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (destination, seq);

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
    config_enabled INTEGER
);
";

#[cfg(test)]
mod tests {
    use super::*;

    fn version(db: &Connection) -> i64 {
        db.pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_database_gets_every_migration_once() {
        let mut db = Connection::open_in_memory().unwrap();
        migrate(&mut db).unwrap();
        assert_eq!(version(&db), MIGRATIONS.len() as i64);
        migrate(&mut db).unwrap();
        let indexes: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'outbox_entity'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 1);
    }

    #[test]
    fn a_database_from_before_migrations_is_brought_up_to_date() {
        // As the first round left it: the schema, the reason column added ad hoc, version 0.
        let mut db = Connection::open_in_memory().unwrap();
        db.execute_batch(V1).unwrap();
        db.execute_batch("ALTER TABLE channel_state ADD COLUMN reason TEXT")
            .unwrap();
        migrate(&mut db).unwrap();
        assert_eq!(version(&db), MIGRATIONS.len() as i64);
        let old_index: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'outbox_order'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old_index, 0);
    }

    #[test]
    fn stored_events_survive_the_move_to_a_rowid_table_and_duplicates_are_still_refused() {
        let mut db = Connection::open_in_memory().unwrap();
        db.execute_batch(V1).unwrap();
        db.execute_batch("ALTER TABLE channel_state ADD COLUMN reason TEXT")
            .unwrap();
        db.execute(
            "INSERT INTO events (tenant, id, received_ms, event) VALUES ('acme', 'e-1', 5, '{\"id\":\"e-1\"}')",
            [],
        )
        .unwrap();
        migrate(&mut db).unwrap();
        let (event, received): (String, i64) = db
            .query_row(
                "SELECT event, received_ms FROM events WHERE tenant = 'acme' AND id = 'e-1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((event.as_str(), received), (r#"{"id":"e-1"}"#, 5));
        let inserted = db
            .execute(
                "INSERT INTO events (tenant, id, received_ms, event) VALUES ('acme', 'e-1', 6, '{}')
                 ON CONFLICT DO NOTHING",
                [],
            )
            .unwrap();
        assert_eq!(inserted, 0, "the same tenant and id is a duplicate");
        let by_time: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'events_received'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(by_time, 1);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let mut db = Connection::open_in_memory().unwrap();
        db.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(
            migrate(&mut db),
            Err(MigrationError::TooNew { found: 99, .. })
        ));
    }
}
