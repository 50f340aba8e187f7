//! Calls Sluice makes to other systems' APIs: polled sources and their
//! token endpoints. Every client connects through the [`guard`], every
//! answer is read within a size cap and a deadline, and redirects are
//! never followed (the client does not follow them).

pub(crate) mod auth;
pub(crate) mod guard;
pub(crate) mod sign;
pub(crate) mod target;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::CONTENT_LENGTH;
use hyper::{HeaderMap, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use guard::{GuardedConnector, NetworkPolicy, Refused};

/// A client for outbound calls.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// A client that trusts the system's roots (and `ca_file`'s); with a
/// `policy`, only the addresses it allows are reached.
pub fn client(ca_file: Option<&Path>, policy: Option<Arc<NetworkPolicy>>) -> Result<HttpClient, String> {
    let tls = crate::workers::tls::client_config(ca_file)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(GuardedConnector::new(policy));
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector))
}

/// One answer, its body read in full (within the cap).
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// Why a call got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The address is not one a tenant's URL may reach.
    #[error(transparent)]
    Refused(Refused),
    /// No connection, or it broke.
    #[error("the request failed: {0}")]
    Failed(String),
    /// The whole exchange took longer than its deadline.
    #[error("no complete answer within {0} ms")]
    Timeout(u128),
    /// The answer's body is larger than allowed.
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

/// Sends `request` and reads the answer, body and all, within `timeout`
/// and `max_bytes`: an API that trickles its answer or sends a gigabyte
/// costs at most that.
pub async fn call(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Answer, CallError> {
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|err| match guard::refused_in(&err) {
                Some(refused) => CallError::Refused(Refused {
                    host: refused.host.clone(),
                    address: refused.address,
                }),
                None => CallError::Failed(error_chain(&err)),
            })?;
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > max_bytes as u64) {
            return Err(CallError::TooLarge(max_bytes));
        }
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, max_bytes)
            .collect()
            .await
            .map_err(|err| {
                if err.is::<http_body_util::LengthLimitError>() {
                    CallError::TooLarge(max_bytes)
                } else {
                    CallError::Failed(err.to_string())
                }
            })?
            .to_bytes();
        Ok(Answer {
            status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| CallError::Timeout(timeout.as_millis()))?
}

/// An error and its causes, as one line.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut current = err.source();
    while let Some(cause) = current {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        current = cause.source();
    }
    text
}
