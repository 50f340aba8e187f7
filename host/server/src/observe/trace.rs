//! Each event is a trace (W3C Trace Context): its ingest, each channel's
//! transform and pipeline steps, and each delivery attempt are spans.
//!
//! - A valid `traceparent` on `POST /v1/events` is continued: the event
//!   keeps it as its `traceparent` header, and every node that works on the
//!   event reads it from there. Without one, the trace id is derived from
//!   the tenant and event id, so every node and every restart agrees on it
//!   with nothing stored.
//! - Span ids are derived the same way (from what the span is of), so a
//!   delivery's span names its transform's as parent on any node.
//! - Every delivery carries `traceparent: 00-<trace>-<attempt span>-01`,
//!   and the JSON log lines carry `trace_id` and `span_id`.
//! - With `[telemetry] otlp-endpoint`, spans go over OTLP/HTTP (protobuf)
//!   to `<endpoint>/v1/traces`, from a bounded queue by one supervised
//!   worker: a queue that is full, or an endpoint that is down, slow or
//!   answers an error, drops spans (`sluice_spans_dropped_total`) and never
//!   holds an event. Without it no span is kept at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// An event's place in its trace: the trace, and the remote span that
/// sent it to us, if one did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id.
    pub trace_id: [u8; 16],
    /// The caller's span, when a `traceparent` came with the event.
    pub remote_parent: Option<[u8; 8]>,
    /// The trace flags to pass on: the caller's (its sampling decision),
    /// or `01` (sampled) for a trace Sluice began.
    pub flags: u8,
}

impl TraceContext {
    /// The event's trace: its `traceparent` header if it has a valid one,
    /// else one derived from its tenant and id.
    pub fn of_event(tenant: &str, event_id: &str, traceparent: Option<&str>) -> Self {
        if let Some(continued) = traceparent.and_then(parse_traceparent) {
            return continued;
        }
        let digest = derive(&["trace", tenant, event_id]);
        let mut trace_id = [0u8; 16];
        trace_id.copy_from_slice(&digest[..16]);
        Self {
            trace_id,
            remote_parent: None,
            flags: 1,
        }
    }

    /// The trace id in hex, as logs and OTLP show it.
    pub fn trace_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The `traceparent` that makes `span` the parent of what receives it.
    pub fn traceparent(&self, span: [u8; 8]) -> String {
        format!("00-{}-{}-{:02x}", self.trace_hex(), hex::encode(span), self.flags)
    }
}

