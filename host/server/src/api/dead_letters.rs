//! Dead letters: list, show, purge and replay. A tenant sees only its own;
//! another tenant's letter answers 404.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use crate::api::blocking;
use crate::api::http::{ApiError, Body, json_response, query_number, query_param};
use crate::state::App;
use crate::state::auth::Caller;
use crate::store::{DeadLetter, DeadLetterFilter, Replay, ReplayResult};

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
    let channel = app
        .channels
        .get(&letter.summary.channel)
        // A channel of that name made since by another tenant is not the letter's.
        .filter(|channel| channel.tenant == letter.summary.tenant)
        .ok_or_else(|| {
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
            app.wake_channel(&channel);
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
