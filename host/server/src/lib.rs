//! The Sluice sidecar: the HTTP server (tokio + hyper), its durable store
//! (SQLite), its background workers (transform, delivery, housekeeping) and
//! a local test destination. [`sidecar::Sidecar`] builds one from a
//! `sluice.toml`, so any program can start a sidecar.
//!
//! The sidecar's HTTP API:
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/channels/{channel}/transform[?strict=true]` | the channel pipeline's outcomes; nothing is stored |
//! | `POST /v1/events` | stores events durably (one JSON event, an array, or JSONL); 202 after the commit |
//! | `GET /v1/channels`, `GET /v1/channels/{channel}` | channels with their switch and queue depth |
//! | `POST /v1/channels/{channel}/enable`, `…/disable` | the ON/OFF switch (enable also closes a tripped circuit breaker) |
//! | `POST /v1/channels/{channel}/activate`, `…/rollback` | switch the channel's pipeline to uploaded module versions, or back |
//! | `PUT /v1/modules/{name}`, `GET /v1/modules[/{name}]` | upload a module (checked, and its fixtures run, before it is stored); list versions |
//! | `PUT /v1/tenants/{name}`, `POST /v1/tenants/{name}/tokens` | admin: create a tenant, issue it a token |
//! | `GET /v1/dead-letters[?channel=&tenant=&limit=]` | dead letters, newest first |
//! | `GET /v1/dead-letters/{id}` | one dead letter in full |
//! | `POST /v1/dead-letters/{id}/replay[?retransform=true]` | requeue it |
//! | `DELETE /v1/dead-letters/{id}`, `DELETE /v1/dead-letters[?channel=&tenant=]` | purge |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when the store answers, every worker runs and no channel is degraded; else 503 (with an admin or metrics token the body names the workers and channels) |
//! | `GET /metrics` | Prometheus text |
//!
//! Errors are JSON `{"code", "message", "path"?}` with a stable `code`.
//! Every `/v1` route needs `Authorization: Bearer <token>` (401 without; a path that is no route answers 404);
//! a tenant sees only its own resources: another tenant's answer 404.
//!
//! Behind ingest, one transform worker per channel moves events from the
//! channel's queue through its pipeline into the outbox, and one delivery
//! worker per destination sends the outbox (see [`transformer`] and [`delivery`]).

mod admin;
mod app;
pub mod auth;
pub mod backfill;
pub mod backoff;
pub mod config;
pub mod delivery;
mod entity_key;
pub mod history;
pub mod http;
mod ingest;
pub mod metrics;
mod modules;
mod record;
mod redact;
pub mod routes;
pub mod shadow;
pub mod shared;
pub mod sidecar;
pub mod sink;
pub mod store;
pub mod supervisor;
mod sync;
mod timed_io;
pub mod tls;
pub mod transformer;
mod trial;
mod ui;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::store::StoreError;
pub use app::{ActivationError, App, Channel, Destination, Tenant, versions};
use auth::Caller;
use http::{ApiError, Body, text};

/// Serves `app` on `listener` with its supervised workers until `shutdown`
/// completes (see [`shutdown_signal`]). Then it stops accepting, lets
/// in-flight requests and each worker's current batch finish, and returns;
/// all of that within the config's `shutdown-grace-ms`, after which it
/// returns anyway (unfinished work is redone after a restart, since
/// nothing is acknowledged before it is stored).
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let (stop, stopped) = watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
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
            Box::new(move || Box::pin(transformer::run(app.clone(), name.clone(), stopped.clone()))),
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
            "housekeeping".into(),
            Box::new(move || Box::pin(housekeeping(app.clone(), stopped.clone()))),
        );
    }

    let grace = app.settings.shutdown_grace;
    serve(listener, app.clone(), shutdown).await;
    let _ = stop.send(true);
    let drained = tokio::time::timeout(grace, async { while workers.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "workers still busy at the end of the shutdown grace; stopping anyway"
        );
        workers.abort_all();
    }
}

type WorkerFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves HTTP until `shutdown` completes, then lets in-flight requests
/// finish for at most the shutdown grace.
///
/// Slow or abusive clients are bounded: at most `max-connections` are
/// served at once (the rest wait in the kernel's backlog), a request's
/// headers must arrive within `header-timeout-ms` (which also closes idle
/// keep-alive connections), and accept errors (`EMFILE`) back off instead
/// of spinning. A client that stops reading its answers is cut off after
/// `body-timeout-ms` without progress.
async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
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

/// Each second: refreshes the queue-depth gauges and each channel's stored
/// count (for the storage quota); hourly: forgets old event ids and
/// collects compiled artifacts no module uses any more.
async fn housekeeping(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
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

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is
/// called, so call it before announcing that the server listens: a signal
/// that arrives early is then still a clean shutdown.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

async fn handle(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    route(app, request).await.unwrap_or_else(ApiError::into_response)
}

async fn route(app: &Arc<App>, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    use routes::Route;

    let path = request.uri().path().to_string();
    let method = request.method().clone();
    // The operations page's assets need no token; its data calls do.
    if method == Method::GET
        && let Some(asset) = ui::asset(&path)
    {
        return Ok(asset);
    }
    let Some((route, name)) = routes::find(&path) else {
        return Err(ApiError::not_found("not-found", format!("no route for {path}")));
    };
    let name = name.to_string();
    let caller = app.tokens.caller(
        request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    match (route, &method) {
        (Route::Healthz, &Method::GET) => return Ok(text(StatusCode::OK, "ok\n")),
        (Route::Readyz, &Method::GET) => {
            let details = matches!(caller, Some(Caller::Admin | Caller::Metrics));
            return Ok(readiness(app, details).await);
        }
        (Route::Metrics, &Method::GET) => {
            return if !app.metrics_need_token || matches!(caller, Some(Caller::Admin | Caller::Metrics)) {
                Ok(text(StatusCode::OK, &app.metrics.render()))
            } else {
                Err(ApiError::unauthorized())
            };
        }
        (Route::Healthz | Route::Readyz | Route::Metrics, _) => {
            return Err(method_not_allowed(&method, &path));
        }
        _ => {}
    }
    let caller = match caller {
        Some(caller @ (Caller::Admin | Caller::Tenant(_))) => caller,
        _ => return Err(ApiError::unauthorized()),
    };
    match (route, &method) {
        (Route::Transform, &Method::POST) => {
            let response = sync::transform(app, &caller, &name, request).await;
            // Only configured names become labels: a caller cannot grow the metrics.
            let channel = if app.channels.contains_key(&name) {
                name
            } else {
                "(unknown)".into()
            };
            let status = match &response {
                Ok(ok) => ok.status(),
                Err(err) => err.status,
            };
            app.metrics.sync_request(&channel, status.as_u16());
            response
        }
        (Route::Events, &Method::POST) => ingest::ingest(app, &caller, request).await,
        (Route::Channels, &Method::GET) => admin::list_channels(app, &caller).await,
        (Route::Channel, &Method::GET) => admin::show_channel(app, &caller, &name).await,
        (Route::History, &Method::GET) => admin::channel_history(app, &caller, &name, &request),
        (Route::Destinations, &Method::GET) => admin::list_destinations(app, &caller).await,
        (Route::Enable, &Method::POST) => admin::switch_channel(app, &caller, &name, true).await,
        (Route::Disable, &Method::POST) => admin::switch_channel(app, &caller, &name, false).await,
        (Route::Activate, &Method::POST) => modules::activate(app, &caller, &name, request).await,
        (Route::Rollback, &Method::POST) => modules::rollback(app, &caller, &name).await,
        (Route::Shadow, &Method::POST) => trial::start(app, &caller, &name, request).await,
        (Route::Shadow, &Method::GET) => trial::report(app, &caller, &name).await,
        (Route::Shadow, &Method::DELETE) => trial::stop(app, &caller, &name).await,
        (Route::Promote, &Method::POST) => trial::promote(app, &caller, &name).await,
        (Route::Backfill, &Method::POST) => trial::start_backfill(app, &caller, &name, request).await,
        (Route::Backfill, &Method::GET) => trial::backfill_report(app, &caller, &name).await,
        (Route::Backfill, &Method::DELETE) => trial::cancel_backfill(app, &caller, &name).await,
        (Route::Record, &Method::POST) => trial::start_recording(app, &caller, &name, request).await,
        (Route::Record, &Method::GET) => trial::recording(app, &caller, &name).await,
        (Route::Record, &Method::DELETE) => trial::stop_recording(app, &caller, &name).await,
        (Route::Modules, &Method::GET) => modules::list(app, &caller, None).await,
        (Route::Module, &Method::GET) => modules::list(app, &caller, Some(&name)).await,
        (Route::Module, &Method::PUT) => modules::upload(app, &caller, &name, request).await,
        (Route::DeadLetters, &Method::GET) => admin::list_dead_letters(app, &caller, &request).await,
        (Route::DeadLetters, &Method::DELETE) => admin::purge_dead_letters(app, &caller, &request).await,
        (Route::DeadLetter, &Method::GET) => admin::show_dead_letter(app, &caller, &name).await,
        (Route::DeadLetter, &Method::DELETE) => admin::purge_dead_letter(app, &caller, &name).await,
        (Route::Replay, &Method::POST) => {
            let retransform = http::query_flag(&request, "retransform");
            admin::replay_dead_letter(app, &caller, &name, retransform).await
        }
        (Route::Tenant, &Method::PUT) => admin::create_tenant(app, &caller, &name).await,
        (Route::Tokens, &Method::POST) => admin::create_token(app, &caller, &name).await,
        _ => Err(method_not_allowed(&method, &path)),
    }
}

fn method_not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{method} is not allowed on {path}"),
    )
}

/// `GET /readyz`: 200 when the store answers, every worker runs and every
/// channel's pipeline is loaded; otherwise 503. Anyone sees `ready` and
/// the counts; with an admin or metrics token the body also names the
/// workers that are down and the degraded channels, with why.
async fn readiness(app: &App, details: bool) -> Response<Body> {
    let queue = app.queue.clone();
    let store = in_store(move || queue.ping()).await.err();
    let workers = app.workers.snapshot();
    let down: Vec<&String> = workers
        .iter()
        .filter(|(_, w)| !w.running)
        .map(|(n, _)| n)
        .collect();
    let degraded: serde_json::Map<String, serde_json::Value> = app
        .channels
        .values()
        .filter_map(|c| c.degraded().map(|why| (c.name.clone(), why.into())))
        .collect();
    let ready = store.is_none() && down.is_empty() && degraded.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = if details {
        serde_json::json!({
            "ready": ready,
            "store": store.unwrap_or_else(|| "ok".into()),
            "workers_down": down,
            "degraded_channels": degraded,
            "workers": workers,
        })
    } else {
        serde_json::json!({
            "ready": ready,
            "store": if store.is_none() { "ok" } else { "failing" },
            "workers_down": down.len(),
            "degraded_channels": degraded.len(),
        })
    };
    http::json_response(status, &body)
}

/// Runs blocking store work off the async threads; a store error or a
/// failed task comes back as its text (workers log it).
pub(crate) async fn in_store<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|err| err.to_string()),
        Err(join) => Err(format!("a store task failed: {join}")),
    }
}

/// [`in_store`] for request handlers: a store that is unreachable for now
/// is a 503 (`store-unavailable`), any other failure a 500.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) if err.is_unavailable() => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            err.to_string(),
        )),
        Ok(Err(StoreError::Unsupported(what))) => Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not-supported",
            format!("this sidecar's store cannot {what}: the embedded SQLite store can"),
        )),
        Ok(Err(err)) => Err(ApiError::internal(err)),
        Err(join) => Err(ApiError::internal(format!("a store task failed: {join}"))),
    }
}
