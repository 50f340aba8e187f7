//! The sidecar's HTTP server (tokio + hyper) and its background workers.
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/channels/{channel}/transform[?strict=true]` | the channel pipeline's outcomes; nothing is stored |
//! | `POST /v1/events` | stores events durably (one JSON event, an array, or JSONL); 202 after the commit |
//! | `GET /v1/channels`, `GET /v1/channels/{channel}` | channels with their switch and queue depth |
//! | `POST /v1/channels/{channel}/enable`, `…/disable` | the ON/OFF switch |
//! | `GET /v1/dead-letters[?channel=&tenant=&limit=]` | dead letters, newest first |
//! | `GET /v1/dead-letters/{id}` | one dead letter in full |
//! | `POST /v1/dead-letters/{id}/replay[?retransform=true]` | requeue it |
//! | `DELETE /v1/dead-letters/{id}`, `DELETE /v1/dead-letters[?channel=&tenant=]` | purge |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 once every channel's modules are loaded and the store is open |
//! | `GET /metrics` | Prometheus text |
//!
//! Errors are JSON `{"code", "message", "path"?}` with a stable `code`.
//!
//! Behind ingest, one transform worker per channel moves events from the
//! channel's queue through its pipeline into the outbox, and one delivery
//! worker per destination sends the outbox (see [`transformer`] and [`delivery`]).

mod admin;
pub mod backoff;
pub mod config;
pub mod delivery;
pub mod http;
mod ingest;
pub mod metrics;
mod sync;
pub mod transformer;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sluice_guest::mapping::CompiledPath;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::pipeline::Pipeline;
use crate::store::{Queue, StoreError};
use config::{DestinationConfig, RetryPolicy, ServerConfig, WhenOff};
use http::{ApiError, Body, text};
use metrics::{Metrics, RequestLabels};

/// A channel as served: its tenant, pipeline, destination and switch.
pub struct Channel {
    /// The channel's name.
    pub name: String,
    /// Its tenant: events are fanned out to the channels of their tenant.
    pub tenant: String,
    /// The loaded steps.
    pub pipeline: Pipeline,
    /// Where ingested events go after the pipeline; none: sync path only.
    pub destination: Option<String>,
    /// What happens to events ingested while the channel is off.
    pub when_off: WhenOff,
    /// Only events from these sources are fanned out to it (empty: all).
    pub sources: Vec<String>,
    enabled: AtomicBool,
    wake: Notify,
}

impl Channel {
    /// A channel, switched on.
    pub fn new(name: &str, tenant: &str, pipeline: Pipeline) -> Self {
        Self {
            name: name.to_string(),
            tenant: tenant.to_string(),
            pipeline,
            destination: None,
            when_off: WhenOff::Hold,
            sources: Vec::new(),
            enabled: AtomicBool::new(true),
            wake: Notify::new(),
        }
    }

    /// Whether an ingested event of this tenant and source is for this channel.
    pub fn takes(&self, tenant: &str, source: &str) -> bool {
        self.destination.is_some()
            && self.tenant == tenant
            && (self.sources.is_empty() || self.sources.iter().any(|s| s == source))
    }

    /// Whether the channel is switched on.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// `module@version` of every step, recorded with what it produces.
    pub fn versions(&self) -> Vec<String> {
        self.pipeline
            .steps()
            .iter()
            .map(|step| format!("{}@{}", step.module.name(), step.module.version()))
            .collect()
    }
}

/// A destination as served: its config, retry policy and compiled entity key.
pub struct Destination {
    /// As configured.
    pub config: DestinationConfig,
    /// Its retry policy (its own, or the config's default).
    pub retry: RetryPolicy,
    /// Selects the entity (SKU) whose order is kept.
    pub entity_key: CompiledPath,
    wake: Notify,
}

/// Everything a request handler or worker needs; shared by all of them.
pub struct App {
    /// Channels by name.
    pub channels: BTreeMap<String, Channel>,
    /// Destinations by name.
    pub destinations: BTreeMap<String, Destination>,
    /// Every tenant that owns a channel.
    pub tenants: BTreeSet<String>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// How long an event id is remembered for duplicate detection.
    pub idempotency_window: Duration,
    /// The metrics registry.
    pub metrics: Metrics,
    /// The durable queue.
    pub queue: Arc<dyn Queue>,
}

impl App {
    /// Builds the app from the config and the loaded channels, and applies
    /// the config's ON/OFF switches to the store (a switch set through the
    /// API stands until the config's value for it changes).
    pub fn new(
        config: &ServerConfig,
        channels: Vec<Channel>,
        queue: Arc<dyn Queue>,
    ) -> Result<Self, StoreError> {
        let mut by_name = BTreeMap::new();
        for mut channel in channels {
            if let Some(spec) = config.channels.iter().find(|c| c.name == channel.name) {
                channel.destination = spec.destination.clone();
                channel.when_off = spec.when_off;
                channel.sources = spec.sources.clone();
                let enabled = queue.set_enabled(&channel.name, spec.enabled, true)?;
                channel.enabled.store(enabled, Ordering::Release);
            }
            by_name.insert(channel.name.clone(), channel);
        }
        let destinations = config
            .destinations
            .iter()
            .map(|spec| {
                let destination = Destination {
                    retry: spec.retry.clone().unwrap_or_else(|| config.retry.clone()),
                    entity_key: CompiledPath::compile(&spec.entity_key)
                        .expect("checked when the config was parsed"),
                    config: spec.clone(),
                    wake: Notify::new(),
                };
                (spec.name.clone(), destination)
            })
            .collect();
        Ok(Self {
            tenants: by_name.values().map(|c: &Channel| c.tenant.clone()).collect(),
            channels: by_name,
            destinations,
            max_body_bytes: config.max_body_bytes,
            idempotency_window: Duration::from_secs(config.idempotency_window_hours * 3600),
            metrics: Metrics::default(),
            queue,
        })
    }

    /// Records a switch already stored, and wakes the channel's workers.
    fn set_enabled_in_memory(&self, channel: &Channel, enabled: bool) {
        channel.enabled.store(enabled, Ordering::Release);
        self.wake_channel(channel);
    }

    /// Wakes a channel's transform worker and its destination's delivery worker.
    pub fn wake_channel(&self, channel: &Channel) {
        channel.wake.notify_one();
        if let Some(destination) = channel
            .destination
            .as_ref()
            .and_then(|d| self.destinations.get(d))
        {
            destination.wake.notify_one();
        }
    }
}

/// Serves `app` on `listener` with its workers until `shutdown` completes
/// (see [`shutdown_signal`]). Then it stops accepting, lets in-flight
/// requests finish, lets each worker finish and record its current batch,
/// and returns.
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let (stop, stopped) = watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    for channel in app.channels.values().filter(|c| c.destination.is_some()) {
        workers.spawn(transformer::run(
            app.clone(),
            channel.name.clone(),
            stopped.clone(),
        ));
    }
    for name in app.destinations.keys() {
        workers.spawn(delivery::run(app.clone(), name.clone(), stopped.clone()));
    }
    workers.spawn(housekeeping(app.clone(), stopped.clone()));

    serve(listener, app.clone(), shutdown).await;
    let _ = stop.send(true);
    while workers.join_next().await.is_some() {}
}

/// Serves HTTP until `shutdown` completes, then lets in-flight requests finish.
async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let app = app.clone();
                let service = service_fn(move |request| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(handle(&app, request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    graceful.shutdown().await;
}

/// Refreshes the queue-depth gauges each second and forgets old event ids hourly.
async fn housekeeping(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    let mut ticks: u64 = 0;
    loop {
        let work = app.clone();
        let forget = ticks.is_multiple_of(3600);
        let _ = tokio::task::spawn_blocking(move || {
            for channel in work.channels.values() {
                if let Ok(depth) = work.queue.depth(&channel.name) {
                    work.metrics.set_depth(&channel.name, &depth);
                }
            }
            if forget {
                let before = crate::store::now_ms() - work.idempotency_window.as_millis() as i64;
                if let Err(err) = work.queue.forget_before(before) {
                    tracing::error!(error = %err, "cannot forget old event ids");
                }
            }
        })
        .await;
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

async fn handle(app: &App, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    let answer = match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Ok(text(StatusCode::OK, "ok\n")),
        (&Method::GET, ["readyz"]) => Ok(text(StatusCode::OK, "ready\n")),
        (&Method::GET, ["metrics"]) => Ok(text(StatusCode::OK, &app.metrics.render())),
        (&Method::POST, ["v1", "channels", channel, "transform"]) => {
            let channel = channel.to_string();
            let response = sync::transform(app, &channel, request).await;
            // Only configured names become labels: a caller cannot grow the metrics.
            let channel = if app.channels.contains_key(&channel) {
                channel
            } else {
                "(unknown)".into()
            };
            let status = match &response {
                Ok(ok) => ok.status(),
                Err(err) => err.status,
            };
            app.metrics
                .requests
                .get_or_create(&RequestLabels {
                    channel,
                    status: status.as_u16(),
                })
                .inc();
            response
        }
        (&Method::POST, ["v1", "events"]) => ingest::ingest(app, request).await,
        (&Method::GET, ["v1", "channels"]) => admin::list_channels(app).await,
        (&Method::GET, ["v1", "channels", name]) => admin::show_channel(app, name).await,
        (&Method::POST, ["v1", "channels", name, switch @ ("enable" | "disable")]) => {
            admin::switch_channel(app, name, *switch == "enable").await
        }
        (&Method::GET, ["v1", "dead-letters"]) => admin::list_dead_letters(app, &request).await,
        (&Method::DELETE, ["v1", "dead-letters"]) => admin::purge_dead_letters(app, &request).await,
        (&Method::GET, ["v1", "dead-letters", id]) => admin::show_dead_letter(app, id).await,
        (&Method::DELETE, ["v1", "dead-letters", id]) => admin::purge_dead_letter(app, id).await,
        (&Method::POST, ["v1", "dead-letters", id, "replay"]) => {
            let retransform = http::query_flag(&request, "retransform");
            admin::replay_dead_letter(app, id, retransform).await
        }
        (
            _,
            ["healthz" | "readyz" | "metrics"]
            | ["v1", "events"]
            | ["v1", "channels", ..]
            | ["v1", "dead-letters", ..],
        ) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(ApiError::not_found("not-found", format!("no route for {path}"))),
    };
    answer.unwrap_or_else(ApiError::into_response)
}

/// Runs blocking store work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(ApiError::internal(err)),
        Err(join) => Err(ApiError::internal(format!("a store task failed: {join}"))),
    }
}
