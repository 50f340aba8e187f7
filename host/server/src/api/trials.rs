//! Changing a channel safely: a shadow (`/v1/channels/{name}/shadow`,
//! with `?canary=N` a canary) and its promotion, a backfill over the
//! ingest log (`…/backfill`), and live events recorded as fixture cases
//! (`…/record`).

use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use crate::api::channels::{make_active, read_candidate};
use crate::api::http::{ApiError, Body, json_response, query_number, read_body};
use crate::change::backfill::{Backfill, ChannelEvents};
use crate::change::record::{MAX_RECORDED, Recording, cases};
use crate::change::redact::Redactor;
use crate::change::shadow::Shadow;
use crate::state::App;
use crate::state::auth::Caller;
use crate::store::StoredQuery;

/// `POST /v1/channels/{name}/shadow[?canary=N]`: starts running every event
/// of the channel through the candidate in the body as well (replacing a
/// shadow already running). Its outcomes are compared, never delivered,
/// except for a canary's share of entities.
pub async fn start(
    app: &App,
    caller: &Caller,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let channel = &*channel;
    let canary_percent = query_number::<u8>(&request, "canary", "invalid-canary")?.unwrap_or(0);
    if canary_percent > 100 {
        return Err(ApiError::bad_request(
            "invalid-canary",
            format!("`canary` must be a whole per cent from 0 to 100, not `{canary_percent}`"),
            None,
        ));
    }
    if canary_percent > 0 && app.queue.changes().is_some() {
        // A shadow lives on one node; the other nodes would deliver the
        // same entity's events on the current version.
        return Err(ApiError::bad_request(
            "invalid-canary",
            "a canary needs every node to pick alike, and shadows live on one node of a cluster: \
             run a plain shadow, or a canary on a single sidecar",
            None,
        ));
    }
    if canary_percent > 0 && channel.destination.is_none() {
        return Err(ApiError::bad_request(
            "invalid-canary",
            format!("channel `{name}` delivers nowhere: a canary needs a destination; run a plain shadow"),
            None,
        ));
    }
    let (spec, pipeline) = read_candidate(app, channel, request).await?;
    let shadow = Arc::new(Shadow {
        spec,
        // Its own instances: a guest's state must not pass between versions.
        pipeline: pipeline.isolated(),
        canary_percent,
        started_ms: crate::store::now_ms(),
        comparison: Mutex::default(),
    });
    let report = shadow.report();
    channel.set_shadow(Some(shadow));
    tracing::info!(channel = %channel.name, tenant = %channel.tenant, canary_percent, candidate = %report["candidate"], "shadow started");
    Ok(json_response(StatusCode::CREATED, &report))
}

/// `GET /v1/channels/{name}/shadow`: how the candidate compares so far.
pub async fn report(app: &App, caller: &Caller, name: &str) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let channel = &*channel;
    let shadow = channel.shadow().ok_or_else(|| no_shadow(name))?;
    Ok(json_response(StatusCode::OK, &shadow.report()))
}

/// `DELETE /v1/channels/{name}/shadow`: stops the shadow; answers its last report.
pub async fn stop(app: &App, caller: &Caller, name: &str) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let channel = &*channel;
    let shadow = channel.set_shadow(None).ok_or_else(|| no_shadow(name))?;
    tracing::info!(channel = %channel.name, tenant = %channel.tenant, "shadow stopped");
    Ok(json_response(StatusCode::OK, &shadow.report()))
}

/// `POST /v1/channels/{name}/shadow/promote`: activates the candidate (as
/// `activate` would, so `rollback` undoes it) and stops the shadow.
pub async fn promote(app: &App, caller: &Caller, name: &str) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let channel = &*channel;
    // Taken before activating: a second promote (a client's retry) or a
    // stop meanwhile finds no shadow instead of activating it twice.
    let shadow = channel.set_shadow(None).ok_or_else(|| no_shadow(name))?;
    if let Err(err) = make_active(app, channel, &shadow.spec, shadow.pipeline.clone()).await {
        // Not activated: it goes on, unless another shadow started meanwhile.
        if channel.shadow().is_none() {
            channel.set_shadow(Some(shadow));
        }
        return Err(err);
    }
    let mut answer = crate::api::channels::describe(app, channel).await?;
    answer["promoted"] = json!(shadow.report());
    Ok(json_response(StatusCode::OK, &answer))
}

fn no_shadow(name: &str) -> ApiError {
    ApiError::not_found(
        "no-shadow",
        format!("channel `{name}` runs no shadow: start one with POST /v1/channels/{name}/shadow"),
    )
}

