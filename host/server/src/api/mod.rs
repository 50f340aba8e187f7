//! The HTTP API, where every request comes in: `server` accepts
//! connections, [`routes`] names each path, and one module per resource
//! answers it.

pub(crate) mod channels;
mod dead_letters;
mod destinations;
pub(crate) mod events;
mod health;
pub(crate) mod http;
mod lookups;
pub(crate) mod modules;
mod owned;
pub mod routes;
mod server;
mod sources;
mod stories;
mod tenants;
mod timed_io;
pub(crate) mod transform;
pub(crate) mod trials;
mod ui;

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

pub(crate) use server::serve;

use crate::state::App;
use crate::state::auth::Caller;
use crate::store::StoreError;
use http::{ApiError, Body, text};

pub(crate) async fn handle(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    route(app, request).await.unwrap_or_else(ApiError::into_response)
}

/// Finds the endpoint, checks the caller, and answers. Longer than most
/// functions on purpose: one arm per endpoint of the route table, with no
/// catch-all, so that a new endpoint cannot compile unanswered; split up,
/// the table would no longer read as one list.
async fn route(app: &Arc<App>, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    use routes::Endpoint as E;

    let path = request.uri().path().to_string();
    let method = request.method().clone();
    // The operations page's assets need no token; its data calls do.
    if method == Method::GET
        && let Some(asset) = ui::asset(&path)
    {
        return Ok(asset);
    }
    let Some(found) = routes::find(&method, &path) else {
        return Err(ApiError::not_found("not-found", format!("no route for {path}")));
    };
    let name = found.name.to_string();
    let caller = app.tokens.caller(
        request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let scoped = path.starts_with("/v1/");
    let endpoint = match found.endpoint {
        Some(E::Healthz) => return Ok(text(StatusCode::OK, "ok\n")),
        Some(E::Readyz) => {
            let details = matches!(caller, Some(Caller::Admin | Caller::Metrics));
            return Ok(health::readiness(app, details).await);
        }
        Some(E::Metrics) => {
            return if !app.metrics_need_token || matches!(caller, Some(Caller::Admin | Caller::Metrics)) {
                Ok(text(StatusCode::OK, &app.metrics.render()))
            } else {
                Err(ApiError::unauthorized())
            };
        }
        // Signed by its platform: no Bearer token.
        Some(E::SourceDelivery) => return sources::deliver(app, &name, found.source, request).await,
        None if !scoped => return Err(method_not_allowed(&method, &path)),
        endpoint => endpoint,
    };
    let caller = match caller {
        Some(caller @ (Caller::Admin | Caller::Tenant(_))) => caller,
        _ => return Err(ApiError::unauthorized()),
    };
    let Some(endpoint) = endpoint else {
        return Err(method_not_allowed(&method, &path));
    };
    match endpoint {
        E::Healthz | E::Readyz | E::Metrics | E::SourceDelivery => {
            unreachable!("answered before the token check")
        }
        E::Transform => {
            let response = transform::transform(app, &caller, &name, request).await;
            // Only configured names become labels: a caller cannot grow the metrics.
            let channel = if app.channels.contains_key(&name) {
                name
            } else {
                "(unknown)".into()
            };
            let status = match &response {
                Ok(ok) => ok.status(),
                Err(err) => err.status,
            };
            app.metrics.sync_request(&channel, status.as_u16());
            response
        }
        E::Ingest => events::ingest(app, &caller, request).await,
        E::FindEvents => stories::find(app, &caller, &request).await,
        E::ShowEvent => stories::show(app, &caller, &name, &request).await,
        E::ListChannels => channels::list_channels(app, &caller).await,
        E::ShowChannel => channels::show_channel(app, &caller, &name).await,
        E::History => channels::channel_history(app, &caller, &name, &request),
        E::ListDestinations => destinations::list_destinations(app, &caller).await,
        E::Enable => channels::switch_channel(app, &caller, &name, true).await,
        E::Disable => channels::switch_channel(app, &caller, &name, false).await,
        E::Activate => channels::activate(app, &caller, &name, request).await,
        E::Rollback => channels::rollback(app, &caller, &name).await,
        E::StartShadow => trials::start(app, &caller, &name, request).await,
        E::ShadowReport => trials::report(app, &caller, &name).await,
        E::StopShadow => trials::stop(app, &caller, &name).await,
        E::Promote => trials::promote(app, &caller, &name).await,
        E::StartBackfill => trials::start_backfill(app, &caller, &name, request).await,
        E::BackfillReport => trials::backfill_report(app, &caller, &name).await,
        E::CancelBackfill => trials::cancel_backfill(app, &caller, &name).await,
        E::StartRecording => trials::start_recording(app, &caller, &name, request).await,
        E::Recording => trials::recording(app, &caller, &name).await,
        E::StopRecording => trials::stop_recording(app, &caller, &name).await,
        E::ListModules => modules::list(app, &caller, None).await,
        E::ListModuleVersions => modules::list(app, &caller, Some(&name)).await,
        E::Upload => modules::upload(app, &caller, &name, request).await,
        E::ListLookups => lookups::list(app, &caller, None, &request).await,
        E::ListLookupVersions => lookups::list(app, &caller, Some(&name), &request).await,
        E::UploadLookup => lookups::upload(app, &caller, &name, request).await,
        E::ListDeadLetters => dead_letters::list_dead_letters(app, &caller, &request).await,
        E::PurgeDeadLetters => dead_letters::purge_dead_letters(app, &caller, &request).await,
        E::ShowDeadLetter => dead_letters::show_dead_letter(app, &caller, &name).await,
        E::PurgeDeadLetter => dead_letters::purge_dead_letter(app, &caller, &name).await,
        E::Replay => {
            let retransform = http::query_flag(&request, "retransform");
            dead_letters::replay_dead_letter(app, &caller, &name, retransform).await
        }
        E::CreateTenant => tenants::create_tenant(app, &caller, &name).await,
        E::CreateToken => tenants::create_token(app, &caller, &name).await,
        E::PutDestination => owned::put_destination(app, &caller, &name, request).await,
        E::ShowDestination => owned::show_destination(app, &caller, &name, &request).await,
        E::DeleteDestination => owned::delete_destination(app, &caller, &name, &request).await,
        E::PutChannel => owned::put_channel(app, &caller, &name, request).await,
        E::DeleteChannel => owned::delete_channel(app, &caller, &name, &request).await,
        E::ListSources => sources::list(app, &caller, &request).await,
        E::ShowSource => sources::show(app, &caller, &name, &request).await,
        E::PutSource => sources::put(app, &caller, &name, request).await,
        E::DeleteSource => sources::delete(app, &caller, &name, &request).await,
        E::Whoami => Ok(http::json_response(
            StatusCode::OK,
            &match &caller {
                Caller::Tenant(tenant) => serde_json::json!({ "tenant": tenant }),
                _ => serde_json::json!({ "admin": true }),
            },
        )),
    }
}

fn method_not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{method} is not allowed on {path}"),
    )
}

/// [`in_store`] for request handlers: a store that is unreachable for now
/// is a 503 (`store-unavailable`), any other failure a 500.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) if err.is_unavailable() => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            err.to_string(),
        )),
        Ok(Err(StoreError::Unsupported(what))) => Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not-supported",
            format!("this sidecar's store cannot {what}: the embedded SQLite store can"),
        )),
        Ok(Err(err)) => Err(ApiError::internal(err)),
        Err(join) => Err(ApiError::internal(format!("a store task failed: {join}"))),
    }
}
