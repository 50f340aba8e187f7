//! One delivery request: its URL from the payload, its method, the
//! destination's headers, credential and signature, and what came back.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request};
use serde_json::value::RawValue;

use crate::config::RetryPolicy;
use crate::observe::mask;
use crate::observe::story::{KeptBody, StoryLog};
use crate::observe::trace::TraceContext;
use crate::outbound::HttpClient;
use crate::outbound::sign::Signer;
use crate::outbound::target::UrlTemplate;
use crate::state::Destination;
use crate::store::Delivery;
use crate::workers::backoff::retry_after;
use sluice_engine::event::{DeliveryJson, EventJson};

/// Most response bytes kept with an attempt.
const SNIPPET: usize = 512;
/// Most response bytes read, to find an expired-token answer.
const READ_BYTES: usize = 64 * 1024;

/// What every request to one destination shares.
pub(super) struct Outbound {
    pub client: HttpClient,
    pub target: Arc<UrlTemplate>,
    pub method: Method,
    /// What a delivery hint may choose: `method` and `allow-methods`.
    pub allowed: Vec<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub signer: Option<Signer>,
    pub rate_header: Option<HeaderName>,
    /// Where the request and answer of each attempt are kept, for the
    /// event's story; `None` keeps nothing.
    pub stories: Option<Arc<StoryLog>>,
}

impl Outbound {
    /// The destination's configured headers, parsed once per worker (they
    /// were checked when the config was loaded). Each is marked sensitive,
    /// as the API shows them (`"set"`): a story never shows one.
    pub fn headers_of(destination: &Destination) -> Vec<(HeaderName, HeaderValue)> {
        destination
            .config
            .headers
            .iter()
            .filter_map(|(key, value)| {
                let mut value = HeaderValue::try_from(value.as_str()).ok()?;
                value.set_sensitive(true);
                Some((HeaderName::try_from(key.as_str()).ok()?, value))
            })
            .collect()
    }
}

impl Outbound {
    /// The fingerprint of what `delivery` would send (method, URL, body);
    /// `None` if it cannot become a request (the send says why).
    pub fn fingerprint(&self, delivery: &Delivery) -> Option<String> {
        let (_, body) = stored_body(delivery).ok()?;
        let hint = hint_of(delivery);
        let uri = self.target.render(&body, &hint.params).ok()?;
        let method = self.method_for(&hint).ok()?;
        let body: &[u8] = if method == Method::DELETE { &[] } else { &body };
        Some(crate::store::fingerprint(method.as_str(), &uri.to_string(), body))
    }

    /// The method of one delivery: the transform's choice, if the
    /// destination allows it, or the destination's.
    fn method_for(&self, hint: &DeliveryJson) -> Result<Method, String> {
        let Some(chosen) = hint.method else {
            return Ok(self.method.clone());
        };
        let method = Method::from_bytes(chosen.as_str().as_bytes()).map_err(|err| err.to_string())?;
        if self.allowed.contains(&method) {
            Ok(method)
        } else {
            Err(format!(
                "the transform chose {method} for this event, which the destination does not allow: add it to its `allow-methods`"
            ))
        }
    }
}

/// The delivery hint a contract 0.2 step gave the emitted event, if any.
/// Only an output that mentions one is parsed.
fn hint_of(delivery: &Delivery) -> DeliveryJson {
    #[derive(serde::Deserialize)]
    struct Hinted {
        #[serde(default)]
        delivery: Option<DeliveryJson>,
    }
    if !delivery.output.contains("\"delivery\"") {
        return DeliveryJson::default();
    }
    serde_json::from_str::<Hinted>(&delivery.output)
        .ok()
        .and_then(|hinted| hinted.delivery)
        .unwrap_or_default()
}

/// What one request came back with.
pub(super) struct Sent {
    pub delivery: Delivery,
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub detail: String,
    pub elapsed: Duration,
    /// The credential sent, when the answer says it has expired (401, or a
    /// 403 that says so, as SP-API answers an expired access token).
    pub expired: Option<HeaderValue>,
    /// The rate the destination announced in `rate-limit-header`, per second.
    pub announced_rate: Option<f64>,
    /// The request as sent and the answer as received (if one came),
    /// masked, capped and written as JSON once, when stories are kept.
    pub exchange: Option<(Box<RawValue>, Option<Box<RawValue>>)>,
    /// The event's trace, and this attempt's span in it.
    pub trace: TraceContext,
    pub span: [u8; 8],
}

/// The event's trace and this attempt's span: the same on every node, so
/// a repeat after a crash sends the same `traceparent`.
fn attempt_trace(delivery: &Delivery) -> (TraceContext, [u8; 8]) {
    let traceparent = crate::observe::trace::traceparent_of_output(&delivery.output);
    let trace = TraceContext::of_event(&delivery.tenant, &delivery.event_id, traceparent.as_deref());
    let attempt = (delivery.attempts + 1).to_string();
    let output = delivery
        .output_id
        .clone()
        .unwrap_or_else(|| delivery.seq.to_string());
    let span = crate::observe::trace::span_id(&[
        "attempt",
        &delivery.tenant,
        &delivery.event_id,
        &delivery.channel,
        &delivery.destination,
        &output,
        &attempt,
    ]);
    (trace, span)
}

