//! Tenants, tokens, uploaded modules and activated pipelines on SQLite.

use rusqlite::params;

use super::SqliteQueue;
use super::queue::active_pipeline;
use crate::store::*;

impl Registry for SqliteQueue {
    fn settings(&self, kind: &str) -> Result<Vec<Setting>, StoreError> {
        self.read(|db| {
            let mut query = db.prepare_cached(
                "SELECT tenant, name, spec FROM settings WHERE kind = ?1 ORDER BY updated_ms, tenant, name",
            )?;
            let rows = query.query_map([kind], |row| {
                Ok(Setting {
                    tenant: row.get(0)?,
                    name: row.get(1)?,
                    spec: row.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn setting(&self, kind: &str, tenant: &str, name: &str) -> Result<Option<String>, StoreError> {
        use rusqlite::OptionalExtension;
        self.read(|db| {
            Ok(db
                .prepare_cached("SELECT spec FROM settings WHERE kind = ?1 AND tenant = ?2 AND name = ?3")?
                .query_row(params![kind, tenant, name], |row| row.get(0))
                .optional()?)
        })
    }

    fn put_setting(&self, kind: &str, tenant: &str, name: &str, spec: &str) -> Result<(), StoreError> {
        let row = (
            kind.to_string(),
            tenant.to_string(),
            name.to_string(),
            spec.to_string(),
        );
        self.call(move |db| {
            db.execute(
                "INSERT INTO settings (kind, tenant, name, spec, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (kind, tenant, name) DO UPDATE SET spec = excluded.spec, updated_ms = excluded.updated_ms",
                params![row.0, row.1, row.2, row.3, now_ms()],
            )?;
            Ok(())
        })
    }

    fn delete_setting(&self, kind: &str, tenant: &str, name: &str) -> Result<bool, StoreError> {
        let row = (kind.to_string(), tenant.to_string(), name.to_string());
        self.call(move |db| {
            Ok(db.execute(
                "DELETE FROM settings WHERE kind = ?1 AND tenant = ?2 AND name = ?3",
                params![row.0, row.1, row.2],
            )? == 1)
        })
    }

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
