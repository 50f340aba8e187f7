//! `POST /v1/events`: durable, idempotent ingest. Answers 202 only after
//! the events are committed; an event id already stored for its tenant is
//! reported as a duplicate and queued nowhere.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use crate::api::blocking;
use crate::api::http::{ApiError, Body, json_response, read_body};
use crate::state::App;
use crate::state::auth::Caller;
use crate::store::{Ingest, Receipt};

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
    // A caller's trace is continued (W3C Trace Context); a malformed one is ignored.
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| crate::observe::trace::parse_traceparent(v).is_some())
        .map(str::to_string);
    let body = read_body(request, app.max_body_bytes, app.settings.body_timeout).await?;

    // Events naming no tenant belong to the caller's (or, for an admin, the only one).
    let tenants = app.tenant_names();
    let default_tenant = match caller.tenant() {
        Some(own) => Some(own.to_string()),
        None => match tenants.as_slice() {
            [only] => Some(only.clone()),
            _ => None,
        },
    };
    let allowed: std::collections::BTreeSet<String> =
        tenants.into_iter().filter(|t| caller.may_act_for(t)).collect();
    // Parsing and checking are linear, but a body holds up to
    // `max-body-bytes` of events: keep them off the async threads.
    let parsed =
        tokio::task::spawn_blocking(move || prepare(&body, default_tenant, &allowed, traceparent.as_deref()))
            .await
            .map_err(|join| ApiError::internal(format!("the ingest task failed: {join}")))??;

    accept(app, parsed).await
}

/// Ingests one event a source made (`api::sources`), for its tenant,
/// through the same checks and the same durable, idempotent path as
/// `POST /v1/events`.
pub(crate) async fn ingest_from_source(
    app: &App,
    tenant: &str,
    envelope: String,
) -> Result<Response<Body>, ApiError> {
    let receipts = ingest_text(app, tenant, envelope).await?;
    Ok(accepted_response(&receipts))
}

/// Ingests events of one tenant (one JSON event, an array, or JSONL)
/// made by Sluice itself (a source), as `POST /v1/events` would.
pub(crate) async fn ingest_text(app: &App, tenant: &str, text: String) -> Result<Vec<Receipt>, ApiError> {
    let allowed = std::collections::BTreeSet::from([tenant.to_string()]);
    let default_tenant = Some(tenant.to_string());
    let parsed =
        tokio::task::spawn_blocking(move || prepare(text.as_bytes(), default_tenant, &allowed, None))
            .await
            .map_err(|join| ApiError::internal(format!("the ingest task failed: {join}")))??;
    store(app, parsed).await
}

/// Queues checked events for the channels that take them, within their
/// tenants' storage and ingest rate, and stores them; the 202 answer.
async fn accept(app: &App, parsed: Vec<Prepared>) -> Result<Response<Body>, ApiError> {
    let receipts = store(app, parsed).await?;
    Ok(accepted_response(&receipts))
}

/// Stores checked events (see [`accept`]) and says what became of each.
async fn store(app: &App, parsed: Vec<Prepared>) -> Result<Vec<Receipt>, ApiError> {
    let started = std::time::SystemTime::now();
    let (batch, logged, woken) = fan_out(app, parsed);
    admit(app, &batch)?;
    let queue = app.queue.clone();
    let receipts = blocking(move || queue.ingest(batch)).await?;
    for channel in woken {
        app.wake_channel(&channel);
    }
    for (receipt, (tenant, correlation_id, traceparent)) in receipts.iter().zip(&logged) {
        let trace =
            crate::observe::trace::TraceContext::of_event(tenant, &receipt.id, traceparent.as_deref());
        app.emit(crate::observe::events::Accepted {
            tenant,
            event_id: &receipt.id,
            correlation_id,
            duplicate: receipt.duplicate,
            trace,
            started,
        });
    }
    Ok(receipts)
}

fn accepted_response(receipts: &[Receipt]) -> Response<Body> {
    let duplicates = receipts.iter().filter(|r| r.duplicate).count();
    json_response(
        StatusCode::ACCEPTED,
        &json!({
            "accepted": receipts.len() - duplicates,
            "duplicates": duplicates,
            "events": receipts,
        }),
    )
}

/// Each event with the channels it is queued for, what its log line
/// names (tenant, correlation id), and the channels to wake.
type FannedOut = (
    Vec<Ingest>,
    Vec<(String, String, Option<String>)>,
    Vec<std::sync::Arc<crate::state::Channel>>,
);

