//! Tenants' modules: upload (checked, and its fixtures run, before it is
//! stored), list, and activation on a channel with rollback.
//!
//! Versions are content-addressed: the SHA-256 of the component. The bytes
//! are kept as `data-dir/modules/<sha256>.wasm`; the registry records which
//! tenant holds which version under which name.

use std::path::Path;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::blocking;
use crate::api::http::{ApiError, Body, body_to_file, discard_body, json_response, query_param, read_body};
use crate::api::tenants::valid_name;
use crate::state::App;
use crate::state::auth::Caller;
use crate::store::{ModuleVersion, now_ms};
use sluice_engine::fixtures::{CaseResult, Subject, SuiteOptions, run_suite};
use sluice_engine::{LoadError, Module};

use crate::modules::compile::run_check;
use crate::modules::files::store_file;
use crate::modules::unpack::{UnpackCaps, UnpackError, unpack};

/// The tenant a caller acts for in module routes: its own, or for an admin `?tenant=`.
pub(crate) fn acting_tenant(
    app: &App,
    caller: &Caller,
    request: &Request<Incoming>,
) -> Result<String, ApiError> {
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
        LoadError::UnknownContract { .. } => "unknown-contract",
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
///
/// The permits come before the body is read: one upload of a tenant at a
/// time, and at most `upload-concurrency` of all tenants, so that parallel
/// uploads wait unread rather than each hold its body in memory. A tar is
/// streamed to a capped temporary file and unpacked from there.
pub async fn upload(
    app: &App,
    caller: &Caller,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let tenant_name = acting_tenant(app, caller, &request)?;
    let tenant = app.tenant(&tenant_name).expect("checked by acting_tenant");

    let (one_at_a_time, request) = wait_for_turn(app, &tenant, &tenant_name, request).await?;

    // Under the data folder, which is on disk (a `/tmp` may be memory).
    let unpacked = tempfile::tempdir_in(app.modules_dir.parent().unwrap_or(&app.modules_dir))
        .map_err(|err| ApiError::internal(format!("cannot keep the upload ({})", err.kind())))?;
    let fixtures = unpacked.path().join("fixtures");
    let bytes = receive(
        app,
        &tenant_name,
        tenant.config.max_module_bytes,
        request,
        unpacked.path(),
    )
    .await
    .map_err(|err| refused(app, &tenant_name, err))?;
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
    // Up to `max-module-bytes` to hash: on a blocking thread.
    let (version, bytes) = tokio::task::spawn_blocking(move || (hex::encode(Sha256::digest(&bytes)), bytes))
        .await
        .map_err(ApiError::internal)?;

    let registry = app.registry.clone();
    let key = tenant_name.clone();
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

    let (checked, _one_at_a_time) = run_budgeted_check(
        app,
        &tenant,
        &tenant_name,
        name,
        bytes.clone(),
        fixtures,
        one_at_a_time,
    )
    .await?;
    let (module, report) = checked.map_err(|err| refused(app, &tenant_name, err))?;
    if unchanged {
        return unchanged_upload(app, &tenant_name, name, &version, bytes, report).await;
    }
    store_upload(app, &tenant_name, name, version, bytes, module, report).await
}

/// Waits for the tenant's upload permit, after the cheap refusals: a
/// tenant over its compile budget, or with too many uploads waiting, hears
/// so before its body is kept (the body is drained so it hears it at all).
pub(crate) async fn wait_for_turn(
    app: &App,
    tenant: &crate::state::Tenant,
    tenant_name: &str,
    request: Request<Incoming>,
) -> Result<(tokio::sync::OwnedSemaphorePermit, Request<Incoming>), ApiError> {
    // A tenant over its compile budget hears so before its body is kept.
    let upload_limit = tenant.config.max_module_bytes + app.max_body_bytes;
    if let Err(wait) = tenant.compile_budget.admit(std::time::Instant::now()) {
        discard_body(request, upload_limit, app.settings.body_timeout).await;
        return Err(refused(app, tenant_name, over_budget(tenant, tenant_name, wait)));
    }
    // One upload of a tenant at a time, from the body to the record, so
    // that parallel uploads cannot pass the quotas together. A few may wait
    // for it; more are refused at once, so that one tenant's uploads cannot
    // hold every connection of the sidecar.
    let Some(waiting) = Waiting::enter(&tenant.uploads_waiting) else {
        discard_body(request, upload_limit, app.settings.body_timeout).await;
        let busy = ApiError::rate_limited(
            format!(
                "tenant `{tenant_name}` has {MAX_WAITING_UPLOADS} uploads waiting already; send one at a time"
            ),
            std::time::Duration::from_secs(1),
        );
        return Err(refused(
            app,
            tenant_name,
            ApiError {
                code: "too-many-uploads",
                ..busy
            },
        ));
    };
    let one_at_a_time = tenant
        .uploads
        .clone()
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    drop(waiting);

    Ok((one_at_a_time, request))
}

/// Most uploads of one tenant waiting for its permit.
const MAX_WAITING_UPLOADS: usize = 4;

/// One upload counted as waiting, for as long as it lives.
struct Waiting(Arc<std::sync::atomic::AtomicUsize>);

impl Waiting {
    fn enter(count: &Arc<std::sync::atomic::AtomicUsize>) -> Option<Self> {
        use std::sync::atomic::Ordering;
        if count.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING_UPLOADS {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(count.clone()))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The 429 of a tenant over its `compile-seconds-per-hour`.
pub(crate) fn over_budget(
    tenant: &crate::state::Tenant,
    tenant_name: &str,
    wait: std::time::Duration,
) -> ApiError {
    ApiError {
        code: "compile-budget-exhausted",
        ..ApiError::rate_limited(
            format!(
                "tenant `{tenant_name}` has used its {} CPU seconds of upload checks this hour (compile-seconds-per-hour); retry after {} s",
                tenant.config.compile_seconds_per_hour,
                wait.as_secs()
            ),
            wait,
        )
    }
}

/// Runs the check of an upload within the tenant's compile budget, on a
/// low-priority thread of its own. That thread takes one of the sidecar's
/// `upload-concurrency` permits, holds it and the tenant's `one_at_a_time`
/// for as long as it runs, and charges the budget itself, so a client that
/// leaves frees nothing early and is charged all the same. The tenant's
/// permit comes back for storing.
async fn run_budgeted_check(
    app: &App,
    tenant: &crate::state::Tenant,
    tenant_name: &str,
    name: &str,
    bytes: Vec<u8>,
    fixtures: std::path::PathBuf,
    one_at_a_time: tokio::sync::OwnedSemaphorePermit,
) -> Result<
    (
        Result<(Module, Value), ApiError>,
        tokio::sync::OwnedSemaphorePermit,
    ),
    ApiError,
> {
    if let Err(wait) = tenant.compile_budget.admit(std::time::Instant::now()) {
        return Err(refused(app, tenant_name, over_budget(tenant, tenant_name, wait)));
    }
    let permit = app
        .upload_permits
        .clone()
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    let (engine, limits, module_name) = (app.engine.clone(), tenant.limits.clone(), name.to_string());
    let budget = tenant.compile_budget.clone();
    let ((checked, one_at_a_time), _cpu) = run_check(move || {
        let started = crate::modules::compile::thread_cpu_time();
        let checked = check(&engine, &module_name, &bytes, limits, &fixtures);
        budget.charge(
            crate::modules::compile::thread_cpu_time().saturating_sub(started),
            std::time::Instant::now(),
        );
        drop(permit);
        (checked, one_at_a_time)
    })
    .await
    .map_err(ApiError::internal)?;
    Ok((checked, one_at_a_time))
}

/// Stores a checked upload: its file, its shared copy, its compiled
/// artifact, and its record; answers 201.
async fn store_upload(
    app: &App,
    tenant_name: &str,
    name: &str,
    version: String,
    bytes: Vec<u8>,
    module: Module,
    report: Value,
) -> Result<Response<Body>, ApiError> {
    let stored = {
        let (dir, version, bytes) = (app.modules_dir.clone(), version.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || store_file(&dir, crate::modules::files::MODULE, &version, &bytes))
            .await
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
        tenant: tenant_name.to_string(),
        name: name.to_string(),
        version: version.clone(),
        size: bytes.len() as u64,
        created_ms: now_ms(),
    };
    let registry = app.registry.clone();
    blocking(move || registry.add_module(&record)).await?;
    app.metrics.upload(tenant_name, "stored");
    tracing::info!(tenant = %tenant_name, module = %name, version = %version, size = bytes.len(), "module stored");
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"name": name, "version": version, "size": bytes.len(), "created": true, "fixtures": report}),
    ))
}

