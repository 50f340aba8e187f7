//! How a transform sees WASI: linked with no capabilities, on virtual time,
//! and with every call that can wait bounded by the call's deadline.
//!
//! Epoch interruption only fires inside WebAssembly code, so a guest parked
//! in a host call (`poll`, `pollable.block`, a blocking stream read or
//! write) would never be interrupted. Two things close that class:
//!
//! - **Virtual time.** `wasi:clocks/monotonic-clock` is replaced: a
//!   subscription is ready at once and, when it is waited on, moves the
//!   sandbox's clock forward by the time asked for. `sleep(3600)` returns
//!   immediately and the guest then reads a clock one hour later, so the
//!   same input always gives the same output and no host thread waits.
//! - **Bounded waits.** `wasi:io/poll` and every blocking method of
//!   `wasi:io/streams` are replaced by versions that wait at most until the
//!   call's deadline. A pollable that never becomes ready (today none can,
//!   since sockets and files are refused; tomorrow perhaps one) ends the
//!   call with [`DeadlineExceeded`], which the engine reports as a timeout.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::{DynPollable, Pollable, StreamError, StreamResult};
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};
use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as AsyncPoll, HostPollable as AsyncPollable};
use wasmtime_wasi_io::bindings::wasi::io::streams::{
    HostInputStream as AsyncInput, HostOutputStream as AsyncOutput,
};
use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream};

use std::pin::Pin;
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::OutputStream;
use wasmtime_wasi::{Deterministic, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::{LogBuffer, Sandbox};

/// Most host resources (pollables, streams) one instance may hold at once:
/// a guest leaking handles hits this (a trap) long before it costs the host
/// real memory.
const MAX_RESOURCES: usize = 10_000;

/// The bytes the deterministic random generator repeats.
const RANDOM_SEED: &[u8] = b"sluice: same input, same output.";

/// One instance's WASI: a context granting nothing, its resource table and
/// its virtual clock.
pub(crate) struct WasiState {
    ctx: WasiCtx,
    table: ResourceTable,
    clock: VirtualClock,
}

impl WasiState {
    pub(crate) fn new(log: &LogBuffer) -> Self {
        let clock = VirtualClock::default();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            ctx: Self::context(log, &clock),
            table,
            clock,
        }
    }

    /// The same time and randomness as at the start of the first call.
    pub(crate) fn reset(&mut self, log: &LogBuffer) {
        self.clock.reset();
        self.ctx = Self::context(log, &self.clock);
    }

    fn context(log: &LogBuffer, clock: &VirtualClock) -> WasiCtx {
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
            // A host loop no epoch can interrupt: keep each call short.
            .max_random_size(1 << 20)
            .build()
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi.ctx,
            table: &mut self.wasi.table,
        }
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
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        self.0.write(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
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

/// A host call that can wait was still waiting when the call's deadline passed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a host call was still waiting when the call's deadline passed")]
pub struct DeadlineExceeded;

/// An inline call made a host call that was not ready at once; inline
/// calls never wait, so the call goes to a blocking thread instead.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a host call would have waited on an async worker thread")]
pub struct WouldWait;

/// Links WASI: no capabilities, virtual time, bounded waits.
pub(crate) fn add_to_linker(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    // Replace, by the same names, the functions that could wait.
    linker.allow_shadowing(true);
    poll::add_to_linker::<Sandbox, Bounded>(linker, Sandbox::bounded_io)?;
    streams::add_to_linker::<Sandbox, Bounded>(linker, Sandbox::bounded_io)?;
    monotonic_clock::add_to_linker::<Sandbox, Virtual>(linker, Sandbox::virtual_time)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The sandbox's clock: a fixed instant plus the time the guest has slept.
/// Cheap to clone; clones share the time.
#[derive(Debug, Clone, Default)]
pub struct VirtualClock {
    slept_ns: Arc<AtomicU64>,
}

/// The instant every transform sees as "now" before it sleeps: 2025-01-01T00:00:00Z.
const EPOCH: Duration = Duration::from_secs(1_735_689_600);

impl VirtualClock {
    /// Back to the start: every call sees the same time.
    pub fn reset(&self) {
        self.slept_ns.store(0, Ordering::Relaxed);
    }

    fn now_ns(&self) -> u64 {
        self.slept_ns.load(Ordering::Relaxed)
    }

    /// Moves the clock forward to `when` (never back).
    fn advance_to(&self, when: u64) {
        self.slept_ns.fetch_max(when, Ordering::Relaxed);
    }
}

impl HostWallClock for VirtualClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        EPOCH.saturating_add(Duration::from_nanos(self.now_ns()))
    }
}

impl HostMonotonicClock for VirtualClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.now_ns()
    }
}

