//! The sidecar's HTTP server (tokio + hyper): the synchronous transform
//! path, health checks and metrics.
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/channels/{channel}/transform[?strict=true]` | the channel pipeline's outcomes; nothing is stored |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 once every channel's modules are loaded |
//! | `GET /metrics` | Prometheus text |
//!
//! Errors are JSON `{"code", "message", "path"?}` with a stable `code`:
//! 400 `invalid-json` / `invalid-event`, 404 `unknown-channel` /
//! `not-found`, 405 `method-not-allowed`, 413 `payload-too-large`, and with
//! `strict=true` 422 `rejected` (a business rejection) or 500
//! `transform-fault` (a module fault), whose body still holds the outcomes.

pub mod config;
pub mod metrics;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::event::{EventJson, OutcomeJson};
use crate::pipeline::Pipeline;
use metrics::{ChannelLabels, Metrics, OutcomeLabels, RequestLabels};

/// A channel as served: its tenant and loaded pipeline.
pub struct Channel {
    /// Stamped on events that carry no tenant.
    pub tenant: String,
    /// The loaded steps.
    pub pipeline: Pipeline,
}

/// Everything a request handler needs; shared by all connections.
pub struct App {
    /// Channels by name.
    pub channels: HashMap<String, Channel>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// The metrics registry.
    pub metrics: Metrics,
}

type Body = Full<Bytes>;

/// Serves `app` on `listener` until `shutdown` completes (see
/// [`shutdown_signal`]), then lets in-flight requests finish.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
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
    match (request.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n"),
        (&Method::GET, ["readyz"]) => text(StatusCode::OK, "ready\n"),
        (&Method::GET, ["metrics"]) => text(StatusCode::OK, &app.metrics.render()),
        (&Method::POST, ["v1", "channels", channel, "transform"]) => {
            let channel = channel.to_string();
            let strict = request
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "strict=true" || kv == "strict=1"));
            let response = transform(app, &channel, strict, request).await;
            // Only configured names become labels: a caller cannot grow the metrics.
            let channel = if app.channels.contains_key(&channel) {
                channel
            } else {
                "(unknown)".into()
            };
            app.metrics
                .requests
                .get_or_create(&RequestLabels {
                    channel,
                    status: response.status().as_u16(),
                })
                .inc();
            response
        }
        (_, ["healthz" | "readyz" | "metrics"]) | (_, ["v1", "channels", _, "transform"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("{} is not allowed on {path}", request.method()),
            None,
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no route for {path}"),
            None,
        ),
    }
}

/// `POST /v1/channels/{channel}/transform`.
async fn transform(app: &App, name: &str, strict: bool, request: Request<Incoming>) -> Response<Body> {
    let Some(channel) = app.channels.get(name) else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown-channel",
            format!("there is no channel `{name}`"),
            None,
        );
    };
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("the body is larger than the {}-byte limit", app.max_body_bytes),
            None,
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > app.max_body_bytes) {
        return too_large();
    }
    let body = match Limited::new(request.into_body(), app.max_body_bytes)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return too_large(),
    };
    let (mut events, single) = match parse_body(&body) {
        Ok(parsed) => parsed,
        Err(err) => return err.into_response(),
    };
    for event in &mut events {
        if event.channel.is_empty() {
            event.channel = name.to_string();
        }
        if event.tenant.is_empty() {
            event.tenant = channel.tenant.clone();
        }
    }

    let started = Instant::now();
    let pipeline = channel.pipeline.clone();
    let outcomes = match tokio::task::spawn_blocking(move || pipeline.run(&events)).await {
        Ok(outcomes) => outcomes,
        Err(join) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the transform task failed: {join}"),
                None,
            );
        }
    };
    let labels = ChannelLabels {
        channel: name.to_string(),
    };
    app.metrics
        .transform_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    for outcome in &outcomes {
        app.metrics
            .outcomes
            .get_or_create(&OutcomeLabels {
                channel: name.to_string(),
                outcome: outcome.tag().to_string(),
            })
            .inc();
    }

    let status = if strict && outcomes.iter().any(|o| matches!(o, OutcomeJson::Error { .. })) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if strict && outcomes.iter().any(|o| matches!(o, OutcomeJson::Reject { .. })) {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let mut body = if single {
        serde_json::to_value(&outcomes[0])
    } else {
        serde_json::to_value(&outcomes)
    }
    .unwrap_or(Value::Null);
    if status != StatusCode::OK {
        let code = if status == StatusCode::UNPROCESSABLE_ENTITY {
            "rejected"
        } else {
            "transform-fault"
        };
        body = json!({"code": code, "message": "see `outcomes`", "outcomes": body});
    }
    json_response(status, &body)
}

/// An API error: a status, a stable code, a message and maybe a JSON path.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    path: Option<String>,
}

impl ApiError {
    fn bad_request(code: &'static str, message: impl Into<String>, path: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
            path: path.map(str::to_string),
        }
    }

    fn into_response(self) -> Response<Body> {
        error(self.status, self.code, self.message, self.path)
    }
}

/// One event object, or an array of them; errors name the JSON path.
fn parse_body(body: &[u8]) -> Result<(Vec<EventJson>, bool), ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("invalid-json", "the body is not UTF-8", None))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|err| ApiError::bad_request("invalid-json", format!("the body is not JSON: {err}"), None))?;
    let single = value.is_object();
    if !single && !value.is_array() {
        return Err(ApiError::bad_request(
            "invalid-event",
            "expected an event object or an array of events",
            Some("$"),
        ));
    }
    let events = crate::event::parse_events(text)
        .map_err(|err| ApiError::bad_request("invalid-event", err.message, Some(&err.path)))?;
    if events.is_empty() {
        return Err(ApiError::bad_request(
            "invalid-event",
            "the array holds no events",
            Some("$"),
        ));
    }
    Ok((events, single))
}

fn error(status: StatusCode, code: &str, message: String, path: Option<String>) -> Response<Body> {
    let mut body = json!({"code": code, "message": message});
    if let Some(path) = path {
        body["path"] = path.into();
    }
    json_response(status, &body)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().expect("static header"));
    response
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8"
            .parse()
            .expect("static header"),
    );
    response
}
