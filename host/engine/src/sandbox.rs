//! The per-call store state: a bounded log, one memory budget, the call's
//! deadline and (with the `wasi` feature) WASI granting nothing.
//!
//! A transform gets no preopened directories, no environment, no arguments,
//! no network (TCP, UDP and name lookup are off and every address is
//! refused) and no outgoing HTTP (`wasi:http` is linked only to fail every
//! call, see [`crate::deny`]). Its
//! stdout, stderr and `host.log` lines go to one bounded buffer. Clocks
//! start at the same instant on every call and move only when the guest
//! sleeps (see `wasi`), and randomness repeats, so the same input always
//! gives the same output.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::Limits;
use crate::bindings::{LogLevel, StateError, v0_1, v0_2};
use crate::limits::MemoryBudget;
use crate::state::CallState;

/// Store data for one instance of one module.
pub struct Sandbox {
    /// WASI, granting nothing (see [`crate::wasi`]).
    #[cfg(feature = "wasi")]
    pub(crate) wasi: crate::wasi::WasiState,
    /// The instance's memory budget, consulted by wasmtime on every grow.
    pub limits: MemoryBudget,
    /// Everything the guest wrote during this call.
    pub log: LogBuffer,
    /// When the current call must end; host calls that wait stop here.
    #[cfg_attr(not(feature = "wasi"), allow(dead_code))]
    pub(crate) deadline: Instant,
    /// The call runs inline on an async worker: host calls must not wait.
    pub(crate) inline: bool,
    /// The step's state and lookup tables during a call (contract 0.2).
    pub(crate) call: Option<CallState>,
}

impl Sandbox {
    /// A sandbox with no capabilities, capped by `limits`.
    pub fn new(limits: &Limits) -> Self {
        let log = LogBuffer::new(limits.log_bytes);
        Self {
            #[cfg(feature = "wasi")]
            wasi: crate::wasi::WasiState::new(&log),
            limits: MemoryBudget::new(limits.memory_bytes),
            log,
            deadline: Instant::now(),
            inline: false,
            call: None,
        }
    }

    /// Clears the log and restarts the clocks and the random generators'
    /// sequences, so that every call, on a fresh or a warm instance, sees
    /// the same time and randomness.
    pub fn reset_for_call(&mut self) {
        self.log.clear();
        #[cfg(feature = "wasi")]
        self.wasi.reset(&self.log);
    }
}

impl Sandbox {
    fn write_log(&mut self, level: &str, message: &str) {
        // Written in parts: a message as large as the guest's memory is
        // never copied again, only what the log still has room for.
        self.log.write(format!("[{level}] ").as_bytes());
        self.log.write(message.as_bytes());
        self.log.write(b"\n");
    }
}

impl v0_2::sluice::transform::host::Host for Sandbox {
    fn log(&mut self, level: LogLevel, message: String) {
        let level = match level {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        };
        self.write_log(level, &message);
    }
}

impl v0_1::sluice::transform::host::Host for Sandbox {
    fn log(&mut self, level: v0_1::sluice::transform::host::LogLevel, message: String) {
        use v0_1::sluice::transform::host::LogLevel;
        let level = match level {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        };
        self.write_log(level, &message);
    }
}

impl v0_2::sluice::transform::state::Host for Sandbox {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        match &self.call {
            Some(call) => Ok(call.get(&key, self.deadline)?),
            None => Ok(None),
        }
    }

    fn set(&mut self, key: String, value: String) -> wasmtime::Result<Result<(), StateError>> {
        match &mut self.call {
            Some(call) => Ok(call.set(key, value, self.deadline)?),
            None => Ok(Err(StateError::Quota(
                "state cannot be written during `init`".into(),
            ))),
        }
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        match &mut self.call {
            Some(call) => Ok(call.delete(key, self.deadline)?),
            None => Ok(()),
        }
    }
}

impl v0_2::sluice::transform::lookup::Host for Sandbox {
    fn get(&mut self, table: String, key: String) -> Option<String> {
        self.call.as_ref()?.lookup(&table, &key)
    }
}

/// A log that keeps the first `capacity` bytes and counts the rest.
/// Writing never fails, so a chatty guest is truncated, not killed.
#[derive(Debug, Clone)]
pub struct LogBuffer {
    inner: Arc<Mutex<LogState>>,
}

#[derive(Debug)]
struct LogState {
    kept: Vec<u8>,
    capacity: usize,
    dropped: usize,
}

impl LogBuffer {
    /// An empty log that keeps up to `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LogState {
                kept: Vec::new(),
                capacity,
                dropped: 0,
            })),
        }
    }

    /// Appends what fits and counts what does not.
    pub fn write(&self, bytes: &[u8]) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = state.capacity.saturating_sub(state.kept.len());
        let take = room.min(bytes.len());
        state.kept.extend_from_slice(&bytes[..take]);
        state.dropped += bytes.len() - take;
    }

    /// Forgets everything written so far (between calls on one instance).
    pub fn clear(&self) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        state.kept.clear();
        state.dropped = 0;
    }

    /// The kept text (lossily decoded), with a note of how much was dropped.
    pub fn text(&self) -> String {
        let state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = String::from_utf8_lossy(&state.kept).into_owned();
        if state.dropped > 0 {
            text.push_str(&format!(
                "\n[log truncated: {} more bytes dropped]",
                state.dropped
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keeps_the_start_and_counts_the_rest() {
        let log = LogBuffer::new(5);
        log.write(b"hello world");
        assert_eq!(log.text(), "hello\n[log truncated: 6 more bytes dropped]");
    }
}
