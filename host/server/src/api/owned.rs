//! `PUT/GET/DELETE /v1/destinations/{name}` and `PUT/DELETE
//! /v1/channels/{name}`: destinations and channels tenants keep through the
//! API (see `state::owned`). Names are shared by every tenant and the
//! operator: a name taken by anyone else answers 409 `name-taken`, without
//! saying whose it is.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::api::blocking;
use crate::api::http::{ApiError, Body, json_response, query_flag, read_body};
use crate::api::modules::acting_tenant;
use crate::config::{DestinationConfig, InlineSecrets};
use crate::state::App;
use crate::state::auth::Caller;
use crate::state::owned::{
    CHANNEL_KIND, ChannelEntry, DESTINATION_KIND, DESTINATION_SECRETS, StoredChannel, StoredDestination,
};

/// Largest entry body.
const MAX_ENTRY_BYTES: usize = 64 << 10;

/// `PUT /v1/destinations/{name}`: creates or replaces one of the tenant's
/// destinations from the fields of a `[[destination]]` table as JSON, its
/// secrets inline. A replacement that sends no secret keeps the stored
/// ones while the URL, the token endpoint and its header stay the same.
pub async fn put_destination(
    app: &App,
    caller: &Caller,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let tenant = acting_tenant(app, caller, &request)?;
    check_name(name)?;
    let mut entry = read_entry(app, request).await?;
    // Checked, stored and swapped in under one lock: a slow request cannot
    // replace a name another tenant took meanwhile.
    let _change = app.owned_changes.lock().await;
    let current = app.destinations.get(name);
    let previous = match &current {
        None => None,
        Some(d) => match &d.owned {
            Some(owned) if owned.tenant == tenant => Some(owned.clone()),
            _ => return Err(name_taken(name)),
        },
    };
    entry["name"] = name.into();
    // What GET shows besides the fields: sent back as read, it is no field.
    if let Some(object) = entry.as_object_mut() {
        object.remove("origin");
    }
    let old = previous
        .as_ref()
        .and_then(|p| serde_json::from_str::<StoredDestination>(&p.stored).ok());
    leave_out_set_secrets(&mut entry);
    let mut secrets = InlineSecrets::split(&mut entry, DESTINATION_SECRETS)
        .map_err(|err| ApiError::bad_request("invalid-destination", err, None))?;
    if let Some(auth) = entry.get_mut("auth").and_then(Value::as_object_mut)
        && !auth.contains_key("kind")
        && secrets.0.contains_key("auth.bearer")
    {
        auth.insert("kind".into(), "bearer".into());
    }
    let mut config: DestinationConfig = serde_path_to_error::deserialize(&entry).map_err(|err| {
        let path = format!("$.{}", err.path());
        ApiError::bad_request("invalid-destination", err.into_inner().to_string(), Some(&path))
    })?;
    // The stored secrets and header values may go only where they went.
    let same = old.filter(|old| secrets_go_to(&old.config) == secrets_go_to(&config));
    fill_set_headers(&mut config, same.as_ref().map(|o| &o.config))?;
    if let (Some(previous), Some(_)) = (previous, same) {
        for (key, secret) in previous.secrets.0 {
            secrets.0.entry(key).or_insert(secret);
        }
    }
    if current.is_none() {
        let held = app
            .destinations
            .values()
            .filter(|d| d.owned.as_ref().is_some_and(|o| o.tenant == tenant))
            .count();
        let limit = app.tenant(&tenant).map_or(0, |t| t.config.max_destinations);
        if held >= limit {
            return Err(over_quota("destinations", &tenant, held));
        }
    }
    let invalid = |err: String| {
        ApiError::bad_request(
            "invalid-destination",
            format!("destination `{name}`: {err}"),
            None,
        )
    };
    // Checked as a tenant's before anything reads the environment.
    config.check(true).map_err(&invalid)?;
    let target = config.target().map_err(&invalid)?;
    if let Some(host) = target.host() {
        app.network_policy
            .check_host(&host)
            .map_err(|err| invalid(err.to_string()))?;
    }
    let stored = StoredDestination {
        tenant: tenant.clone(),
        config,
        secrets,
    };
    let text = serde_json::to_string(&stored).map_err(ApiError::internal)?;
    let destination = app.owned_destination(&stored, &text).map_err(&invalid)?;
    let (registry, key, spec) = (app.registry.clone(), name.to_string(), text.clone());
    blocking(move || registry.put_setting(DESTINATION_KIND, &tenant, &key, &spec)).await?;
    let destination = app.destinations.insert(name.to_string(), destination);
    tracing::info!(destination = %name, "destination stored");
    let status = if current.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_response(status, &destination_view(&destination)))
}