/// Sends one delivery and reports what came back. A `Retry-After` counts
/// only on 429 and 503, and never for longer than the policy's `max-backoff-ms`.
pub(super) async fn send(
    out: Arc<Outbound>,
    delivery: Delivery,
    credential: Option<((HeaderName, HeaderValue), bool)>,
    policy: RetryPolicy,
) -> Sent {
    let timeout_ms = policy.timeout_ms;
    let longest = Duration::from_millis(policy.max_backoff_ms);
    let started = Instant::now();
    let (trace, span) = attempt_trace(&delivery);
    let finish = |status, retry_after, detail: String| Sent {
        trace,
        span,
        status,
        retry_after,
        detail,
        elapsed: started.elapsed(),
        delivery: delivery.clone(),
        expired: None,
        announced_rate: None,
        exchange: None,
    };
    let (event_id, body) = match stored_body(&delivery) {
        Ok(found) => found,
        Err(err) => return finish(Some(0), None, format!("stored output is not an event: {err}")),
    };
    let hint = hint_of(&delivery);
    // Not sent at all: a dead letter that says which method was refused.
    let method = match out.method_for(&hint) {
        Ok(method) => method,
        Err(err) => return finish(Some(0), None, err),
    };
    // Not sent at all: a dead letter that names the placeholder.
    let uri = match out.target.render(&body, &hint.params) {
        Ok(uri) => uri,
        Err(err) => return finish(Some(0), None, err.to_string()),
    };
    let mut request = Request::builder()
        .method(method.clone())
        .uri(uri)
        .header("idempotency-key", &delivery.idempotency_key)
        .header("x-correlation-id", &delivery.correlation_id)
        .header("x-sluice-tenant", &delivery.tenant)
        .header("x-sluice-channel", &delivery.channel)
        .header("x-sluice-event-id", &event_id)
        .header("x-sluice-source-event-id", &delivery.event_id)
        .header("x-sluice-attempt", (delivery.attempts + 1).to_string())
        .header("traceparent", trace.traceparent(span))
        .header("x-sluice-module-versions", versions_header(&delivery.versions));
    // A DELETE carries no body (SP-API's deleteListingsItem, Magento's DELETE /V1/products/{sku}).
    let body = if method == Method::DELETE {
        Bytes::new()
    } else {
        request = request.header(CONTENT_TYPE, "application/json");
        body
    };
    for (key, value) in &out.headers {
        request = request.header(key, value);
    }
    if let Some(signer) = &out.signer {
        for (key, mut value) in signer.headers(&delivery.idempotency_key, &body, SystemTime::now()) {
            // A signature is a credential for its body: never shown.
            value.set_sensitive(true);
            request = request.header(key, value);
        }
    }
    // Only a credential that can be renewed is worth a retry when refused.
    let used = credential
        .as_ref()
        .filter(|(_, renews)| *renews)
        .map(|((_, value), _)| value.clone());
    if let Some(((key, value), _)) = credential {
        request = request.header(key, value);
    }
    let request = match request.body(Full::new(body.clone())) {
        Ok(request) => request,
        Err(err) => return finish(Some(0), None, format!("cannot build the request: {err}")),
    };
    let stories = out.stories.as_ref();
    let sent_request = stories.map(|log| {
        raw(&KeptRequest {
            method: request.method().as_str(),
            url: mask::url(&hide_all(request.uri().to_string(), out.target.secrets())),
            headers: masked_headers(request.headers()),
            body: log.body(&body, true),
        })
    });
    let keep = stories.map_or(0, |log| log.config().body_bytes);
    let exchange = async {
        let response = out
            .client
            .request(request)
            .await
            .map_err(|err| format!("{err:?}"))?;
        let status = response.status().as_u16();
        let headers = response.headers();
        let wait = headers
            .get(RETRY_AFTER)
            .filter(|_| matches!(status, 429 | 503))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, SystemTime::now()))
            .map(|wait| wait.min(longest));
        let announced = out
            .rate_header
            .as_ref()
            .and_then(|name| headers.get(name))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|rate| rate.is_finite() && *rate > 0.0);
        let answer_headers = stories.map(|_| masked_headers(headers));
        let (body, complete) = read_capped(response.into_body(), READ_BYTES.max(keep)).await;
        let text = String::from_utf8_lossy(&body);
        let expired = status == 401 || (status == 403 && text.to_ascii_lowercase().contains("expired"));
        let snippet: String = text.chars().take(SNIPPET).collect();
        let answer = stories.map(|log| {
            raw(&KeptResponse {
                status,
                headers: answer_headers.unwrap_or_default(),
                body: log.body(&body, complete),
            })
        });
        Ok::<_, String>((status, wait, snippet, expired, announced, answer))
    };
    let with_exchange = |sent: Sent, answer: Option<Box<RawValue>>| Sent {
        exchange: sent_request.clone().map(|request| (request, answer)),
        ..sent
    };
    match tokio::time::timeout(Duration::from_millis(timeout_ms), exchange).await {
        Ok(Ok((status, wait, snippet, expired, announced, answer))) => with_exchange(
            Sent {
                expired: used.filter(|_| expired),
                announced_rate: announced,
                ..finish(Some(status), wait, snippet)
            },
            answer,
        ),
        Ok(Err(err)) => with_exchange(finish(None, None, format!("connection failed: {err}")), None),
        Err(_) => with_exchange(
            finish(None, None, format!("no response within {timeout_ms} ms")),
            None,
        ),
    }
}

