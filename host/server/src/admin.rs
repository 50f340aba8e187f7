//! Admin routes: channels with their ON/OFF switch and queue depth, dead
//! letters (list, show, purge, replay), and tenants with their tokens.
//! A tenant sees only its own; another tenant's resources answer 404.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use super::auth::{Caller, hash_token, new_token};
use super::http::{ApiError, Body, json_response, query_number, query_param};
use super::{App, Channel, blocking, versions};
use crate::store::{DeadLetter, DeadLetterFilter, Replay, ReplayResult};

/// A channel as the API shows it.
pub(super) async fn describe(app: &App, channel: &Channel) -> Result<Value, ApiError> {
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
        "modules": versions(&channel.pipeline()),
        "circuit-breaker": channel.tripped(),
        "queued": {"transform": depth.to_transform, "delivery": depth.to_deliver},
        "dead-letters": depth.dead_letters,
    }))
}

/// `GET /v1/channels`: the caller's channels.
pub async fn list_channels(app: &App, caller: &Caller) -> Result<Response<Body>, ApiError> {
    let mut channels = Vec::new();
    for channel in app.channels.values().filter(|c| caller.may_act_for(&c.tenant)) {
        channels.push(describe(app, channel).await?);
    }
    Ok(json_response(StatusCode::OK, &Value::Array(channels)))
}

/// `GET /v1/channels/{name}/history[?minutes=60]`: the channel's last
/// minutes (at most a day), oldest first (see [`crate::history`]).
pub fn channel_history(
    app: &App,
    caller: &Caller,
    name: &str,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let minutes = query_number::<usize>(request, "minutes", "invalid-query")?.unwrap_or(60);
    let recent = app.history.recent(&channel.name, minutes, crate::store::now_ms());
    Ok(json_response(
        StatusCode::OK,
        &json!({"channel": channel.name, "destination": channel.destination, "minutes": recent}),
    ))
}

