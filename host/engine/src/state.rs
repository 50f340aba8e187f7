//! Step state and lookup tables (contract 0.2): what a transform keeps
//! across batches, and the read-only tables it consults.
//!
//! A run stages every write. A write is seen at once by later calls of the
//! same run, and it is handed back with the outcome of the event that made
//! it, so that the host commits it together with that outcome. A call that
//! traps keeps none of its writes. Without a [`StateStore`] the state
//! starts empty and nothing is kept after the run.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Durable state a run reads from: one per tenant and channel, with a
/// namespace per pipeline step.
pub trait StateStore: Send + Sync {
    /// The stored value of `key` in `step`'s state, read by `deadline` (the
    /// call's own: a read that would wait longer fails instead).
    fn get(&self, step: &str, key: &str, deadline: Instant) -> Result<Option<String>, StateReadError>;
}

/// The store could not answer a read in time. The event's outcome is a
/// [`crate::FaultKind::StateUnavailable`] fault, which a host takes as a
/// reason to run the batch again later, not as the event's answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot read the step's state: {0}")]
pub struct StateReadError(pub String);

/// Caps on state, per tenant and per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct StateQuota {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Longest value, in bytes.
    pub max_value_bytes: usize,
    /// Most keys one tenant holds, over all its channels and steps.
    pub max_keys: u64,
    /// Most bytes (keys and values) one tenant holds.
    pub max_bytes: u64,
    /// Most keys one event may write or delete; past it the call fails.
    pub max_writes_per_event: usize,
}

impl Default for StateQuota {
    fn default() -> Self {
        Self {
            max_key_bytes: 512,
            max_value_bytes: 64 << 10,
            max_keys: 1_000_000,
            max_bytes: 256 << 20,
            max_writes_per_event: 1000,
        }
    }
}

/// Keys and bytes (keys and values) a tenant's state holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateUsage {
    /// Keys held.
    pub keys: u64,
    /// Bytes held, keys and values.
    pub bytes: u64,
}

/// Writes, by step and key: a value to store, or `None` to delete.
pub type StateWrites = BTreeMap<(String, String), Option<String>>;

/// What one event's steps did to state: the writes, and how they change
/// what the tenant holds (as the run read it), for a store that keeps
/// the tenant's usage without reading every old value again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateChange {
    /// The writes, by step and key.
    pub writes: StateWrites,
    /// Keys added (negative: removed).
    pub keys: i64,
    /// Bytes added (negative: removed), keys and values.
    pub bytes: i64,
}

impl StateChange {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Adds one call's writes, made by `step`.
    pub(crate) fn add(&mut self, step: &str, staged: Staged) {
        self.keys += staged.keys;
        self.bytes += staged.bytes;
        self.writes.extend(staged.into_writes(step));
    }
}

/// Lookup tables by the name a step's configuration gives them.
pub type StepLookups = HashMap<String, Arc<LookupTable>>;

/// A read-only table: key to a JSON text.
pub type LookupTable = HashMap<String, Box<str>>;

/// What a run may read and write besides its events.
#[derive(Clone, Default)]
pub struct RunContext {
    /// Where state is read from; `None` starts from empty state.
    pub store: Option<Arc<dyn StateStore>>,
    /// What the tenant's state holds before the run.
    pub usage: StateUsage,
    /// The caps.
    pub quota: StateQuota,
    /// Each step's lookup tables, by the step's state name (see
    /// [`crate::Pipeline::step_names`]).
    pub lookups: HashMap<String, StepLookups>,
}

impl RunContext {
    /// Empty state, the default quota and no lookup tables.
    pub fn empty() -> Self {
        Self::default()
    }
}

/// One run's view of state: the store, and the writes made so far.
pub(crate) struct RunState {
    store: Option<Arc<dyn StateStore>>,
    quota: StateQuota,
    inner: Mutex<RunWrites>,
}

struct RunWrites {
    usage: StateUsage,
    writes: HashMap<(Arc<str>, String), Option<String>>,
    /// Bytes of every write staged in the run, overwrites included.
    staged_bytes: usize,
}

