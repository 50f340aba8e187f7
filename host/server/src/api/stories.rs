//! Event stories: `GET /v1/events/{id}` (one event end to end) and
//! `GET /v1/events?entity=` (the newest events of one entity key). A
//! tenant sees only its own; an admin names the tenant with `?tenant=`.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use crate::api::blocking;
use crate::api::http::{ApiError, Body, json_response, query_number, query_param};
use crate::observe::story::{MAX_ENTRIES, MAX_FOUND, view};
use crate::state::App;
use crate::state::auth::Caller;

/// Longest entity key or event id looked up, in bytes (an event id is at
/// most 512; a longer entity key, which a payload may make, cannot be
/// looked up here).
const MAX_LOOKUP_BYTES: usize = 4096;

/// The tenant whose stories the caller reads.
fn tenant_of(caller: &Caller, request: &Request<Incoming>) -> Result<String, ApiError> {
    match caller.tenant() {
        Some(own) => Ok(own.to_string()),
        None => query_param(request, "tenant").ok_or_else(|| {
            ApiError::bad_request(
                "missing-tenant",
                "an admin names the tenant with `?tenant=`",
                None,
            )
        }),
    }
}

fn too_long(what: &str) -> ApiError {
    ApiError::bad_request(
        "invalid-query",
        format!("{what} is over {MAX_LOOKUP_BYTES} bytes"),
        None,
    )
}

/// `GET /v1/events/{id}`: the event's story, oldest entry first, and per
/// channel where it is now; 404 `unknown-event` when none is kept.
pub async fn show(
    app: &App,
    caller: &Caller,
    id: &str,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let tenant = tenant_of(caller, request)?;
    // An id is any text: the path carries it percent-encoded.
    let decoded = percent_encoding::percent_decode_str(id).decode_utf8_lossy();
    let id = decoded.as_ref();
    if id.len() > MAX_LOOKUP_BYTES {
        return Err(too_long("the event id"));
    }
    let (queue, key, event) = (app.queue.clone(), tenant.clone(), id.to_string());
    let entries = blocking(move || queue.event_story(&key, &event, MAX_ENTRIES)).await?;
    if entries.is_empty() {
        return Err(ApiError::not_found(
            "unknown-event",
            format!(
                "no story is kept of event `{id}`: it was never accepted, or its story is past retention"
            ),
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &view(&entries, |channel| app.is_in_flight(&tenant, id, channel)),
    ))
}

/// `GET /v1/events?entity=SKU-1[&channel=][&limit=]`: the newest events
/// whose deliveries had that entity key, newest first.
pub async fn find(
    app: &App,
    caller: &Caller,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let tenant = tenant_of(caller, request)?;
    let Some(entity) = query_param(request, "entity") else {
        return Err(ApiError::bad_request(
            "missing-entity",
            "name the entity key: `GET /v1/events?entity=SKU-1`",
            None,
        ));
    };
    if entity.len() > MAX_LOOKUP_BYTES {
        return Err(too_long("the entity key"));
    }
    let limit = query_number::<usize>(request, "limit", "invalid-query")?
        .unwrap_or(MAX_FOUND)
        .clamp(1, MAX_FOUND);
    let channel = query_param(request, "channel");
    let (queue, key) = (app.queue.clone(), entity.clone());
    let found = blocking(move || queue.entity_stories(&tenant, &key, channel.as_deref(), limit)).await?;
    let events: Vec<_> = found
        .iter()
        .map(|entry| {
            json!({
                "event_id": entry.event_id,
                "channel": entry.channel,
                "at_ms": entry.at_ms,
                "latest": entry.kind,
            })
        })
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"events": events})))
}
