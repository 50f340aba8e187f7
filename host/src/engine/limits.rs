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
    /// Largest linear memory an instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Largest output (payloads plus texts) one event may produce, in bytes.
    pub output_bytes_per_event: usize,
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
