//! The transform worker of one channel: takes the oldest events from the
//! channel's queue, runs them through its pipeline as one batch, and
//! records each result atomically with its removal from the queue: emitted
//! events go to the outbox, rejections and faults to dead letters.
//!
//! A crash between the pipeline and the commit re-runs the batch after
//! restart; the pipeline is deterministic, so the outputs and their
//! idempotency keys are the same. State a step writes (contract 0.2) is
//! committed with the outcomes, so a re-run reads what the first run read.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::observe::events::{DeadLettered, Emitted, Stage};
use crate::observe::story::{StoryEntry, StoryKind};
use crate::state::{App, Channel};
use crate::store::in_store;
use crate::store::{Disposition, NewDelivery, Pending, Transformed, idempotency_key};
use sluice_engine::FaultKind;
use sluice_engine::event::{EventJson, OutcomeJson};

/// Events taken from the queue per pipeline run.
const BATCH: usize = 128;
/// Longest wait for new work before looking again.
const IDLE: Duration = Duration::from_millis(250);
/// Wait before trying again a batch whose state could not be read.
const STATE_RETRY: Duration = Duration::from_secs(2);

/// Runs until `stopped` turns true; the batch in hand is finished first.
///
/// Three batches are in hand at once: while one batch is transformed, the
/// next is read and the previous one's results are committed. Results are
/// committed only after the previous commit succeeded, so the outbox keeps
/// queue order. If a commit fails, the results in hand and the batch read
/// ahead are dropped and the worker reads again from the start of the
/// queue (the pipeline is deterministic).
pub async fn run(app: Arc<App>, name: String, mut stopped: watch::Receiver<bool>) {
    let Some(channel) = app.channels.get(&name) else {
        // Deleted before its worker started: wait for the fleet to stop it
        // (returning would look like a death to the supervisor).
        let _ = stopped.wait_for(|stop| *stop).await;
        return;
    };
    let mut after = 0;
    let mut committing: Option<tokio::task::JoinHandle<Result<(), String>>> = None;
    let mut read_ahead: Option<tokio::task::JoinHandle<Result<Vec<Pending>, String>>> = None;
    let read = |after: i64| {
        let queue = app.queue.clone();
        let key = name.clone();
        tokio::spawn(in_store(move || queue.pending(&key, after, BATCH)))
    };
    loop {
        if *stopped.borrow() {
            if let Some(commit) = committing.take() {
                finish_commit(&name, commit).await;
            }
            return;
        }
        let next = read_ahead.take();
        let pending = if channel.enabled() && !channel.awaiting_activation() {
            next.unwrap_or_else(|| read(after))
                .await
                .unwrap_or_else(|join| Err(join.to_string()))
                .unwrap_or_else(|err| {
                    tracing::error!(channel = %name, error = %err, "cannot read the channel's queue");
                    Vec::new()
                })
        } else {
            Vec::new()
        };
        if pending.is_empty() {
            if let Some(commit) = committing.take() {
                if !finish_commit(&name, commit).await {
                    after = 0;
                }
                app.wake_channel(&channel);
                continue;
            }
            after = 0;
            tokio::select! {
                () = channel.wake.notified() => {}
                () = tokio::time::sleep(IDLE) => {}
                _ = stopped.changed() => {}
            }
            continue;
        }
        let last = pending.last().map_or(after, |p| p.seq);
        if pending.len() == BATCH {
            read_ahead = Some(read(last));
        }
        // A stateful pipeline reads what the previous batch wrote: its
        // commit must land first.
        let stateful = channel.pipeline().stateful()
            || channel.shadow().is_some_and(|shadow| shadow.pipeline.stateful());
        if stateful && !settle(&app, &channel, &mut committing).await {
            read_ahead = None;
            after = 0;
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let Some(results) = transform(&app, &channel, pending).await else {
            // The state cannot be read: nothing was decided; the batch stays queued.
            read_ahead = None;
            after = 0;
            tokio::time::sleep(STATE_RETRY).await;
            continue;
        };
        if !settle(&app, &channel, &mut committing).await {
            read_ahead = None;
            after = 0;
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        after = last;
        let queue = app.queue.clone();
        committing = Some(tokio::spawn(in_store(move || queue.transformed(results))));
    }
}

/// Waits for the commit in hand, if any, and wakes the channel's
/// deliveries; false if it failed (the worker then reads from the start).
async fn settle(
    app: &App,
    channel: &Channel,
    committing: &mut Option<tokio::task::JoinHandle<Result<(), String>>>,
) -> bool {
    let Some(commit) = committing.take() else {
        return true;
    };
    let committed = finish_commit(&channel.name, commit).await;
    app.wake_channel(channel);
    committed
}

/// Waits for a commit of transform results; false if it failed.
async fn finish_commit(name: &str, commit: tokio::task::JoinHandle<Result<(), String>>) -> bool {
    let committed = commit.await.unwrap_or_else(|join| Err(join.to_string()));
    if let Err(err) = &committed {
        tracing::error!(channel = %name, error = %err, "cannot record transform results; retrying");
    }
    committed.is_ok()
}

/// Bytes of a batch's events parsed, and of its outputs serialised and
/// hashed, on the async thread that runs the worker; a larger batch does
/// that work on a blocking thread.
const INLINE_BYTES: usize = 64 << 10;

/// Runs one batch through the channel's pipeline and decides where each
/// goes. The batch takes the active pipeline once: an activation meanwhile
/// applies from the next batch, and the versions recorded are the ones that ran.
/// `None` when the pipeline keeps state and the state cannot be read.
async fn transform(
    app: &Arc<App>,
    channel: &Arc<Channel>,
    pending: Vec<Pending>,
) -> Option<Vec<Transformed>> {
    let pipeline = channel.pipeline();
    let context = match app.state_context(channel, &pipeline).await {
        Ok(context) => context,
        Err(err) => {
            tracing::error!(channel = %channel.name, error = %err, "cannot read the channel's state; the batch waits");
            return None;
        }
    };
    let versions = crate::state::versions(&pipeline);
    let bytes: usize = pending.iter().map(|p| p.event.len()).sum();
    let (runnable, inputs, mut results) = off_async_if_large(bytes, {
        let (name, tenant, versions) = (channel.name.clone(), channel.tenant.clone(), versions.clone());
        move || parse_batch(&name, &tenant, pending, &versions)
    })
    .await;
    let ran = match app
        .run_pipeline(channel, pipeline, inputs, "ingest", context)
        .await
    {
        Ok(ran) => ran,
        // The pipeline isolates module faults; a panic here is a host bug.
        // Let it end this worker: the supervisor logs, counts and restarts
        // it, and the batch, never committed, is read again.
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => {
            tracing::error!(channel = %channel.name, error = %join, "the pipeline task was cancelled");
            return Some(results);
        }
    };
    // The state store did not answer in time: no event's answer, so
    // nothing of the batch is kept, and it runs again.
    if let Some(unavailable) = ran.outcomes.iter().find_map(|outcome| match outcome {
        OutcomeJson::Error { error } if matches!(error.kind, FaultKind::StateUnavailable { .. }) => {
            Some(error)
        }
        _ => None,
    }) {
        tracing::error!(channel = %channel.name, error = %unavailable, "the channel's state could not be read; the batch waits");
        return None;
    }
    let faults: Vec<Option<String>> = ran
        .outcomes
        .iter()
        .map(|outcome| match outcome {
            OutcomeJson::Error { error } => Some(error.to_string()),
            _ => None,
        })
        .collect();
    app.record_faults(channel, &faults);
    let output_bytes: usize = ran.outcomes.iter().map(OutcomeJson::approx_bytes).sum();
    let decided = off_async_if_large(output_bytes, {
        // The channel this batch ran for, even if it was replaced meanwhile.
        let (app, channel) = (app.clone(), channel.clone());
        move || dispositions(&app, &channel, runnable, ran, &versions)
    })
    .await;
    results.extend(decided);
    Some(results)
}

/// Runs `work` here if `bytes` is small, else on a blocking thread.
async fn off_async_if_large<T: Send + 'static>(bytes: usize, work: impl FnOnce() -> T + Send + 'static) -> T {
    if bytes <= INLINE_BYTES {
        return work();
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// The batch's events as the channel runs them, with the items they came
/// from; a row that does not parse (stored only after the same parse at
/// ingest: a corrupt row) is a dead letter at once.
fn parse_batch(
    channel: &str,
    tenant: &str,
    pending: Vec<Pending>,
    versions: &[String],
) -> (Vec<Pending>, Vec<EventJson>, Vec<Transformed>) {
    let mut inputs = Vec::with_capacity(pending.len());
    let mut results = Vec::new();
    let mut runnable = Vec::with_capacity(pending.len());
    for item in pending {
        match serde_json::from_str::<EventJson>(&item.event) {
            Ok(mut event) => {
                event.channel = channel.to_string();
                event.tenant = tenant.to_string();
                inputs.push(event);
                runnable.push(item);
            }
            Err(err) => results.push(Transformed {
                seq: item.seq,
                channel: channel.to_string(),
                tenant: tenant.to_string(),
                event_id: String::new(),
                original: item.event.clone(),
                received_ms: item.received_ms,
                versions: versions.to_vec(),
                disposition: Disposition::DeadLetter {
                    reason: "invalid-event".into(),
                    detail: Value::String(err.to_string()),
                },
                state: Default::default(),
            }),
        }
    }
    (runnable, inputs, results)
}

/// Where each event of a run goes: its deliveries (serialised, keyed and
/// hashed for idempotency), a dead letter, or nowhere.
fn dispositions(
    app: &App,
    channel: &Channel,
    runnable: Vec<Pending>,
    ran: crate::state::Ran,
    versions: &[String],
) -> Vec<Transformed> {
    let from_candidate = |index: usize| {
        ran.canary
            .as_ref()
            .filter(|pick| pick.from_candidate[index])
            .map(|pick| pick.versions.clone())
    };
    // A tenant's channel delivers only to that tenant's own destination.
    let destination = channel
        .destination
        .as_ref()
        .and_then(|d| app.destinations.get(d))
        .filter(|d| channel.owned.is_none() || d.owned.as_ref().is_some_and(|o| o.tenant == channel.tenant));
    let mut results = Vec::with_capacity(runnable.len());
    let mut writes = ran.writes.into_iter();
    for (index, ((item, input), outcome)) in runnable
        .into_iter()
        .zip(&ran.events)
        .zip(&ran.outcomes)
        .enumerate()
    {
        let state = writes.next().unwrap_or_default();
        let disposition = match outcome {
            OutcomeJson::Drop { .. } => Disposition::Dropped,
            OutcomeJson::Reject { violations } => dead_letter(app, channel, input, "rejected", violations),
            OutcomeJson::Error { error } => dead_letter(app, channel, input, "fault", error),
            // A channel for synchronous transforms only delivers nothing.
            OutcomeJson::Emit { .. } if channel.destination.is_none() => Disposition::Dropped,
            OutcomeJson::Partial { violations, .. } if channel.destination.is_none() => {
                dead_letter(app, channel, input, "rejected", violations)
            }
            // Its destination is gone: kept as a dead letter, never dropped.
            OutcomeJson::Emit { .. } | OutcomeJson::Partial { .. } if destination.is_none() => dead_letter(
                app,
                channel,
                input,
                "no-destination",
                &format!(
                    "destination `{}` no longer exists",
                    channel.destination.as_deref().unwrap_or_default()
                ),
            ),
            OutcomeJson::Emit { events } => {
                let destination = destination.as_ref().expect("checked by the arm above");
                app.emit(Emitted {
                    channel: &channel.name,
                    count: events.len(),
                });
                Disposition::Deliver(deliveries(destination, channel, input, events))
            }
            OutcomeJson::Partial { events, violations } => {
                let destination = destination.as_ref().expect("checked by the arm above");
                app.emit(Emitted {
                    channel: &channel.name,
                    count: events.len(),
                });
                let Disposition::DeadLetter { detail, .. } =
                    dead_letter(app, channel, input, "rejected", violations)
                else {
                    unreachable!("dead_letter makes a dead letter")
                };
                Disposition::Partial {
                    deliveries: deliveries(destination, channel, input, events),
                    detail,
                }
            }
        };
        if app.stories.config().enabled {
            record_transformed(app, channel, input, outcome, &disposition, versions);
        }
        results.push(Transformed {
            seq: item.seq,
            channel: channel.name.clone(),
            tenant: input.tenant.clone(),
            event_id: input.id.clone(),
            original: item.event,
            received_ms: item.received_ms,
            versions: from_candidate(index).unwrap_or_else(|| versions.to_vec()),
            disposition,
            state,
        });
    }
    results
}

/// Most emitted events or violations one story entry lists.
const STORY_LIST: usize = 50;

/// The event's story entry of this run: what the pipeline returned (with
/// every step's version, the events it emitted by id, or its violations or
/// fault) and the deliveries it queued, found by the first one's entity
/// key; a delivery of another key adds a `queued` entry for that key. The
/// bodies are kept once, with the attempts that send them.
fn record_transformed(
    app: &App,
    channel: &Channel,
    input: &EventJson,
    outcome: &OutcomeJson,
    disposition: &Disposition,
    versions: &[String],
) {
    let listed = |events: &[EventJson]| -> Value {
        events
            .iter()
            .take(STORY_LIST)
            .map(|e| json!({"id": e.id, "kind": e.kind}))
            .collect()
    };
    let capped = |value: Value| match value {
        Value::Array(mut items) => {
            items.truncate(STORY_LIST);
            Value::Array(items)
        }
        other => other,
    };
    let deliveries = disposition.deliveries();
    let mut detail = json!({"outcome": outcome.tag(), "versions": versions});
    match outcome {
        OutcomeJson::Emit { events } => detail["events"] = listed(events),
        OutcomeJson::Drop { reason } => detail["reason"] = json!(reason),
        OutcomeJson::Reject { violations } => {
            detail["violations"] = capped(serde_json::to_value(violations).unwrap_or_default());
        }
        OutcomeJson::Partial { events, violations } => {
            detail["events"] = listed(events);
            detail["violations"] = capped(serde_json::to_value(violations).unwrap_or_default());
        }
        OutcomeJson::Error { error } => detail["fault"] = serde_json::to_value(error).unwrap_or_default(),
    }
    if !deliveries.is_empty() {
        detail["deliveries"] = deliveries
            .iter()
            .take(STORY_LIST)
            .map(|d| json!({"destination": d.destination, "output_id": d.output_id, "entity_key": d.entity_key, "idempotency_key": d.idempotency_key}))
            .collect();
    }
    let mut entry =
        StoryEntry::new(&input.tenant, &input.id, StoryKind::Transformed, detail).on(&channel.name);
    if let Some(first) = deliveries.first() {
        entry = entry.about(&first.entity_key);
    }
    app.stories.record(entry);
    let mut keys: Vec<&str> = deliveries
        .first()
        .map(|d| d.entity_key.as_str())
        .into_iter()
        .collect();
    for delivery in deliveries {
        if keys.contains(&delivery.entity_key.as_str()) || keys.len() > STORY_LIST {
            continue;
        }
        keys.push(&delivery.entity_key);
        app.stories.record(
            StoryEntry::new(
                &input.tenant,
                &input.id,
                StoryKind::Queued,
                json!({"destination": delivery.destination, "output_id": delivery.output_id, "idempotency_key": delivery.idempotency_key}),
            )
            .on(&channel.name)
            .about(&delivery.entity_key),
        );
    }
}

/// The outbox entries of one input event's emitted events.
fn deliveries(
    destination: &crate::state::Destination,
    channel: &Channel,
    input: &EventJson,
    events: &[EventJson],
) -> Vec<NewDelivery> {
    let correlation_id = input.correlation_id.clone().unwrap_or_else(|| input.id.clone());
    // A trace the event continues goes with its outputs, for their deliveries.
    let traceparent = input.headers.get("traceparent");
    events
        .iter()
        .map(|emitted| {
            let output = match traceparent {
                Some(trace) if emitted.headers.get("traceparent") != Some(trace) => {
                    let mut traced = emitted.clone();
                    traced.headers.insert("traceparent".into(), trace.clone());
                    serde_json::to_string(&traced).unwrap_or_default()
                }
                _ => serde_json::to_string(emitted).unwrap_or_default(),
            };
            NewDelivery {
                payload_at: NewDelivery::payload_offset(&output, emitted.payload.get()),
                output_id: emitted.id.clone(),
                kind: emitted.kind.clone(),
                destination: destination.config.name.clone(),
                entity_key: destination.entity_key.of(&emitted.payload, &emitted.id),
                idempotency_key: idempotency_key(
                    &destination.config.name,
                    &input.tenant,
                    &channel.name,
                    &input.id,
                    &output,
                ),
                correlation_id: emitted
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| correlation_id.clone()),
                output,
            }
        })
        .collect()
}

fn dead_letter(
    app: &App,
    channel: &Channel,
    input: &EventJson,
    reason: &str,
    detail: &impl serde::Serialize,
) -> Disposition {
    app.emit(DeadLettered {
        stage: Stage::Transform,
        tenant: &input.tenant,
        channel: &channel.name,
        event_id: &input.id,
        correlation_id: input.correlation_id.as_deref().unwrap_or(&input.id),
        destination: None,
        reason,
    });
    Disposition::DeadLetter {
        reason: reason.into(),
        detail: serde_json::to_value(detail).unwrap_or(Value::Null),
    }
}
