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
            pipeline: pipeline.isolated(),
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

    async fn steps(self: Arc<Self>, app: &Arc<App>, name: &str) -> Result<(), String> {
        let channel = app.channels.get(name).ok_or("the channel was deleted")?;
        // Compared against the pipeline active when it started, all along:
        // an activation meanwhile (say, promoting this very candidate)
        // would otherwise compare the candidate with itself.
        // Instances of its own, so the live channel's guests keep their state.
        let current = channel.pipeline().isolated();
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
            // One of the tenant's transform permits covers the whole step:
            // reading the page, parsing it, running both pipelines and
            // comparing their outputs, all on a blocking thread.
            let permit = app.transform_permit(&channel.tenant).await.ok().flatten();
            let (me, app, name, current) = (self.clone(), app.clone(), name.to_string(), current.clone());
            let read = tokio::task::spawn_blocking(move || {
                let read = me.step(&app, &name, &query, left, &current);
                drop(permit);
                read
            })
            .await
            .map_err(|join| format!("a backfill step failed: {join}"))??;
            match read {
                Some(last) => after = Some(last),
                None => return Ok(()),
            }
        }
    }

    /// Reads one page of the log after `query.from`, runs what the channel
    /// takes of it through both pipelines and adds the comparison; the
    /// last event read, or `None` at the end of the range.
    fn step(
        &self,
        app: &App,
        name: &str,
        query: &StoredQuery,
        left: u64,
        current: &Pipeline,
    ) -> Result<Option<(i64, String)>, String> {
        let channel = app.channels.get(name).ok_or("the channel was deleted")?;
        let taker = ChannelEvents::of(&channel);
        let page = app.queue.stored_events(query).map_err(|err| err.to_string())?;
        let Some(last) = page.last() else { return Ok(None) };
        if page.iter().all(|e| e.received_ms > self.until_ms) {
            return Ok(None);
        }
        let last = (last.received_ms, last.id.clone());
        self.position_ms
            .store(last.0.min(self.until_ms), Ordering::Relaxed);
        let events: Vec<EventJson> = page
            .into_iter()
            .filter(|e| e.received_ms <= self.until_ms)
            .filter_map(|e| taker.event(e))
            .take(left.min(PAGE as u64) as usize)
            .collect();
        if events.is_empty() {
            return Ok(Some(last));
        }
        let now = current.run(&events);
        let next = self.pipeline.run(&events);
        Comparison::add_to(&self.comparison, &events, &now, &next);
        self.processed.fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(Some(last))
    }
}

/// What a channel takes of its tenant's ingest log, owned, so that a
/// blocking thread can sort a page.
#[derive(Clone)]
pub struct ChannelEvents {
    name: String,
    tenant: String,
    sources: Vec<String>,
    delivers: bool,
}

impl ChannelEvents {
    /// `channel`'s view of the log.
    pub fn of(channel: &Channel) -> Self {
        Self {
            name: channel.name.clone(),
            tenant: channel.tenant.clone(),
            sources: channel.sources.clone(),
            delivers: channel.destination.is_some(),
        }
    }

    /// A stored event as the channel runs it, if the channel takes it
    /// (as [`Channel::takes`] decides at ingest).
    pub fn event(&self, stored: StoredEvent) -> Option<EventJson> {
        let mut event = serde_json::from_str::<EventJson>(&stored.event).ok()?;
        let source_taken = self.sources.is_empty() || self.sources.contains(&event.source);
        if !self.delivers || !source_taken {
            return None;
        }
        event.channel = self.name.clone();
        event.tenant = self.tenant.clone();
        Some(event)
    }
}