/// `POST /v1/channels/{name}/backfill[?since-ms=T][&limit=N]`: runs the
/// stored events of the channel (received since `T`, at most `N`) through
/// the candidate in the body and the current pipeline, in the background,
/// delivering nothing. One at a time per channel.
pub async fn start_backfill(
    app: &Arc<App>,
    caller: &Caller,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let channel = &*channel;
    let since_ms = query_number::<u64>(&request, "since-ms", "invalid-backfill")?
        .map_or(0, |ms| i64::try_from(ms).unwrap_or(i64::MAX));
    let limit = query_number::<u64>(&request, "limit", "invalid-backfill")?;
    if channel
        .backfill
        .lock()
        .expect("backfill lock")
        .as_ref()
        .is_some_and(|b| b.running())
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "backfill-running",
            format!("channel `{name}` is running a backfill: follow it with GET or cancel it with DELETE"),
        ));
    }
    // The ingest log must be readable before anything starts.
    let queue = app.queue.clone();
    let probe = StoredQuery {
        tenant: channel.tenant.clone(),
        limit: 1,
        ..StoredQuery::default()
    };
    crate::api::blocking(move || queue.stored_events(&probe)).await?;
    let (spec, pipeline) = read_candidate(app, channel, request).await?;
    let backfill = Arc::new(Backfill::new(spec, pipeline, since_ms, limit));
    {
        let mut slot = channel.backfill.lock().expect("backfill lock");
        if slot.as_ref().is_some_and(|b| b.running()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "backfill-running",
                format!("channel `{name}` is running a backfill"),
            ));
        }
        *slot = Some(backfill.clone());
    }
    let report = backfill.report();
    tokio::spawn(backfill.run(app.clone(), channel.name.clone()));
    tracing::info!(channel = %channel.name, tenant = %channel.tenant, since_ms, ?limit, "backfill started");
    Ok(json_response(StatusCode::ACCEPTED, &report))
}

/// `GET /v1/channels/{name}/backfill`: the running or last backfill's progress and comparison.
pub async fn backfill_report(app: &App, caller: &Caller, name: &str) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let channel = &*channel;
    let backfill = channel.backfill.lock().expect("backfill lock").clone();
    let backfill = backfill.ok_or_else(|| {
        ApiError::not_found(
            "no-backfill",
            format!("channel `{name}` has run no backfill since the sidecar started"),
        )
    })?;
    Ok(json_response(StatusCode::OK, &backfill.report()))
}

/// `DELETE /v1/channels/{name}/backfill`: cancels the running backfill.
pub async fn cancel_backfill(app: &App, caller: &Caller, name: &str) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let channel = &*channel;
    let backfill = channel.backfill.lock().expect("backfill lock").clone();
    match backfill {
        Some(backfill) if backfill.running() => {
            backfill.cancel();
            Ok(json_response(StatusCode::OK, &backfill.report()))
        }
        _ => Err(ApiError::not_found(
            "no-backfill",
            format!("channel `{name}` runs no backfill"),
        )),
    }
}

/// What `POST …/record` takes.
#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RecordRequest {
    /// Record the next this many events.
    count: Option<usize>,
    /// Record the newest this many stored events.
    last: Option<usize>,
    /// JSONPaths to redact in every event.
    #[serde(default)]
    redact: Vec<String>,
    /// The redaction key (hex); the same key gives the same placeholders.
    #[serde(default)]
    key: String,
}

/// `POST /v1/channels/{name}/record`, body `{"count": N}` (the next N events
/// the channel runs) or `{"last": N}` (the newest N of the ingest log), with
/// `redact` (JSONPaths) and `key` (hex). `last` answers the cases at once;
/// `count` starts a recording that `GET` follows.
pub async fn start_recording(
    app: &App,
    caller: &Caller,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let channel = &*channel;
    let body = read_body(request, app.max_body_bytes, app.settings.body_timeout).await?;
    let Asked {
        redact,
        key,
        redactor,
        wanted,
        field,
    } = read_recording_request(&body)?;
    if field == "count" {
        let recording = Arc::new(Recording::new(wanted, redact, key));
        *channel.recording.lock().expect("recording lock") = Some(recording);
        tracing::info!(channel = %channel.name, tenant = %channel.tenant, count = wanted, "recording started");
        return Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({"state": "recording", "captured": 0, "wanted": wanted}),
        ));
    }
    let newest = newest_events(app, channel, wanted).await?;
    let mut events = newest.events();
    events.reverse();
    finish(app, channel, events, redactor).await
}

/// A recording request, checked.
struct Asked {
    redact: Vec<String>,
    key: Vec<u8>,
    redactor: Redactor,
    wanted: usize,
    field: &'static str,
}

