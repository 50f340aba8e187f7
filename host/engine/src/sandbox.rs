//! The per-call store state: WASI with no capabilities, a bounded log,
//! virtual time, a fixed random seed and one memory budget.
//!
//! A transform gets no preopened directories, no environment, no arguments,
//! no network (TCP, UDP and name lookup are off and every address is
//! refused) and no outgoing HTTP (`wasi:http` is not linked at all). Its
//! stdout, stderr and `host.log` lines go to one bounded buffer. Clocks
//! start at the same instant on every call and move only when the guest
//! sleeps (see [`super::wasi`]), and randomness repeats, so the same input
//! always gives the same output.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{Deterministic, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::limits::MemoryBudget;
use super::wasi::VirtualClock;
use crate::Limits;
use crate::bindings::{LogLevel, sluice};

/// Most host resources (pollables, streams) one instance may hold at once.
const MAX_RESOURCES: usize = 10_000;

/// The bytes the deterministic random generator repeats.
const RANDOM_SEED: &[u8] = b"sluice: same input, same output.";

/// Store data for one instance of one module.
pub struct Sandbox {
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    /// The instance's memory budget, consulted by wasmtime on every grow.
    pub limits: MemoryBudget,
    /// Everything the guest wrote during this call.
    pub log: LogBuffer,
    pub(super) clock: VirtualClock,
    /// When the current call must end; host calls that wait stop here.
    pub(super) deadline: Instant,
}

impl Sandbox {
    /// A sandbox with no capabilities, capped by `limits`.
    pub fn new(limits: &Limits) -> Self {
        let log = LogBuffer::new(limits.log_bytes);
        let clock = VirtualClock::default();
        Self {
            wasi: Self::wasi(&log, &clock),
            table: Self::table(),
            limits: MemoryBudget::new(limits.memory_bytes),
            log,
            clock,
            deadline: Instant::now(),
        }
    }

    /// A resource table small enough that a guest leaking handles hits its
    /// limit (a trap) long before it costs the host real memory.
    fn table() -> ResourceTable {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        table
    }

    /// Restarts the clocks and the random generators' sequences, so that
    /// every call, on a fresh or a warm instance, sees the same time and
    /// randomness.
    pub fn reset_for_call(&mut self) {
        self.log.clear();
        self.clock.reset();
        self.wasi = Self::wasi(&self.log, &self.clock);
    }

    fn wasi(log: &LogBuffer, clock: &VirtualClock) -> WasiCtx {
        WasiCtxBuilder::new()
            .stdout(LogPipe(log.clone()))
            .stderr(LogPipe(log.clone()))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .wall_clock(clock.clone())
            .monotonic_clock(clock.clone())
            .secure_random(Deterministic::new(RANDOM_SEED.to_vec()))
            .insecure_random(Deterministic::new(RANDOM_SEED.to_vec()))
            .insecure_random_seed(0x511ce_u128)
            .build()
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl sluice::transform::host::Host for Sandbox {
    fn log(&mut self, level: LogLevel, message: String) {
        let level = match level {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        };
        self.log.write(format!("[{level}] {message}\n").as_bytes());
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

/// Guest stdout or stderr, feeding a [`LogBuffer`].
#[derive(Clone)]
struct LogPipe(LogBuffer);

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for LogPipe {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.0.write(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0.write(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
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
