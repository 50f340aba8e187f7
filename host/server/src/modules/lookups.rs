//! Tenants' lookup tables (contract 0.2), with no HTTP: the record of each
//! uploaded version, how a step names one (`"sku-to-asin@3f2a9c1d"`), and
//! the tables loaded in memory, shared by every step that uses one version.
//!
//! A version is the SHA-256 of the table's bytes, as a module's is; the
//! bytes live as `data-dir/lookups/<sha256>.table` (and in a shared
//! registry's object store), the record as a registry entry of kind
//! [`KIND`] named `<name>@<version>`. The upload route is `api::lookups`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};
use sluice_engine::lookup::TableFormat;
use sluice_engine::state::LookupTable;

use crate::store::{Registry, StoreError};

/// The registry kind of lookup table records.
pub(crate) const KIND: &str = "lookup";

/// One stored version of a tenant's lookup table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupVersion {
    /// The table's name, as the tenant uploaded it.
    pub name: String,
    /// SHA-256 of its bytes, in hex.
    pub version: String,
    /// How its bytes are written.
    pub format: TableFormat,
    /// Size in bytes.
    pub size: u64,
    /// How many keys it has.
    pub entries: u64,
    /// When it was uploaded (ms since the Unix epoch).
    pub created_ms: i64,
}

impl LookupVersion {
    /// Its registry entry's name.
    pub(crate) fn entry_name(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// The tenant's lookup table versions (of one name, or all), oldest first.
pub(crate) fn held(
    registry: &dyn Registry,
    tenant: &str,
    name: Option<&str>,
) -> Result<Vec<LookupVersion>, StoreError> {
    let mut versions: Vec<LookupVersion> = registry
        .settings(KIND)?
        .into_iter()
        .filter(|entry| entry.tenant == tenant)
        .filter_map(|entry| serde_json::from_str::<LookupVersion>(&entry.spec).ok())
        .filter(|table| name.is_none_or(|name| table.name == name))
        .collect();
    versions.sort_by(|a, b| (&a.name, a.created_ms).cmp(&(&b.name, b.created_ms)));
    Ok(versions)
}

/// A step's reference to an uploaded table, `<name>@<version>`: the name
/// and the version (or a prefix of it).
pub(crate) fn parse_reference(reference: &str) -> Option<(&str, &str)> {
    let (name, version) = reference.split_once('@')?;
    (!name.is_empty() && !version.is_empty()).then_some((name, version))
}

/// The tables in memory, by version and format: a table used by many
/// steps or channels is held once, and dropped with its last pipeline.
#[derive(Default)]
pub(crate) struct LoadedTables(Mutex<HashMap<String, Weak<LookupTable>>>);

impl LoadedTables {
    /// The table of `version`, loaded by `load` unless it is in memory.
    /// Two steps loading one version at once may both load it; one is kept.
    pub(crate) fn get_or_load(
        &self,
        version: &LookupVersion,
        load: impl FnOnce() -> Result<LookupTable, String>,
    ) -> Result<Arc<LookupTable>, String> {
        let key = format!("{}.{:?}", version.version, version.format);
        if let Some(table) = self
            .0
            .lock()
            .expect("tables lock")
            .get(&key)
            .and_then(Weak::upgrade)
        {
            return Ok(table);
        }
        let table = Arc::new(load()?);
        let mut tables = self.0.lock().expect("tables lock");
        tables.retain(|_, held| held.strong_count() > 0);
        tables.insert(key, Arc::downgrade(&table));
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_is_a_name_and_a_version() {
        assert_eq!(
            parse_reference("sku-to-asin@3f2a9c1d"),
            Some(("sku-to-asin", "3f2a9c1d"))
        );
        for bad in ["sku-to-asin", "@3f2a", "asin@", "asin.csv"] {
            assert_eq!(parse_reference(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_table_in_use_is_loaded_once_and_dropped_with_its_last_user() {
        let tables = LoadedTables::default();
        let version = LookupVersion {
            name: "t".into(),
            version: "ab".into(),
            format: TableFormat::Json,
            size: 2,
            entries: 0,
            created_ms: 0,
        };
        let mut loads = 0;
        let mut load = || {
            loads += 1;
            Ok(LookupTable::new())
        };
        let first = tables.get_or_load(&version, &mut load).unwrap();
        let second = tables.get_or_load(&version, &mut load).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        drop((first, second));
        tables.get_or_load(&version, &mut load).unwrap();
        assert_eq!(loads, 2, "loaded again once every user had dropped it");
    }
}
