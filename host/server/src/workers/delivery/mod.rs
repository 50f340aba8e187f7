//! The delivery worker of one destination: sends due outbox entries (see
//! [`send`]: a URL per payload, the destination's method, credential and
//! signature), paced by the destination's token bucket, and records each
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

mod send;
mod shares;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::HeaderName;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::InlineSecrets;
use crate::observe::events::{AttemptOutcome, DeadLettered, DeliveryAttempted, NotSent, Stage};
use crate::observe::story::{StoryEntry, StoryKind};
use crate::outbound::auth::{AuthError, Authenticator};
use crate::outbound::sign::Signer;
use crate::state::{App, Destination};
use crate::store::in_store;
use crate::store::{Attempt, AttemptResult, Delivery, now_ms};
use crate::workers::backoff::{TokenBucket, backoff};
use send::{Outbound, Sent, send};
use serde_json::json;

/// The most a followed rate may be without a `rate-limit`, per second.
const UNCONFIGURED_RATE: f64 = 1000.0;
/// Longest wait for new work before looking again.
const IDLE: Duration = Duration::from_millis(250);
/// Shortest wait when nothing is due on a coalescing destination.
const COALESCED_IDLE: Duration = Duration::from_millis(50);

/// Runs until `stopped` turns true; requests in flight finish and are recorded first.
pub async fn run(app: Arc<App>, name: String, mut stopped: watch::Receiver<bool>) {
    if !app.destinations.contains_key(&name) {
        // Deleted: wait for the fleet to stop it (returning would look like
        // a death to the supervisor, which would restart it).
        let _ = stopped.wait_for(|stop| *stop).await;
        return;
    }
    // Unusable (logged): returning makes it a worker that is down on /readyz.
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
        let limit = worker.destination.config.concurrency * 8;
        let (queue, key, coalesce) = (
            app.queue.clone(),
            name.clone(),
            worker.destination.config.coalesce,
        );
        let due = in_store(move || queue.due(&key, now_ms(), limit, coalesce))
            .await
            .unwrap_or_else(|err| {
                tracing::error!(destination = %name, error = %err, "cannot read the outbox");
                Vec::new()
            });
        if due.is_empty() {
            // A coalescing store may have superseded some as they arrived.
            report_not_sent(&app, &name, BTreeMap::new());
            // Coalescing, a key waits for the backoff of all of its
            // deliveries, which the earliest due time does not show: no
            // spinning on it.
            let floor = if coalesce { COALESCED_IDLE } else { Duration::ZERO };
            let idle = next_wait(&app, &name).await.max(floor);
            tokio::select! {
                () = worker.destination.wake.notified() => {}
                () = async { signal.as_ref().expect("checked").notified().await }, if signal.is_some() => {}
                () = tokio::time::sleep(idle) => {}
                _ = stopped.changed() => {}
            }
            continue;
        }
        // The store gives up to `limit` of each kind; a round takes `limit`.
        let mut due = shares::by_shares(due, &worker.destination.config.priority);
        due.truncate(limit);
        let (due, unchanged, mut fingerprints) = worker.split_unchanged(due).await;
        let sent = worker.dispatch(due, &mut stopped).await;
        worker.pause_for(&sent).await;
        worker.learn(&sent).await;
        let mut results: Vec<(Delivery, AttemptResult)> = sent
            .into_iter()
            .map(|done| {
                let fingerprint = fingerprints.remove(&done.delivery.seq);
                settle(&app, &worker.destination, done, fingerprint)
            })
            .collect();
        let mut not_sent: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for delivery in unchanged {
            not_sent.entry(delivery.channel.clone()).or_default().1 += 1;
            app.stories.record(
                StoryEntry::new(
                    &delivery.tenant,
                    &delivery.event_id,
                    StoryKind::Unchanged,
                    json!({"destination": name, "output_id": delivery.output_id}),
                )
                .on(&delivery.channel)
                .about(&delivery.entity_key),
            );
            results.push((delivery, AttemptResult::Unchanged));
        }
        let queue = app.queue.clone();
        if let Err(err) = in_store(move || queue.attempted(results)).await {
            // Unrecorded sends are repeated later with the same key.
            tracing::error!(destination = %name, error = %err, "cannot record delivery attempts");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        report_not_sent(&app, &name, not_sent);
    }
}

/// Counts what was not sent: `unchanged` per channel, and what the store
/// superseded since it was last asked.
fn report_not_sent(app: &App, destination: &str, mut not_sent: BTreeMap<String, (u64, u64)>) {
    for (channel, n) in app.queue.take_superseded(destination) {
        not_sent.entry(channel).or_default().0 += n;
    }
    for replaced in app.queue.take_superseded_deliveries(destination) {
        app.stories.record(
            StoryEntry::new(
                &replaced.tenant,
                &replaced.event_id,
                StoryKind::Superseded,
                json!({"destination": destination}),
            )
            .on(&replaced.channel)
            .about(&replaced.entity_key),
        );
    }
    for (channel, (superseded, unchanged)) in not_sent {
        app.emit(NotSent {
            destination,
            channel: &channel,
            superseded,
            unchanged,
        });
    }
}

