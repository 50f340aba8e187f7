//! Housekeeping: queue-depth gauges, storage counts, forgetting old event
//! ids, removing old stories and collecting unused compiled artifacts.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::state::App;

/// Seconds between removals of stories past `[stories]`' time and size.
const STORY_PRUNE_TICKS: u64 = 5;

/// Each second: refreshes the queue-depth gauges and each channel's stored
/// count (for the storage quota); hourly: forgets old event ids and
/// collects compiled artifacts no module uses any more.
pub(super) async fn run(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    let mut ticks: u64 = 0;
    loop {
        let work = app.clone();
        let hourly = ticks.is_multiple_of(3600);
        let round = tokio::task::spawn_blocking(move || {
            for channel in work.channels.values() {
                if let Ok(depth) = work.queue.depth(&channel.name) {
                    work.metrics.set_depth(&channel.name, &depth);
                    channel.set_stored(depth.stored());
                }
            }
            if ticks.is_multiple_of(STORY_PRUNE_TICKS) {
                match work.queue.prune_stories(work.stories.config()) {
                    Ok(0) => {}
                    Ok(removed) => tracing::debug!(removed, "old stories removed"),
                    Err(err) => tracing::error!(error = %err, "cannot remove old stories"),
                }
            }
            {
                use std::sync::atomic::Ordering::Relaxed;
                work.metrics.set_observed(
                    work.stories.dropped.load(Relaxed),
                    work.telemetry.dropped.load(Relaxed),
                    work.telemetry.exported.load(Relaxed),
                );
            }
            if hourly {
                let before = crate::store::now_ms() - work.idempotency_window.as_millis() as i64;
                if let Err(err) = work.queue.forget_before(before) {
                    tracing::error!(error = %err, "cannot forget old event ids");
                }
                work.collect_artifacts();
            }
        })
        .await;
        // A panic in a round ends this worker, so its supervisor logs, counts and restarts it.
        if let Err(join) = round
            && join.is_panic()
        {
            std::panic::resume_unwind(join.into_panic());
        }
        ticks += 1;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped.changed() => return,
        }
    }
}