/// `GET /v1/destinations/{name}`: one of the caller's destinations, its
/// secrets and header values shown as `"set"`.
pub async fn show_destination(
    app: &App,
    caller: &Caller,
    name: &str,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let tenant = acting_tenant(app, caller, request)?;
    let destination = app
        .destinations
        .get(name)
        .filter(|d| {
            d.owned.as_ref().is_some_and(|o| o.tenant == tenant)
                || app
                    .channels
                    .values()
                    .any(|c| c.tenant == tenant && c.destination.as_deref() == Some(name))
        })
        .ok_or_else(|| no_such("destination", name))?;
    Ok(json_response(StatusCode::OK, &destination_view(&destination)))
}

/// `DELETE /v1/destinations/{name}`: deletes one of the tenant's
/// destinations that no channel uses (409 `in-use` otherwise).
pub async fn delete_destination(
    app: &App,
    caller: &Caller,
    name: &str,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let tenant = acting_tenant(app, caller, request)?;
    let _change = app.owned_changes.lock().await;
    let destination = app
        .destinations
        .get(name)
        .ok_or_else(|| no_such("destination", name))?;
    match &destination.owned {
        Some(owned) if owned.tenant == tenant => {}
        Some(_) => return Err(no_such("destination", name)),
        None => return Err(read_only("destination", name)),
    }
    if let Some(user) = app
        .channels
        .values()
        .find(|c| c.destination.as_deref() == Some(name))
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "in-use",
            format!(
                "channel `{}` delivers to destination `{name}`: delete it first",
                user.name
            ),
        ));
    }
    let (registry, queue, key) = (app.registry.clone(), app.queue.clone(), name.to_string());
    blocking(move || {
        queue.forget_fingerprints(Some(&key), None)?;
        registry.delete_setting(DESTINATION_KIND, &tenant, &key).map(drop)
    })
    .await?;
    app.destinations.remove(name);
    Ok(json_response(StatusCode::OK, &json!({ "deleted": name })))
}

/// `PUT /v1/channels/{name}`: creates or replaces one of the tenant's
/// channels: one of its own destinations, and uploaded modules as its
/// steps (as `activate` takes them) or none, in which case it holds its
/// events until its first activation. In effect at once, with no restart.
pub async fn put_channel(
    app: &App,
    caller: &Caller,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let tenant = acting_tenant(app, caller, &request)?;
    check_name(name)?;
    let entry = read_entry(app, request).await?;
    let _change = app.owned_changes.lock().await;
    let current = app.channels.get(name);
    if let Some(channel) = &current
        && (channel.owned.is_none() || channel.tenant != tenant)
    {
        return Err(name_taken(name));
    }
    let mut entry: ChannelEntry = serde_path_to_error::deserialize(&entry).map_err(|err| {
        let path = format!("$.{}", err.path());
        ApiError::bad_request("invalid-channel", err.into_inner().to_string(), Some(&path))
    })?;
    let invalid = |message: String| ApiError::bad_request("invalid-channel", message, None);
    match app.destinations.get(&entry.destination) {
        Some(d) if d.owned.as_ref().is_some_and(|o| o.tenant == tenant) => {}
        _ => {
            return Err(invalid(format!(
                "`destination`: there is no destination `{}` of yours",
                entry.destination
            )));
        }
    }
    if entry.steps.len() > crate::api::channels::MAX_STEPS {
        return Err(invalid(format!(
            "a channel has at most {} steps",
            crate::api::channels::MAX_STEPS
        )));
    }
    for (index, step) in entry.steps.iter_mut().enumerate() {
        app.pin_step(&tenant, step, index)
            .map_err(|err| invalid(err.to_string()))?;
    }
    if current.is_none() {
        let held = app
            .channels
            .values()
            .filter(|c| c.owned.is_some() && c.tenant == tenant)
            .count();
        let limit = app.tenant(&tenant).map_or(0, |t| t.config.max_channels);
        if held >= limit {
            return Err(over_quota("channels", &tenant, held));
        }
    }
    let stored = StoredChannel {
        tenant: tenant.clone(),
        entry,
    };
    let text = serde_json::to_string(&stored).map_err(ApiError::internal)?;
    if current.is_none() {
        // A name used before may have left its switch behind (a channel
        // deleted with ?discard=true is switched off first): a new one
        // starts as its entry says.
        let (queue, key, on) = (app.queue.clone(), name.to_string(), stored.entry.enabled);
        blocking(move || queue.set_enabled(&key, on, false)).await?;
    }
    let channel = tokio::task::block_in_place(|| app.owned_channel(name, &stored, &text)).map_err(invalid)?;
    let (registry, key, spec) = (app.registry.clone(), name.to_string(), text.clone());
    blocking(move || {
        registry.put_setting(CHANNEL_KIND, &tenant, &key, &spec)?;
        // Its steps are what it runs now, on every node: earlier activations go.
        clear_activations(registry.as_ref(), &key)
    })
    .await?;
    let channel = app.channels.insert(name.to_string(), channel);
    tracing::info!(channel = %name, tenant = %channel.tenant, "channel stored");
    let status = if current.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_response(
        status,
        &crate::api::channels::describe(app, &channel).await?,
    ))
}