/// Reads `{"count" | "last", "redact", "key"}`; every refusal names its field.
fn read_recording_request(body: &[u8]) -> Result<Asked, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let asked: RecordRequest = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = sluice_engine::diff::path_from_serde(err.path());
        ApiError::bad_request("invalid-recording", err.into_inner().to_string(), Some(&path))
    })?;
    let key = hex::decode(&asked.key).map_err(|err| {
        ApiError::bad_request(
            "invalid-recording",
            format!("`key` is not hex: {err}"),
            Some("$['key']"),
        )
    })?;
    if key.len() < 16 {
        // An empty or short key makes placeholders guessable: anyone with
        // the fixture could confirm a guessed email.
        return Err(ApiError::bad_request(
            "invalid-recording",
            "`key` must be at least 16 bytes (32 hex digits)",
            Some("$['key']"),
        ));
    }
    let redactor = Redactor::new(&asked.redact, &key).map_err(|err| {
        let field = if matches!(err, crate::change::redact::RedactError::KeyTooLong) {
            "$['key']"
        } else {
            "$['redact']"
        };
        ApiError::bad_request("invalid-recording", err.to_string(), Some(field))
    })?;
    let (wanted, field) = match (asked.count, asked.last) {
        (Some(count), None) => (count, "count"),
        (None, Some(last)) => (last, "last"),
        _ => {
            return Err(ApiError::bad_request(
                "invalid-recording",
                "give exactly one of `count` (the next events) and `last` (stored events)",
                None,
            ));
        }
    };
    if wanted == 0 || wanted > MAX_RECORDED {
        return Err(ApiError::bad_request(
            "invalid-recording",
            format!("`{field}` must be from 1 to {MAX_RECORDED}, not {wanted}"),
            Some(&format!("$['{field}']")),
        ));
    }
    Ok(Asked {
        redact: asked.redact,
        key,
        redactor,
        wanted,
        field,
    })
}

/// The channel's newest `wanted` stored events, newest first: read,
/// parsed and taken on a blocking thread under one of the tenant's
/// transform permits, bounded as a recording is (`wanted` events, at most
/// its bytes, and pages of at most `STORED_PAGE_BYTES`).
async fn newest_events(
    app: &App,
    channel: &crate::state::Channel,
    wanted: usize,
) -> Result<Recording, ApiError> {
    let permit = app.transform_permit(&channel.tenant).await?;
    let (queue, tenant, taker) = (
        app.queue.clone(),
        channel.tenant.clone(),
        ChannelEvents::of(channel),
    );
    let newest = crate::api::blocking(move || {
        let newest = Recording::new(wanted, Vec::new(), Vec::new());
        let mut from = None::<(i64, String)>;
        // Another source's events may fill the log: read at most this many.
        let mut budget = 100_000_usize;
        while !newest.done() && budget > 0 {
            budget = budget.saturating_sub(256);
            let query = StoredQuery {
                tenant: tenant.clone(),
                newest_first: true,
                from: from.clone(),
                limit: 256,
                ..StoredQuery::default()
            };
            let page = queue.stored_events(&query)?;
            let Some(last) = page.last() else { break };
            from = Some((last.received_ms, last.id.clone()));
            for event in page.into_iter().filter_map(|e| taker.event(e)) {
                if !newest.offer(event) {
                    break;
                }
            }
        }
        drop(permit);
        Ok(newest)
    })
    .await?;
    Ok(newest)
}

/// `GET /v1/channels/{name}/record`: a recording's progress; once it has
/// every event, its cases (and the recording ends).
pub async fn recording(app: &App, caller: &Caller, name: &str) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let channel = &*channel;
    let recording = channel.recording.lock().expect("recording lock").clone();
    let recording = recording.ok_or_else(|| no_recording(name))?;
    if !recording.done() {
        return Ok(json_response(
            StatusCode::OK,
            &json!({"state": "recording", "captured": recording.captured(), "wanted": recording.wanted}),
        ));
    }
    // Taken first, so that concurrent GETs run the cases once.
    let taken =
        TakenRecording::take(&channel.recording, Some(&recording)).ok_or_else(|| no_recording(name))?;
    answer_cases(app, channel, taken).await
}

/// `DELETE /v1/channels/{name}/record`: ends a recording; answers what it has.
pub async fn stop_recording(app: &App, caller: &Caller, name: &str) -> Result<Response<Body>, ApiError> {
    let channel = app.channel_for(caller, name)?;
    let channel = &*channel;
    let taken = TakenRecording::take(&channel.recording, None).ok_or_else(|| no_recording(name))?;
    answer_cases(app, channel, taken).await
}

