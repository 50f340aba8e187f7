//! `GET /healthz`, `GET /readyz` and `GET /metrics`: what a load balancer
//! and Prometheus ask.

use hyper::{Response, StatusCode};

use super::http::{self, Body};
use crate::state::App;
use crate::store::in_store;

/// `GET /readyz`: 200 when the store answers, every worker runs and every
/// channel's pipeline is loaded; otherwise 503. Anyone sees `ready` and
/// the counts; with an admin or metrics token the body also names the
/// workers that are down and the degraded channels, with why.
pub(super) async fn readiness(app: &App, details: bool) -> Response<Body> {
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