/// `DELETE /v1/channels/{name}`: deletes one of the tenant's channels. One
/// that still holds undelivered events answers 409 `not-empty`, unless
/// `?discard=true`: then each becomes a dead letter (reason `discarded`),
/// and nothing vanishes.
pub async fn delete_channel(
    app: &App,
    caller: &Caller,
    name: &str,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let _change = app.owned_changes.lock().await;
    let channel = app.channel_for(caller, name)?;
    if channel.owned.is_none() {
        return Err(read_only("channel", name));
    }
    let tenant = channel.tenant.clone();
    // Out of the map first, so that ingest queues nothing more for it.
    app.channels.remove(name);
    let put_back = || app.channels.insert_arc(name.to_string(), channel.clone());
    let (queue, key) = (app.queue.clone(), name.to_string());
    let depth = blocking(move || queue.depth(&key))
        .await
        .inspect_err(|_| put_back())?;
    let waiting = depth.to_transform + depth.to_deliver;
    if waiting > 0 {
        if !query_flag(request, "discard") {
            put_back();
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not-empty",
                format!(
                    "channel `{name}` holds {waiting} undelivered events: let them drain, or delete with ?discard=true"
                ),
            ));
        }
        // Every event it holds becomes a dead letter, in one commit.
        app.set_enabled_in_memory(&channel, false);
        let (queue, key, owner) = (app.queue.clone(), name.to_string(), tenant.clone());
        let discarded = blocking(move || {
            queue.set_enabled(&key, false, false)?;
            queue.discard_channel(&owner, &key)
        })
        .await
        .inspect_err(|_| put_back())?;
        tracing::warn!(channel = %name, discarded, "channel deleted: its undelivered events are dead letters");
    }
    let (registry, queue, key) = (app.registry.clone(), app.queue.clone(), name.to_string());
    blocking(move || {
        queue.forget_fingerprints(None, Some(&key))?;
        queue.forget_state(&tenant, &key)?;
        registry.delete_setting(CHANNEL_KIND, &tenant, &key)?;
        clear_activations(registry.as_ref(), &key)?;
        // Nothing is left to pull for it; what fails here is only logged.
        if let Err(err) = queue.drop_route(&key) {
            tracing::warn!(channel = %key, error = %err, "cannot drop a deleted channel's consumers");
        }
        Ok(())
    })
    .await?;
    Ok(json_response(StatusCode::OK, &json!({ "deleted": name })))
}

/// Drops every activation stored for a channel, so that a channel made
/// again under that name (or replaced) does not run an old one.
fn clear_activations(
    registry: &dyn crate::store::Registry,
    channel: &str,
) -> Result<(), crate::store::StoreError> {
    for _ in 0..10_000 {
        match registry.pop_pipeline(channel)? {
            Some(Some(_)) => continue,
            None | Some(None) => return Ok(()),
        }
    }
    Ok(())
}

