//! `GET /v1/destinations`: where the caller's channels deliver.

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use crate::api::blocking;
use crate::api::http::{ApiError, Body, json_response};
use crate::state::App;
use crate::state::auth::Caller;

/// `GET /v1/destinations`: the destinations of the caller's channels and
/// the caller's own (made through the API), with their limits and what
/// their delivery workers are doing.
pub async fn list_destinations(app: &App, caller: &Caller) -> Result<Response<Body>, ApiError> {
    let mut listed = Vec::new();
    for (name, destination) in app.destinations.entries() {
        let channels: Vec<String> = app
            .channels
            .values()
            .filter(|c| c.destination.as_deref() == Some(name.as_str()) && caller.may_act_for(&c.tenant))
            .map(|c| c.name.clone())
            .collect();
        let mine = destination
            .owned
            .as_ref()
            .is_some_and(|owned| caller.may_act_for(&owned.tenant));
        if channels.is_empty() && !mine && !matches!(caller, Caller::Admin) {
            continue;
        }
        // What the worker does covers every tenant's deliveries: a tenant sees
        // it only for a destination no other tenant's channel uses.
        let own = matches!(caller, Caller::Admin)
            || app
                .channels
                .values()
                .filter(|c| c.destination.as_deref() == Some(name.as_str()))
                .all(|c| caller.may_act_for(&c.tenant));
        let (queue, key) = (app.queue.clone(), name.clone());
        let backlog = if own {
            Some(blocking(move || queue.retry_backlog(&key)).await?)
        } else {
            None
        };
        let status = if own {
            destination.status.lock().expect("status lock").clone()
        } else {
            Default::default()
        };
        let names: Vec<&str> = channels.iter().map(String::as_str).collect();
        let history = app.history.recent_of(&names, 60, crate::store::now_ms());
        listed.push(json!({
            "name": name,
            "origin": if destination.owned.is_some() { "api" } else { "config" },
            "method": destination.config.method,
            "channels": channels,
            "history": history,
            "rate-limit": destination.config.rate_limit.map(|r| r.to_string()),
            "burst": destination.config.burst,
            "concurrency": destination.config.concurrency,
            "shared-with-other-tenants": !own,
            "in-flight": own.then_some(status.in_flight),
            "retry-backlog": backlog,
            "paused-until": status.paused_until.filter(|until| *until > crate::store::now_ms()),
            "last-error": status.last_error,
        }));
    }
    Ok(json_response(StatusCode::OK, &Value::Array(listed)))
}
