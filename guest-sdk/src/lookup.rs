//! Read-only lookup tables the tenant uploads (SKU to ASIN, email to member
//! number) and names in the step's configuration (contract 0.2).
//!
//! Natively (unit tests) tables are set per thread with [`set_native`].

use serde::de::DeserializeOwned;

/// The value of `key` in `table` as a JSON text, or `None`.
pub fn get_raw(table: &str, key: &str) -> Option<String> {
    imp::get(table, key)
}

/// The value of `key` in `table` parsed as `T`; `None` if missing or not a `T`.
pub fn get<T: DeserializeOwned>(table: &str, key: &str) -> Option<T> {
    serde_json::from_str(&get_raw(table, key)?).ok()
}

/// Natively only: makes `table` hold `rows` (key to JSON value) on this thread.
#[cfg(not(target_arch = "wasm32"))]
pub fn set_native(table: &str, rows: impl IntoIterator<Item = (String, serde_json::Value)>) {
    imp::TABLES.with(|tables| {
        tables.borrow_mut().insert(
            table.to_string(),
            rows.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
        )
    });
}

#[cfg(target_arch = "wasm32")]
mod imp {
    pub fn get(table: &str, key: &str) -> Option<String> {
        crate::bindings::sluice::transform::lookup::get(table, key)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::cell::RefCell;
    use std::collections::HashMap;

    thread_local! {
        pub static TABLES: RefCell<HashMap<String, HashMap<String, String>>> = RefCell::new(HashMap::new());
    }

    pub fn get(table: &str, key: &str) -> Option<String> {
        TABLES.with(|tables| tables.borrow().get(table)?.get(key).cloned())
    }
}
