//! The delivery worker of one destination: sends due outbox entries as
//! HTTP POSTs, paced by the destination's token bucket, and records each
//! attempt. Per round it takes at most one entry per entity key (the
//! oldest), so a later stock level never overtakes an earlier one, and
//! sends up to `concurrency` of them at once.
//!
//! | answer | what happens |
//! |---|---|
//! | 2xx | delivered: removed from the outbox |
//! | 408, 425, 429, 5xx, timeout, connection error | retried after backoff with jitter; on 429 and 503, after `Retry-After` if that is longer (capped at the policy's `max-backoff-ms`), which also pauses the whole destination until then |
//! | any other status | dead letter `rejected-by-destination`, with the response |
//!
//! `https://` destinations are verified against the system's trust store
//! and the destination's `ca-file` (rustls).
//! | attempts or age exhausted | dead letter `attempts-exhausted` / `too-old` |
//!
//! A crash after a send and before its record repeats the send after
//! restart with the same `Idempotency-Key`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::RetryPolicy;
use crate::observe::events::{AttemptOutcome, DeadLettered, DeliveryAttempted, Stage};
use crate::state::{App, Destination};
use crate::store::in_store;
use crate::store::{Attempt, AttemptResult, Delivery, now_ms};
use crate::workers::backoff::{TokenBucket, backoff, retry_after};
use sluice_engine::event::EventJson;

/// Longest wait for new work before looking again.
const IDLE: Duration = Duration::from_millis(250);
/// Most response bytes kept with an attempt.
const SNIPPET: usize = 512;

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What one request came back with.
struct Sent {
    delivery: Delivery,
    status: Option<u16>,
    retry_after: Option<Duration>,
    detail: String,
    elapsed: Duration,
}

