//! `POST /v1/sources/{tenant}/{source}`: a platform's signed webhook,
//! verified over its raw body and ingested as an event (see `sources`);
//! and `GET/PUT/DELETE /v1/sources/{name}`, where tenants keep their own.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use serde_json::Value;

use crate::api::blocking;
use crate::api::http::{ApiError, Body, json_response, read_body};
use crate::api::modules::acting_tenant;
use crate::config::{InlineSecrets, SourceConfig};
use crate::sources::catalog::{SETTING_KIND, StoredSource};
use crate::sources::{Delivery, INLINE_SECRETS, Source, SourceError};
use crate::state::App;
use crate::state::auth::Caller;

/// Bodies up to this size are verified on the async thread that received them.
const INLINE_VERIFY_BYTES: usize = 64 << 10;

/// Verifies and ingests one delivery. An unknown source and a bad, missing
/// or stale signature get the same 401, and nothing is read or stored for
/// an unknown one: the answer tells an attacker nothing.
pub async fn deliver(
    app: &App,
    tenant: &str,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let Some(source) = app.sources.get(tenant, name) else {
        // Read and hashed as a real source's would be, so that neither the
        // status nor the time tells that this source does not exist.
        let body = read_body(request, app.max_body_bytes, app.settings.body_timeout).await?;
        let _ = hmac_of(&body);
        return Err(ApiError::unauthorized());
    };
    let headers = request.headers().clone();
    if let Err(SourceError::Unsigned(reason)) = source.precheck(&headers) {
        app.metrics
            .source_refused(&format!("{tenant}/{name}"), reason.label());
        return Err(ApiError::unauthorized());
    }
    let body = read_body(request, app.max_body_bytes, app.settings.body_timeout).await?;
    // An HMAC over up to `max-body-bytes`: off the async thread unless small.
    let small = body.len() <= INLINE_VERIFY_BYTES;
    let verify = {
        let source = source.clone();
        move || source.delivery(&headers, &body)
    };
    let delivery = if small {
        verify()
    } else {
        tokio::task::spawn_blocking(verify)
            .await
            .map_err(|join| ApiError::internal(format!("the verify task failed: {join}")))?
    };
    match delivery {
        Ok(Delivery::Ping) => Ok(json_response(StatusCode::OK, &json!({"ping": true}))),
        Ok(Delivery::Event(envelope)) => crate::api::events::ingest_from_source(app, tenant, envelope).await,
        Err(SourceError::Unsigned(reason)) => {
            app.metrics
                .source_refused(&format!("{tenant}/{name}"), reason.label());
            Err(ApiError::unauthorized())
        }
        Err(err) => Err(ApiError::bad_request("invalid-event", err.to_string(), None)),
    }
}

/// An HMAC of `body` under a throwaway key: the work a real check does.
fn hmac_of(body: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(b"sluice-unknown-source").expect("any key length");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Largest `PUT /v1/sources/{name}` body.
const MAX_SOURCE_BYTES: usize = 64 << 10;

/// `GET /v1/sources`: the tenant's sources, the operator's and its own.
pub async fn list(
    app: &App,
    caller: &Caller,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let tenant = acting_tenant(app, caller, request)?;
    let mut views = Vec::new();
    for source in app.sources.of(&tenant) {
        views.push(view(app, &source).await?);
    }
    Ok(json_response(StatusCode::OK, &json!({ "sources": views })))
}

/// `GET /v1/sources/{name}`: one source, its secrets shown as `"set"`,
/// and for a poll source how far its sweep has come.
pub async fn show(
    app: &App,
    caller: &Caller,
    name: &str,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let tenant = acting_tenant(app, caller, request)?;
    let source = app.sources.get(&tenant, name).ok_or_else(|| no_source(name))?;
    Ok(json_response(StatusCode::OK, &view(app, &source).await?))
}

/// `PUT /v1/sources/{name}`: creates or replaces one of the tenant's
/// sources, durably, in effect at once on every sidecar. The body takes
/// the fields of a `[[source]]` table as JSON, with its secrets inline
/// (`secret`, `auth.bearer`, …); a replacement that sends no secret keeps
/// the stored one. The operator's sources are read-only.
pub async fn put(
    app: &App,
    caller: &Caller,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let tenant = acting_tenant(app, caller, &request)?;
    check_name(name)?;
    let current = app.sources.get(&tenant, name);
    if current.as_ref().is_some_and(|source| source.inline.is_none()) {
        return Err(crate::api::owned::read_only("source", name));
    }
    let body = read_body(request, MAX_SOURCE_BYTES, app.settings.body_timeout).await?;
    let mut entry: Value = serde_json::from_slice(&body).map_err(|err| {
        ApiError::bad_request("invalid-json", format!("the body is not JSON: {err}"), Some("$"))
    })?;
    let Some(object) = entry.as_object_mut() else {
        return Err(ApiError::bad_request(
            "invalid-source",
            "the body must be a JSON object",
            Some("$"),
        ));
    };
    if object
        .get("tenant")
        .is_some_and(|t| t.as_str() != Some(tenant.as_str()))
    {
        return Err(ApiError::bad_request(
            "invalid-source",
            format!("`tenant` must be `{tenant}`, the caller's"),
            Some("$['tenant']"),
        ));
    }
    object.insert("name".into(), name.into());
    object.insert("tenant".into(), tenant.clone().into());
    for key in [
        "secret-env",
        "secret-file",
        "previous-secret-env",
        "previous-secret-file",
    ] {
        if object.contains_key(key) {
            return Err(ApiError::bad_request(
                "invalid-source",
                format!(
                    "`{key}` reads the server's environment or files; send the secret itself as `secret`"
                ),
                Some(&format!("$['{key}']")),
            ));
        }
    }
    infer_auth_kind(object);
    let mut secrets = InlineSecrets::split(&mut entry, INLINE_SECRETS)
        .map_err(|err| ApiError::bad_request("invalid-source", err, None))?;
    let config: SourceConfig = serde_path_to_error::deserialize(&entry).map_err(|err| {
        let path = format!("$.{}", err.path());
        ApiError::bad_request("invalid-source", err.into_inner().to_string(), Some(&path))
    })?;
    if let Some(current) = &current
        && let Some(kept) = &current.inline
    {
        // Kept only while they would go where they went: a replacement that
        // points the source elsewhere must send them again, or anyone with
        // the tenant's token could send them to a host of their choosing.
        let same_place = secrets_go_to(&current.config) == secrets_go_to(&config);
        for (key, secret) in &kept.0 {
            if same_place {
                secrets.0.entry(key.clone()).or_insert_with(|| secret.clone());
            }
        }
    }
    if current.is_none() {
        let held = app
            .sources
            .of(&tenant)
            .iter()
            .filter(|s| s.inline.is_some())
            .count();
        let limit = app.tenant(&tenant).map(|t| t.config.max_sources).unwrap_or(0);
        if held >= limit {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "too-many-sources",
                format!("tenant `{tenant}` holds {held} sources, its limit"),
            ));
        }
    }
    let source = Source::load(
        &config,
        Some(secrets.clone()),
        std::path::Path::new("."),
        &app.network_policy,
    )
    .map_err(|err| ApiError::bad_request("invalid-source", format!("source `{name}`: {err}"), None))?;
    let stored = serde_json::to_string(&StoredSource { config, secrets }).map_err(ApiError::internal)?;
    let (registry, owner, key) = (app.registry.clone(), tenant.clone(), name.to_string());
    blocking(move || registry.put_setting(SETTING_KIND, &owner, &key, &stored)).await?;
    app.sources.insert(source);
    tracing::info!(tenant = %tenant, source = %name, "source stored");
    let source = app.sources.get(&tenant, name).ok_or_else(|| no_source(name))?;
    let status = if current.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_response(status, &view(app, &source).await?))
}

