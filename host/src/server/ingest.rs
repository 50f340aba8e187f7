//! `POST /v1/events`: durable, idempotent ingest. Answers 202 only after
//! the events are committed; an event id already stored for its tenant is
//! reported as a duplicate and queued nowhere.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::auth::Caller;
use super::http::{ApiError, Body, json_response, read_body};
use super::metrics::{ChannelLabels, TenantLabels};
use super::{App, blocking};
use crate::store::Ingest;

/// Stores the body's events (one JSON event, an array, or JSONL) and queues
/// each for every channel of its tenant (and source, if the channel names
/// its `sources`) that is on, or off with `when-off = "hold"`.
///
/// A tenant's events belong to that tenant (an event naming no tenant is
/// stamped with it); naming another tenant is answered like naming one
/// that does not exist. A tenant over its `ingest-rate` gets 429 with
/// `Retry-After`, and nothing of the request is stored.
pub async fn ingest(
    app: &App,
    caller: &Caller,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let body = read_body(request, app.max_body_bytes).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("invalid-json", "the body is not UTF-8", None))?;
    let events = crate::event::parse_events(text).map_err(|err| {
        let code = if err.path == "$" {
            "invalid-json"
        } else {
            "invalid-event"
        };
        ApiError::bad_request(code, err.to_string(), Some(&err.path))
    })?;
    if events.is_empty() {
        return Err(ApiError::bad_request(
            "invalid-event",
            "the body holds no events",
            Some("$"),
        ));
    }

    // Events naming no tenant belong to the caller's (or, for an admin, the only one).
    let default_tenant = match caller.tenant() {
        Some(own) => Some(own.to_string()),
        None => match app.tenant_names().as_slice() {
            [only] => Some(only.clone()),
            _ => None,
        },
    };
    let mut batch = Vec::with_capacity(events.len());
    let mut logged = Vec::with_capacity(events.len());
    let mut woken = Vec::new();
    for (index, mut event) in events.into_iter().enumerate() {
        if event.id.is_empty() {
            return Err(ApiError::bad_request(
                "invalid-event",
                format!("event {} has an empty id", index + 1),
                Some("$['id']"),
            ));
        }
        if event.tenant.is_empty() {
            let Some(tenant) = &default_tenant else {
                return Err(ApiError::bad_request(
                    "invalid-event",
                    format!(
                        "event `{}` names no tenant, and this server has several",
                        event.id
                    ),
                    Some("$['tenant']"),
                ));
            };
            event.tenant = tenant.clone();
        }
        if app.tenant(&event.tenant).is_none() || !caller.may_act_for(&event.tenant) {
            return Err(ApiError::bad_request(
                "unknown-tenant",
                format!("event `{}`: there is no tenant `{}`", event.id, event.tenant),
                Some("$['tenant']"),
            ));
        }
        let mut channels = Vec::new();
        for channel in app.channels.values() {
            if !channel.takes(&event.tenant, &event.source) {
                continue;
            }
            if channel.queues_new_events() {
                channels.push(channel.name.clone());
                woken.push(channel);
            } else {
                app.metrics
                    .skipped
                    .get_or_create(&ChannelLabels {
                        channel: channel.name.clone(),
                    })
                    .inc();
            }
        }
        logged.push((
            event.tenant.clone(),
            event.correlation_id.clone().unwrap_or_else(|| event.id.clone()),
        ));
        batch.push(Ingest {
            tenant: event.tenant.clone(),
            id: event.id.clone(),
            event: serde_json::to_string(&event).map_err(ApiError::internal)?,
            channels,
        });
    }

    let mut per_tenant = std::collections::BTreeMap::<&str, usize>::new();
    for item in &batch {
        *per_tenant.entry(item.tenant.as_str()).or_default() += 1;
    }
    for (name, count) in per_tenant {
        if let Some(tenant) = app.tenant(name)
            && let Err(wait) = tenant.admit(count)
        {
            app.metrics
                .rate_limited
                .get_or_create(&TenantLabels {
                    tenant: name.to_string(),
                })
                .inc();
            return Err(ApiError::rate_limited(
                format!(
                    "tenant `{name}` is over its ingest-rate; retry after {} ms",
                    wait.as_millis()
                ),
                wait,
            ));
        }
    }
    let queue = app.queue.clone();
    let receipts = blocking(move || queue.ingest(batch)).await?;
    for channel in woken {
        app.wake_channel(channel);
    }

    let mut duplicates = 0;
    for (receipt, (tenant, correlation_id)) in receipts.iter().zip(&logged) {
        let labels = TenantLabels {
            tenant: tenant.clone(),
        };
        app.metrics.events_in.get_or_create(&labels).inc();
        if receipt.duplicate {
            duplicates += 1;
            app.metrics.duplicates.get_or_create(&labels).inc();
        }
        tracing::info!(
            tenant = %tenant,
            event_id = %receipt.id,
            correlation_id = %correlation_id,
            duplicate = receipt.duplicate,
            "event accepted"
        );
    }
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({
            "accepted": receipts.len() - duplicates,
            "duplicates": duplicates,
            "events": receipts,
        }),
    ))
}
