//! The background workers that move events along the data path: one
//! [`transform`] worker per channel (queue → pipeline → outbox), one
//! [`delivery`] worker per destination (outbox → HTTP), the
//! [`shared`]-state follower on JetStream and [`housekeeping`]. Each runs
//! under the [`supervisor`], which logs, counts and restarts one that dies.

pub(crate) mod backoff;
pub(crate) mod delivery;
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
    for channel in app.channels.values().filter(|c| c.destination.is_some()) {
        let (app, name, stopped) = (app.clone(), channel.name.clone(), stopped.clone());
        start(
            format!("transform:{}", channel.name),
            Box::new(move || Box::pin(transform::run(app.clone(), name.clone(), stopped.clone()))),
        );
    }
    for destination in app.destinations.keys() {
        let (app, name, stopped) = (app.clone(), destination.clone(), stopped.clone());
        start(
            format!("delivery:{destination}"),
            Box::new(move || Box::pin(delivery::run(app.clone(), name.clone(), stopped.clone()))),
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
            "housekeeping".into(),
            Box::new(move || Box::pin(housekeeping::run(app.clone(), stopped.clone()))),
        );
    }

    workers
}