/// `DELETE /v1/sources/{name}`: deletes one of the tenant's sources and
/// its poll cursor. Events it made stay where they are.
pub async fn delete(
    app: &App,
    caller: &Caller,
    name: &str,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let tenant = acting_tenant(app, caller, request)?;
    let source = app.sources.get(&tenant, name).ok_or_else(|| no_source(name))?;
    if source.inline.is_none() {
        return Err(crate::api::owned::read_only("source", name));
    }
    // Out of the catalog first, so that this sidecar's poller stops before its cursor goes.
    app.sources.remove(&tenant, name);
    let (registry, owner, key) = (app.registry.clone(), tenant.clone(), name.to_string());
    blocking(move || {
        registry.delete_setting(SETTING_KIND, &owner, &key)?;
        registry.delete_setting("poll-cursor", &owner, &key)
    })
    .await?;
    app.metrics.forget_source(&format!("{tenant}/{name}"));
    tracing::info!(tenant = %tenant, source = %name, "source deleted");
    Ok(json_response(StatusCode::OK, &json!({ "deleted": name })))
}

/// What a tenant reads of a source: never a secret.
async fn view(app: &App, source: &Source) -> Result<Value, ApiError> {
    let mut shown = serde_json::to_value(&source.config).map_err(ApiError::internal)?;
    if let Some(secrets) = &source.inline {
        secrets.mask(&mut shown);
    }
    let config = &source.config;
    shown["origin"] = if source.inline.is_some() { "api" } else { "config" }.into();
    if source.poller().is_some() {
        let (registry, tenant, name) = (app.registry.clone(), config.tenant.clone(), config.name.clone());
        let cursor = blocking(move || registry.setting("poll-cursor", &tenant, &name)).await?;
        shown["cursor"] = cursor
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .unwrap_or(Value::Null);
    } else {
        shown["receives-at"] = format!("/v1/sources/{}/{}", config.tenant, config.name).into();
    }
    Ok(shown)
}

/// Where a source's secrets are sent or checked: its kind, URLs and the
/// header its token goes in.
fn secrets_go_to(config: &SourceConfig) -> Value {
    let auth = config.auth.as_ref();
    json!([
        config.kind,
        config.url,
        config.notification_url,
        auth.map(|a| &a.token_url),
        auth.map(|a| &a.header),
        auth.map(|a| a.kind()),
    ])
}

/// Through the API a secret alone says the scheme: `auth.bearer` is a bearer token.
fn infer_auth_kind(object: &mut serde_json::Map<String, Value>) {
    if let Some(auth) = object.get_mut("auth").and_then(Value::as_object_mut)
        && !auth.contains_key("kind")
        && auth.contains_key("bearer")
    {
        auth.insert("kind".into(), "bearer".into());
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let safe = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if safe {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid-name",
            "a source's name is 1 to 64 of a-z, A-Z, 0-9, `-` and `_`",
            None,
        ))
    }
}

fn no_source(name: &str) -> ApiError {
    ApiError::not_found("unknown-source", format!("there is no source `{name}`"))
}