/// The span id of what `parts` name (`["ingest", tenant, id]`), the same
/// on every node.
pub fn span_id(parts: &[&str]) -> [u8; 8] {
    let digest = derive(parts);
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn derive(parts: &[&str]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// A W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`): its trace and
/// parent span; `None` for anything malformed, an all-zero id, or version
/// `ff`. A later version is read by its first four fields, as the
/// specification asks.
pub fn parse_traceparent(text: &str) -> Option<TraceContext> {
    let text = text.trim();
    let mut fields = text.split('-');
    let (version, trace, parent, flags) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let lower_hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !lower_hex(version, 2)
        || version == "ff"
        || !lower_hex(trace, 32)
        || !lower_hex(parent, 16)
        || !lower_hex(flags, 2)
    {
        return None;
    }
    if version == "00" && fields.next().is_some() {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    let mut flag_byte = [0u8; 1];
    hex::decode_to_slice(flags, &mut flag_byte).ok()?;
    hex::decode_to_slice(trace, &mut trace_id).ok()?;
    hex::decode_to_slice(parent, &mut parent_id).ok()?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceContext {
        trace_id,
        remote_parent: Some(parent_id),
        flags: flag_byte[0],
    })
}

/// The `traceparent` header of a stored output, if the event carried one
/// (only an output that mentions it is parsed).
pub fn traceparent_of_output(output: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct WithHeaders {
        #[serde(default)]
        headers: std::collections::BTreeMap<String, String>,
    }
    if !output.contains("\"traceparent\"") {
        return None;
    }
    serde_json::from_str::<WithHeaders>(output)
        .ok()?
        .headers
        .remove("traceparent")
}

/// `[telemetry]` of `sluice.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Where spans go over OTLP/HTTP, such as `http://127.0.0.1:4318`
    /// (an OpenTelemetry Collector); unset, no span is kept.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the spans.
    #[serde(default = "default_service")]
    pub service_name: String,
}

fn default_service() -> String {
    "sluice".into()
}

/// Which kind of span, as OTLP has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Received from a client (ingest).
    Server,
    /// Work inside Sluice (a transform, a step).
    Internal,
    /// A request Sluice sent (a delivery attempt).
    Client,
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// Its trace.
    pub trace_id: [u8; 16],
    /// Its id.
    pub span_id: [u8; 8],
    /// Its parent, if any.
    pub parent: Option<[u8; 8]>,
    /// What it is (`ingest`, `transform stock`, `deliver portal`).
    pub name: String,
    /// Its kind.
    pub kind: SpanKind,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its attributes: tenant, channel, module version, entity key, status, attempt.
    pub attributes: Vec<(&'static str, String)>,
    /// Whether it failed.
    pub error: bool,
}

/// Most spans waiting for the exporter; past it new ones are dropped.
const QUEUED: usize = 20_000;
/// Most spans in one export.
const BATCH: usize = 512;
/// Longest an export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where spans go: a bounded queue to the exporter, or nowhere.
pub struct Telemetry {
    config: TelemetryConfig,
    sender: Option<tokio::sync::mpsc::Sender<SpanRecord>>,
    /// Held by the one exporter; one restarted after a panic takes it again.
    receiver: tokio::sync::Mutex<Option<tokio::sync::mpsc::Receiver<SpanRecord>>>,
    /// Spans dropped: the queue full, or the export failed.
    pub dropped: AtomicU64,
    /// Spans the endpoint accepted.
    pub exported: AtomicU64,
}

impl Telemetry {
    /// Telemetry as `config` sets it; without an endpoint it keeps nothing.
    pub fn new(config: TelemetryConfig) -> Self {
        let (sender, receiver) = match config.otlp_endpoint {
            Some(_) => {
                let (sender, receiver) = tokio::sync::mpsc::channel(QUEUED);
                (Some(sender), Some(receiver))
            }
            None => (None, None),
        };
        Self {
            config,
            sender,
            receiver: tokio::sync::Mutex::new(receiver),
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
        }
    }

    /// Whether spans are kept (an endpoint is set).
    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Queues `span` for export, or drops and counts it.
    pub fn record(&self, span: SpanRecord) {
        if let Some(sender) = &self.sender
            && sender.try_send(span).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The exporter: sends queued spans in batches until told to stop, then
/// one more batch of what is queued (up to 512). A failed or slow export
/// drops its batch, counted.
pub async fn run_exporter(telemetry: Arc<Telemetry>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let endpoint = telemetry.config.otlp_endpoint.clone();
    let mut held = telemetry.receiver.lock().await;
    let (Some(endpoint), Some(receiver)) = (endpoint, held.as_mut()) else {
        let _ = stopped.wait_for(|stop| *stop).await;
        return;
    };
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let client = match crate::outbound::client(None, None) {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "cannot make the OTLP client; spans are dropped");
            let _ = stopped.wait_for(|stop| *stop).await;
            return;
        }
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let stopping = super::next_batch(receiver, &mut batch, BATCH, BATCH, &mut stopped).await;
        if !batch.is_empty() {
            let spans = std::mem::take(&mut batch);
            let count = spans.len() as u64;
            let body = otlp::encode(&telemetry.config.service_name, &spans);
            match tokio::time::timeout(EXPORT_TIMEOUT, otlp::post(&client, &url, body)).await {
                Ok(Ok(())) => {
                    telemetry.exported.fetch_add(count, Ordering::Relaxed);
                }
                Ok(Err(err)) => {
                    telemetry.dropped.fetch_add(count, Ordering::Relaxed);
                    tracing::warn!(error = %err, spans = count, "OTLP export failed; spans dropped");
                }
                Err(_) => {
                    telemetry.dropped.fetch_add(count, Ordering::Relaxed);
                    tracing::warn!(spans = count, "OTLP export timed out; spans dropped");
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// OTLP/HTTP with protobuf bodies (opentelemetry-proto's messages).
mod otlp {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
    use prost::Message;

    use super::{SpanKind, SpanRecord};

    fn text(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn nanos(at: std::time::SystemTime) -> u64 {
        at.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }

    /// One export request of `spans`.
    pub(super) fn encode(service: &str, spans: &[SpanRecord]) -> Vec<u8> {
        let spans = spans
            .iter()
            .map(|record| Span {
                trace_id: record.trace_id.to_vec(),
                span_id: record.span_id.to_vec(),
                parent_span_id: record.parent.map(|p| p.to_vec()).unwrap_or_default(),
                name: record.name.clone(),
                kind: match record.kind {
                    SpanKind::Server => span::SpanKind::Server,
                    SpanKind::Internal => span::SpanKind::Internal,
                    SpanKind::Client => span::SpanKind::Client,
                } as i32,
                start_time_unix_nano: nanos(record.start),
                end_time_unix_nano: nanos(record.end),
                attributes: record.attributes.iter().map(|(k, v)| text(k, v)).collect(),
                status: Some(Status {
                    code: if record.error {
                        status::StatusCode::Error
                    } else {
                        status::StatusCode::Ok
                    } as i32,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![text("service.name", service)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "sluice".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    /// Posts one export; an answer other than 2xx is an error.
    pub(super) async fn post(
        client: &crate::outbound::HttpClient,
        url: &str,
        body: Vec<u8>,
    ) -> Result<(), String> {
        let request = hyper::Request::post(url)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .map_err(|err| err.to_string())?;
        let response = client.request(request).await.map_err(|err| format!("{err:?}"))?;
        let status = response.status();
        // Read (a little of) the answer so the connection can be reused.
        let _ = http_body_util::Limited::new(response.into_body(), 64 << 10)
            .collect()
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the endpoint answered {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_anything_else_gets_a_derived_trace() {
        let given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let continued = TraceContext::of_event("t", "e-1", Some(given));
        assert_eq!(continued.trace_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            continued.remote_parent,
            Some(*b"\xb7\xad\x6b\x71\x69\x20\x33\x31")
        );
        let derived = TraceContext::of_event("t", "e-1", None);
        assert_eq!(
            derived,
            TraceContext::of_event("t", "e-1", Some("garbage")),
            "the same on every node"
        );
        assert_ne!(derived, TraceContext::of_event("t", "e-2", None));
        assert_ne!(derived, TraceContext::of_event("u", "e-1", None));
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        // The caller's sampling decision is passed on.
        let unsampled = TraceContext::of_event(
            "t",
            "e-1",
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
        );
        assert!(unsampled.traceparent([1; 8]).ends_with("-00"));
        assert!(derived.traceparent([1; 8]).ends_with("-01"));
        // A later version: its first four fields.
        assert!(parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what").is_some());
        assert_eq!(derived.traceparent(span_id(&["attempt", "t", "e-1"])).len(), 55);
        assert_eq!(
            traceparent_of_output(&format!(r#"{{"id":"o","headers":{{"traceparent":"{given}"}}}}"#))
                .as_deref(),
            Some(given)
        );
        assert_eq!(traceparent_of_output(r#"{"id":"o"}"#), None);
    }
}
