//! `POST /v1/sources/{tenant}/{source}`: a platform's signed webhook,
//! verified over its raw body and ingested as an event (see `sources`).

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use crate::api::http::{ApiError, Body, json_response, read_body};
use crate::sources::{Delivery, SourceError};
use crate::state::App;

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
    let Some(source) = app.sources.get(&(tenant.to_string(), name.to_string())).cloned() else {
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
