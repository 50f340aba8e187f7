//! Traces end to end: a real sidecar exporting over OTLP/HTTP to a
//! receiver on loopback that decodes every export with the
//! `opentelemetry-proto` types, and a destination that records the
//! `traceparent` it is sent.
//!
//! The platform side follows the OpenTelemetry Protocol specification
//! ("OTLP/HTTP": `POST /v1/traces`, `Content-Type: application/x-protobuf`,
//! an `ExportTraceServiceRequest` body) and W3C Trace Context
//! (`traceparent: 00-<trace-id>-<parent-id>-<flags>`; the example ids below
//! are the specification's own).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use sluice_server::sink::{Reply, Responder, Sink};

use crate::support::sidecar::{Sidecar, stock_config, wait_for};

const PATIENCE: Duration = Duration::from_secs(60);
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn sink(status: u16) -> Sink {
    let respond: Arc<Responder> = Arc::new(move |_, _| Reply::status(status));
    Sink::start("127.0.0.1:0".parse().unwrap(), respond).unwrap()
}

/// Every span the receiver was sent, decoded.
fn spans(receiver: &Sink) -> Vec<Span> {
    receiver
        .received()
        .iter()
        .inspect(|r| {
            assert_eq!(r.path, "/v1/traces");
            assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
        })
        .flat_map(|r| {
            ExportTraceServiceRequest::decode(&r.body[..])
                .expect("an OTLP export")
                .resource_spans
        })
        .flat_map(|resource| resource.scope_spans)
        .flat_map(|scope| scope.spans)
        .collect()
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(text) => Some(text.as_str()),
            _ => None,
        })
}

fn ingest(sidecar: &Sidecar, id: &str, traceparent: Option<&str>) {
    let event = json!({"id": id, "kind": "inventory", "tenant": "acme", "payload": {"sku": id, "qty": 1}});
    let mut request = ureq::post(&format!("{}/v1/events", sidecar.base)).set(
        "authorization",
        &format!("Bearer {}", crate::support::sidecar::ADMIN_TOKEN),
    );
    if let Some(traceparent) = traceparent {
        request = request.set("traceparent", traceparent);
    }
    assert_eq!(request.send_string(&event.to_string()).unwrap().status(), 202);
}