/// See [`FannedOut`].
fn fan_out(app: &App, parsed: Vec<Prepared>) -> FannedOut {
    let mut batch = Vec::with_capacity(parsed.len());
    let mut logged = Vec::with_capacity(parsed.len());
    let mut woken: Vec<std::sync::Arc<crate::state::Channel>> = Vec::new();
    // One look at the channels per request, not per event.
    let all: Vec<std::sync::Arc<crate::state::Channel>> = app.channels.values().collect();
    for event in parsed {
        let mut channels = Vec::new();
        for channel in &all {
            if !channel.takes(&event.tenant, &event.source) {
                continue;
            }
            if channel.queues_new_events() {
                channels.push(channel.name.clone());
                if !woken.iter().any(|w| std::sync::Arc::ptr_eq(w, channel)) {
                    woken.push(channel.clone());
                }
            } else {
                app.metrics.skipped(&channel.name);
            }
        }
        logged.push((event.tenant.clone(), event.correlation_id, event.traceparent));
        batch.push(Ingest {
            tenant: event.tenant,
            id: event.id,
            event: event.stored,
            channels,
        });
    }

    (batch, logged, woken)
}

/// Refuses (429) a batch that would take a tenant past its stored events
/// or its ingest rate; nothing of it is stored then.
fn admit(app: &App, batch: &[Ingest]) -> Result<(), ApiError> {
    let mut per_tenant = std::collections::BTreeMap::<&str, usize>::new();
    for item in batch {
        *per_tenant.entry(item.tenant.as_str()).or_default() += 1;
    }
    for (name, count) in &per_tenant {
        check_storage(app, name, *count as u64)?;
    }
    for (name, count) in per_tenant {
        if let Some(tenant) = app.tenant(name)
            && let Err(wait) = tenant.admit(count)
        {
            app.metrics.rate_limited(name);
            return Err(ApiError::rate_limited(
                format!(
                    "tenant `{name}` is over its ingest-rate; retry after {} ms",
                    wait.as_millis()
                ),
                wait,
            ));
        }
    }
    Ok(())
}

/// One event ready to store: checked, stamped with its tenant, serialised.
struct Prepared {
    /// The event's `traceparent` header, which continues a caller's trace.
    traceparent: Option<String>,
    tenant: String,
    id: String,
    source: String,
    correlation_id: String,
    stored: String,
}

/// Longest event id, correlation id, kind, source, channel or tenant accepted, in bytes.
const MAX_ID_BYTES: usize = 512;