/// Runs until `stopped` turns true; requests in flight finish and are recorded first.
pub async fn run(app: Arc<App>, name: String, mut stopped: watch::Receiver<bool>) {
    let Some(mut worker) = Worker::new(&app, &name) else {
        return;
    };
    let signal = app.queue.due_signal(&name);
    loop {
        if *stopped.borrow() {
            return;
        }
        if let Some(until) = worker.paused_until().await {
            tokio::select! {
                () = tokio::time::sleep_until(until.into()) => {}
                _ = stopped.changed() => {}
            }
            continue;
        }
        let (queue, key, limit) = (
            app.queue.clone(),
            name.clone(),
            worker.destination.config.concurrency * 8,
        );
        let due = in_store(move || queue.due(&key, now_ms(), limit))
            .await
            .unwrap_or_else(|err| {
                tracing::error!(destination = %name, error = %err, "cannot read the outbox");
                Vec::new()
            });
        if due.is_empty() {
            let idle = next_wait(&app, &name).await;
            tokio::select! {
                () = worker.destination.wake.notified() => {}
                () = async { signal.as_ref().expect("checked").notified().await }, if signal.is_some() => {}
                () = tokio::time::sleep(idle) => {}
                _ = stopped.changed() => {}
            }
            continue;
        }
        let sent = worker.dispatch(due, &mut stopped).await;
        worker.pause_for(&sent).await;
        let results: Vec<(Delivery, AttemptResult)> = sent
            .into_iter()
            .map(|done| settle(&app, worker.destination, done))
            .collect();
        let queue = app.queue.clone();
        if let Err(err) = in_store(move || queue.attempted(results)).await {
            // Unrecorded sends are repeated later with the same key.
            tracing::error!(destination = %name, error = %err, "cannot record delivery attempts");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// One destination's worker: its client, its pacing and its pause.
struct Worker<'a> {
    app: &'a Arc<App>,
    destination: &'a Destination,
    client: HttpClient,
    uri: Uri,
    headers: Arc<Vec<(HeaderName, HeaderValue)>>,
    bucket: Option<TokenBucket>,
    /// Several sidecars sharing a store pace a destination together.
    shared_rate: bool,
    paused_until: Option<Instant>,
}

impl<'a> Worker<'a> {
    /// The worker of destination `name`; `None`, logged, if its URL or TLS
    /// setup is unusable (both were checked when the config was loaded).
    fn new(app: &'a Arc<App>, name: &str) -> Option<Self> {
        let destination = &app.destinations[name];
        let uri: Uri = match destination.config.url.parse() {
            Ok(uri) => uri,
            Err(err) => {
                tracing::error!(destination = %name, error = %err, "the destination url is invalid");
                return None;
            }
        };
        let tls = match crate::workers::tls::client_config(destination.config.ca_file.as_deref()) {
            Ok(tls) => tls,
            Err(err) => {
                tracing::error!(destination = %name, error = %err, "cannot set up TLS");
                return None;
            }
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Some(Self {
            app,
            destination,
            client,
            uri,
            headers: destination_headers(destination),
            bucket: destination
                .config
                .rate_limit
                .map(|limit| TokenBucket::new(limit, destination.config.burst)),
            shared_rate: app.queue.shares_rate(),
            paused_until: None,
        })
    }

    fn name(&self) -> &str {
        &self.destination.config.name
    }

    /// Until when the destination is paused, if it still is: by a
    /// `Retry-After` this worker was told, or another sidecar was.
    async fn paused_until(&mut self) -> Option<Instant> {
        if self.shared_rate {
            let (queue, key) = (self.app.queue.clone(), self.name().to_string());
            if let Ok(Some(until_ms)) = in_store(move || queue.destination_paused_until(&key)).await {
                let wait = Duration::from_millis((until_ms - now_ms()).max(0) as u64);
                let until = Instant::now() + wait;
                self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
            }
        }
        self.paused_until = self.paused_until.filter(|until| *until > Instant::now());
        self.paused_until
    }

    /// Sends `due`, paced by the rate limit and at most `concurrency` at
    /// once, and waits for every send it started. It stops starting sends
    /// when told to stop or when an answer asks for a pause.
    async fn dispatch(&mut self, due: Vec<Delivery>, stopped: &mut watch::Receiver<bool>) -> Vec<Sent> {
        let concurrency = self.destination.config.concurrency;
        let mut in_flight = JoinSet::new();
        let mut sent = Vec::with_capacity(due.len());
        for delivery in due {
            if !self.take_token(stopped).await {
                break;
            }
            while in_flight.len() >= concurrency {
                if let Some(Ok(done)) = in_flight.join_next().await {
                    sent.push(done);
                }
            }
            if let Some(pause) = pause_from(&sent) {
                self.paused_until = Some(pause);
                break;
            }
            self.destination.status.lock().expect("status lock").in_flight = in_flight.len() + 1;
            in_flight.spawn(send(
                self.client.clone(),
                self.uri.clone(),
                self.headers.clone(),
                delivery,
                self.destination.retry.clone(),
            ));
        }
        while let Some(done) = in_flight.join_next().await {
            if let Ok(done) = done {
                sent.push(done);
            }
        }
        self.destination.status.lock().expect("status lock").in_flight = 0;
        sent
    }

    /// Waits for one send of the rate limit; false if told to stop first.
    async fn take_token(&mut self, stopped: &mut watch::Receiver<bool>) -> bool {
        if self.bucket.is_none() {
            return true;
        }
        loop {
            let wait = if self.shared_rate {
                match take_shared_token(self.app, self.destination).await {
                    Ok(taken) => taken,
                    Err(err) => {
                        tracing::error!(destination = %self.name(), error = %err, "cannot take a shared rate token");
                        Err(Duration::from_secs(1))
                    }
                }
            } else {
                self.bucket
                    .as_mut()
                    .expect("checked above")
                    .try_take(Instant::now())
            };
            let Err(wait) = wait else { return true };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => return false,
            }
        }
    }

    /// Pauses the destination for the longest `Retry-After` among `sent`,
    /// shown on the page and shared with every sidecar of the store.
    async fn pause_for(&mut self, sent: &[Sent]) {
        let Some(pause) = pause_from(sent) else { return };
        self.paused_until = Some(self.paused_until.map_or(pause, |p| p.max(pause)));
        let until_ms = now_ms() + pause.saturating_duration_since(Instant::now()).as_millis() as i64;
        self.destination.status.lock().expect("status lock").paused_until = Some(until_ms);
        if self.shared_rate {
            let (queue, key) = (self.app.queue.clone(), self.name().to_string());
            if let Err(err) = in_store(move || queue.pause_destination(&key, until_ms)).await {
                tracing::error!(destination = %self.name(), error = %err, "cannot share the destination's pause");
            }
        }
    }
}

/// Takes one send from the destination's rate limit shared by every sidecar.
async fn take_shared_token(
    app: &Arc<App>,
    destination: &Destination,
) -> Result<Result<(), Duration>, String> {
    let Some(limit) = destination.config.rate_limit else {
        return Ok(Ok(()));
    };
    let (queue, name, burst) = (
        app.queue.clone(),
        destination.config.name.clone(),
        destination.config.burst,
    );
    let interval = Duration::from_secs_f64(1.0 / limit.per_second());
    in_store(move || queue.take_rate_token(&name, interval, burst)).await
}

/// How long to sleep when nothing is due: until the next retry, at most [`IDLE`].
async fn next_wait(app: &Arc<App>, name: &str) -> Duration {
    let queue = app.queue.clone();
    let name = name.to_string();
    match in_store(move || queue.next_due_ms(&name)).await {
        Ok(Some(next)) => Duration::from_millis((next - now_ms()).clamp(1, IDLE.as_millis() as i64) as u64),
        _ => IDLE,
    }
}

/// The destination-wide pause a `Retry-After` asks for, if any answer had
/// one (already capped at the policy's longest backoff).
fn pause_from(sent: &[Sent]) -> Option<Instant> {
    sent.iter()
        .filter_map(|done| done.retry_after)
        .max()
        .and_then(|wait| Instant::now().checked_add(wait))
}

/// The destination's configured headers, parsed once per worker (they
/// were checked when the config was loaded).
fn destination_headers(destination: &Destination) -> Arc<Vec<(HeaderName, HeaderValue)>> {
    let headers = destination
        .config
        .headers
        .iter()
        .filter_map(|(key, value)| {
            Some((
                HeaderName::try_from(key.as_str()).ok()?,
                HeaderValue::try_from(value.as_str()).ok()?,
            ))
        })
        .collect();
    Arc::new(headers)
}

/// Sends one delivery and reports what came back. A `Retry-After` counts
/// only on 429 and 503, and never for longer than the policy's `max-backoff-ms`.
async fn send(
    client: HttpClient,
    uri: Uri,
    extra: Arc<Vec<(HeaderName, HeaderValue)>>,
    delivery: Delivery,
    policy: RetryPolicy,
) -> Sent {
    let timeout_ms = policy.timeout_ms;
    let longest = Duration::from_millis(policy.max_backoff_ms);
    let started = Instant::now();
    let finish = |status, retry_after, detail: String| Sent {
        status,
        retry_after,
        detail,
        elapsed: started.elapsed(),
        delivery: delivery.clone(),
    };
    let (event_id, body) = match stored_body(&delivery) {
        Ok(found) => found,
        Err(err) => return finish(Some(0), None, format!("stored output is not an event: {err}")),
    };
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(CONTENT_TYPE, "application/json")
        .header("idempotency-key", &delivery.idempotency_key)
        .header("x-correlation-id", &delivery.correlation_id)
        .header("x-sluice-tenant", &delivery.tenant)
        .header("x-sluice-channel", &delivery.channel)
        .header("x-sluice-event-id", &event_id)
        .header("x-sluice-source-event-id", &delivery.event_id)
        .header("x-sluice-attempt", (delivery.attempts + 1).to_string())
        .header("x-sluice-module-versions", versions_header(&delivery.versions));
    for (key, value) in extra.iter() {
        request = request.header(key, value);
    }
    let request = match request.body(Full::new(body)) {
        Ok(request) => request,
        Err(err) => return finish(Some(0), None, format!("cannot build the request: {err}")),
    };
    let exchange = async {
        let response = client.request(request).await.map_err(|err| format!("{err:?}"))?;
        let status = response.status().as_u16();
        let wait = response
            .headers()
            .get(RETRY_AFTER)
            .filter(|_| matches!(status, 429 | 503))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, SystemTime::now()))
            .map(|wait| wait.min(longest));
        let body = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let snippet: String = String::from_utf8_lossy(&body).chars().take(SNIPPET).collect();
        Ok::<_, String>((status, wait, snippet))
    };
    match tokio::time::timeout(Duration::from_millis(timeout_ms), exchange).await {
        Ok(Ok((status, wait, snippet))) => finish(Some(status), wait, snippet),
        Ok(Err(err)) => finish(None, None, format!("connection failed: {err}")),
        Err(_) => finish(None, None, format!("no response within {timeout_ms} ms")),
    }
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

/// Decides what one attempt means for its delivery, logs it and counts it.
fn settle(app: &App, destination: &Destination, sent: Sent) -> (Delivery, AttemptResult) {
    let Sent {
        delivery,
        status,
        retry_after,
        detail,
        elapsed,
    } = sent;
    let name = destination.config.name.as_str();
    let attempt_number = delivery.attempts + 1;
    let now = now_ms();
    let attempt = Attempt {
        at_ms: now,
        status,
        detail,
    };
    if !matches!(status, Some(200..=299)) {
        destination.status.lock().expect("status lock").last_error = Some(attempt.clone());
    }
    let (result, outcome) = match status {
        Some(200..=299) => {
            let end_to_end_ms = (now - delivery.received_ms).max(0) as u64;
            (
                AttemptResult::Delivered,
                AttemptOutcome::Delivered { end_to_end_ms },
            )
        }
        None | Some(408 | 425 | 429 | 500..=599) => {
            let policy = &destination.retry;
            let age = Duration::from_millis((now - delivery.created_ms).max(0) as u64);
            if attempt_number >= policy.max_attempts {
                (dead_letter(attempt, "attempts-exhausted"), AttemptOutcome::Failed)
            } else if age >= Duration::from_secs(policy.max_age_secs) {
                (dead_letter(attempt, "too-old"), AttemptOutcome::Failed)
            } else {
                let wait = backoff(policy, attempt_number).max(retry_after.unwrap_or_default());
                let next_ms = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
                (AttemptResult::Retry { attempt, next_ms }, AttemptOutcome::Retry)
            }
        }
        // Not sent at all: the stored output cannot become a request.
        Some(0) => (dead_letter(attempt, "invalid-output"), AttemptOutcome::Failed),
        Some(_) => (
            dead_letter(attempt, "rejected-by-destination"),
            AttemptOutcome::Failed,
        ),
    };
    app.emit(DeliveryAttempted {
        destination: name,
        tenant: &delivery.tenant,
        channel: &delivery.channel,
        event_id: &delivery.event_id,
        correlation_id: &delivery.correlation_id,
        idempotency_key: &delivery.idempotency_key,
        attempt: attempt_number,
        status,
        elapsed,
        outcome,
    });
    if let AttemptResult::DeadLetter { reason, .. } = &result {
        app.emit(DeadLettered {
            stage: Stage::Delivery,
            tenant: &delivery.tenant,
            channel: &delivery.channel,
            event_id: &delivery.event_id,
            correlation_id: &delivery.correlation_id,
            destination: Some(name),
            reason,
        });
    }
    (delivery, result)
}

fn dead_letter(attempt: Attempt, reason: &str) -> AttemptResult {
    AttemptResult::DeadLetter {
        attempt,
        reason: reason.into(),
    }
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
