//! Keeps one supervised worker per entry of a changing set (a channel's
//! transform worker, a destination's delivery worker, a poll source's
//! poller): starts the new ones, stops the removed ones, and restarts one
//! whose entry was replaced (a destination changed through the API).

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::WorkerFuture;
use crate::state::App;

/// How often the entries are looked at even when nothing said they changed.
const RESCAN: Duration = Duration::from_secs(30);

/// Keeps the workers `wanted` names running until `stopped` turns true,
/// looking again whenever one of `changes` is raised (or every [`RESCAN`]).
pub async fn keep(
    app: Arc<App>,
    mut stopped: watch::Receiver<bool>,
    changes: &[&Notify],
    wanted: impl Fn() -> Vec<Wanted>,
) {
    let mut fleet = Fleet::new(stopped.clone());
    loop {
        if !*stopped.borrow() {
            fleet.reconcile(&app, wanted()).await;
        }
        let changed = futures_util::future::select_all(changes.iter().map(|n| Box::pin(n.notified())));
        tokio::select! {
            biased;
            _ = stopped.changed() => {
                fleet.stop_all(&app).await;
                return;
            }
            _ = changed => {}
            _ = tokio::time::sleep(RESCAN) => {}
        }
    }
}

/// How long a worker stopped while the sidecar runs (its entry replaced or
/// removed) may take to finish what it has in flight.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One worker wanted: its name (`delivery:portal`), the entry it runs for
/// (held, so a replaced entry is never taken for the old one), and how to
/// start it.
pub struct Wanted {
    pub name: String,
    pub entry: Arc<dyn Any + Send + Sync>,
    pub start: Arc<dyn Fn(watch::Receiver<bool>) -> WorkerFuture + Send + Sync>,
}

/// A worker that runs: the entry it was started for, and its stop switch.
struct Running {
    entry: Arc<dyn Any + Send + Sync>,
    stop: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

/// If the fleet itself dies, its workers go with it: the restarted fleet
/// starts them again, never twice.
impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The workers of one fleet.
pub struct Fleet {
    running: BTreeMap<String, Running>,
    /// The sidecar's shutdown: every worker sees it at once, as before
    /// workers came and went.
    shutdown: watch::Receiver<bool>,
}

impl Fleet {
    /// A fleet whose workers also stop when `shutdown` turns true.
    pub fn new(shutdown: watch::Receiver<bool>) -> Self {
        Self {
            running: BTreeMap::new(),
            shutdown,
        }
    }

    /// Makes the running workers those of `wanted`.
    pub async fn reconcile(&mut self, app: &Arc<App>, wanted: Vec<Wanted>) {
        let wanted: BTreeMap<String, Wanted> = wanted.into_iter().map(|w| (w.name.clone(), w)).collect();
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(name, run)| {
                wanted
                    .get(*name)
                    .is_none_or(|w| !Arc::ptr_eq(&w.entry, &run.entry))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(run) = self.running.remove(&name) {
                stop(app, &name, run).await;
            }
        }
        for (name, want) in wanted {
            if self.running.contains_key(&name) {
                continue;
            }
            if *self.shutdown.borrow() {
                return;
            }
            let (stop, stop_rx) = watch::channel(false);
            let stop = Arc::new(stop);
            // The worker's switch also turns at shutdown.
            let (relay, mut shutdown) = (stop.clone(), self.shutdown.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => { let _ = relay.send(true); }
                    () = relay.closed() => {}
                }
            });
            let start = want.start.clone();
            let task = tokio::spawn(crate::workers::supervisor::supervise(
                name.clone(),
                app.workers.clone(),
                app.metrics.clone(),
                stop_rx.clone(),
                move || start(stop_rx.clone()),
            ));
            self.running.insert(
                name,
                Running {
                    entry: want.entry,
                    stop,
                    task,
                },
            );
        }
    }

    /// At shutdown: every worker is told at once (each also saw the
    /// shutdown itself) and waited for as long as it takes; the sidecar's
    /// shutdown grace is what bounds it.
    pub async fn stop_all(&mut self, app: &Arc<App>) {
        let running = std::mem::take(&mut self.running);
        for run in running.values() {
            let _ = run.stop.send(true);
        }
        for (name, mut run) in running {
            let _ = (&mut run.task).await;
            drop(run);
            app.workers.remove(&name);
        }
    }
}

/// Stops a worker and waits for it to record what it had in flight.
async fn stop(app: &App, name: &str, mut run: Running) {
    let _ = run.stop.send(true);
    let _ = tokio::time::timeout(STOP_GRACE, &mut run.task).await;
    drop(run);
    app.workers.remove(name);
}
