//! A backfill: the stored events of a channel's ingest log run through a
//! candidate pipeline and the current one, compared as a shadow compares
//! them, and delivered nowhere. One runs at a time per channel, in the
//! background; `GET …/backfill` follows it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use sluice_engine::event::EventJson;
use sluice_engine::{Pipeline, PipelineSpec};

use crate::change::shadow::Comparison;
use crate::state::{App, Channel};
use crate::store::{StoredEvent, StoredQuery};

/// Events read and run per step.
const PAGE: usize = 128;

/// One backfill of one channel.
pub struct Backfill {
    /// The candidate, every step's version in full.
    pub spec: PipelineSpec,
    pipeline: Pipeline,
    /// Events received before this are not read.
    pub since_ms: i64,
    /// Run at most this many events.
    pub limit: Option<u64>,
    /// When it started: events received later are not read.
    pub until_ms: i64,
    processed: AtomicU64,
    /// The received time of the last event read.
    position_ms: AtomicI64,
    cancelled: AtomicBool,
    state: Mutex<State>,
    comparison: Mutex<Comparison>,
}

#[derive(Clone)]
enum State {
    Running,
    Done,
    Cancelled,
    Failed(String),
}

impl Backfill {
    /// A backfill of `pipeline` over events received from `since_ms` until now.
    pub fn new(spec: PipelineSpec, pipeline: Pipeline, since_ms: i64, limit: Option<u64>) -> Self {
        Self {
            spec,
            pipeline,
            since_ms,
            limit,
            until_ms: crate::store::now_ms(),
            processed: AtomicU64::new(0),
            position_ms: AtomicI64::new(since_ms),
            cancelled: AtomicBool::new(false),
            state: Mutex::new(State::Running),
            comparison: Mutex::default(),
        }
    }

    /// Whether it is still running.
    pub fn running(&self) -> bool {
        matches!(
            *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            State::Running
        )
    }

    /// Asks it to stop after the step in hand.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Its progress and comparison, as `GET …/backfill` answers.
    pub fn report(&self) -> Value {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (name, error) = match state {
            State::Running => ("running", None),
            State::Done => ("done", None),
            State::Cancelled => ("cancelled", None),
            State::Failed(why) => ("failed", Some(why)),
        };
        let processed = self.processed.load(Ordering::Relaxed);
        // Progress: by count under a limit, else by how far through the
        // time range the events read so far were received.
        let position = self.position_ms.load(Ordering::Relaxed);
        let span = (self.until_ms - self.since_ms).max(1) as f64;
        let by_time = (position - self.since_ms).max(0) as f64 / span;
        let fraction = match (name, self.limit) {
            ("done", _) => 1.0,
            (_, Some(limit)) => (processed as f64 / limit.max(1) as f64).max(by_time),
            _ => by_time,
        };
        let comparison = self.comparison.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = json!({
            "state": name,
            "processed": processed,
            "progress": fraction.min(1.0),
            "since-ms": self.since_ms,
            "until-ms": self.until_ms,
            "limit": self.limit,
            "candidate": self.spec,
        });
        if let Some(error) = error {
            report["error"] = error.into();
        }
        report["comparison"] = serde_json::to_value(&*comparison).unwrap_or(Value::Null);
        report
    }

    /// Runs it to the end (or until cancelled), recording how it ended.
    pub async fn run(self: Arc<Self>, app: Arc<App>, channel: String) {
        // In a task of its own, so that even a panic ends as `failed` and a
        // new backfill can start.
        let steps = {
            let (me, app, channel) = (self.clone(), app.clone(), channel.clone());
            tokio::spawn(async move { me.steps(&app, &channel).await })
        };
        let outcome = steps
            .await
            .unwrap_or_else(|join| Err(format!("the backfill stopped: {join}")));
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = match outcome {
            Err(why) => State::Failed(why),
            Ok(()) if self.cancelled.load(Ordering::Relaxed) => State::Cancelled,
            Ok(()) => State::Done,
        };
        tracing::info!(channel = %channel, processed = self.processed.load(Ordering::Relaxed), "backfill ended");
    }

    async fn steps(&self, app: &Arc<App>, name: &str) -> Result<(), String> {
        let channel = &app.channels[name];
        // Compared against the pipeline active when it started, all along:
        // an activation meanwhile (say, promoting this very candidate)
        // would otherwise compare the candidate with itself.
        let current = channel.pipeline();
        let mut after = None;
        loop {
            if self.cancelled.load(Ordering::Relaxed) {
                return Ok(());
            }
            let left = self
                .limit
                .map_or(u64::MAX, |l| l - self.processed.load(Ordering::Relaxed).min(l));
            if left == 0 {
                return Ok(());
            }
            let query = StoredQuery {
                tenant: channel.tenant.clone(),
                since_ms: self.since_ms,
                from: after.clone(),
                newest_first: false,
                limit: PAGE,
            };
            let queue = app.queue.clone();
            let page = crate::store::in_store(move || queue.stored_events(&query)).await?;
            let Some(last) = page.last() else { return Ok(()) };
            if last.received_ms > self.until_ms && page.iter().all(|e| e.received_ms > self.until_ms) {
                return Ok(());
            }
            after = Some((last.received_ms, last.id.clone()));
            self.position_ms
                .store(last.received_ms.min(self.until_ms), Ordering::Relaxed);
            let events: Vec<EventJson> = page
                .into_iter()
                .filter(|e| e.received_ms <= self.until_ms)
                .filter_map(|e| channel_event(channel, e))
                .take(left.min(PAGE as u64) as usize)
                .collect();
            if events.is_empty() {
                continue;
            }
            let permit = app.transform_permit(&channel.tenant).await.ok().flatten();
            let (current, candidate) = (current.clone(), self.pipeline.clone());
            let count = events.len() as u64;
            let (events, now, next) = tokio::task::spawn_blocking(move || {
                let now = current.run(&events);
                let next = candidate.run(&events);
                drop(permit);
                (events, now, next)
            })
            .await
            .map_err(|join| format!("a backfill step failed: {join}"))?;
            self.comparison
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(&events, &now, &next);
            self.processed.fetch_add(count, Ordering::Relaxed);
        }
    }
}

/// A stored event as the channel runs it, if the channel takes it.
pub fn channel_event(channel: &Channel, stored: StoredEvent) -> Option<EventJson> {
    let mut event = serde_json::from_str::<EventJson>(&stored.event).ok()?;
    if !channel.takes(&channel.tenant, &event.source) {
        return None;
    }
    event.channel = channel.name.clone();
    event.tenant = channel.tenant.clone();
    Some(event)
}