/// A subscription to virtual time: ready at once; waiting on it moves the clock to its instant.
struct Alarm {
    clock: VirtualClock,
    at: u64,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Alarm {
    async fn ready(&mut self) {
        self.clock.advance_to(self.at);
    }
}

/// `wasi:clocks/monotonic-clock` on the sandbox's virtual clock.
pub(crate) struct VirtualTime<'a> {
    table: &'a mut ResourceTable,
    clock: &'a VirtualClock,
}

struct Virtual;

impl HasData for Virtual {
    type Data<'a> = VirtualTime<'a>;
}

impl VirtualTime<'_> {
    fn alarm(&mut self, at: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let alarm = self.table.push(Alarm {
            clock: self.clock.clone(),
            at,
        })?;
        wasmtime_wasi::p2::subscribe(self.table, alarm)
    }
}

impl monotonic_clock::Host for VirtualTime<'_> {
    fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(self.clock.now_ns())
    }
    fn resolution(&mut self) -> wasmtime::Result<u64> {
        Ok(1)
    }
    fn subscribe_instant(&mut self, when: u64) -> wasmtime::Result<Resource<DynPollable>> {
        self.alarm(when)
    }
    fn subscribe_duration(&mut self, duration: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let at = self.clock.now_ns().saturating_add(duration);
        self.alarm(at)
    }
}

/// `wasi:io` whose waits end at the call's deadline.
pub(crate) struct BoundedIo<'a> {
    table: &'a mut ResourceTable,
    deadline: Instant,
    /// Inline on an async worker: never wait (see `placement`).
    inline: bool,
}

struct Bounded;

impl HasData for Bounded {
    type Data<'a> = BoundedIo<'a>;
}

/// Runs `work` to completion on WASI's runtime, or gives up at `deadline`.
/// Inline (see `placement`), `work` is polled once: ready, or [`WouldWait`].
fn until<F: Future>(deadline: Instant, inline: bool, work: F) -> wasmtime::Result<F::Output> {
    if inline {
        let mut work = std::pin::pin!(work);
        return match work
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
        {
            Poll::Ready(output) => Ok(output),
            Poll::Pending => Err(wasmtime::Error::new(WouldWait)),
        };
    }
    in_tokio(async move { tokio::time::timeout_at(deadline.into(), work).await })
        .map_err(|_| wasmtime::Error::new(DeadlineExceeded))
}

fn stream_trap(err: wasmtime::Error) -> StreamError {
    StreamError::Trap(err)
}

impl poll::Host for BoundedIo<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        until(self.deadline, self.inline, AsyncPoll::poll(self.table, pollables))?
    }
}

impl poll::HostPollable for BoundedIo<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        until(
            self.deadline,
            self.inline,
            AsyncPollable::ready(self.table, pollable),
        )?
    }
    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        until(
            self.deadline,
            self.inline,
            AsyncPollable::block(self.table, pollable),
        )?
    }
    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        poll::HostPollable::drop(self.table, pollable)
    }
}

impl streams::Host for BoundedIo<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.table, err)
    }
}

impl streams::HostInputStream for BoundedIo<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        until(self.deadline, self.inline, AsyncInput::drop(self.table, stream))?
    }
    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        streams::HostInputStream::read(self.table, stream, len)
    }
    fn blocking_read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        until(
            self.deadline,
            self.inline,
            AsyncInput::blocking_read(self.table, stream, len),
        )
        .map_err(stream_trap)?
    }
    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(self.table, stream, len)
    }
    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        until(
            self.deadline,
            self.inline,
            AsyncInput::blocking_skip(self.table, stream, len),
        )
        .map_err(stream_trap)?
    }
    fn subscribe(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostInputStream::subscribe(self.table, stream)
    }
}

