//! Tenants' lookup tables (contract 0.2): upload and list. A step uses one
//! by naming its version (`"lookups": {"asin": "sku-to-asin@3f2a9c1d"}`),
//! which pins it with the pipeline as a module version is pinned.
//!
//! An upload is read whole (at most 64 MiB), parsed as its content type
//! says on a low-priority thread charged to the tenant's compile budget,
//! and stored only if it is a table: a repeated key, a ragged CSV row or a
//! table too large in memory is refused with what is wrong and where.

use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};
use sluice_engine::lookup::{MAX_TABLE_BYTES, TableFormat, parse_table};

use crate::api::blocking;
use crate::api::http::{ApiError, Body, json_response, read_body};
use crate::api::modules::{acting_tenant, wait_for_turn};
use crate::api::tenants::valid_name;
use crate::modules::files::{LOOKUP, store_file};
use crate::modules::lookups::{KIND, LookupVersion, held};
use crate::state::App;
use crate::state::auth::Caller;
use crate::store::now_ms;

/// `PUT /v1/lookups/{name}`: the body is the table, `application/json`
/// (one object, key to value) or `text/csv` (a header row; the first
/// column is the key). The same bytes again are a no-op.
pub async fn upload(
    app: &App,
    caller: &Caller,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let tenant_name = acting_tenant(app, caller, &request)?;
    let tenant = app.tenant(&tenant_name).expect("checked by acting_tenant");
    let format = format_of(&request);
    let (one_at_a_time, request) = wait_for_turn(app, &tenant, &tenant_name, request).await?;
    let body = read_body(request, MAX_TABLE_BYTES as usize, app.settings.body_timeout).await?;
    // Checked after the (bounded) read, so the client hears the answer rather than a reset.
    if !valid_name(name) {
        return Err(ApiError::bad_request(
            "invalid-name",
            format!("`{name}` is not a lookup table name: use a-z, 0-9, `-` and `_`, at most 64 characters"),
            None,
        ));
    }
    let format = format?;
    // One copy of the body from here on: `Bytes` clones share it.
    let bytes = body;
    let (version, bytes) = tokio::task::spawn_blocking(move || (hex::encode(Sha256::digest(&bytes)), bytes))
        .await
        .map_err(ApiError::internal)?;

    let (registry, key) = (app.registry.clone(), tenant_name.clone());
    let tables = blocking(move || held(registry.as_ref(), &key, None)).await?;
    if let Some(same) = tables.iter().find(|t| t.name == name && t.version == version) {
        if same.format != format {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "format-conflict",
                format!(
                    "lookup table `{name}` holds these bytes as {:?} already; upload them with that content type",
                    same.format
                ),
            ));
        }
        keep_file(app.lookups_dir.clone(), &version, bytes).await?;
        return Ok(json_response(
            StatusCode::OK,
            &json!({"created": false, "table": same}),
        ));
    }
    check_quotas(&tenant.config, &tenant_name, bytes.len(), &tables)?;

    if let Err(wait) = tenant.compile_budget.admit(std::time::Instant::now()) {
        return Err(crate::api::modules::over_budget(&tenant, &tenant_name, wait));
    }
    let budget = tenant.compile_budget.clone();
    let permit = app
        .upload_permits
        .clone()
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    let ((parsed, bytes), _cpu) = crate::modules::compile::run_check(move || {
        let started = crate::modules::compile::thread_cpu_time();
        let parsed = parse_table(&bytes, format).map(|table| table.len());
        budget.charge(
            crate::modules::compile::thread_cpu_time().saturating_sub(started),
            std::time::Instant::now(),
        );
        drop(permit);
        (parsed, bytes)
    })
    .await
    .map_err(ApiError::internal)?;
    let entries = parsed.map_err(|detail| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-table",
            format!("lookup table `{name}` is not a table: {detail}"),
        )
    })?;

    let record = LookupVersion {
        name: name.to_string(),
        version: version.clone(),
        format,
        size: bytes.len() as u64,
        entries: entries as u64,
        created_ms: now_ms(),
    };
    // The record first, so that what is stored is always counted in the
    // quotas; then the file and the shared copy, in a task of their own so
    // that a client that leaves cannot stop it half way. A record whose file
    // is missing (a crash in between) names its version in the error, and
    // uploading the same bytes again writes it.
    let spec = serde_json::to_string(&record).map_err(ApiError::internal)?;
    let (registry, tenant, entry) = (app.registry.clone(), tenant_name.clone(), record.entry_name());
    let (dir, shared) = (app.lookups_dir.clone(), app.registry.clone());
    let stored = tokio::spawn(async move {
        blocking(move || registry.put_setting(KIND, &tenant, &entry, &spec)).await?;
        keep_file(dir, &version, bytes.clone()).await?;
        blocking(move || shared.share_module(&version, &bytes)).await
    });
    stored.await.map_err(ApiError::internal)??;
    drop(one_at_a_time);
    tracing::info!(tenant = %tenant_name, lookup = %name, version = %record.version, entries, size = record.size, "lookup table stored");
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"created": true, "table": record}),
    ))
}

/// The table format the request's `Content-Type` names.
fn format_of(request: &Request<Incoming>) -> Result<TableFormat, ApiError> {
    let media = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match media.as_deref() {
        Some("application/json") => Ok(TableFormat::Json),
        Some("text/csv") => Ok(TableFormat::Csv),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!(
                "a lookup table is `application/json` or `text/csv`, not `{}`",
                other.unwrap_or("(none)")
            ),
        )),
    }
}

/// Writes (or repairs) the table's file in `dir`.
async fn keep_file(dir: std::path::PathBuf, version: &str, bytes: bytes::Bytes) -> Result<(), ApiError> {
    let version = version.to_string();
    tokio::task::spawn_blocking(move || store_file(&dir, LOOKUP, &version, &bytes))
        .await
        .map_err(ApiError::internal)?
        .map_err(|err| {
            tracing::error!(error = %err, "cannot store an uploaded lookup table");
            ApiError::internal(format!("cannot store the lookup table ({})", err.kind()))
        })
}

/// Refuses an upload that would take the tenant past its lookup quotas.
fn check_quotas(
    config: &crate::config::TenantConfig,
    tenant: &str,
    size: usize,
    held: &[LookupVersion],
) -> Result<(), ApiError> {
    let quota = crate::api::modules::StorageQuota {
        versions: (
            "lookup table versions",
            config.max_lookup_versions,
            "max-lookup-versions",
            "too-many-lookup-versions",
        ),
        bytes: (
            "lookup tables",
            config.max_lookup_storage_bytes,
            "max-lookup-storage-bytes",
            "lookup-storage-full",
        ),
    };
    quota.check(tenant, held.len(), held.iter().map(|t| t.size).sum(), size)
}

/// `GET /v1/lookups[/{name}]`: the caller's lookup table versions, oldest
/// first (an admin names the tenant with `?tenant=`, as for uploads).
pub async fn list(
    app: &App,
    caller: &Caller,
    name: Option<&str>,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let tenant = acting_tenant(app, caller, request)?;
    let (registry, wanted) = (app.registry.clone(), name.map(str::to_string));
    let tables = blocking(move || held(registry.as_ref(), &tenant, wanted.as_deref())).await?;
    if let Some(name) = name
        && tables.is_empty()
    {
        return Err(ApiError::not_found(
            "unknown-lookup",
            format!("there is no lookup table `{name}`"),
        ));
    }
    Ok(json_response(StatusCode::OK, &json!(tables)))
}
