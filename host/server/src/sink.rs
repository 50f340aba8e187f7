//! A local HTTP destination that records what it receives: `sluice sink`
//! for demos and for trying a config without a real portal, and the
//! destination of the end-to-end tests (which script its answers).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// The request's method.
    pub method: String,
    /// The request path.
    pub path: String,
    /// The query string, without `?` (empty if none).
    pub query: String,
    /// Its headers, names in lower case.
    pub headers: BTreeMap<String, String>,
    /// Its body.
    pub body: Bytes,
}

impl Received {
    /// A header's value, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The body as JSON (`null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// The sink's answer to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Extra headers (for example `Retry-After`).
    pub headers: Vec<(String, String)>,
    /// Body text.
    pub body: String,
}

impl Reply {
    /// A bare answer with this status.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }
}

/// Decides the answer to each request; it sees every request received so far.
pub type Responder = dyn Fn(&Received, &[Received]) -> Reply + Send + Sync;

/// A running sink on its own thread; stops when dropped.
pub struct Sink {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    /// Starts a sink on `addr` (port 0 picks one) that answers with `respond`.
    pub fn start(addr: SocketAddr, respond: Arc<Responder>) -> std::io::Result<Self> {
        Self::start_with_tls(addr, respond, None)
    }

    /// Starts a sink that speaks HTTPS with this server configuration (or plain HTTP with none).
    pub fn start_with_tls(
        addr: SocketAddr,
        respond: Arc<Responder>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let log = received.clone();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let thread = std::thread::Builder::new().name("sluice-sink".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("sink runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("sink listener");
                tokio::pin!(stopped);
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let (log, respond, acceptor) = (log.clone(), respond.clone(), acceptor.clone());
                            tokio::spawn(async move {
                                let service = service_fn(move |request| answer(log.clone(), respond.clone(), request));
                                let http = hyper::server::conn::http1::Builder::new();
                                match acceptor {
                                    Some(acceptor) => {
                                        if let Ok(stream) = acceptor.accept(stream).await {
                                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                                        }
                                    }
                                    None => {
                                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                                    }
                                }
                            });
                        }
                        _ = &mut stopped => break,
                    }
                }
            });
        })?;
        Ok(Self {
            addr,
            received,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// How many requests it has received.
    pub fn count(&self) -> usize {
        self.received.lock().expect("sink log").len()
    }

    /// How many requests it has received that match `filter` (no copying).
    pub fn count_where(&self, filter: impl Fn(&Received) -> bool) -> usize {
        self.received
            .lock()
            .expect("sink log")
            .iter()
            .filter(|r| filter(r))
            .count()
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("sink log").clone()
    }
}

/// Records one request and answers it with `respond`'s reply.
async fn answer(
    log: Arc<Mutex<Vec<Received>>>,
    respond: Arc<Responder>,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let headers = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let received = Received {
        at: Instant::now(),
        method,
        path,
        query,
        headers,
        body,
    };
    let reply = {
        let mut log = log.lock().expect("sink log");
        let reply = respond(&received, &log);
        log.push(received);
        reply
    };
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    for (key, value) in reply.headers {
        if let (Ok(key), Ok(value)) = (
            hyper::header::HeaderName::try_from(key),
            hyper::header::HeaderValue::try_from(value),
        ) {
            response.headers_mut().insert(key, value);
        }
    }
    Ok(response)
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