/// `GET /v1/destinations`: the destinations of the caller's channels, with
/// their limits and what their delivery workers are doing.
pub async fn list_destinations(app: &App, caller: &Caller) -> Result<Response<Body>, ApiError> {
    let mut listed = Vec::new();
    for (name, destination) in &app.destinations {
        let channels: Vec<&str> = app
            .channels
            .values()
            .filter(|c| c.destination.as_deref() == Some(name) && caller.may_act_for(&c.tenant))
            .map(|c| c.name.as_str())
            .collect();
        if channels.is_empty() && !matches!(caller, Caller::Admin) {
            continue;
        }
        // What the worker does covers every tenant's deliveries: a tenant sees
        // it only for a destination no other tenant's channel uses.
        let own = matches!(caller, Caller::Admin)
            || app
                .channels
                .values()
                .filter(|c| c.destination.as_deref() == Some(name))
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
        let history = app.history.recent_of(&channels, 60, crate::store::now_ms());
        listed.push(json!({
            "name": name,
            "channels": channels,
            "history": history,
            "rate-limit": destination.config.rate_limit.map(|r| format!("{:.3}/s", r.per_second())),
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

/// `GET /v1/channels/{name}`.
pub async fn show_channel(app: &App, caller: &Caller, name: &str) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    Ok(json_response(StatusCode::OK, &describe(app, channel).await?))
}

/// `POST /v1/channels/{name}/enable` and `…/disable`: durable, immediate.
/// Enabling also closes a tripped circuit breaker.
pub async fn switch_channel(
    app: &App,
    caller: &Caller,
    name: &str,
    enabled: bool,
) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let queue = app.queue.clone();
    let key = channel.name.clone();
    blocking(move || queue.set_enabled(&key, enabled, false)).await?;
    app.set_enabled_in_memory(channel, enabled);
    tracing::info!(channel = %channel.name, enabled, "channel switched");
    Ok(json_response(StatusCode::OK, &describe(app, channel).await?))
}

/// The listing filter; a tenant's is always narrowed to itself.
fn filter(caller: &Caller, request: &Request<Incoming>) -> Result<DeadLetterFilter, ApiError> {
    let limit = query_number(request, "limit", "invalid-query")?;
    let tenant = match caller.tenant() {
        Some(own) => Some(own.to_string()),
        None => query_param(request, "tenant"),
    };
    let before = match query_param(request, "before") {
        Some(text) => Some(text.parse().map_err(|_| {
            ApiError::bad_request(
                "invalid-query",
                format!("before `{text}` is not a dead letter id"),
                None,
            )
        })?),
        None => None,
    };
    Ok(DeadLetterFilter {
        tenant,
        channel: query_param(request, "channel"),
        limit,
        before,
    })
}

/// The 404 for a dead letter that does not exist, or is another tenant's.
fn no_letter(id: impl std::fmt::Display) -> ApiError {
    ApiError::not_found("unknown-dead-letter", format!("there is no dead letter `{id}`"))
}

fn letter_id(text: &str) -> Result<i64, ApiError> {
    text.parse().map_err(|_| no_letter(text))
}

/// One dead letter the caller may see; 404 otherwise.
async fn letter_for(app: &App, caller: &Caller, id: &str) -> Result<DeadLetter, ApiError> {
    let id = letter_id(id)?;
    let queue = app.queue.clone();
    blocking(move || queue.dead_letter(id))
        .await?
        .filter(|letter| caller.may_act_for(&letter.summary.tenant))
        .ok_or_else(|| no_letter(id))
}

/// `GET /v1/dead-letters[?channel=&tenant=&limit=]`, newest first.
pub async fn list_dead_letters(
    app: &App,
    caller: &Caller,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let filter = filter(caller, request)?;
    let queue = app.queue.clone();
    let letters = blocking(move || queue.dead_letters(&filter)).await?;
    Ok(json_response(StatusCode::OK, &json!(letters)))
}

/// `GET /v1/dead-letters/{id}`.
pub async fn show_dead_letter(app: &App, caller: &Caller, id: &str) -> Result<Response<Body>, ApiError> {
    let letter = letter_for(app, caller, id).await?;
    Ok(json_response(StatusCode::OK, &json!(letter)))
}

/// `DELETE /v1/dead-letters/{id}`.
pub async fn purge_dead_letter(app: &App, caller: &Caller, id: &str) -> Result<Response<Body>, ApiError> {
    let id = letter_for(app, caller, id).await?.summary.id;
    let queue = app.queue.clone();
    if blocking(move || queue.purge_dead_letter(id)).await? {
        Ok(json_response(StatusCode::OK, &json!({"purged": 1})))
    } else {
        Err(no_letter(id))
    }
}

/// `DELETE /v1/dead-letters[?channel=&tenant=]`.
pub async fn purge_dead_letters(
    app: &App,
    caller: &Caller,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let filter = filter(caller, request)?;
    if filter.limit.is_some() || filter.before.is_some() {
        return Err(ApiError::bad_request(
            "invalid-query",
            "`limit` and `before` page a listing; a purge takes only `channel` and `tenant`",
            None,
        ));
    }
    let queue = app.queue.clone();
    let purged = blocking(move || queue.purge_dead_letters(&filter)).await?;
    Ok(json_response(StatusCode::OK, &json!({"purged": purged})))
}

/// `POST /v1/dead-letters/{id}/replay[?retransform=true]`: resends the
/// stored output, or runs the original event through the channel's current
/// pipeline. The letter is removed in the same commit.
pub async fn replay_dead_letter(
    app: &App,
    caller: &Caller,
    id: &str,
    retransform: bool,
) -> Result<Response<Body>, ApiError> {
    let letter = letter_for(app, caller, id).await?;
    let id = letter.summary.id;
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
        ReplayResult::NotFound => Err(no_letter(id)),
        ReplayResult::NothingToResend => Err(ApiError::new(
            StatusCode::CONFLICT,
            "nothing-to-resend",
            format!(
                "dead letter {id} failed in its transform and has no output; replay it with ?retransform=true"
            ),
        )),
    }
}

/// A tenant name: lower-case letters, digits, `-` and `_`, 1 to 64 characters.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with(['-', '_'])
}

/// `PUT /v1/tenants/{name}` (admin): creates a tenant with the default settings.
pub async fn create_tenant(app: &App, caller: &Caller, name: &str) -> Result<Response<Body>, ApiError> {
    if *caller != Caller::Admin {
        return Err(ApiError::admin_only());
    }
    if !valid_name(name) {
        return Err(ApiError::bad_request(
            "invalid-name",
            format!("`{name}` is not a tenant name: use a-z, 0-9, `-` and `_`, at most 64 characters"),
            None,
        ));
    }
    let registry = app.registry.clone();
    let key = name.to_string();
    let created = blocking(move || registry.add_tenant(&key)).await? || app.tenant(name).is_none();
    app.add_tenant(name);
    tracing::info!(tenant = %name, created, "tenant created");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(
        status,
        &json!({"tenant": name, "created": created}),
    ))
}

/// `POST /v1/tenants/{name}/tokens` (admin): issues a new token for the
/// tenant. The token is in this answer only; the server keeps its hash.
pub async fn create_token(app: &App, caller: &Caller, name: &str) -> Result<Response<Body>, ApiError> {
    if *caller != Caller::Admin {
        return Err(ApiError::admin_only());
    }
    if app.tenant(name).is_none() {
        return Err(ApiError::not_found(
            "unknown-tenant",
            format!("there is no tenant `{name}`"),
        ));
    }
    let token = new_token();
    let hash = hash_token(&token);
    let registry = app.registry.clone();
    let (key, stored) = (name.to_string(), hash.clone());
    blocking(move || registry.add_token(&key, &stored)).await?;
    app.tokens.add(&hash, Caller::Tenant(name.to_string()));
    tracing::info!(tenant = %name, token_sha256 = %hash, "token issued");
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"tenant": name, "token": token, "sha256": hash}),
    ))
}
