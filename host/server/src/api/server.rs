//! Accepting connections: the connection cap, header and write timeouts,
//! and a graceful end.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{handle, timed_io};
use crate::state::App;

/// Serves HTTP until `shutdown` completes, then lets in-flight requests
/// finish for at most the shutdown grace.
///
/// Slow or abusive clients are bounded: at most `max-connections` are
/// served at once (the rest wait in the kernel's backlog), a request's
/// headers must arrive within `header-timeout-ms` (which also closes idle
/// keep-alive connections), and accept errors (`EMFILE`) back off instead
/// of spinning. A client that stops reading its answers is cut off after
/// `body-timeout-ms` without progress.
pub(crate) async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(app.settings.max_connections));
    let mut accept_backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                accept_backoff = Duration::ZERO;
                stream
            }
            Err(err) => {
                // Out of file descriptors or similar: wait instead of spinning.
                accept_backoff =
                    (accept_backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tracing::error!(error = %err, retry_in_ms = accept_backoff.as_millis() as u64, "cannot accept a connection");
                tokio::select! {
                    () = tokio::time::sleep(accept_backoff) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let header_timeout = app.settings.header_timeout;
        // A client that stops reading its answers gets as long as one that is slow to send.
        let write_timeout = app.settings.body_timeout;
        let app = app.clone();
        let service = service_fn(move |request| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(handle(&app, request).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(
                TokioIo::new(timed_io::TimedIo::new(stream, write_timeout)),
                service,
            );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    if tokio::time::timeout(app.settings.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight at the end of the shutdown grace; closing them");
    }
}