/// What a tenant reads of a destination: never a secret or a header's value.
fn destination_view(destination: &crate::state::Destination) -> Value {
    let mut shown = serde_json::to_value(&destination.config).unwrap_or(Value::Null);
    if let Some(headers) = shown.get_mut("headers").and_then(Value::as_object_mut) {
        for value in headers.values_mut() {
            *value = "set".into();
        }
    }
    match &destination.owned {
        Some(owned) => owned.secrets.mask(&mut shown),
        // The operator's: which variables and files hold its secrets is the operator's business.
        None => {
            for table in ["auth", "sign"] {
                if shown.get(table).is_some_and(|t| !t.is_null()) {
                    shown[table] = "set".into();
                }
            }
        }
    }
    shown["origin"] = if destination.owned.is_some() {
        "api"
    } else {
        "config"
    }
    .into();
    shown
}

/// `"set"`, as a tenant reads its secrets and header values back, stands
/// for the stored value, so an entry read, edited and sent back keeps
/// them. A secret reading `"set"` is left out: the stored one is kept
/// while the URL and token endpoint stay the same.
fn leave_out_set_secrets(entry: &mut Value) {
    for key in DESTINATION_SECRETS {
        let (table, field) = key.split_once('.').unwrap_or(("", key));
        let holder = if table.is_empty() {
            Some(&mut *entry)
        } else {
            entry.get_mut(table)
        };
        if let Some(object) = holder.and_then(Value::as_object_mut)
            && object.get(field).is_some_and(|v| v == "set")
        {
            object.remove(field);
        }
    }
}

/// A header reading `"set"` takes the stored header's value, if `old` (the
/// replaced entry, when its secrets may go where this one's go) has it.
fn fill_set_headers(config: &mut DestinationConfig, old: Option<&DestinationConfig>) -> Result<(), ApiError> {
    for (header, value) in config.headers.iter_mut() {
        if value != "set" {
            continue;
        }
        let stored = old.and_then(|o| {
            o.headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(header))
        });
        match stored {
            Some((_, stored)) => value.clone_from(stored),
            None => {
                return Err(ApiError::bad_request(
                    "invalid-destination",
                    format!(
                        "`headers.{header}` reads \"set\", but there is no stored value for it here \
                         (it is kept only while the URL and token endpoint stay the same): send its value"
                    ),
                    Some(&format!("$.headers.{header}")),
                ));
            }
        }
    }
    Ok(())
}

/// Where a destination's secrets go: its URL, and its token endpoint and header.
fn secrets_go_to(config: &DestinationConfig) -> Value {
    let auth = config.auth.as_ref();
    json!([
        config.url,
        auth.map(|a| &a.token_url),
        auth.map(|a| &a.header),
        auth.map(|a| a.kind())
    ])
}

async fn read_entry(app: &App, request: Request<Incoming>) -> Result<Value, ApiError> {
    let body = read_body(request, MAX_ENTRY_BYTES, app.settings.body_timeout).await?;
    let entry: Value = serde_json::from_slice(&body).map_err(|err| {
        ApiError::bad_request("invalid-json", format!("the body is not JSON: {err}"), Some("$"))
    })?;
    if !entry.is_object() {
        return Err(ApiError::bad_request(
            "invalid-json",
            "the body must be a JSON object",
            Some("$"),
        ));
    }
    Ok(entry)
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if crate::api::tenants::valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid-name",
            "a name is 1 to 64 of a-z, 0-9, `-` and `_`",
            None,
        ))
    }
}

fn name_taken(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "name-taken",
        format!("the name `{name}` is taken"),
    )
}

/// 409 for the operator's entries, which tenants cannot change.
pub(super) fn read_only(what: &str, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "read-only",
        format!("{what} `{name}` is set in sluice.toml, which only the operator changes"),
    )
}

fn no_such(what: &'static str, name: &str) -> ApiError {
    ApiError::not_found(
        if what == "channel" {
            "unknown-channel"
        } else {
            "unknown-destination"
        },
        format!("there is no {what} `{name}`"),
    )
}

fn over_quota(what: &str, tenant: &str, held: usize) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "over-quota",
        format!("tenant `{tenant}` holds {held} {what}, its limit"),
    )
}