/// Reads the upload: a component into memory, at most `max_module`
/// bytes; a tar streamed to a file beside `root` (at most `max_module` plus
/// `max-body-bytes`) and unpacked under it on a blocking thread. The module's bytes.
async fn receive(
    app: &App,
    tenant: &str,
    max_module: usize,
    request: Request<Incoming>,
    root: &Path,
) -> Result<Vec<u8>, ApiError> {
    let is_tar = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-tar"));
    let too_large = |mut err: ApiError| {
        if err.status == StatusCode::PAYLOAD_TOO_LARGE {
            err.code = "module-too-large";
            err.message =
                format!("the upload is larger than tenant `{tenant}`'s {max_module}-byte module limit");
        }
        err
    };
    let timeout = app.settings.body_timeout;
    let bytes = if is_tar {
        let path = root.join("upload.tar");
        let mut file = tokio::fs::File::create(&path).await.map_err(ApiError::internal)?;
        // A tar may add fixtures up to the request body limit.
        body_to_file(request, max_module + app.max_body_bytes, timeout, &mut file)
            .await
            .map_err(too_large)?;
        drop(file);
        let caps = UnpackCaps {
            module_bytes: max_module,
            fixture_bytes: app.max_body_bytes,
        };
        let root = root.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let tar = std::fs::File::open(&path)
                .map_err(|err| UnpackError::Invalid(format!("the upload cannot be read: {}", err.kind())))?;
            let unpacked = unpack(std::io::BufReader::new(tar), &root, caps);
            let _ = std::fs::remove_file(&path);
            unpacked
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(unpack_error)?
    } else {
        read_body(request, max_module, timeout)
            .await
            .map_err(too_large)?
            .to_vec()
    };
    if bytes.len() > max_module {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "module-too-large",
            format!(
                "the module is {} bytes; tenant `{tenant}` may upload {max_module}",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
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
    tokio::task::spawn_blocking(move || store_file(&dir, crate::modules::files::MODULE, &stored, &bytes))
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

/// Most differences one upload's fixture report shows, over all its cases.
const MAX_REPORTED_DIFFERENCES: usize = 200;

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
    let quota = StorageQuota {
        versions: (
            "module versions",
            config.max_module_versions,
            "max-module-versions",
            "too-many-module-versions",
        ),
        bytes: (
            "modules",
            config.max_module_storage_bytes,
            "max-module-storage-bytes",
            "module-storage-full",
        ),
    };
    let held_bytes = held.iter().map(|m| m.size).sum::<u64>();
    quota.check(tenant, held.len(), held_bytes, size)
}

/// What a tenant's uploads of one kind may hold: versions and bytes, each
/// as (what they are, the limit, its config key, the error code).
pub(crate) struct StorageQuota {
    pub versions: (&'static str, usize, &'static str, &'static str),
    pub bytes: (&'static str, u64, &'static str, &'static str),
}

impl StorageQuota {
    /// Refuses (409) one more upload of `size` bytes past either limit.
    pub(crate) fn check(
        &self,
        tenant: &str,
        held: usize,
        held_bytes: u64,
        size: usize,
    ) -> Result<(), ApiError> {
        let over = |code, message: String| Err(ApiError::new(StatusCode::CONFLICT, code, message));
        let (what, max, key, code) = self.versions;
        if held >= max {
            return over(
                code,
                format!("tenant `{tenant}` holds {held} {what}, its limit ({key})"),
            );
        }
        let (what, max, key, code) = self.bytes;
        let bytes = held_bytes + size as u64;
        if bytes > max {
            return over(
                code,
                format!(
                    "tenant `{tenant}` would hold {bytes} bytes of {what}, over its {max}-byte limit ({key})"
                ),
            );
        }
        Ok(())
    }
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
    // At most this many differences are shown across every case of the
    // report (each case counts all of its own in `differences-total`).
    let mut shown_left = MAX_REPORTED_DIFFERENCES;
    let cases: Vec<Value> = suite
        .cases
        .iter()
        .map(|case| {
            let mut json = CaseResult::to_json(case);
            if let Some(differences) = json.get_mut("differences").and_then(Value::as_array_mut) {
                differences.truncate(shown_left);
                shown_left -= differences.len();
            }
            json
        })
        .collect();
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

/// An archive refusal as the API answers it.
fn unpack_error(err: UnpackError) -> ApiError {
    match err {
        UnpackError::Invalid(message) => ApiError::bad_request("invalid-archive", message, None),
        UnpackError::TooLarge { code, .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, code, err.to_string())
        }
        UnpackError::Io(err) => ApiError::internal(err),
    }
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