/// Reads at most `cap` bytes of a body, then stops (a 1 GB answer is never
/// read past it); the bytes, and whether that was the whole body.
async fn read_capped(mut body: hyper::body::Incoming, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return (kept, false);
        };
        if let Ok(data) = frame.into_data() {
            let room = cap - kept.len();
            if data.len() > room {
                kept.extend_from_slice(&data[..room]);
                return (kept, false);
            }
            kept.extend_from_slice(&data);
        }
    }
    (kept, true)
}

/// A request as a story keeps it.
#[derive(serde::Serialize)]
struct KeptRequest<'a> {
    method: &'a str,
    url: String,
    headers: Vec<(String, String)>,
    body: KeptBody,
}

/// A response as a story keeps it.
#[derive(serde::Serialize)]
struct KeptResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: KeptBody,
}

/// `value` as JSON text, written once.
fn raw(value: &impl serde::Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("a capture serialises")
}

/// Headers as a story keeps them, as `[name, value]` pairs: a credential
/// (a value marked sensitive: the destination's auth, its signature, its
/// configured headers) or a secret-named header masked.
fn masked_headers(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            if value.is_sensitive() {
                return (name.to_string(), mask::MASK.to_string());
            }
            let value = String::from_utf8_lossy(value.as_bytes());
            (name.to_string(), mask::header_value(name.as_str(), &value))
        })
        .collect()
}

/// `text` with every one of `secrets` masked.
fn hide_all(mut text: String, secrets: &[String]) -> String {
    for secret in secrets {
        text = text.replace(secret.as_str(), mask::MASK);
    }
    text
}

/// The emitted event's id and the request body: the payload's stored
/// bytes, sent as they are. Only rows that do not say where the payload
/// is (stored before schema migration 4, or resent from a dead letter)
/// are parsed.
fn stored_body(delivery: &Delivery) -> Result<(String, Bytes), serde_json::Error> {
    let output = &delivery.output;
    if let (Some(id), Some(at)) = (&delivery.output_id, delivery.payload_at)
        && at < output.len()
        && output.is_char_boundary(at)
        && output.ends_with('}')
    {
        let body = Bytes::copy_from_slice(&output.as_bytes()[at..output.len() - 1]);
        return Ok((id.clone(), body));
    }
    let event: EventJson = serde_json::from_str(output)?;
    Ok((event.id, Bytes::from(event.payload.get().to_string())))
}

/// `a@1234abcd5678,b@…`: the versions that produced a delivery.
fn versions_header(json: &str) -> String {
    serde_json::from_str::<Vec<String>>(json)
        .map(|versions| versions.join(","))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(output: &str, output_id: Option<&str>, payload_at: Option<usize>) -> Delivery {
        Delivery {
            seq: 1,
            destination: "d".into(),
            channel: "c".into(),
            tenant: "t".into(),
            event_id: "in-1".into(),
            entity_key: "k".into(),
            idempotency_key: "i".into(),
            correlation_id: "c".into(),
            output: output.into(),
            output_id: output_id.map(Into::into),
            payload_at,
            attempts: 0,
            versions: "[]".into(),
            created_ms: 0,
            received_ms: 0,
            replayed: false,
            kind: "inventory".into(),
        }
    }

    #[test]
    fn the_stored_payload_bytes_are_sent_without_parsing_the_output() {
        // Everything before the payload is deliberately not JSON: a parse would fail.
        let output = r#"{"id":"out-1","kind":NOT JSON,"payload":{"sku":"A", "spaced" : 1}}"#;
        let at = crate::store::NewDelivery::payload_offset(output, r#"{"sku":"A", "spaced" : 1}"#);
        let (id, body) = stored_body(&delivery(output, Some("out-1"), at)).unwrap();
        assert_eq!(id, "out-1");
        assert_eq!(&body[..], br#"{"sku":"A", "spaced" : 1}"#);
    }

    #[test]
    fn rows_that_do_not_say_where_the_payload_is_are_parsed() {
        let output = r#"{"id":"out-1","kind":"product","payload":{"sku":"A"}}"#;
        let (id, body) = stored_body(&delivery(output, None, None)).unwrap();
        assert_eq!((id.as_str(), &body[..]), ("out-1", &br#"{"sku":"A"}"#[..]));
        // A place past the end is not trusted either.
        let (_, body) = stored_body(&delivery(output, Some("out-1"), Some(10_000))).unwrap();
        assert_eq!(&body[..], br#"{"sku":"A"}"#);
        assert!(stored_body(&delivery("not json", None, None)).is_err());
        assert_eq!(
            crate::store::NewDelivery::payload_offset(output, r#"{"sku":"B"}"#),
            None
        );
    }
}
