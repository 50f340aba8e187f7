//! What an operator sees: Prometheus [`metrics`], the per-minute
//! [`history`] of each channel, each event's [`story`] (its secrets
//! [`mask`]ed), and the typed [`events`] that feed them and the log.

pub(crate) mod events;
pub(crate) mod history;
pub mod mask;
pub(crate) mod metrics;
pub mod story;
pub mod trace;

/// Fills `batch` with up to `max` queued items, waiting for the first.
/// True when told to stop (then it takes up to `on_stop` more of what is
/// queued, without waiting) or when the queue is closed: the last batch.
/// The story writer and the span exporter share it.
pub(crate) async fn next_batch<T>(
    receiver: &mut tokio::sync::mpsc::Receiver<T>,
    batch: &mut Vec<T>,
    max: usize,
    on_stop: usize,
    stopped: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let stopping = tokio::select! {
        n = receiver.recv_many(batch, max) => n == 0,
        _ = stopped.wait_for(|stop| *stop) => true,
    };
    if stopping {
        while batch.len() < on_stop
            && let Ok(item) = receiver.try_recv()
        {
            batch.push(item);
        }
    }
    stopping
}
