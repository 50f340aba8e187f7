//! Runs one poller per poll source, each under the supervisor, and starts
//! and stops them as sources are made, changed or deleted.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::fleet::{Fleet, Wanted};
use crate::sources::poll;
use crate::state::App;

/// How often the sources are looked at even when nothing said they changed.
const RESCAN: Duration = Duration::from_secs(30);

/// Keeps one supervised poller per poll source until `stopped` turns true.
pub async fn run(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    let mut fleet = Fleet::new(stopped.clone());
    loop {
        let wanted = app
            .sources
            .all()
            .into_iter()
            .filter_map(|source| {
                let poller = source.poller()?.clone();
                let worker_app = app.clone();
                Some(Wanted {
                    name: format!("poll:{}/{}", source.config.tenant, source.config.name),
                    entry: source.clone(),
                    start: Arc::new(move |stop| {
                        Box::pin(poll::run(worker_app.clone(), poller.clone(), stop))
                    }),
                })
            })
            .collect();
        if !*stopped.borrow() {
            fleet.reconcile(&app, wanted).await;
        }
        tokio::select! {
            biased;
            _ = stopped.changed() => {
                fleet.stop_all(&app).await;
                return;
            }
            _ = app.sources.changed.notified() => {}
            _ = tokio::time::sleep(RESCAN) => {}
        }
    }
}