impl streams::HostOutputStream for BoundedIo<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        until(self.deadline, self.inline, AsyncOutput::drop(self.table, stream))?
    }
    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.table, stream)
    }
    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        streams::HostOutputStream::write(self.table, stream, bytes)
    }
    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        until(
            self.deadline,
            self.inline,
            AsyncOutput::blocking_write_and_flush(self.table, stream, bytes),
        )
        .map_err(stream_trap)?
    }
    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        until(
            self.deadline,
            self.inline,
            AsyncOutput::blocking_write_zeroes_and_flush(self.table, stream, len),
        )
        .map_err(stream_trap)?
    }
    fn subscribe(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostOutputStream::subscribe(self.table, stream)
    }
    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        streams::HostOutputStream::write_zeroes(self.table, stream, len)
    }
    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.table, stream)
    }
    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        until(
            self.deadline,
            self.inline,
            AsyncOutput::blocking_flush(self.table, stream),
        )
        .map_err(stream_trap)?
    }
    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        streams::HostOutputStream::splice(self.table, dst, src, len)
    }
    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        until(
            self.deadline,
            self.inline,
            AsyncOutput::blocking_splice(self.table, dst, src, len),
        )
        .map_err(stream_trap)?
    }
}

impl Sandbox {
    fn bounded_io(&mut self) -> BoundedIo<'_> {
        BoundedIo {
            table: &mut self.wasi.table,
            deadline: self.deadline,
            inline: self.inline,
        }
    }

    fn virtual_time(&mut self) -> VirtualTime<'_> {
        VirtualTime {
            table: &mut self.wasi.table,
            clock: &self.wasi.clock,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pollable that is never ready.
    struct Never;

    #[wasmtime_wasi::async_trait]
    impl Pollable for Never {
        async fn ready(&mut self) {
            std::future::pending::<()>().await
        }
    }

    #[test]
    fn a_wait_on_a_never_ready_pollable_ends_at_the_deadline() {
        let mut table = ResourceTable::new();
        let never = table.push(Never).unwrap();
        let pollable = wasmtime_wasi::p2::subscribe(&mut table, never).unwrap();
        let started = Instant::now();
        let mut io = BoundedIo {
            table: &mut table,
            deadline: started + Duration::from_millis(50),
            inline: false,
        };
        let err = poll::Host::poll(&mut io, vec![Resource::new_borrow(pollable.rep())]).unwrap_err();
        assert!(err.downcast_ref::<DeadlineExceeded>().is_some(), "{err:?}");
        let err = poll::HostPollable::block(&mut io, Resource::new_borrow(pollable.rep())).unwrap_err();
        assert!(err.downcast_ref::<DeadlineExceeded>().is_some(), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn sleeping_is_instant_and_moves_the_clock() {
        let mut table = ResourceTable::new();
        let clock = VirtualClock::default();
        let mut time = VirtualTime {
            table: &mut table,
            clock: &clock,
        };
        let hour = 3_600_000_000_000;
        let alarm = monotonic_clock::Host::subscribe_duration(&mut time, hour).unwrap();
        assert_eq!(
            monotonic_clock::Host::now(&mut time).unwrap(),
            0,
            "subscribing alone moves nothing"
        );
        let mut io = BoundedIo {
            table: &mut table,
            deadline: Instant::now() + Duration::from_secs(5),
            inline: false,
        };
        let started = Instant::now();
        poll::HostPollable::block(&mut io, Resource::new_borrow(alarm.rep())).unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(HostMonotonicClock::now(&clock), hour);
        assert_eq!(HostWallClock::now(&clock), EPOCH + Duration::from_secs(3600));
        clock.reset();
        assert_eq!(HostMonotonicClock::now(&clock), 0);
    }
}
