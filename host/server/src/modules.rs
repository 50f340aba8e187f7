//! Tenants' modules: upload (checked, and its fixtures run, before it is
//! stored), list, and activation on a channel with rollback.
//!
//! Versions are content-addressed: the SHA-256 of the component. The bytes
//! are kept as `data-dir/modules/<sha256>.wasm`; the registry records which
//! tenant holds which version under which name.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::admin::{describe, valid_name};
use super::auth::Caller;
use super::http::{ApiError, Body, json_response, query_param, read_body};
use super::{ActivationError, App, Channel, blocking};
use crate::store::{ModuleVersion, now_ms};
use sluice_engine::fixtures::{CaseResult, Subject, SuiteOptions, run_suite};
use sluice_engine::pipeline::{Pipeline, PipelineSpec};
use sluice_engine::{LoadError, Module};

/// The tenant a caller acts for in module routes: its own, or for an admin `?tenant=`.
fn acting_tenant(app: &App, caller: &Caller, request: &Request<Incoming>) -> Result<String, ApiError> {
    let tenant = match caller {
        Caller::Tenant(own) => own.clone(),
        _ => query_param(request, "tenant").ok_or_else(|| {
            ApiError::bad_request(
                "missing-tenant",
                "an admin names the tenant with `?tenant=`",
                None,
            )
        })?,
    };
    if app.tenant(&tenant).is_none() {
        return Err(ApiError::not_found(
            "unknown-tenant",
            format!("there is no tenant `{tenant}`"),
        ));
    }
    Ok(tenant)
}

fn refused(app: &App, tenant: &str, error: ApiError) -> ApiError {
    app.metrics.upload(tenant, "refused");
    tracing::warn!(tenant = %tenant, code = error.code, reason = %error.message, "module upload refused");
    error
}

fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

/// A component load error as an API error with a precise code.
fn load_error(err: LoadError) -> ApiError {
    let code = match &err {
        LoadError::NotWasm { .. } => "not-wasm",
        LoadError::CoreModule { .. } => "not-a-component",
        LoadError::WrongWorld { .. } => "wrong-world",
        LoadError::UnsupportedImport { .. } => "unsupported-import",
        LoadError::Compile { .. } => "does-not-compile",
        LoadError::Read { .. } => return ApiError::internal(err),
    };
    unprocessable(code, err.to_string())
}