/// A recording taken off its channel to be answered as cases. Dropped
/// before [`TakenRecording::answered`], on an error or when the client
/// leaves mid-way, it goes back (unless another recording started
/// meanwhile), so that its events are not lost.
struct TakenRecording<'a> {
    slot: &'a Mutex<Option<Arc<Recording>>>,
    recording: Option<Arc<Recording>>,
}

impl<'a> TakenRecording<'a> {
    /// Takes the recording out of `slot`; with `only`, only if it is that one.
    fn take(slot: &'a Mutex<Option<Arc<Recording>>>, only: Option<&Arc<Recording>>) -> Option<Self> {
        let mut held = slot.lock().unwrap_or_else(|e| e.into_inner());
        if only.is_some_and(|only| !held.as_ref().is_some_and(|now| Arc::ptr_eq(now, only))) {
            return None;
        }
        let recording = held.take()?;
        Some(Self {
            slot,
            recording: Some(recording),
        })
    }

    fn recording(&self) -> &Recording {
        self.recording.as_ref().expect("held until answered")
    }

    /// Its cases were answered: it ends for good.
    fn answered(mut self) {
        self.recording = None;
    }
}

impl Drop for TakenRecording<'_> {
    fn drop(&mut self) {
        if let Some(recording) = self.recording.take() {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(recording);
            }
        }
    }
}

/// Runs a taken recording's events into cases and answers them; the
/// recording ends only once they are answered.
async fn answer_cases(
    app: &App,
    channel: &crate::state::Channel,
    taken: TakenRecording<'_>,
) -> Result<Response<Body>, ApiError> {
    let recording = taken.recording();
    let redactor = Redactor::new(&recording.redact, &recording.key).map_err(ApiError::internal)?;
    let answer = finish(app, channel, recording.events(), redactor).await?;
    taken.answered();
    Ok(answer)
}

/// The cases of recorded events, run through today's pipeline on a
/// blocking thread under one of the tenant's transform permits.
async fn finish(
    app: &App,
    channel: &crate::state::Channel,
    events: Vec<sluice_engine::event::EventJson>,
    mut redactor: Redactor,
) -> Result<Response<Body>, ApiError> {
    // Instances of its own, so the live channel's guests keep their state.
    let pipeline = channel.pipeline().isolated();
    let permit = app.transform_permit(&channel.tenant).await?;
    // The answer is written there too: its cases hold every recorded event.
    let answer = tokio::task::spawn_blocking(move || {
        let cases = cases(&events, &mut redactor, &pipeline);
        drop(permit);
        let cases = cases?;
        serde_json::to_vec(&json!({"state": "done", "cases": cases})).map_err(|err| err.to_string())
    })
    .await
    .map_err(|join| ApiError::internal(format!("the recording task failed: {join}")))?
    .map_err(ApiError::internal)?;
    Ok(crate::api::http::json_bytes_response(StatusCode::OK, answer))
}

fn no_recording(name: &str) -> ApiError {
    ApiError::not_found(
        "no-recording",
        format!("channel `{name}` is not recording: start with POST /v1/channels/{name}/record"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_with(recording: &Arc<Recording>) -> Mutex<Option<Arc<Recording>>> {
        Mutex::new(Some(recording.clone()))
    }

    #[test]
    fn a_taken_recording_goes_back_unless_it_was_answered() {
        let recording = Arc::new(Recording::new(1, Vec::new(), Vec::new()));
        let slot = slot_with(&recording);
        let taken = TakenRecording::take(&slot, None).unwrap();
        assert!(slot.lock().unwrap().is_none(), "taken off the channel");
        drop(taken);
        let back = slot
            .lock()
            .unwrap()
            .clone()
            .expect("a failed answer loses nothing");
        assert!(Arc::ptr_eq(&back, &recording));

        let taken = TakenRecording::take(&slot, None).unwrap();
        taken.answered();
        assert!(slot.lock().unwrap().is_none(), "an answered recording ends");

        // Only the recording asked for is taken.
        let other = Arc::new(Recording::new(3, Vec::new(), Vec::new()));
        let slot = slot_with(&recording);
        assert!(TakenRecording::take(&slot, Some(&other)).is_none());
        // A recording started meanwhile is not replaced.
        let taken = TakenRecording::take(&slot, None).unwrap();
        let newer = Arc::new(Recording::new(2, Vec::new(), Vec::new()));
        *slot.lock().unwrap() = Some(newer.clone());
        drop(taken);
        assert!(Arc::ptr_eq(slot.lock().unwrap().as_ref().unwrap(), &newer));
    }
}
