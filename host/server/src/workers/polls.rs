//! Runs one poller per poll source, each under the supervisor, and starts
//! and stops them as sources are made, changed or deleted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::sources::Source;
use crate::sources::poll;
use crate::state::App;

/// How often the sources are looked at even when nothing said they changed.
const RESCAN: Duration = Duration::from_secs(30);

/// A poller that runs: the source it was started for, and its stop switch.
struct Running {
    source: Arc<Source>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Keeps one supervised poller per poll source until `stopped` turns true.
pub async fn run(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    let mut running: BTreeMap<(String, String), Running> = BTreeMap::new();
    loop {
        let wanted: BTreeMap<(String, String), Arc<Source>> = app
            .sources
            .all()
            .into_iter()
            .filter(|source| source.poller().is_some())
            .map(|source| ((source.config.tenant.clone(), source.config.name.clone()), source))
            .collect();
        let gone: Vec<_> = running
            .iter()
            .filter(|(key, run)| {
                wanted
                    .get(*key)
                    .is_none_or(|source| !Arc::ptr_eq(source, &run.source))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            if let Some(run) = running.remove(&key) {
                stop(&app, &key, run).await;
            }
        }
        for (key, source) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let (stop, stop_rx) = watch::channel(false);
            let poller = source.poller().expect("filtered to poll sources").clone();
            let worker_app = app.clone();
            let task = tokio::spawn(crate::workers::supervisor::supervise(
                worker_name(&key),
                app.workers.clone(),
                app.metrics.clone(),
                stop_rx.clone(),
                move || poll::run(worker_app.clone(), poller.clone(), stop_rx.clone()),
            ));
            running.insert(key, Running { source, stop, task });
        }
        tokio::select! {
            _ = app.sources.changed.notified() => {}
            _ = tokio::time::sleep(RESCAN) => {}
            _ = stopped.changed() => {
                for (key, run) in std::mem::take(&mut running) {
                    stop(&app, &key, run).await;
                }
                return;
            }
        }
    }
}

fn worker_name((tenant, name): &(String, String)) -> String {
    format!("poll:{tenant}/{name}")
}

/// Stops a poller and waits for it (a page in flight is given up: its
/// cursor was not advanced, so the page is read again).
async fn stop(app: &App, key: &(String, String), mut run: Running) {
    let _ = run.stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), &mut run.task).await;
    drop(run);
    app.workers.remove(&worker_name(key));
}

/// If this worker itself dies, its pollers go with it: the restarted one
/// starts them again, never twice.
impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}
