//! `POST /v1/channels/{channel}/transform`: the synchronous sidecar path.
//! Runs the channel's pipeline and answers with the outcomes; nothing is stored.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::api::http::{ApiError, Body, json_bytes_response, query_flag, read_body};
use crate::state::App;
use crate::state::auth::Caller;
use sluice_engine::event::{EventJson, OutcomeJson};

/// Transforms the body's event (or array of events) with `name`'s pipeline.
/// With `?strict=true` a rejection answers 422 `rejected` and a module fault
/// 500 `transform-fault`, the outcomes still in the body.
pub async fn transform(
    app: &App,
    caller: &Caller,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let channel = &*channel;
    if !channel.enabled() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "channel-disabled",
            format!("channel `{name}` is switched off (POST /v1/channels/{name}/enable)"),
        ));
    }
    let strict = query_flag(&request, "strict");
    let body = read_body(request, app.max_body_bytes, app.settings.body_timeout).await?;
    // A small body parses faster than a hop to a blocking thread; a large
    // one (up to `max-body-bytes`) is kept off the async threads.
    let (mut events, single) = if body.len() <= INLINE_PARSE_BYTES {
        parse_body(&body)?
    } else {
        tokio::task::spawn_blocking(move || parse_body(&body))
            .await
            .map_err(|join| ApiError::internal(format!("the parse task failed: {join}")))??
    };
    if events.len() > app.settings.max_events_per_request {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-many-events",
            format!(
                "the request holds {} events; a synchronous transform takes at most {}",
                events.len(),
                app.settings.max_events_per_request
            ),
        ));
    }
    for event in &mut events {
        if event.channel.is_empty() {
            event.channel = name.to_string();
        }
        // A module always sees the channel's own tenant.
        event.tenant = channel.tenant.clone();
    }

    let outcomes = app
        .run_pipeline(channel, channel.pipeline(), events, "sync", None)
        .await
        .map_err(|join| ApiError::internal(format!("the transform task failed: {join}")))?
        .outcomes;

    // Serialising up to `max-response-bytes` of outcomes: off the async
    // threads unless they are small.
    let max_bytes = app.settings.max_response_bytes;
    let payload_bytes: usize = outcomes.iter().map(OutcomeJson::approx_bytes).sum();
    if payload_bytes <= INLINE_PARSE_BYTES {
        return answer(outcomes, strict, single, max_bytes);
    }
    tokio::task::spawn_blocking(move || answer(outcomes, strict, single, max_bytes))
        .await
        .map_err(|join| ApiError::internal(format!("the answer task failed: {join}")))?
}

/// The answer to a synchronous transform: the outcomes (one, or an array),
/// wrapped with a code when `strict` turns a reject or a fault into 422 or 500.
fn answer(
    outcomes: Vec<OutcomeJson>,
    strict: bool,
    single: bool,
    max_bytes: usize,
) -> Result<Response<Body>, ApiError> {
    let status = if strict && outcomes.iter().any(|o| matches!(o, OutcomeJson::Error { .. })) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if strict && outcomes.iter().any(|o| matches!(o, OutcomeJson::Reject { .. })) {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    // Written straight to bytes: payloads are copied verbatim, never
    // re-parsed, however deeply they nest.
    let outcomes = if single {
        serde_json::to_vec(&outcomes[0])
    } else {
        serde_json::to_vec(&outcomes)
    }
    .map_err(|err| ApiError::internal(format!("cannot write the outcomes: {err}")))?;
    if outcomes.len() > max_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "response-too-large",
            format!(
                "the outcomes take {} bytes, over the {}-byte limit for one answer: send fewer events per request",
                outcomes.len(),
                max_bytes
            ),
        ));
    }
    let body = if status == StatusCode::OK {
        outcomes
    } else {
        let code = if status == StatusCode::UNPROCESSABLE_ENTITY {
            "rejected"
        } else {
            "transform-fault"
        };
        let mut wrapped = format!(r#"{{"code":"{code}","message":"see `outcomes`","outcomes":"#).into_bytes();
        wrapped.extend_from_slice(&outcomes);
        wrapped.push(b'}');
        wrapped
    };
    Ok(json_bytes_response(status, body))
}

/// One event object, or an array of them; errors name the JSON path.
/// Largest body parsed, and about the largest answer written, on the async thread that serves it.
const INLINE_PARSE_BYTES: usize = 64 << 10;

/// The body's events, each checked as ingest checks them, and whether the
/// body was one event rather than an array.
fn parse_body(body: &[u8]) -> Result<(Vec<EventJson>, bool), ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("invalid-json", "the body is not UTF-8", None))?;
    let trimmed = text.trim_start();
    let single = trimmed.starts_with('{');
    if !single && !trimmed.starts_with('[') {
        // Not an object or array: say whether it is JSON at all.
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Err(err) => ApiError::bad_request("invalid-json", format!("the body is not JSON: {err}"), None),
            Ok(_) => ApiError::bad_request(
                "invalid-event",
                "expected an event object or an array of events",
                Some("$"),
            ),
        });
    }
    let events = sluice_engine::event::parse_events(text).map_err(|err| {
        if err.path == "$" && serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
            ApiError::bad_request(
                "invalid-json",
                format!("the body is not JSON: {}", err.message),
                None,
            )
        } else {
            ApiError::bad_request("invalid-event", err.message, Some(&err.path))
        }
    })?;
    if single && events.len() != 1 {
        return Err(ApiError::bad_request(
            "invalid-event",
            "expected one event object or an array of events, not several objects",
            Some("$"),
        ));
    }
    if events.is_empty() {
        return Err(ApiError::bad_request(
            "invalid-event",
            "the array holds no events",
            Some("$"),
        ));
    }
    for (index, event) in events.iter().enumerate() {
        crate::api::events::check_text_fields(index + 1, event)?;
    }
    Ok((events, single))
}
