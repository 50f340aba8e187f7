//! What one module may use while it transforms events.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Resource limits for one module. Every call gets fresh budgets scaled by
/// the batch size up to 10 events' worth; a batch that runs out is re-run
/// one event at a time, each with one event's budget, so only the events
/// that really exceed it fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock time one event may take (enforced by epoch interruption).
    #[serde(with = "millis", rename = "timeout-ms")]
    pub timeout: Duration,
    /// Fuel (roughly, WebAssembly instructions) one event may burn. Only
    /// enforced when the engine was built with fuel metering.
    pub fuel_per_event: u64,
    /// Linear memory one instance may hold, all its memories together, in bytes.
    pub memory_bytes: usize,
    /// Largest output one event may produce in one step, in bytes: every
    /// text of every emitted event (ids, source, payload, …), the drop
    /// reason, or the violations. Also the cap for one input event's
    /// outputs after the whole pipeline.
    pub output_bytes_per_event: usize,
    /// Most events (or violations) one event may turn into in one step,
    /// and after the whole pipeline.
    pub max_fan_out: usize,
    /// Bytes of log (stdout, stderr and `host.log`) kept per call; the rest is dropped and counted.
    pub log_bytes: usize,
    /// Calls one instance may serve before it is replaced by a fresh one
    /// (1: a fresh instance for every call). A warm instance skips
    /// instantiation and `init`; any fault discards it.
    pub calls_per_instance: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(200),
            fuel_per_event: 50_000_000,
            memory_bytes: 128 << 20,
            output_bytes_per_event: 4 << 20,
            max_fan_out: 1000,
            log_bytes: 16 << 10,
            calls_per_instance: 1000,
        }
    }
}

impl Limits {
    /// These limits with some fields replaced, named as in `sluice.toml`
    /// (`timeout-ms`, `memory-bytes`, …); an unknown name is an error.
    pub fn with_overrides(
        &self,
        overrides: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Limits, String> {
        if overrides.is_empty() {
            return Ok(self.clone());
        }
        let mut merged = serde_json::to_value(self).map_err(|e| e.to_string())?;
        if let Some(fields) = merged.as_object_mut() {
            fields.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        serde_json::from_value(merged).map_err(|e| e.to_string())
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(value.as_millis().try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// The memory budget of one instance: every linear memory of the component
/// (a component may hold many core modules, each with its own memory) is
/// charged to one budget, so `memory-bytes` caps the instance, not each memory.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: usize,
    /// The last growth granted, taken back if the growth then fails.
    granted: usize,
}

/// An instance asked for more memory than its budget; the call traps with this error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the instance asked for {requested} bytes of memory in all, over its {limit}-byte budget")]
pub struct MemoryLimitExceeded {
    /// The budget, in bytes.
    pub limit: usize,
    /// What the instance would have held after the growth, in bytes.
    pub requested: usize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes for all of an instance's memories together.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: 0,
            granted: 0,
        }
    }

    /// Bytes of linear memory the instance holds now.
    pub fn used(&self) -> usize {
        self.used
    }
}

impl wasmtime::ResourceLimiter for MemoryBudget {
    fn memory_growing(&mut self, current: usize, desired: usize, _: Option<usize>) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let requested = self.used.saturating_add(growth);
        if requested > self.limit {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit: self.limit,
                requested,
            }));
        }
        self.used = requested;
        self.granted = growth;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.used -= self.granted;
        self.granted = 0;
        // Trap rather than hand the guest a failed allocation: a Rust guest
        // would then try to print an out-of-memory message and die confusingly.
        Err(error)
    }

    fn table_growing(&mut self, _: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|max| desired <= max))
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::ResourceLimiter;

    use super::*;

    #[test]
    fn every_memory_is_charged_to_one_budget() {
        let mut budget = MemoryBudget::new(10 << 20);
        assert!(budget.memory_growing(0, 4 << 20, None).unwrap());
        assert!(budget.memory_growing(0, 4 << 20, None).unwrap());
        let err = budget.memory_growing(0, 4 << 20, None).unwrap_err();
        assert_eq!(
            err.downcast_ref::<MemoryLimitExceeded>(),
            Some(&MemoryLimitExceeded {
                limit: 10 << 20,
                requested: 12 << 20
            })
        );
        assert_eq!(budget.used(), 8 << 20);
        assert!(budget.memory_growing(4 << 20, 5 << 20, None).unwrap());
        let _ = budget.memory_grow_failed(wasmtime::Error::msg("too big"));
        assert_eq!(budget.used(), 8 << 20, "a failed growth is given back");
    }
}
