//! Supervision of background workers: a worker that panics, or returns
//! before shutdown, is logged, counted in `sluice_worker_restarts_total`
//! and restarted after a backoff; `/readyz` reports it while it is down.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::observe::metrics::Metrics;

/// What `/readyz` shows of one worker.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerState {
    /// Running now (false between a death and its restart).
    pub running: bool,
    /// Times it died and was restarted since the server started.
    pub restarts: u64,
    /// Why it last died.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

/// Every worker's state, by name (`transform:<channel>`, `delivery:<destination>`, …).
#[derive(Debug, Default)]
pub struct WorkerBoard {
    states: Mutex<BTreeMap<String, WorkerState>>,
}

impl WorkerBoard {
    /// A copy of every worker's state.
    pub fn snapshot(&self) -> BTreeMap<String, WorkerState> {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Names of the workers that are down now.
    pub fn down(&self) -> Vec<String> {
        self.snapshot()
            .into_iter()
            .filter(|(_, state)| !state.running)
            .map(|(name, _)| name)
            .collect()
    }

    /// Forgets a worker that was stopped for good (a deleted source's poller).
    pub(crate) fn remove(&self, name: &str) {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut WorkerState)) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        change(states.entry(name.to_string()).or_default());
    }
}

/// Longest wait before a restart; the wait doubles from 100 ms on each
/// quick death, and starts over once a worker has run for a minute.
const MAX_RESTART_WAIT: Duration = Duration::from_secs(30);

/// Runs the worker that `start` makes until `stopped` turns true,
/// restarting it whenever it dies.
pub async fn supervise<F, W>(
    name: String,
    board: Arc<WorkerBoard>,
    metrics: Arc<Metrics>,
    mut stopped: watch::Receiver<bool>,
    start: F,
) where
    F: Fn() -> W,
    W: Future<Output = ()> + Send + 'static,
{
    let mut quick_deaths: u32 = 0;
    loop {
        board.update(&name, |state| state.running = true);
        let started = Instant::now();
        let worker = tokio::spawn(start());
        // If the supervisor itself is dropped (shutdown past its grace), the worker goes too.
        let _abort = AbortOnDrop(worker.abort_handle());
        let ended = worker.await;
        if *stopped.borrow() {
            return;
        }
        let why = match ended {
            Ok(()) => "it returned before shutdown".to_string(),
            Err(join) if join.is_panic() => format!("it panicked: {}", panic_text(join.into_panic())),
            Err(join) => join.to_string(),
        };
        tracing::error!(worker = %name, reason = %why, "worker died; restarting it");
        metrics.worker_restarted(&name);
        board.update(&name, |state| {
            state.running = false;
            state.restarts += 1;
            state.last_failure = Some(why);
        });
        quick_deaths = if started.elapsed() > Duration::from_secs(60) {
            0
        } else {
            quick_deaths.saturating_add(1)
        };
        let wait = Duration::from_millis(100)
            .saturating_mul(1 << quick_deaths.min(10))
            .min(MAX_RESTART_WAIT);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".into()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_panicking_worker_is_counted_reported_and_restarted() {
        let board = Arc::new(WorkerBoard::default());
        let metrics = Arc::new(Metrics::default());
        let (stop, stopped) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        let supervisor = tokio::spawn(supervise(
            "delivery:test".into(),
            board.clone(),
            metrics.clone(),
            stopped,
            move || {
                let counter = counter.clone();
                async move {
                    if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                        panic!("boom on the first run");
                    }
                    std::future::pending::<()>().await;
                }
            },
        ));
        for _ in 0..100 {
            if runs.load(Ordering::SeqCst) >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2, "restarted once");
        let state = &board.snapshot()["delivery:test"];
        assert!(state.running);
        assert_eq!(state.restarts, 1);
        assert!(
            state
                .last_failure
                .as_deref()
                .unwrap()
                .contains("boom on the first run")
        );
        assert!(
            metrics
                .render()
                .contains("sluice_worker_restarts_total{worker=\"delivery:test\"} 1")
        );
        stop.send(true).unwrap();
        // The worker itself never ends; the supervisor returns once its run is stopped.
        supervisor.abort();
    }
}
