//! Small HTTP helpers shared by the routes: JSON answers, the error shape,
//! bounded body reading and query parameters.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

/// Every answer's body type.
pub type Body = Full<Bytes>;

/// An API error: a status, a stable code, a message and maybe a JSON path.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable, machine-readable code.
    pub code: &'static str,
    /// What went wrong, in words.
    pub message: String,
    /// The JSON path of the bad field, when there is one.
    pub path: Option<String>,
    /// Sent as `Retry-After` (429 only).
    pub retry_after: Option<std::time::Duration>,
    /// Structured detail; an object's keys join the body (for example
    /// `cases` for fixture results), anything else goes under `detail`.
    pub detail: Option<Value>,
}

impl ApiError {
    /// A 400 for bad input.
    pub fn bad_request(code: &'static str, message: impl Into<String>, path: Option<&str>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message).with_path(path)
    }

    /// An error with this status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            path: None,
            retry_after: None,
            detail: None,
        }
    }

    /// A 401: no token, or one that is not known.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer <token>` with a valid token",
        )
    }

    /// A 429 with `Retry-After`.
    pub fn rate_limited(message: String, wait: std::time::Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", message)
        }
    }

    /// A 403 for a route only an admin may use.
    pub fn admin_only() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "admin-only",
            "only an admin token may do this",
        )
    }

    /// A 404 for a name that does not exist.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// A 500 for a failure of the store or of a task.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message.to_string())
    }

    fn with_path(mut self, path: Option<&str>) -> Self {
        self.path = path.map(str::to_string);
        self
    }

    /// The JSON response `{"code", "message", "path"?}`.
    pub fn into_response(self) -> Response<Body> {
        let mut body = json!({"code": self.code, "message": self.message});
        if let Some(path) = self.path {
            body["path"] = path.into();
        }
        match self.detail {
            Some(Value::Object(fields)) => {
                for (key, value) in fields {
                    body[key] = value;
                }
            }
            Some(other) => body["detail"] = other,
            None => {}
        }
        let mut response = json_response(self.status, &body);
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(hyper::header::RETRY_AFTER, seconds.max(1).into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
        }
        response
    }
}

/// A JSON answer.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    json_bytes_response(status, body.to_string().into_bytes())
}

/// A JSON answer already written to bytes.
pub fn json_bytes_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().expect("static header"));
    response
}

/// A plain-text answer (Prometheus exposition, health checks).
pub fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8"
            .parse()
            .expect("static header"),
    );
    response
}

/// The 413 of a body over `max` bytes.
fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        format!("the body is larger than the {max}-byte limit"),
    )
}

/// Refuses a request whose declared `Content-Length` is over `max`, before
/// any of its body is read.
fn refuse_declared(request: &Request<Incoming>, max: usize) -> Result<(), ApiError> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match declared {
        Some(length) if length > max => Err(too_large(max)),
        _ => Ok(()),
    }
}

/// Reads the whole body, refusing one above `max` bytes with 413 before
/// reading it when its declared length is already too large, and a body
/// that does not arrive within `timeout` with 408.
pub async fn read_body(
    request: Request<Incoming>,
    max: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || too_large(max);
    refuse_declared(&request, max)?;
    match tokio::time::timeout(timeout, Limited::new(request.into_body(), max).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(err)) => Err(ApiError::bad_request(
            "body-read-failed",
            format!("the body could not be read: {err}"),
            None,
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            format!("the body did not arrive within {} ms", timeout.as_millis()),
        )),
    }
}

/// Reads and drops the body, at most `max` bytes within `timeout`, so that
/// a request refused before its body was needed still hears its answer
/// (a server that answers and closes while the client sends, resets it).
pub async fn discard_body(request: Request<Incoming>, max: usize, timeout: std::time::Duration) {
    let drain = async {
        let mut body = request.into_body();
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > max {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, drain).await;
}

/// Streams the body into `file`, at most `max` bytes within `timeout`, so
/// that a large upload is never held in memory; how many bytes it wrote.
pub async fn body_to_file(
    request: Request<Incoming>,
    max: usize,
    timeout: std::time::Duration,
    file: &mut tokio::fs::File,
) -> Result<u64, ApiError> {
    use tokio::io::AsyncWriteExt;
    let too_large = || too_large(max);
    refuse_declared(&request, max)?;
    let copy = async {
        let mut body = request.into_body();
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| {
                ApiError::bad_request(
                    "body-read-failed",
                    format!("the body could not be read: {err}"),
                    None,
                )
            })?;
            let Ok(data) = frame.into_data() else { continue };
            written += data.len() as u64;
            if written > max as u64 {
                return Err(too_large());
            }
            file.write_all(&data).await.map_err(|err| {
                tracing::error!(error = %err, "cannot write an upload to its temporary file");
                ApiError::internal(format!("cannot keep the upload ({})", err.kind()))
            })?;
        }
        file.flush().await.map_err(ApiError::internal)?;
        Ok(written)
    };
    tokio::time::timeout(timeout, copy).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            format!("the body did not arrive within {} ms", timeout.as_millis()),
        )
    })?
}

/// The value of query parameter `name`, if given.
pub fn query_param(request: &Request<Incoming>, name: &str) -> Option<String> {
    let query = request.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// Query parameter `name` as a whole number (`None` when absent). Text that
/// is not one of `T` is a 400 with `code` and the parameter named.
pub fn query_number<T: std::str::FromStr>(
    request: &Request<Incoming>,
    name: &str,
    code: &'static str,
) -> Result<Option<T>, ApiError> {
    query_param(request, name)
        .map(|text| {
            text.parse::<T>().map_err(|_| {
                ApiError::bad_request(
                    code,
                    format!("`{name}` must be a whole number, not `{text}`"),
                    None,
                )
            })
        })
        .transpose()
}

/// True when query parameter `name` is `true` or `1`.
pub fn query_flag(request: &Request<Incoming>, name: &str) -> bool {
    query_param(request, name).is_some_and(|v| v == "true" || v == "1")
}

impl From<crate::state::StateError> for ApiError {
    fn from(err: crate::state::StateError) -> Self {
        use crate::state::StateError;
        match err {
            StateError::UnknownChannel(_) => Self::not_found("unknown-channel", err.to_string()),
            StateError::PermitsClosed => Self::internal(err),
        }
    }
}
