//! Where an upload's check runs, and how much of it a tenant may have.
//!
//! Compiling a component of tens of megabytes takes seconds of Cranelift
//! time. A check runs on a thread of its own at a lower scheduling
//! priority, so the request path's threads go first on a busy machine, and
//! each tenant has a budget of compile CPU seconds per hour
//! (`compile-seconds-per-hour`): past it, uploads answer 429 with
//! `Retry-After` until the budget has refilled.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Niceness of check threads (0 is normal, 19 the lowest).
const CHECK_NICENESS: i32 = 10;

/// A tenant's compile CPU budget: a bucket of seconds that refills at its
/// rate per hour and may go into debt by one check's cost.
pub struct CompileBudget {
    per_hour: f64,
    state: Mutex<(f64, Instant)>,
}

impl CompileBudget {
    /// A full budget of `per_hour` seconds (0: unlimited).
    pub fn new(per_hour: u64) -> Self {
        Self {
            per_hour: per_hour as f64,
            state: Mutex::new((per_hour as f64, Instant::now())),
        }
    }

    fn refilled(&self, now: Instant) -> std::sync::MutexGuard<'_, (f64, Instant)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * self.per_hour / 3600.0).min(self.per_hour);
        state.1 = now;
        state
    }

    /// Whether a check may start now; if not, how long until it may.
    pub fn admit(&self, now: Instant) -> Result<(), Duration> {
        if self.per_hour == 0.0 {
            return Ok(());
        }
        let state = self.refilled(now);
        if state.0 > 0.0 {
            return Ok(());
        }
        Err(Duration::from_secs_f64(-state.0 * 3600.0 / self.per_hour).max(Duration::from_secs(1)))
    }

    /// Takes what a check cost.
    pub fn charge(&self, cpu: Duration, now: Instant) {
        if self.per_hour == 0.0 {
            return;
        }
        self.refilled(now).0 -= cpu.as_secs_f64();
    }
}

/// Runs `check` on a new thread at a lower priority and waits for it; what
/// it returned and the CPU time it took. A thread of its own, because a
/// thread's priority can be lowered but not raised again without privilege.
pub async fn run_check<T: Send + 'static>(
    check: impl FnOnce() -> T + Send + 'static,
) -> Result<(T, Duration), String> {
    let (done, answer) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sluice-check".into())
        .spawn(move || {
            lower_priority();
            let started = thread_cpu_time();
            let value = check();
            let _ = done.send((value, thread_cpu_time().saturating_sub(started)));
        })
        .map_err(|err| format!("cannot start a check thread: {err}"))?;
    answer
        .await
        .map_err(|_| "the check thread ended without an answer".to_string())
}

/// Lowers the calling thread's priority. On Linux the nice value belongs
/// to the thread (`setpriority(2)`, NOTES), so the rest of the sidecar
/// keeps its own. A failure only leaves the thread at normal priority.
fn lower_priority() {
    if let Err(err) = rustix::process::setpriority_process(None, CHECK_NICENESS) {
        tracing::debug!(error = %err, "cannot lower a check thread's priority");
    }
}

/// CPU time this thread has used.
pub fn thread_cpu_time() -> Duration {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_goes_into_debt_by_one_check_and_refills_at_its_rate() {
        let start = Instant::now();
        let budget = CompileBudget::new(3600);
        assert!(budget.admit(start).is_ok());
        budget.charge(Duration::from_secs(3610), start);
        let wait = budget.admit(start).unwrap_err();
        assert_eq!(wait.as_secs(), 10);
        assert!(budget.admit(start + Duration::from_secs(11)).is_ok());
        assert!(CompileBudget::new(0).admit(start).is_ok());
    }

    #[tokio::test]
    async fn a_check_runs_at_a_lower_priority_and_reports_its_cpu_time() {
        // A fixed amount of work, not a span of wall time: on a machine
        // busy with other tests the thread may get little of the span.
        let (niceness, cpu) = run_check(|| {
            let mut sum = 0u64;
            for n in 0..50_000_000u64 {
                sum = std::hint::black_box(sum.wrapping_add(n));
            }
            std::hint::black_box(sum);
            rustix::process::getpriority_process(None).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(niceness, CHECK_NICENESS);
        assert!(cpu >= Duration::from_millis(20), "{cpu:?}");
    }
}