/// `PUT /v1/modules/{name}`: the body is the component (`application/wasm`),
/// or a tar (`application/x-tar`) holding `module.wasm` and golden fixtures
/// under `fixtures/<case>/`. Stored only if every check passes and every
/// fixture case passes; the same bytes again are a no-op.
pub async fn upload(
    app: &App,
    caller: &Caller,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let tenant_name = acting_tenant(app, caller, &request)?;
    let tenant = app.tenant(&tenant_name).expect("checked by acting_tenant");
    let is_tar = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-tar"));
    let max_module = tenant.config.max_module_bytes;
    // A tar may add fixtures up to the request body limit.
    let limit = if is_tar {
        max_module + app.max_body_bytes
    } else {
        max_module
    };
    let body = read_body(request, limit, app.settings.body_timeout)
        .await
        .map_err(|mut err| {
            if err.status == StatusCode::PAYLOAD_TOO_LARGE {
                err.code = "module-too-large";
                err.message = format!(
                    "the upload is larger than tenant `{tenant_name}`'s {max_module}-byte module limit"
                );
            }
            refused(app, &tenant_name, err)
        })?;
    // Checked after the (bounded) read, so the client hears the answer rather than a reset.
    if !valid_name(name) {
        return Err(refused(
            app,
            &tenant_name,
            ApiError::bad_request(
                "invalid-name",
                format!("`{name}` is not a module name: use a-z, 0-9, `-` and `_`, at most 64 characters"),
                None,
            ),
        ));
    }
    let unpacked = tempfile::tempdir().map_err(ApiError::internal)?;
    let fixtures = unpacked.path().join("fixtures");
    let bytes = if is_tar {
        let caps = UnpackCaps {
            module_bytes: max_module,
            fixture_bytes: app.max_body_bytes,
        };
        let (root, body) = (unpacked.path().to_path_buf(), body.clone());
        tokio::task::spawn_blocking(move || unpack(&body, &root, caps))
            .await
            .map_err(ApiError::internal)?
            .map_err(|err| refused(app, &tenant_name, err))?
    } else {
        body.to_vec()
    };
    if bytes.len() > max_module {
        return Err(refused(
            app,
            &tenant_name,
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "module-too-large",
                format!(
                    "the module is {} bytes; tenant `{tenant_name}` may upload {max_module}",
                    bytes.len()
                ),
            ),
        ));
    }
    let version = hex::encode(Sha256::digest(&bytes));

    // One upload of a tenant at a time, from the quota check to the record,
    // so that parallel uploads cannot pass the quotas together.
    let _one_at_a_time = tenant
        .uploads
        .clone()
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    let registry = app.registry.clone();
    let (key, module_name) = (tenant_name.clone(), name.to_string());
    let held = blocking(move || registry.modules(&key, None)).await?;
    // The same bytes again: nothing to store, but fixtures sent with them
    // are still run (an upload is also a check), and a stored file that was
    // damaged (a power loss) is repaired by them.
    let unchanged = held.iter().any(|m| m.name == name && m.version == version);
    let has_fixtures = std::fs::read_dir(&fixtures).is_ok_and(|mut d| d.next().is_some());
    if unchanged && !has_fixtures {
        return unchanged_upload(app, &tenant_name, name, &version, bytes, json!([])).await;
    }
    if !unchanged {
        check_quotas(&tenant.config, &tenant_name, name, bytes.len(), &held)
            .map_err(|err| refused(app, &tenant_name, err))?;
    }

    // At most `upload-concurrency` checks at once: each compiles and runs
    // fixtures. The permit moves into the check itself, so it is held for
    // as long as the check runs, even if the client leaves.
    let permit = app
        .upload_permits
        .clone()
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    let engine = app.engine.clone();
    let limits = tenant.limits.clone();
    let checked = {
        let bytes = bytes.clone();
        let fixtures = fixtures.clone();
        tokio::task::spawn_blocking(move || {
            let checked = check(&engine, &module_name, &bytes, limits, &fixtures);
            drop(permit);
            checked
        })
        .await
        .map_err(ApiError::internal)?
    };
    let (module, report) = checked.map_err(|err| refused(app, &tenant_name, err))?;
    if unchanged {
        return unchanged_upload(app, &tenant_name, name, &version, bytes, report).await;
    }

    let stored = {
        let (dir, version, bytes) = (app.modules_dir.clone(), version.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || store_file(&dir, &version, &bytes)).await
    };
    stored.map_err(ApiError::internal)?.map_err(store_failed)?;
    {
        let (registry, version, bytes) = (app.registry.clone(), version.clone(), bytes.clone());
        blocking(move || registry.share_module(&version, &bytes)).await?;
    }
    // Only an accepted module leaves a compiled artifact behind.
    tokio::task::spawn_blocking(move || module.save_artifact())
        .await
        .map_err(ApiError::internal)?;
    let record = ModuleVersion {
        tenant: tenant_name.clone(),
        name: name.to_string(),
        version: version.clone(),
        size: bytes.len() as u64,
        created_ms: now_ms(),
    };
    let registry = app.registry.clone();
    blocking(move || registry.add_module(&record)).await?;
    app.metrics.upload(&tenant_name, "stored");
    tracing::info!(tenant = %tenant_name, module = %name, version = %version, size = bytes.len(), "module stored");
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"name": name, "version": version, "size": bytes.len(), "created": true, "fixtures": report}),
    ))
}

