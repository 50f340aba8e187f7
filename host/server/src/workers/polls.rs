//! Runs one poller per poll source, each under the supervisor, and starts
//! and stops them as sources are made, changed or deleted.

use std::sync::Arc;

use tokio::sync::watch;

use super::fleet::{self, Wanted};
use crate::sources::poll;
use crate::state::App;

/// Keeps one supervised poller per poll source until `stopped` turns true.
pub async fn run(app: Arc<App>, stopped: watch::Receiver<bool>) {
    let wanted = || {
        app.sources
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
            .collect()
    };
    fleet::keep(app.clone(), stopped, &[&app.sources.changed], wanted).await;
}