/// Parses the body and checks every event: ids present, short and free of
/// control characters; the tenant known and the caller's. The first bad
/// event refuses the whole request, naming it and the field.
fn prepare(
    body: &[u8],
    default_tenant: Option<String>,
    allowed: &std::collections::BTreeSet<String>,
    traceparent: Option<&str>,
) -> Result<Vec<Prepared>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("invalid-json", "the body is not UTF-8", None))?;
    let events = sluice_engine::event::parse_events(text).map_err(|err| {
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
    let mut prepared = Vec::with_capacity(events.len());
    for (index, mut event) in events.into_iter().enumerate() {
        let number = index + 1;
        check_id(number, "id", &event.id)?;
        check_text_fields(number, &event)?;
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
        if !allowed.contains(&event.tenant) {
            return Err(ApiError::bad_request(
                "unknown-tenant",
                format!("event `{}`: there is no tenant `{}`", event.id, event.tenant),
                Some("$['tenant']"),
            ));
        }
        // The request's trace, kept with each event that has none of its own.
        if let Some(traceparent) = traceparent
            && event.headers.len() < MAX_HEADERS
            && event
                .headers
                .get("traceparent")
                .is_none_or(|own| crate::observe::trace::parse_traceparent(own).is_none())
        {
            event
                .headers
                .insert("traceparent".into(), traceparent.to_string());
        }
        prepared.push(Prepared {
            traceparent: event.headers.get("traceparent").cloned(),
            stored: serde_json::to_string(&event).map_err(ApiError::internal)?,
            correlation_id: event.correlation_id.clone().unwrap_or_else(|| event.id.clone()),
            tenant: event.tenant,
            id: event.id,
            source: event.source,
        });
    }
    Ok(prepared)
}

/// Every other text field of an event, if given, is held to an id's
/// rules: each is copied into queues, logs, recordings and dead letters,
/// so none may be larger than an id.
pub(crate) fn check_text_fields(
    number: usize,
    event: &sluice_engine::event::EventJson,
) -> Result<(), ApiError> {
    let fields = [
        ("id", &event.id),
        ("kind", &event.kind),
        ("source", &event.source),
        ("channel", &event.channel),
        ("tenant", &event.tenant),
    ];
    for (field, value) in fields {
        if !value.is_empty() {
            check_id(number, field, value)?;
        }
    }
    if let Some(correlation_id) = &event.correlation_id {
        check_id(number, "correlation_id", correlation_id)?;
    }
    if !event.topic.is_empty() {
        check_id(number, "topic", &event.topic)?;
    }
    check_headers(number, event)?;
    if event.delivery.is_some() {
        return Err(ApiError::bad_request(
            "invalid-event",
            format!("event {number}: `delivery` is chosen by a transform, never sent with an event"),
            Some("$['delivery']"),
        ));
    }
    Ok(())
}

/// Most headers an event may carry for its transforms.
const MAX_HEADERS: usize = 32;
/// Longest header value an event may carry, in bytes.
const MAX_HEADER_VALUE_BYTES: usize = 512;

/// An event's `headers`: at most [`MAX_HEADERS`], names in lower-case
/// header syntax, values short and free of control characters.
fn check_headers(number: usize, event: &sluice_engine::event::EventJson) -> Result<(), ApiError> {
    let bad = |path: String, problem: String| {
        Err(ApiError::bad_request(
            "invalid-event",
            format!("event {number}: {problem}"),
            Some(&path),
        ))
    };
    if event.headers.len() > MAX_HEADERS {
        return bad(
            "$['headers']".into(),
            format!(
                "`headers` holds {} headers; at most {MAX_HEADERS} are allowed",
                event.headers.len()
            ),
        );
    }
    for (name, value) in &event.headers {
        let path = format!("$['headers']['{}']", name.escape_default());
        // RFC 9110's token characters, in lower case.
        let token = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || name.len() > 64 || !name.chars().all(token) {
            return bad(
                path,
                "a header name is 1 to 64 lower-case token characters (RFC 9110)".into(),
            );
        }
        if value.len() > MAX_HEADER_VALUE_BYTES || value.chars().any(char::is_control) {
            return bad(
                path,
                format!(
                    "a header value is at most {MAX_HEADER_VALUE_BYTES} bytes, with no control characters"
                ),
            );
        }
    }
    Ok(())
}

/// An id must be there, at most [`MAX_ID_BYTES`] long, and hold no control
/// characters (it travels in log lines and HTTP headers).
fn check_id(number: usize, field: &str, value: &str) -> Result<(), ApiError> {
    let path = format!("$['{field}']");
    let problem = if value.is_empty() {
        Some("is empty".to_string())
    } else if value.len() > MAX_ID_BYTES {
        Some(format!(
            "is {} bytes long; at most {MAX_ID_BYTES} are allowed",
            value.len()
        ))
    } else {
        value
            .chars()
            .find(|c| c.is_control())
            .map(|c| format!("holds the control character U+{:04X}", u32::from(c)))
    };
    match problem {
        Some(problem) => Err(ApiError::bad_request(
            "invalid-event",
            format!("event {number}: `{field}` {problem}"),
            Some(&path),
        )),
        None => Ok(()),
    }
}

/// Refuses (429) an ingest that would take a tenant past its
/// `max-stored-events`, counted over its channels as of the last second.
fn check_storage(app: &App, tenant: &str, incoming: u64) -> Result<(), ApiError> {
    let Some(config) = app.tenant(tenant).map(|t| t.config.max_stored_events) else {
        return Ok(());
    };
    let stored: u64 = app
        .channels
        .values()
        .filter(|c| c.tenant == tenant)
        .map(|c| c.stored())
        .sum();
    if stored.saturating_add(incoming) <= config {
        return Ok(());
    }
    app.metrics.storage_refused(tenant);
    let mut error = ApiError::rate_limited(
        format!(
            "tenant `{tenant}` keeps {stored} events (queued and dead letters), its limit is {config}: \
             let the queues drain, or purge dead letters, then retry"
        ),
        std::time::Duration::from_secs(5),
    );
    error.code = "storage-quota";
    Err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_control_characters_are_refused_and_named() {
        let allowed = ["acme".to_string()].into_iter().collect();
        let body = br#"{"id":"evt\u0000x","kind":"product","tenant":"acme","payload":{}}"#;
        let err = prepare(body, None, &allowed, None).err().unwrap();
        assert_eq!(err.path.as_deref(), Some("$['id']"));
        assert!(err.message.contains("U+0000"), "{}", err.message);
        let body = br#"{"id":"evt-1","kind":"product","tenant":"acme","correlation_id":"a\nb","payload":{}}"#;
        let err = prepare(body, None, &allowed, None).err().unwrap();
        assert_eq!(err.path.as_deref(), Some("$['correlation_id']"));
        let body = br#"{"id":"evt-1","kind":"product","payload":{}}"#;
        assert_eq!(
            prepare(body, Some("acme".into()), &allowed, None).unwrap()[0].tenant,
            "acme"
        );
    }
}