/// Most bytes (keys and values, overwrites included) one run may stage:
/// the writes wait in host memory until the run's outcomes are committed.
pub const MAX_RUN_WRITE_BYTES: usize = 64 << 20;

impl RunState {
    pub(crate) fn new(context: &RunContext) -> Arc<Self> {
        Arc::new(Self {
            store: context.store.clone(),
            quota: context.quota,
            inner: Mutex::new(RunWrites {
                usage: context.usage,
                writes: HashMap::new(),
                staged_bytes: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunWrites> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value as this run sees it: its own writes first, then the store.
    fn read(&self, step: &Arc<str>, key: &str, deadline: Instant) -> Result<Option<String>, StateReadError> {
        if let Some(written) = self.lock().writes.get(&(step.clone(), key.to_string())) {
            return Ok(written.clone());
        }
        match &self.store {
            Some(store) => store.get(step, key, deadline),
            None => Ok(None),
        }
    }

    /// Makes a finished call's writes visible to the rest of the run.
    /// What it frees counts only once committed: the event that freed it
    /// may still end rejected or faulted, and keep none of its writes.
    pub(crate) fn merge(&self, step: &Arc<str>, staged: &Staged) {
        let mut inner = self.lock();
        inner.usage.keys = inner.usage.keys.saturating_add_signed(staged.keys.max(0));
        inner.usage.bytes = inner.usage.bytes.saturating_add_signed(staged.bytes.max(0));
        for (key, value) in &staged.writes {
            inner.writes.insert((step.clone(), key.clone()), value.clone());
        }
    }
}

/// The writes of one call, not yet part of the run.
#[derive(Debug, Default, Clone)]
pub(crate) struct Staged {
    pub(crate) writes: BTreeMap<String, Option<String>>,
    keys: i64,
    bytes: i64,
}

impl Staged {
    /// The writes under `step`'s name.
    pub(crate) fn into_writes(self, step: &str) -> StateWrites {
        self.writes
            .into_iter()
            .map(|(key, value)| ((step.to_string(), key), value))
            .collect()
    }
}

/// What one call may reach: its step's state and lookup tables.
#[derive(Clone)]
pub(crate) struct CallContext {
    pub(crate) run: Arc<RunState>,
    pub(crate) step: Arc<str>,
    pub(crate) lookups: Option<Arc<StepLookups>>,
}

/// The state of the call in progress, held in the instance's store.
pub(crate) struct CallState {
    context: CallContext,
    pub(crate) staged: Staged,
}

/// A call went past a state cap that ends it (a fault of its event).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateFault {
    /// More keys written or deleted for one event than allowed.
    #[error("wrote or deleted more than {limit} state keys for one event")]
    TooManyWrites {
        /// The cap.
        limit: usize,
    },
    /// More bytes written in one batch than the host holds for it.
    #[error("wrote more than {limit} bytes of state in one batch")]
    TooManyBytes {
        /// The cap.
        limit: usize,
    },
    /// The store could not be read.
    #[error(transparent)]
    Read(#[from] StateReadError),
}

impl CallState {
    pub(crate) fn new(context: CallContext) -> Self {
        Self {
            context,
            staged: Staged::default(),
        }
    }

    pub(crate) fn get(&self, key: &str, deadline: Instant) -> Result<Option<String>, StateFault> {
        if let Some(staged) = self.staged.writes.get(key) {
            return Ok(staged.clone());
        }
        Ok(self.context.run.read(&self.context.step, key, deadline)?)
    }

    /// Stages a write; `Ok(Err(_))` is a refusal the guest sees, `Err(_)`
    /// ends the call.
    pub(crate) fn set(
        &mut self,
        key: String,
        value: String,
        deadline: Instant,
    ) -> Result<Result<(), crate::bindings::StateError>, StateFault> {
        use crate::bindings::StateError;
        let quota = self.context.run.quota;
        if key.len() > quota.max_key_bytes {
            return Ok(Err(StateError::KeyTooLarge(cap(quota.max_key_bytes))));
        }
        if value.len() > quota.max_value_bytes {
            return Ok(Err(StateError::ValueTooLarge(cap(quota.max_value_bytes))));
        }
        // JSON, so that fixtures, the API and people can read it.
        if serde_json::from_str::<serde::de::IgnoredAny>(&value).is_err() {
            return Ok(Err(StateError::NotJson));
        }
        let old = self.get(&key, deadline)?;
        let keys = i64::from(old.is_none());
        let bytes =
            (key.len() + value.len()) as i64 - old.as_ref().map_or(0, |old| (key.len() + old.len()) as i64);
        let usage = self.context.run.lock().usage;
        let keys_after = (usage.keys as i64).saturating_add(self.staged.keys + keys);
        let bytes_after = (usage.bytes as i64).saturating_add(self.staged.bytes + bytes);
        if keys > 0 && keys_after > quota.max_keys as i64 {
            return Ok(Err(StateError::Quota(format!(
                "the tenant's state holds {} keys, its quota",
                quota.max_keys
            ))));
        }
        if bytes > 0 && bytes_after > quota.max_bytes as i64 {
            return Ok(Err(StateError::Quota(format!(
                "the tenant's state would pass its quota of {} bytes",
                quota.max_bytes
            ))));
        }
        self.stage(key, Some(value), keys, bytes)?;
        Ok(Ok(()))
    }

    pub(crate) fn delete(&mut self, key: String, deadline: Instant) -> Result<(), StateFault> {
        let Some(old) = self.get(&key, deadline)? else {
            return Ok(());
        };
        let bytes = (key.len() + old.len()) as i64;
        self.stage(key, None, -1, -bytes)
    }

    fn stage(&mut self, key: String, value: Option<String>, keys: i64, bytes: i64) -> Result<(), StateFault> {
        let limit = self.context.run.quota.max_writes_per_event;
        if !self.staged.writes.contains_key(&key) && self.staged.writes.len() >= limit {
            return Err(StateFault::TooManyWrites { limit });
        }
        // Counted for the run whatever becomes of the call: overwriting
        // one key again and again costs as much as new keys.
        let size = key.len() + value.as_ref().map_or(0, String::len);
        {
            let mut inner = self.context.run.lock();
            inner.staged_bytes += size;
            if inner.staged_bytes > MAX_RUN_WRITE_BYTES {
                return Err(StateFault::TooManyBytes {
                    limit: MAX_RUN_WRITE_BYTES,
                });
            }
        }
        self.staged.writes.insert(key, value);
        self.staged.keys += keys;
        self.staged.bytes += bytes;
        Ok(())
    }

    pub(crate) fn lookup(&self, table: &str, key: &str) -> Option<String> {
        let table = self.context.lookups.as_ref()?.get(table)?;
        table.get(key).map(|value| value.to_string())
    }
}

fn cap(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// State held in memory: for `sluice test` (a fixture's initial state) and
/// for trials, which must never touch live state.
#[derive(Debug, Default, Clone)]
pub struct MemoryState {
    values: HashMap<(String, String), String>,
}

impl MemoryState {
    /// State holding these values.
    pub fn new(values: impl IntoIterator<Item = ((String, String), String)>) -> Self {
        Self {
            values: values.into_iter().collect(),
        }
    }

    /// Stores one value.
    pub fn insert(&mut self, step: &str, key: &str, value: String) {
        self.values.insert((step.to_string(), key.to_string()), value);
    }

    /// Applies a run's writes.
    pub fn apply(&mut self, writes: &StateWrites) {
        for (key, value) in writes {
            match value {
                Some(value) => self.values.insert(key.clone(), value.clone()),
                None => self.values.remove(key),
            };
        }
    }

    /// Every value, by step and key, sorted.
    pub fn values(&self) -> BTreeMap<(String, String), String> {
        self.values.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// What it holds, as the quota counts it.
    pub fn usage(&self) -> StateUsage {
        StateUsage {
            keys: self.values.len() as u64,
            bytes: self
                .values
                .iter()
                .map(|((_, k), v)| (k.len() + v.len()) as u64)
                .sum(),
        }
    }
}

impl StateStore for MemoryState {
    fn get(&self, step: &str, key: &str, _deadline: Instant) -> Result<Option<String>, StateReadError> {
        Ok(self.values.get(&(step.to_string(), key.to_string())).cloned())
    }
}