/// One destination's worker: its requests' shared parts, its credential,
/// its pacing and its pause.
struct Worker<'a> {
    app: &'a Arc<App>,
    destination: Arc<Destination>,
    out: Arc<Outbound>,
    auth: Option<Authenticator>,
    bucket: Option<TokenBucket>,
    /// The most the bucket's rate may be: `rate-limit`, and the rate last announced.
    rate_cap: f64,
    /// Several sidecars sharing a store pace a destination together.
    shared_rate: bool,
    paused_until: Option<Instant>,
}

impl<'a> Worker<'a> {
    /// The worker of destination `name`; `None`, logged, if its TLS,
    /// credential or signature setup is unusable (each was checked when
    /// the sidecar started).
    fn new(app: &'a Arc<App>, name: &str) -> Option<Self> {
        let destination = app.destinations.get(name)?;
        let setup = || -> Result<(Outbound, Option<Authenticator>), String> {
            let config = &destination.config;
            // A tenant's destination reaches only the addresses the policy allows.
            let policy = destination.owned.is_some().then(|| app.network_policy.clone());
            let client = crate::outbound::client(config.ca_file.as_deref(), policy)?;
            let none = InlineSecrets::default();
            let secrets = destination.owned.as_ref().map_or(&none, |owned| &owned.secrets);
            let auth = match &config.auth {
                Some(auth) => Some(Authenticator::new(auth, secrets, Path::new("."), client.clone())?),
                None => None,
            };
            let signer = match &config.sign {
                Some(sign) => Some(Signer::new(sign, secrets, Path::new("."))?),
                None => None,
            };
            let rate_header = match &config.rate_limit_header {
                Some(header) => Some(HeaderName::try_from(header.as_str()).map_err(|err| err.to_string())?),
                None => None,
            };
            let out = Outbound {
                client,
                target: destination.target.clone(),
                method: destination.method.clone(),
                allowed: config.allowed_methods(),
                headers: Outbound::headers_of(&destination),
                signer,
                rate_header,
                stories: app.stories.config().enabled.then(|| app.stories.clone()),
            };
            Ok((out, auth))
        };
        let (out, auth) = match setup() {
            Ok(found) => found,
            Err(err) => {
                tracing::error!(destination = %name, error = %err, "the destination cannot be set up");
                return None;
            }
        };
        let config = &destination.config;
        let rate_cap = config
            .rate_limit
            .map_or(UNCONFIGURED_RATE, |limit| limit.per_second());
        let bucket = match (config.rate_limit, &config.rate_limit_header) {
            (Some(limit), _) => Some(TokenBucket::new(limit, config.burst)),
            // Following an announced rate needs a bucket even with no configured one.
            (None, Some(_)) => Some(TokenBucket::new(
                crate::config::RateLimit {
                    count: UNCONFIGURED_RATE as u32,
                    per: Duration::from_secs(1),
                },
                config.burst,
            )),
            (None, None) => None,
        };
        Some(Self {
            app,
            destination,
            out: Arc::new(out),
            auth,
            bucket,
            rate_cap,
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

    /// With `skip-unchanged`, takes out of `due` the deliveries whose
    /// method, URL and body equal what the destination last accepted for
    /// their (channel, entity key), unless resent by hand; the rest, the
    /// unchanged ones, and the fingerprint of each of the rest by position.
    async fn split_unchanged(
        &self,
        due: Vec<Delivery>,
    ) -> (Vec<Delivery>, Vec<Delivery>, HashMap<i64, String>) {
        let mut prints = HashMap::new();
        if !self.destination.config.skip_unchanged || due.is_empty() {
            return (due, Vec::new(), prints);
        }
        let keys: Vec<(String, String)> = due
            .iter()
            .map(|d| (d.channel.clone(), d.entity_key.clone()))
            .collect();
        let (queue, name, count) = (self.app.queue.clone(), self.name().to_string(), due.len());
        // Unreadable: everything is sent, which costs requests and loses nothing.
        let stored = in_store(move || queue.fingerprints(&name, &keys))
            .await
            .unwrap_or_else(|err| {
                tracing::error!(destination = %self.name(), error = %err, "cannot read fingerprints; sending anyway");
                vec![None; count]
            });
        let (mut send, mut unchanged) = (Vec::new(), Vec::new());
        for (delivery, last) in due.into_iter().zip(stored) {
            let print = self.out.fingerprint(&delivery);
            if !delivery.replayed && print.is_some() && print == last {
                unchanged.push(delivery);
                continue;
            }
            if let Some(print) = print {
                prints.insert(delivery.seq, print);
            }
            send.push(delivery);
        }
        (send, unchanged, prints)
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
            let credential = match &self.auth {
                None => None,
                Some(auth) => match auth.header().await {
                    Ok(credential) => Some(credential),
                    // The token endpoint fails: nothing is sent, so no
                    // delivery spends an attempt or becomes a dead letter.
                    Err(AuthError::TokenEndpoint { retry_in, .. }) => {
                        let until = Instant::now() + retry_in;
                        self.paused_until = Some(until);
                        self.destination.status.lock().expect("status lock").paused_until =
                            Some(now_ms() + retry_in.as_millis() as i64);
                        break;
                    }
                },
            };
            self.destination.status.lock().expect("status lock").in_flight = in_flight.len() + 1;
            // Only a token that can be renewed is taken for expired on a 401.
            let renews = self.auth.as_ref().is_some_and(Authenticator::renews);
            let credential = credential.map(|c| (c, renews));
            self.app.enter_flight(&delivery);
            in_flight.spawn(send(
                self.out.clone(),
                delivery,
                credential,
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
                let rate = self.bucket.as_ref().expect("checked above").rate();
                match take_shared_token(self.app, &self.destination, rate).await {
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

    /// Drops a token the destination said has expired, and follows the
    /// rate it announces: never above `rate-limit`, halved by every 429,
    /// and back up by 5 % per success.
    async fn learn(&mut self, sent: &[Sent]) {
        if let Some(auth) = &self.auth {
            for used in sent.iter().filter_map(|done| done.expired.as_ref()) {
                auth.expired(used).await;
            }
        }
        if self.out.rate_header.is_none() {
            return;
        }
        let Some(bucket) = self.bucket.as_mut() else {
            return;
        };
        let mut rate = bucket.rate();
        for done in sent {
            if let Some(announced) = done.announced_rate {
                let configured = self
                    .destination
                    .config
                    .rate_limit
                    .map_or(UNCONFIGURED_RATE, |limit| limit.per_second());
                self.rate_cap = announced.min(configured);
                rate = self.rate_cap;
            }
            rate = match done.status {
                Some(429) => rate / 2.0,
                Some(200..=299) => (rate * 1.05).min(self.rate_cap),
                _ => rate,
            };
        }
        let rate = rate.min(self.rate_cap);
        if (rate - bucket.rate()).abs() > f64::EPSILON {
            tracing::info!(destination = %self.destination.config.name, per_second = rate, "the delivery rate follows the destination");
            bucket.set_rate(Instant::now(), rate);
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
    per_second: f64,
) -> Result<Result<(), Duration>, String> {
    let (queue, name, burst) = (
        app.queue.clone(),
        destination.config.name.clone(),
        destination.config.burst,
    );
    let interval = Duration::from_secs_f64(1.0 / per_second.max(crate::workers::backoff::MIN_RATE));
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

/// Decides what one attempt means for its delivery, logs it and counts it.
fn settle(
    app: &App,
    destination: &Destination,
    sent: Sent,
    fingerprint: Option<String>,
) -> (Delivery, AttemptResult) {
    let Sent {
        delivery,
        status,
        retry_after,
        detail,
        elapsed,
        expired,
        exchange,
        trace,
        span,
        ..
    } = sent;
    app.leave_flight(&delivery);
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
                AttemptResult::Delivered { fingerprint },
                AttemptOutcome::Delivered { end_to_end_ms },
            )
        }
        // An expired token is renewed, and the delivery tried again with the new one.
        _ if expired.is_some() || matches!(status, None | Some(408 | 425 | 429 | 500..=599)) => {
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
        Some(_) | None => (
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
        trace,
        span,
        entity_key: &delivery.entity_key,
    });
    if app.stories.config().enabled {
        let (request, response) = match &exchange {
            Some((request, response)) => (Some(&**request), response.as_deref()),
            None => (None, None),
        };
        let (result_name, next_ms) = match &result {
            AttemptResult::Delivered { .. } => ("delivered", None),
            AttemptResult::Retry { next_ms, .. } => ("retry", Some(*next_ms)),
            _ => ("dead-letter", None),
        };
        let detail = AttemptDetail {
            destination: name,
            attempt: attempt_number,
            result: result_name,
            status,
            elapsed_ms: elapsed.as_millis() as u64,
            next_ms,
            request,
            response,
            error: response
                .is_none()
                .then(|| attempt_detail(&result))
                .filter(|_| !matches!(status, Some(200..=299))),
        };
        let detail = serde_json::value::to_raw_value(&detail).expect("an attempt serialises");
        app.stories.record(
            StoryEntry::with_detail(&delivery.tenant, &delivery.event_id, StoryKind::Attempt, detail)
                .on(&delivery.channel)
                .about(&delivery.entity_key),
        );
    }
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

/// One attempt as its event's story tells it.
#[derive(serde::Serialize)]
struct AttemptDetail<'a> {
    destination: &'a str,
    attempt: u32,
    result: &'a str,
    status: Option<u16>,
    elapsed_ms: u64,
    next_ms: Option<i64>,
    request: Option<&'a serde_json::value::RawValue>,
    response: Option<&'a serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// What an attempt's record says (a connection error, a refusal to send).
fn attempt_detail(result: &AttemptResult) -> &str {
    match result {
        AttemptResult::Retry { attempt, .. } | AttemptResult::DeadLetter { attempt, .. } => &attempt.detail,
        _ => "",
    }
}

fn dead_letter(attempt: Attempt, reason: &str) -> AttemptResult {
    AttemptResult::DeadLetter {
        attempt,
        reason: reason.into(),
    }
}
