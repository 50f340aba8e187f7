//! State that lasts across batches, kept by the host per tenant, channel
//! and pipeline step (contract 0.2).
//!
//! Writes are committed with the outcome of the event that made them: if
//! the call traps, or the event ends rejected or faulted, they are gone.
//! Use it to send only the fields that changed, to turn absolute stock
//! counts into deltas, or to remember an id the destination assigned.
//!
//! Natively (unit tests, [`crate::transform::NativeRunner`]) the state is a
//! map in memory, per thread.

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::bindings::sluice::transform::state::StateError;

/// The value stored under `key`, or `None`.
pub fn get(key: &str) -> Option<String> {
    imp::get(key)
}

/// Stores `value` under `key`. Refused past the host's caps (a key over
/// 512 bytes, a value over 64 KiB, the tenant's quota).
pub fn set(key: &str, value: &str) -> Result<(), StateError> {
    imp::set(key, value)
}

/// Forgets `key`.
pub fn delete(key: &str) {
    imp::delete(key)
}

/// The value under `key` parsed as JSON; `None` if missing or not a `T`.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Option<T> {
    serde_json::from_str(&get(key)?).ok()
}

/// Stores `value` as JSON under `key`.
pub fn set_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), StateError> {
    let text = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    set(key, &text)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::StateError;
    use crate::bindings::sluice::transform::state;

    pub fn get(key: &str) -> Option<String> {
        state::get(key)
    }

    pub fn set(key: &str, value: &str) -> Result<(), StateError> {
        state::set(key, value)
    }

    pub fn delete(key: &str) {
        state::delete(key)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::StateError;

    thread_local! {
        static STATE: RefCell<BTreeMap<String, String>> = const { RefCell::new(BTreeMap::new()) };
    }

    pub fn get(key: &str) -> Option<String> {
        STATE.with(|state| state.borrow().get(key).cloned())
    }

    pub fn set(key: &str, value: &str) -> Result<(), StateError> {
        STATE.with(|state| state.borrow_mut().insert(key.to_string(), value.to_string()));
        Ok(())
    }

    pub fn delete(key: &str) {
        STATE.with(|state| state.borrow_mut().remove(key));
    }
}