/// Answers an upload of a version the tenant holds already: 200, nothing
/// stored but the file repaired if it was damaged.
async fn unchanged_upload(
    app: &App,
    tenant: &str,
    name: &str,
    version: &str,
    bytes: Vec<u8>,
    fixtures: Value,
) -> Result<Response<Body>, ApiError> {
    let size = bytes.len();
    let (dir, stored) = (app.modules_dir.clone(), version.to_string());
    tokio::task::spawn_blocking(move || store_file(&dir, &stored, &bytes))
        .await
        .map_err(ApiError::internal)?
        .map_err(store_failed)?;
    app.metrics.upload(tenant, "unchanged");
    Ok(json_response(
        StatusCode::OK,
        &json!({"name": name, "version": version, "size": size, "created": false, "fixtures": fixtures}),
    ))
}

/// A module file that cannot be written: logged in full, answered without
/// server paths.
fn store_failed(err: std::io::Error) -> ApiError {
    tracing::error!(error = %err, "cannot store an uploaded module");
    ApiError::internal(format!("cannot store the module ({})", err.kind()))
}

/// Most input events the fixtures of one upload may hold: each may run up
/// to its deadline, so this bounds how long one upload's check can take.
const MAX_UPLOAD_FIXTURE_EVENTS: usize = 1000;

/// Refuses fixtures with more than [`MAX_UPLOAD_FIXTURE_EVENTS`] input events.
fn check_fixture_size(fixtures: &Path) -> Result<(), ApiError> {
    let mut events = 0;
    for case in std::fs::read_dir(fixtures).into_iter().flatten().flatten() {
        for input in ["input.json", "input.jsonl"] {
            if let Ok(text) = std::fs::read_to_string(case.path().join(input)) {
                events += sluice_engine::event::parse_events(&text).map_or(1, |e| e.len());
            }
        }
    }
    if events > MAX_UPLOAD_FIXTURE_EVENTS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "fixtures-too-large",
            format!(
                "the fixtures hold {events} input events; an upload may carry at most {MAX_UPLOAD_FIXTURE_EVENTS}"
            ),
        ));
    }
    Ok(())
}

/// Refuses an upload that would take the tenant past its module quotas:
/// names, versions (all names together) and bytes.
fn check_quotas(
    config: &crate::config::TenantConfig,
    tenant: &str,
    name: &str,
    size: usize,
    held: &[ModuleVersion],
) -> Result<(), ApiError> {
    let over = |code, message: String| Err(ApiError::new(StatusCode::CONFLICT, code, message));
    let names: std::collections::BTreeSet<&str> = held.iter().map(|m| m.name.as_str()).collect();
    if !names.contains(name) && names.len() >= config.max_modules {
        return over(
            "too-many-modules",
            format!("tenant `{tenant}` holds {} modules, its limit", names.len()),
        );
    }
    if held.len() >= config.max_module_versions {
        return over(
            "too-many-module-versions",
            format!(
                "tenant `{tenant}` holds {} module versions, its limit (max-module-versions)",
                held.len()
            ),
        );
    }
    let bytes: u64 = held.iter().map(|m| m.size).sum::<u64>() + size as u64;
    if bytes > config.max_module_storage_bytes {
        return over(
            "module-storage-full",
            format!(
                "tenant `{tenant}` would hold {bytes} bytes of modules, over its {}-byte limit (max-module-storage-bytes)",
                config.max_module_storage_bytes
            ),
        );
    }
    Ok(())
}

