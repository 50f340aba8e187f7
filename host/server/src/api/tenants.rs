//! Tenants (admin only): create one, and issue it tokens.

use hyper::{Response, StatusCode};
use serde_json::json;

use crate::api::blocking;
use crate::api::http::{ApiError, Body, json_response};
use crate::state::App;
use crate::state::auth::{Caller, hash_token, new_token};

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
