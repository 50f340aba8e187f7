//! Channels: list and show them with their ON/OFF switch and queue depth,
//! their per-minute history, the switch itself, and activating uploaded
//! module versions (with rollback). A tenant sees only its own; another
//! tenant's channel answers 404.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::api::blocking;
use crate::api::http::{ApiError, Body, json_response, query_number, read_body};
use crate::state::auth::Caller;
use crate::state::{ActivationError, App, Channel, versions};
use sluice_engine::pipeline::{Pipeline, PipelineSpec};

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
            crate::config::WhenOff::Hold => "hold",
            crate::config::WhenOff::Skip => "skip",
        },
        "modules": versions(&channel.pipeline()),
        "lookups": lookup_versions(channel),
        "circuit-breaker": channel.tripped(),
        "queued": {"transform": depth.to_transform, "delivery": depth.to_deliver},
        "dead-letters": depth.dead_letters,
        "origin": if channel.owned.is_some() { "api" } else { "config" },
        // What a tenant PUT, to edit it: its own data, with no secret in it.
        "entry": channel
            .owned
            .as_deref()
            .and_then(|text| serde_json::from_str::<crate::state::owned::StoredChannel>(text).ok())
            .map(|stored| stored.entry),
    }))
}

/// The uploaded lookup tables the activated pipeline names, as pinned:
/// `name@version`, the version in full, step by step.
fn lookup_versions(channel: &Channel) -> Vec<String> {
    channel
        .active_spec()
        .and_then(|text| serde_json::from_str::<PipelineSpec>(&text).ok())
        .map(|spec| {
            spec.steps
                .iter()
                .flat_map(|step| step.lookups.values().cloned())
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /v1/channels`: the caller's channels.
pub async fn list_channels(app: &App, caller: &Caller) -> Result<Response<Body>, ApiError> {
    let mut channels = Vec::new();
    for channel in app.channels.values().filter(|c| caller.may_act_for(&c.tenant)) {
        channels.push(describe(app, &channel).await?);
    }
    Ok(json_response(StatusCode::OK, &Value::Array(channels)))
}

/// `GET /v1/channels/{name}/history[?minutes=60]`: the channel's last
/// minutes (at most a day), oldest first (see [`crate::observe::history`]).
pub fn channel_history(
    app: &App,
    caller: &Caller,
    name: &str,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let channel = &*channel;
    let minutes = query_number::<usize>(request, "minutes", "invalid-query")?.unwrap_or(60);
    let recent = app.history.recent(&channel.name, minutes, crate::store::now_ms());
    Ok(json_response(
        StatusCode::OK,
        &json!({"channel": channel.name, "destination": channel.destination, "minutes": recent}),
    ))
}

/// `GET /v1/channels/{name}`.
pub async fn show_channel(app: &App, caller: &Caller, name: &str) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let channel = &*channel;
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
    let channel = &*channel;
    let queue = app.queue.clone();
    let key = channel.name.clone();
    blocking(move || queue.set_enabled(&key, enabled, false)).await?;
    app.set_enabled_in_memory(channel, enabled);
    tracing::info!(channel = %channel.name, enabled, "channel switched");
    Ok(json_response(StatusCode::OK, &describe(app, channel).await?))
}

fn activation_error(err: ActivationError) -> ApiError {
    match err {
        ActivationError::UnknownModule { .. } => {
            ApiError::new(StatusCode::CONFLICT, "unknown-module", err.to_string())
        }
        ActivationError::UnknownLookup { .. } => {
            ApiError::new(StatusCode::CONFLICT, "unknown-lookup", err.to_string())
        }
        ActivationError::Load { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "cannot-load", err.to_string())
        }
        ActivationError::Store(err) => ApiError::internal(err),
    }
}

/// `POST /v1/channels/{name}/activate` with a pipeline
/// (`{"steps": [{"module", "version", "config"}]}`) of the channel tenant's
/// uploaded modules: loads it, records it, and swaps it in at once.
pub async fn activate(
    app: &App,
    caller: &Caller,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let channel = &*channel;
    let (spec, pipeline) = read_candidate(app, channel, request).await?;
    make_active(app, channel, &spec, pipeline).await?;
    Ok(json_response(StatusCode::OK, &describe(app, channel).await?))
}

/// Reads a pipeline spec from the request body (as `activate` takes one),
/// resolves every step's version in full, and loads it from the channel
/// tenant's uploaded modules. Nothing is stored.
pub(crate) async fn read_candidate(
    app: &App,
    channel: &Channel,
    request: Request<Incoming>,
) -> Result<(PipelineSpec, Pipeline), ApiError> {
    let body = read_body(request, app.max_body_bytes, app.settings.body_timeout).await?;
    let mut de = serde_json::Deserializer::from_slice(&body);
    let mut spec: PipelineSpec = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = sluice_engine::diff::path_from_serde(err.path());
        ApiError::bad_request("invalid-pipeline", err.into_inner().to_string(), Some(&path))
    })?;
    if spec.steps.is_empty() || spec.steps.len() > MAX_STEPS {
        return Err(ApiError::bad_request(
            "invalid-pipeline",
            format!(
                "a pipeline has from 1 to {MAX_STEPS} steps, not {}",
                spec.steps.len()
            ),
            Some("$['steps']"),
        ));
    }
    for (index, step) in spec.steps.iter_mut().enumerate() {
        app.pin_step(&channel.tenant, step, index)
            .map_err(activation_error)?;
    }
    let pipeline = {
        let loaded = tokio::task::block_in_place(|| app.load_uploaded(channel, &spec));
        loaded.map_err(activation_error)?
    };
    Ok((spec, pipeline))
}

/// Most steps a pipeline may have: each runs on every event, and each is
/// looked up and loaded when it is activated.
pub const MAX_STEPS: usize = 32;

/// Stores `spec` as the channel's active pipeline and swaps `pipeline` in.
pub(crate) async fn make_active(
    app: &App,
    channel: &Channel,
    spec: &PipelineSpec,
    pipeline: Pipeline,
) -> Result<(), ApiError> {
    let registry = app.registry.clone();
    let (key, text) = (
        channel.name.clone(),
        serde_json::to_string(spec).map_err(ApiError::internal)?,
    );
    let stored = text.clone();
    blocking(move || registry.push_pipeline(&key, &text)).await?;
    app.swap_pipeline(channel, pipeline);
    channel.set_active_spec(Some(stored));
    tracing::info!(channel = %channel.name, tenant = %channel.tenant, pipeline = %json!(spec), "pipeline activated");
    Ok(())
}

/// `POST /v1/channels/{name}/rollback`: back to the pipeline active before
/// the last activation (in the end, the config's).
pub async fn rollback(app: &App, caller: &Caller, name: &str) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let channel = &*channel;
    let registry = app.registry.clone();
    let key = channel.name.clone();
    let popped = blocking(move || registry.pop_pipeline(&key)).await?;
    let pipeline = match popped.clone() {
        None => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "nothing-to-roll-back",
                format!("channel `{name}` runs its config's pipeline: nothing was activated"),
            ));
        }
        Some(None) => app.config_pipeline(channel),
        Some(Some(text)) => {
            let spec: PipelineSpec = serde_json::from_str(&text).map_err(ApiError::internal)?;
            tokio::task::block_in_place(|| app.load_uploaded(channel, &spec)).map_err(activation_error)?
        }
    };
    app.swap_pipeline(channel, pipeline);
    channel.set_active_spec(popped.flatten());
    tracing::info!(channel = %channel.name, tenant = %channel.tenant, "pipeline rolled back");
    Ok(json_response(StatusCode::OK, &describe(app, channel).await?))
}