/// Loads the component with every check (compiling it, but caching nothing
/// yet), instantiates it once, and runs the fixtures in `fixtures` (if any)
/// on fresh instances; any failure refuses it.
fn check(
    engine: &sluice_engine::Engine,
    name: &str,
    bytes: &[u8],
    limits: sluice_engine::Limits,
    fixtures: &Path,
) -> Result<(Module, Value), ApiError> {
    let limits = sluice_engine::Limits {
        calls_per_instance: 1,
        ..limits
    };
    let module: Module = engine.load_unsaved(name, bytes, limits).map_err(load_error)?;
    module.check_instantiate().map_err(|fault| {
        let mut error = unprocessable(
            "cannot-instantiate",
            format!("module `{name}` cannot start within its limits: {fault}"),
        );
        error.detail = Some(json!({ "fault": fault }));
        error
    })?;
    let has_cases = std::fs::read_dir(fixtures)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if !has_cases {
        return Ok((module, json!([])));
    }
    check_fixture_size(fixtures)?;
    let module = Arc::new(module);
    let suite = run_suite(
        name,
        &Subject::Module(module.clone()),
        fixtures,
        &SuiteOptions::default(),
    )
    .map_err(|err| {
        let message = match err {
            sluice_engine::fixtures::FixtureError::Empty(_) => {
                "`fixtures/` holds no case folders: add `fixtures/<case>/input.json` and `expected.json`"
                    .into()
            }
            sluice_engine::fixtures::FixtureError::Read { error, .. } => {
                format!("`fixtures/` cannot be read ({})", error.kind())
            }
        };
        ApiError::bad_request("invalid-fixtures", message, None)
    })?;
    let cases: Vec<Value> = suite.cases.iter().map(CaseResult::to_json).collect();
    let failed = suite.failed();
    if failed > 0 {
        let mut error = unprocessable(
            "fixtures-failed",
            format!(
                "module `{name}` fails {failed} of its {} fixture cases; nothing was stored or changed (see `cases`)",
                suite.cases.len()
            ),
        );
        error.detail = Some(json!({ "cases": cases }));
        return Err(error);
    }
    let module = Arc::into_inner(module).expect("the suite is done with the module");
    Ok((module, Value::Array(cases)))
}

/// Caps on what a module tar may unpack.
#[derive(Debug, Clone, Copy)]
struct UnpackCaps {
    /// Largest `module.wasm`.
    module_bytes: usize,
    /// All fixture files together.
    fixture_bytes: usize,
}

