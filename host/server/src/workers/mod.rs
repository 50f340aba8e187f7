//! The background workers that move events along the data path: one
//! [`transform`] worker per channel (queue → pipeline → outbox), one
//! [`delivery`] worker per destination (outbox → HTTP), the
//! [`shared`]-state follower on JetStream and [`housekeeping`]. Each runs
//! under the [`supervisor`], which logs, counts and restarts one that dies.

pub(crate) mod backoff;
pub(crate) mod delivery;
pub(crate) mod fleet;
mod housekeeping;
mod polls;
pub(crate) mod shared;
pub(crate) mod supervisor;
pub(crate) mod tls;
pub(crate) mod transform;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::state::App;

type WorkerFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Starts every worker of `app` under its supervisor; each stops when
/// `stopped` turns true.
pub(crate) fn start(app: &Arc<App>, stopped: &watch::Receiver<bool>) -> JoinSet<()> {
    let mut workers = JoinSet::new();
    let mut start = |name: String, make: Box<dyn Fn() -> WorkerFuture + Send + Sync>| {
        workers.spawn(supervisor::supervise(
            name,
            app.workers.clone(),
            app.metrics.clone(),
            stopped.clone(),
            make,
        ));
    };
    {
        let (app, stopped) = (app.clone(), stopped.clone());
        start(
            "pipelines".into(),
            Box::new(move || Box::pin(pipelines(app.clone(), stopped.clone()))),
        );
    }
    if app.queue.changes().is_some() {
        let (app, stopped) = (app.clone(), stopped.clone());
        start(
            "shared-state".into(),
            Box::new(move || Box::pin(shared::run(app.clone(), stopped.clone()))),
        );
    }
    {
        let (app, stopped) = (app.clone(), stopped.clone());
        start(
            "polls".into(),
            Box::new(move || Box::pin(polls::run(app.clone(), stopped.clone()))),
        );
    }
    {
        let (app, stopped) = (app.clone(), stopped.clone());
        start(
            "stories".into(),
            Box::new(move || {
                Box::pin(crate::observe::story::run_writer(
                    app.stories.clone(),
                    app.queue.clone(),
                    stopped.clone(),
                ))
            }),
        );
    }
    {
        let (app, stopped) = (app.clone(), stopped.clone());
        start(
            "telemetry".into(),
            Box::new(move || {
                Box::pin(crate::observe::trace::run_exporter(
                    app.telemetry.clone(),
                    stopped.clone(),
                ))
            }),
        );
    }
    {
        let (app, stopped) = (app.clone(), stopped.clone());
        start(
            "housekeeping".into(),
            Box::new(move || Box::pin(housekeeping::run(app.clone(), stopped.clone()))),
        );
    }

    workers
}

/// Keeps one transform worker per channel with a destination and one
/// delivery worker per destination, each supervised, as channels and
/// destinations are made, replaced or deleted.
async fn pipelines(app: Arc<App>, stopped: watch::Receiver<bool>) {
    let wanted = || {
        let mut wanted = Vec::new();
        for channel in app.channels.values().filter(|c| c.destination.is_some()) {
            let (worker_app, name) = (app.clone(), channel.name.clone());
            wanted.push(fleet::Wanted {
                name: format!("transform:{}", channel.name),
                entry: channel.clone(),
                start: Arc::new(move |stop| Box::pin(transform::run(worker_app.clone(), name.clone(), stop))),
            });
        }
        for (name, destination) in app.destinations.entries() {
            let worker_app = app.clone();
            wanted.push(fleet::Wanted {
                name: format!("delivery:{name}"),
                entry: destination.clone(),
                start: Arc::new(move |stop| Box::pin(delivery::run(worker_app.clone(), name.clone(), stop))),
            });
        }
        wanted
    };
    let changes = [&app.channels.changed, &app.destinations.changed];
    fleet::keep(app.clone(), stopped, &changes, wanted).await;
}
