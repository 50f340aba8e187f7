//! Where a call runs: on a thread that may block until the call's deadline,
//! or inline on an async runtime's worker thread, which must never block.
//!
//! Sending each small request to a blocking thread and back costs two
//! thread wake-ups, and on the machines we measured those cost more than
//! the transform itself (the sync path went from 7.4k to 13.6k req/s when
//! it ran inline). So a small request first runs inline, under three
//! guards that keep a worker thread from ever being held:
//! - each call may take at most [`INLINE_TICKS`] epoch ticks (2–3 ms), and
//!   the run of a whole pipeline at most [`INLINE_RUN`];
//! - a host call that would wait gives up at once instead of waiting;
//! - a panic (a host call that needs a blocking thread) is caught.
//!
//! Any of them ends the inline attempt with [`NeedsBlockingThread`]: its
//! results are thrown away unseen and the caller runs the work again on a
//! blocking thread with the full limits. The module is then marked slow
//! for [`SLOW_FOR`], and its calls skip the inline attempt meanwhile, so a
//! module that is always slow costs one wasted attempt a minute.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// A thread that may block until the call's deadline.
    Blocking,
    /// An async runtime's worker thread: short, and never waiting.
    Inline,
}

/// The work could not finish inline; run it again on a thread that may
/// block (`Pipeline::run` inside `spawn_blocking`, say). Nothing of the
/// inline attempt was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the work needs a thread that may block")]
pub struct NeedsBlockingThread;

/// Epoch ticks an inline call may run before it is cut off.
pub(crate) const INLINE_TICKS: u64 = 3;

/// Longest an inline run of a whole pipeline may take, all calls together.
pub(crate) const INLINE_RUN: Duration = Duration::from_millis(5);

/// How long a module that needed a blocking thread skips inline attempts.
pub(crate) const SLOW_FOR: Duration = Duration::from_secs(60);

/// When a module last needed a blocking thread.
#[derive(Debug, Default)]
pub(crate) struct SlowMark(Mutex<Option<Instant>>);

impl SlowMark {
    /// Notes that a call just needed a blocking thread.
    pub(crate) fn set(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Whether a call needed a blocking thread within [`SLOW_FOR`].
    pub(crate) fn is_recent(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < SLOW_FOR)
    }
}