/// Extracts `module.wasm` (returned) and `fixtures/…` (written under
/// `root`) from a tar. Only regular files and folders are accepted (no
/// links, devices or sparse files), paths must stay inside the archive, and
/// every entry is read with a cap, checked against its declared size first.
fn unpack(tar_bytes: &[u8], root: &Path, caps: UnpackCaps) -> Result<Vec<u8>, ApiError> {
    use std::path::Component;
    use tar::EntryType;

    let invalid = |message: String| ApiError::bad_request("invalid-archive", message, None);
    let mut archive = tar::Archive::new(tar_bytes);
    let mut module = None;
    let mut fixture_bytes = 0usize;
    for entry in archive
        .entries()
        .map_err(|e| invalid(format!("not a tar archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| invalid(format!("a tar entry cannot be read: {e}")))?;
        let path = entry.path().map_err(|e| invalid(e.to_string()))?.into_owned();
        let text = path.to_string_lossy().trim_start_matches("./").to_string();
        let kind = entry.header().entry_type();
        if !matches!(kind, EntryType::Regular | EntryType::Directory) {
            return Err(invalid(format!(
                "`{text}` is a {kind:?} entry: the archive may hold only regular files and folders"
            )));
        }
        let mut parts = Vec::new();
        for component in path.components() {
            match component {
                Component::Normal(part) => parts.push(part.to_os_string()),
                Component::CurDir => {}
                _ => {
                    return Err(invalid(format!(
                        "`{text}` would land outside the archive's folder"
                    )));
                }
            }
        }
        let declared = entry.header().size().unwrap_or(u64::MAX);
        let is_module = parts.len() == 1 && parts[0] == "module.wasm";
        let in_fixtures = parts.len() > 1 && parts[0] == "fixtures";
        if kind == EntryType::Directory {
            if parts.is_empty() || parts == ["fixtures"] || in_fixtures {
                continue;
            }
        } else if is_module {
            module = Some(read_capped(
                &mut entry,
                declared,
                caps.module_bytes,
                &text,
                "module-too-large",
            )?);
            continue;
        } else if in_fixtures {
            let room = caps.fixture_bytes.saturating_sub(fixture_bytes);
            let bytes = read_capped(&mut entry, declared, room, &text, "fixtures-too-large")?;
            fixture_bytes += bytes.len();
            let target = parts
                .iter()
                .fold(root.to_path_buf(), |path, part| path.join(part));
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(ApiError::internal)?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&target)
                .and_then(|mut file| std::io::Write::write_all(&mut file, &bytes))
                .map_err(|e| invalid(format!("`{text}` cannot be unpacked: {}", e.kind())))?;
            continue;
        }
        return Err(invalid(format!(
            "unexpected entry `{text}`: the archive holds `module.wasm` and `fixtures/<case>/…`"
        )));
    }
    module.ok_or_else(|| invalid("the archive has no `module.wasm`".into()))
}

/// Reads a tar entry that may hold at most `cap` bytes: refused on its
/// declared size before reading, and read through a limit in case the
/// header lies.
fn read_capped(
    entry: &mut impl Read,
    declared: u64,
    cap: usize,
    name: &str,
    code: &'static str,
) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code,
            format!("`{name}` is larger than the {cap} bytes it may hold"),
        )
    };
    if declared > cap as u64 {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(declared as usize);
    entry
        .take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ApiError::bad_request("invalid-archive", format!("`{name}`: {e}"), None))?;
    if bytes.len() > cap {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Writes `modules/<version>.wasm` durably: a temporary file, fsynced, then
/// renamed, then the folder fsynced. An existing file is kept only if its
/// bytes still hash to its name; a damaged one is replaced.
fn store_file(dir: &Path, version: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{version}.wasm"));
    if read_stored(dir, version).is_ok() {
        return Ok(());
    }
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut temp, bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(&path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Reads a stored module; one this node does not have yet (uploaded to
/// another sidecar sharing the registry) is fetched and stored first.
pub(crate) fn read_or_fetch(
    dir: &Path,
    registry: &dyn crate::store::Registry,
    version: &str,
) -> Result<Vec<u8>, String> {
    let local = read_stored(dir, version);
    if local.is_ok() {
        return local;
    }
    match registry.shared_module(version) {
        Ok(Some(bytes)) if hex::encode(Sha256::digest(&bytes)) == version => {
            store_file(dir, version, &bytes)
                .map_err(|err| format!("cannot store the shared module ({})", err.kind()))?;
            Ok(bytes)
        }
        Ok(_) => local,
        Err(err) => Err(format!("cannot fetch the shared module: {err}")),
    }
}

/// Reads a stored module and checks that its bytes hash to its version.
/// The error says what is wrong without naming server paths.
pub(crate) fn read_stored(dir: &Path, version: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(dir.join(format!("{version}.wasm")))
        .map_err(|err| format!("the stored file cannot be read ({})", err.kind()))?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != version {
        return Err(format!(
            "the stored file is damaged: its {} bytes hash to `{actual}`; upload the module again",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// `GET /v1/modules[/{name}]`: the caller's module versions, oldest first.
pub async fn list(app: &App, caller: &Caller, name: Option<&str>) -> Result<Response<Body>, ApiError> {
    let Some(tenant) = caller.tenant().map(str::to_string) else {
        return Err(ApiError::bad_request(
            "missing-tenant",
            "modules belong to tenants: call with a tenant's token",
            None,
        ));
    };
    let registry = app.registry.clone();
    let wanted = name.map(str::to_string);
    let modules = blocking(move || registry.modules(&tenant, wanted.as_deref())).await?;
    if let Some(name) = name
        && modules.is_empty()
    {
        return Err(ApiError::not_found(
            "unknown-module",
            format!("there is no module `{name}`"),
        ));
    }
    Ok(json_response(StatusCode::OK, &json!(modules)))
}

fn activation_error(err: ActivationError) -> ApiError {
    match err {
        ActivationError::UnknownModule { .. } => {
            ApiError::new(StatusCode::CONFLICT, "unknown-module", err.to_string())
        }
        ActivationError::Load { .. } => unprocessable("cannot-load", err.to_string()),
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
        let full = app
            .resolve_version(&channel.tenant, &step.module, step.version.as_deref(), index)
            .map_err(activation_error)?;
        step.version = Some(full);
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const CAPS: UnpackCaps = UnpackCaps {
        module_bytes: 4096,
        fixture_bytes: 8192,
    };

    fn entry_type() -> impl Strategy<Value = tar::EntryType> {
        prop_oneof![
            Just(tar::EntryType::Regular),
            Just(tar::EntryType::Directory),
            Just(tar::EntryType::Symlink),
            Just(tar::EntryType::Link),
            Just(tar::EntryType::GNUSparse),
            Just(tar::EntryType::Char),
            Just(tar::EntryType::Fifo),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("module.wasm".to_string()),
            "fixtures/[a-c]{1,2}/(input|expected|config)\\.json",
            "fixtures/(\\.\\.|/etc|[a-c])/[a-z.]{1,8}",
            "[a-z./]{1,16}",
        ]
    }

    proptest! {
        /// Arbitrary bytes as a tar: refused or unpacked, never a panic.
        #[test]
        fn prop_any_bytes_are_refused_or_unpacked(bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
            let root = tempfile::tempdir().unwrap();
            let _ = unpack(&bytes, root.path(), CAPS);
        }

        /// Archives of random entries: whatever is accepted unpacked only
        /// regular files, inside the folder, within the caps.
        #[test]
        fn prop_only_regular_files_within_caps_land_inside(
            entries in prop::collection::vec((path(), entry_type(), 0usize..6000), 1..8)
        ) {
            let mut archive = tar::Builder::new(Vec::new());
            for (path, kind, size) in &entries {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(*kind);
                header.set_size(*size as u64);
                header.set_mode(0o644);
                if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                    header.set_link_name("/etc/passwd").unwrap();
                }
                if header.set_path(path).is_err() {
                    continue;
                }
                header.set_cksum();
                archive.append(&header, std::io::repeat(b'x').take(*size as u64)).unwrap();
            }
            let bytes = archive.into_inner().unwrap();
            let root = tempfile::tempdir().unwrap();
            if let Ok(module) = unpack(&bytes, root.path(), CAPS) {
                prop_assert!(module.len() <= CAPS.module_bytes);
                let mut total = 0;
                let mut stack = vec![root.path().to_path_buf()];
                while let Some(dir) = stack.pop() {
                    for entry in std::fs::read_dir(dir).unwrap() {
                        let entry = entry.unwrap();
                        let kind = entry.file_type().unwrap();
                        prop_assert!(kind.is_file() || kind.is_dir(), "{:?}", entry.path());
                        if kind.is_dir() {
                            stack.push(entry.path());
                        } else {
                            total += entry.metadata().unwrap().len() as usize;
                        }
                    }
                }
                prop_assert!(total <= CAPS.fixture_bytes);
            }
        }
    }

    #[test]
    fn a_damaged_stored_module_is_named_without_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"\0asm module bytes";
        let version = hex::encode(Sha256::digest(bytes));
        store_file(dir.path(), &version, bytes).unwrap();
        assert_eq!(read_stored(dir.path(), &version).unwrap(), bytes);
        std::fs::write(dir.path().join(format!("{version}.wasm")), b"\0asm").unwrap();
        let err = read_stored(dir.path(), &version).unwrap_err();
        assert!(err.contains("damaged") && !err.contains('/'), "{err}");
        store_file(dir.path(), &version, bytes).unwrap();
        assert_eq!(
            read_stored(dir.path(), &version).unwrap(),
            bytes,
            "storing again repairs it"
        );
    }
}
