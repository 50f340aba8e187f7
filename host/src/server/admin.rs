//! Admin routes: channels with their ON/OFF switch and queue depth, and
//! dead letters (list, show, purge, replay).

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use super::http::{ApiError, Body, json_response, query_param};
use super::{App, Channel, blocking};
use crate::store::{DeadLetterFilter, Replay, ReplayResult};

fn channel<'a>(app: &'a App, name: &str) -> Result<&'a Channel, ApiError> {
    app.channels
        .get(name)
        .ok_or_else(|| ApiError::not_found("unknown-channel", format!("there is no channel `{name}`")))
}

async fn describe(app: &App, channel: &Channel) -> Result<Value, ApiError> {
    let queue = app.queue.clone();
    let name = channel.name.clone();
    let depth = blocking(move || queue.depth(&name)).await?;
    Ok(json!({
        "name": channel.name,
        "tenant": channel.tenant,
        "destination": channel.destination,
        "enabled": channel.enabled(),
        "when-off": match channel.when_off {
            super::config::WhenOff::Hold => "hold",
            super::config::WhenOff::Skip => "skip",
        },
        "modules": channel.versions(),
        "queued": {"transform": depth.to_transform, "delivery": depth.to_deliver},
    }))
}

/// `GET /v1/channels`.
pub async fn list_channels(app: &App) -> Result<Response<Body>, ApiError> {
    let mut channels = Vec::new();
    for channel in app.channels.values() {
        channels.push(describe(app, channel).await?);
    }
    Ok(json_response(StatusCode::OK, &Value::Array(channels)))
}

/// `GET /v1/channels/{name}`.
pub async fn show_channel(app: &App, name: &str) -> Result<Response<Body>, ApiError> {
    let channel = channel(app, name)?;
    Ok(json_response(StatusCode::OK, &describe(app, channel).await?))
}

/// `POST /v1/channels/{name}/enable` and `…/disable`: durable, immediate.
pub async fn switch_channel(app: &App, name: &str, enabled: bool) -> Result<Response<Body>, ApiError> {
    let channel = channel(app, name)?;
    let queue = app.queue.clone();
    let key = channel.name.clone();
    blocking(move || queue.set_enabled(&key, enabled, false)).await?;
    app.set_enabled_in_memory(channel, enabled);
    tracing::info!(channel = %channel.name, enabled, "channel switched");
    Ok(json_response(StatusCode::OK, &describe(app, channel).await?))
}

fn filter(request: &Request<Incoming>) -> Result<DeadLetterFilter, ApiError> {
    let limit = match query_param(request, "limit") {
        Some(text) => Some(text.parse().map_err(|_| {
            ApiError::bad_request("invalid-query", format!("limit `{text}` is not a number"), None)
        })?),
        None => None,
    };
    Ok(DeadLetterFilter {
        tenant: query_param(request, "tenant"),
        channel: query_param(request, "channel"),
        limit,
    })
}

fn letter_id(text: &str) -> Result<i64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::not_found("unknown-dead-letter", format!("there is no dead letter `{text}`")))
}

/// `GET /v1/dead-letters[?channel=&tenant=&limit=]`, newest first.
pub async fn list_dead_letters(app: &App, request: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let filter = filter(request)?;
    let queue = app.queue.clone();
    let letters = blocking(move || queue.dead_letters(&filter)).await?;
    Ok(json_response(StatusCode::OK, &json!(letters)))
}

/// `GET /v1/dead-letters/{id}`.
pub async fn show_dead_letter(app: &App, id: &str) -> Result<Response<Body>, ApiError> {
    let id = letter_id(id)?;
    let queue = app.queue.clone();
    match blocking(move || queue.dead_letter(id)).await? {
        Some(letter) => Ok(json_response(StatusCode::OK, &json!(letter))),
        None => Err(ApiError::not_found(
            "unknown-dead-letter",
            format!("there is no dead letter `{id}`"),
        )),
    }
}

/// `DELETE /v1/dead-letters/{id}`.
pub async fn purge_dead_letter(app: &App, id: &str) -> Result<Response<Body>, ApiError> {
    let id = letter_id(id)?;
    let queue = app.queue.clone();
    if blocking(move || queue.purge_dead_letter(id)).await? {
        Ok(json_response(StatusCode::OK, &json!({"purged": 1})))
    } else {
        Err(ApiError::not_found(
            "unknown-dead-letter",
            format!("there is no dead letter `{id}`"),
        ))
    }
}

/// `DELETE /v1/dead-letters[?channel=&tenant=]`.
pub async fn purge_dead_letters(app: &App, request: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let filter = filter(request)?;
    let queue = app.queue.clone();
    let purged = blocking(move || queue.purge_dead_letters(&filter)).await?;
    Ok(json_response(StatusCode::OK, &json!({"purged": purged})))
}

/// `POST /v1/dead-letters/{id}/replay[?retransform=true]`: resends the
/// stored output, or runs the original event through the channel's current
/// pipeline. The letter is removed in the same commit.
pub async fn replay_dead_letter(app: &App, id: &str, retransform: bool) -> Result<Response<Body>, ApiError> {
    let id = letter_id(id)?;
    let queue = app.queue.clone();
    let letter = blocking(move || queue.dead_letter(id)).await?.ok_or_else(|| {
        ApiError::not_found("unknown-dead-letter", format!("there is no dead letter `{id}`"))
    })?;
    let channel = app.channels.get(&letter.summary.channel).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "unknown-channel",
            format!(
                "dead letter {id} belongs to channel `{}`, which this server no longer has",
                letter.summary.channel
            ),
        )
    })?;
    let how = if retransform {
        Replay::Retransform
    } else {
        Replay::Resend
    };
    let queue = app.queue.clone();
    match blocking(move || queue.replay(id, how)).await? {
        ReplayResult::Queued => {
            app.wake_channel(channel);
            tracing::info!(
                dead_letter = id,
                channel = %channel.name,
                event_id = %letter.summary.event_id,
                retransform,
                "dead letter replayed"
            );
            Ok(json_response(
                StatusCode::ACCEPTED,
                &json!({"replayed": id, "retransform": retransform, "channel": channel.name}),
            ))
        }
        ReplayResult::NotFound => Err(ApiError::not_found(
            "unknown-dead-letter",
            format!("there is no dead letter `{id}`"),
        )),
        ReplayResult::NothingToResend => Err(ApiError::new(
            StatusCode::CONFLICT,
            "nothing-to-resend",
            format!(
                "dead letter {id} failed in its transform and has no output; replay it with ?retransform=true"
            ),
        )),
    }
}
