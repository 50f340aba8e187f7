//! Where a call runs: on a thread that may block until the call's deadline,
//! or inline on an async runtime's worker thread, which must never block.
//!
//! Sending each small request to a blocking thread and back costs two
//! thread wake-ups, and on the machines we measured those cost more than
//! the transform itself. So a small batch is first tried inline, as one
//! [`InlineAttempt`] under guards that keep a worker thread from being held:
//! - the whole attempt (every step, every call, the host's own work on the
//!   outputs) may use at most [`INLINE_CPU`] of the thread's CPU time. It
//!   is CPU time, not wall time, so a thread the kernel merely preempted
//!   is not taken for a slow module. Calls are cut off at the first epoch
//!   tick past the budget, and no call starts once it is spent;
//! - a host call that would wait gives up at once instead of waiting;
//! - a panic (a WASI call that needs a blocking thread) is caught;
//! - a batch that traps is not re-run event by event inline.
//!
//! Any of them ends the attempt with [`NeedsBlockingThread`]: its results
//! are thrown away unseen, the instances it used are dropped rather than
//! kept warm, and the caller runs the batch again on a blocking thread with
//! the full limits. When a call ran out of budget, would have waited or
//! panicked (or a batch trapped after half the budget was used), every
//! module of the pipeline is marked slow for [`SLOW_FOR`] and skips inline
//! attempts meanwhile, so a pipeline that is always slow costs one wasted
//! attempt a minute.

use std::cell::RefCell;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where a call runs.
#[derive(Clone, Copy)]
pub(crate) enum Placement<'a, 'm> {
    /// A thread that may block until the call's deadline.
    Blocking,
    /// An async runtime's worker thread: short, and never waiting.
    Inline(&'a InlineAttempt<'m>),
}

/// The work could not finish inline; run it again on a thread that may
/// block (`Pipeline::run` inside `spawn_blocking`, say). Nothing of the
/// inline attempt was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the work needs a thread that may block")]
pub struct NeedsBlockingThread;

/// Why an inline attempt gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GiveUp {
    /// A module used up the CPU budget, would have waited, or panicked:
    /// the pipeline's modules skip inline attempts for a while.
    Slow,
    /// No instance slot was free: nothing says the modules are slow.
    Busy,
    /// A batch trapped and must be re-run event by event; slow only if
    /// the attempt had used half its budget by then.
    Trapped,
}

/// An inline call reached the attempt's CPU budget (or its own deadline).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the inline attempt used up its CPU budget")]
pub(crate) struct BudgetSpent;

/// CPU time one inline attempt may use, all steps and calls together.
pub(crate) const INLINE_CPU: Duration = Duration::from_millis(3);

/// How long a module that needed a blocking thread skips inline attempts.
pub(crate) const SLOW_FOR: Duration = Duration::from_secs(60);

/// One inline run of a pipeline: its CPU budget, and the instances it used,
/// held back from the warm pools until the whole run has succeeded.
pub(crate) struct InlineAttempt<'m> {
    budget: CpuBudget,
    used: RefCell<Vec<Box<dyn FnOnce() + 'm>>>,
}

/// The CPU time the calling thread may still use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuBudget {
    cpu_at_start: Duration,
}

impl CpuBudget {
    /// Whether the calling thread has used [`INLINE_CPU`] since the start.
    pub(crate) fn spent(&self) -> bool {
        self.used() > INLINE_CPU
    }

    fn used(&self) -> Duration {
        thread_cpu_time().saturating_sub(self.cpu_at_start)
    }
}

impl<'m> InlineAttempt<'m> {
    pub(crate) fn start() -> Self {
        Self {
            budget: CpuBudget {
                cpu_at_start: thread_cpu_time(),
            },
            used: RefCell::default(),
        }
    }

    /// The attempt's CPU budget, for a store's epoch callback.
    pub(crate) fn budget(&self) -> CpuBudget {
        self.budget
    }

    /// Whether the attempt has used up its CPU budget.
    pub(crate) fn spent(&self) -> bool {
        self.budget.spent()
    }

    /// Whether the attempt has used half its CPU budget or more.
    pub(crate) fn half_spent(&self) -> bool {
        self.budget.used() >= INLINE_CPU / 2
    }

    /// Holds back `keep` (which returns an instance to its warm pool) until
    /// the attempt succeeds; dropped with the attempt otherwise.
    pub(crate) fn on_success(&self, keep: Box<dyn FnOnce() + 'm>) {
        self.used.borrow_mut().push(keep);
    }

    /// The attempt succeeded: the instances it used go back to their pools.
    pub(crate) fn succeed(self) {
        for keep in self.used.into_inner() {
            keep();
        }
    }
}

/// CPU time the calling thread has used.
#[cfg(unix)]
fn thread_cpu_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(now.tv_sec.max(0) as u64, now.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// Without a thread CPU clock, wall time since the first call (stricter:
/// preemption counts too).
#[cfg(not(unix))]
fn thread_cpu_time() -> Duration {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_sleeps_spends_no_cpu_budget() {
        let attempt = InlineAttempt::start();
        std::thread::sleep(INLINE_CPU * 3);
        #[cfg(unix)]
        assert!(!attempt.spent(), "sleeping is not CPU time");
        // Spinning is: the budget runs out (long before this bound).
        let started = Instant::now();
        while !attempt.spent() && started.elapsed() < Duration::from_secs(10) {
            std::hint::black_box(started.elapsed());
        }
        assert!(
            attempt.spent(),
            "spinning for 10 s never used up {INLINE_CPU:?} of CPU"
        );
    }

    #[test]
    fn instances_go_back_only_when_the_attempt_succeeds() {
        let kept = std::rc::Rc::new(std::cell::Cell::new(0));
        let attempt = InlineAttempt::start();
        let counter = kept.clone();
        attempt.on_success(Box::new(move || counter.set(counter.get() + 1)));
        drop(attempt);
        assert_eq!(kept.get(), 0);
        let attempt = InlineAttempt::start();
        let counter = kept.clone();
        attempt.on_success(Box::new(move || counter.set(counter.get() + 1)));
        attempt.succeed();
        assert_eq!(kept.get(), 1);
    }
}