#[test]
fn each_event_is_one_trace_of_ingest_transform_step_and_delivery_and_the_destination_joins_it() {
    let (destination, receiver) = (sink(200), sink(200));
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[telemetry]\notlp-endpoint = \"http://{}\"\n{}",
        receiver.addr,
        stock_config(destination.addr, "entity-key = \"$.sku\"", "qty")
    );
    let sidecar = Sidecar::start(dir.path(), &config);
    ingest(
        &sidecar,
        "A-1",
        Some(&format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")),
    );
    ingest(&sidecar, "B-1", None);
    wait_for("both deliveries", PATIENCE, || destination.count() == 2);

    let wanted = ["ingest", "transform stock", "step", "deliver portal"];
    let mut by_event: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    wait_for("every span of both events", PATIENCE, || {
        by_event.clear();
        for span in spans(&receiver) {
            let event = attribute(&span, "sluice.event_id")
                .unwrap_or_default()
                .to_string();
            by_event.entry(event).or_default().push(span);
        }
        ["A-1", "B-1"].iter().all(|id| {
            by_event.get(*id).is_some_and(|spans| {
                wanted
                    .iter()
                    .all(|name| spans.iter().any(|s| s.name.starts_with(name)))
            })
        })
    });
    let mut traces = Vec::new();
    for id in ["A-1", "B-1"] {
        let spans = &by_event[id];
        let trace = &spans[0].trace_id;
        assert!(spans.iter().all(|s| &s.trace_id == trace), "one trace per event");
        traces.push(hex(trace));
        let named = |name: &str| spans.iter().find(|s| s.name.starts_with(name)).unwrap();
        let (ingested, transform, step, delivery) = (
            named("ingest"),
            named("transform stock"),
            named("step"),
            named("deliver portal"),
        );
        assert_eq!(transform.parent_span_id, ingested.span_id);
        assert_eq!(step.parent_span_id, transform.span_id);
        assert_eq!(delivery.parent_span_id, transform.span_id);
        assert!(step.name.starts_with("step json-mapping@"), "{}", step.name);
        assert_eq!(attribute(transform, "sluice.tenant"), Some("acme"));
        assert_eq!(attribute(transform, "sluice.outcome"), Some("emit"));
        assert!(
            attribute(transform, "sluice.module_versions")
                .unwrap()
                .starts_with("json-mapping@")
        );
        assert_eq!(attribute(delivery, "sluice.entity_key"), Some(id));
        assert_eq!(attribute(delivery, "sluice.attempt"), Some("1"));
        assert_eq!(attribute(delivery, "http.response.status_code"), Some("200"));
        assert!(delivery.end_time_unix_nano >= delivery.start_time_unix_nano);

        // The destination was sent this delivery span as its parent.
        let request = destination
            .received()
            .into_iter()
            .find(|r| r.json()["sku"] == id)
            .unwrap();
        assert_eq!(
            request.header("traceparent"),
            Some(format!("00-{}-{}-01", hex(trace), hex(&delivery.span_id)).as_str())
        );
        if id == "A-1" {
            // The caller's trace is continued under the caller's span.
            assert_eq!(hex(trace), CALLER_TRACE);
            assert_eq!(hex(&ingested.parent_span_id), CALLER_SPAN);
        } else {
            assert!(ingested.parent_span_id.is_empty());
        }
    }
    assert_ne!(traces[0], traces[1]);

    // The log lines carry the same trace and span ids.
    let logs = sidecar.logs();
    let attempt = logs
        .iter()
        .find(|l| l["message"] == "delivery attempt" && l["event_id"] == "A-1")
        .unwrap();
    assert_eq!(attempt["trace_id"], CALLER_TRACE);
    assert_eq!(attempt["span_id"].as_str().unwrap().len(), 16);
    wait_for("the exported spans counted", PATIENCE, || {
        crate::consistency::counter(&sidecar.metrics(), "sluice_spans_exported_total") >= 8
    });
}

#[test]
fn an_otlp_endpoint_that_fails_or_is_down_drops_spans_counted_and_delivery_goes_on() {
    let (destination, receiver) = (sink(200), sink(500));
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[telemetry]\notlp-endpoint = \"http://{}\"\n{}",
        receiver.addr,
        stock_config(destination.addr, "", "qty")
    );
    let sidecar = Sidecar::start(dir.path(), &config);
    for n in 0..20 {
        ingest(&sidecar, &format!("E-{n}"), None);
    }
    wait_for("every delivery", PATIENCE, || destination.count() == 20);
    wait_for("the dropped spans counted", PATIENCE, || {
        crate::consistency::counter(&sidecar.metrics(), "sluice_spans_dropped_total") > 0
    });
    assert!(receiver.count() > 0, "the endpoint was tried");
    // An endpoint that is down (nothing listens): the same.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down_dir = tempfile::tempdir().unwrap();
    let down = Sidecar::start(
        down_dir.path(),
        &format!(
            "[telemetry]\notlp-endpoint = \"http://{closed}\"\n{}",
            stock_config(destination.addr, "", "qty")
        ),
    );
    ingest(&down, "D-1", None);
    wait_for("the delivery with the endpoint down", PATIENCE, || {
        destination.count() == 21
    });
    wait_for("the spans dropped with the endpoint down", PATIENCE, || {
        crate::consistency::counter(&down.metrics(), "sluice_spans_dropped_total") > 0
    });
    // Without an endpoint nothing is exported and nothing is counted.
    let quiet = tempfile::tempdir().unwrap();
    let plain = Sidecar::start(quiet.path(), &stock_config(destination.addr, "", "qty"));
    ingest(&plain, "Q-1", None);
    wait_for("the plain delivery", PATIENCE, || destination.count() == 22);
    let metrics = plain.metrics();
    assert_eq!(
        crate::consistency::counter(&metrics, "sluice_spans_exported_total"),
        0
    );
    assert_eq!(
        crate::consistency::counter(&metrics, "sluice_spans_dropped_total"),
        0
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
