//! Structured logging to the host, kept per event and bounded by the host.

pub use crate::bindings::sluice::transform::host::LogLevel;

/// Writes one line to the host's log for the current call. Cheap, and never
/// fails: past the host's per-call budget, lines are counted and dropped.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::sluice::transform::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}
