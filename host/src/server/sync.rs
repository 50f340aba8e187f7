//! `POST /v1/channels/{channel}/transform`: the synchronous sidecar path.
//! Runs the channel's pipeline and answers with the outcomes; nothing is stored.

use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use super::App;
use super::auth::Caller;
use super::http::{ApiError, Body, json_response, query_flag, read_body};
use super::metrics::{ChannelLabels, OutcomeLabels};
use crate::event::{EventJson, OutcomeJson};

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
    if !channel.enabled() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "channel-disabled",
            format!("channel `{name}` is switched off (POST /v1/channels/{name}/enable)"),
        ));
    }
    let strict = query_flag(&request, "strict");
    let body = read_body(request, app.max_body_bytes).await?;
    let (mut events, single) = parse_body(&body)?;
    for event in &mut events {
        if event.channel.is_empty() {
            event.channel = name.to_string();
        }
        // A module always sees the channel's own tenant.
        event.tenant = channel.tenant.clone();
    }

    // The tenant's share of the machine: at most `transform-concurrency` pipelines at once.
    let tenant = app.tenant(&channel.tenant);
    let _permit = match &tenant {
        Some(tenant) => Some(tenant.permits.acquire().await.map_err(ApiError::internal)?),
        None => None,
    };
    let started = Instant::now();
    let pipeline = channel.pipeline();
    let outcomes = tokio::task::spawn_blocking(move || pipeline.run(&events))
        .await
        .map_err(|join| ApiError::internal(format!("the transform task failed: {join}")))?;
    app.metrics
        .transform_seconds
        .get_or_create(&ChannelLabels {
            channel: name.to_string(),
        })
        .observe(started.elapsed().as_secs_f64());
    for outcome in &outcomes {
        app.metrics
            .outcomes
            .get_or_create(&OutcomeLabels {
                channel: name.to_string(),
                outcome: outcome.tag().to_string(),
                path: "sync".into(),
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
    Ok(json_response(status, &body))
}

/// One event object, or an array of them; errors name the JSON path.
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
    let events = crate::event::parse_events(text).map_err(|err| {
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
    Ok((events, single))
}
