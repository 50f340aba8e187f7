//! One typed event for each thing the sidecar logs, counts and records
//! (in the spirit of Vector's internal events): [`App::emit`] writes the
//! log line, moves the counters and adds to the channel's history from one
//! value, so the three cannot drift apart.

use std::time::Duration;

use serde_json::json;

use super::history::{Count, History};
use super::metrics::Metrics;
use super::story::{StoryEntry, StoryKind};
use super::trace::{SpanKind, SpanRecord, TraceContext, span_id};
use crate::state::App;
use crate::store::now_ms;

/// Something that happened, told to the log, the metrics and the history at once.
pub(crate) trait InternalEvent {
    fn emit(self, metrics: &Metrics, history: &History);
    /// Its entry in the event's story, if it makes one.
    fn story(&self) -> Option<StoryEntry> {
        None
    }
    /// Its span in the event's trace, if it is one.
    fn span_record(&self) -> Option<SpanRecord> {
        None
    }
}

impl App {
    /// Logs, counts and records `event`, and adds it to its event's story.
    pub(crate) fn emit(&self, event: impl InternalEvent) {
        if self.stories.config().enabled
            && let Some(entry) = event.story()
        {
            self.stories.record(entry);
        }
        if self.telemetry.enabled()
            && let Some(span) = event.span_record()
        {
            self.telemetry.record(span);
        }
        event.emit(&self.metrics, &self.history);
    }
}

/// An event stored at ingest, or recognised as a duplicate of one.
pub(crate) struct Accepted<'a> {
    pub tenant: &'a str,
    pub event_id: &'a str,
    pub correlation_id: &'a str,
    pub duplicate: bool,
    /// Its trace, and when its request began (its ingest span's start).
    pub trace: TraceContext,
    pub started: std::time::SystemTime,
}

impl Accepted<'_> {
    fn span(&self) -> [u8; 8] {
        span_id(&["ingest", self.tenant, self.event_id])
    }
}

impl InternalEvent for Accepted<'_> {
    fn story(&self) -> Option<StoryEntry> {
        Some(StoryEntry::new(
            self.tenant,
            self.event_id,
            StoryKind::Accepted,
            json!({"correlation_id": self.correlation_id, "duplicate": self.duplicate}),
        ))
    }

    fn span_record(&self) -> Option<SpanRecord> {
        Some(SpanRecord {
            trace_id: self.trace.trace_id,
            span_id: self.span(),
            parent: self.trace.remote_parent,
            name: "ingest".into(),
            kind: SpanKind::Server,
            start: self.started,
            end: std::time::SystemTime::now(),
            attributes: vec![
                ("sluice.tenant", self.tenant.into()),
                ("sluice.event_id", self.event_id.into()),
                ("sluice.correlation_id", self.correlation_id.into()),
                ("sluice.duplicate", self.duplicate.to_string()),
            ],
            error: false,
        })
    }

    fn emit(self, metrics: &Metrics, _: &History) {
        metrics.event_in(self.tenant, self.duplicate);
        tracing::info!(
            tenant = %self.tenant,
            event_id = %self.event_id,
            correlation_id = %self.correlation_id,
            duplicate = self.duplicate,
            trace_id = %self.trace.trace_hex(),
            span_id = %hex::encode(self.span()),
            "event accepted"
        );
    }
}

/// One event's outcome of a pipeline run (`emit`, `drop`, `reject`,
/// `error`) on a path (`sync`, `ingest`). A fault is the outcome `error`.
pub(crate) struct Transformed<'a> {
    pub tenant: &'a str,
    pub channel: &'a str,
    pub event_id: &'a str,
    pub correlation_id: &'a str,
    pub outcome: &'static str,
    pub path: &'static str,
    /// Its trace; when its batch ran; every step's `module@version`.
    pub trace: TraceContext,
    pub started: std::time::SystemTime,
    pub versions: &'a [String],
}

/// The span id of an event's transform in a channel.
pub(crate) fn transform_span(tenant: &str, event_id: &str, channel: &str) -> [u8; 8] {
    span_id(&["transform", tenant, event_id, channel])
}

impl InternalEvent for Transformed<'_> {
    /// The transform's span only: [`App::emit`] adds one per step.
    fn span_record(&self) -> Option<SpanRecord> {
        (self.path == "ingest").then(|| SpanRecord {
            trace_id: self.trace.trace_id,
            span_id: transform_span(self.tenant, self.event_id, self.channel),
            parent: Some(span_id(&["ingest", self.tenant, self.event_id])),
            name: format!("transform {}", self.channel),
            kind: SpanKind::Internal,
            start: self.started,
            end: std::time::SystemTime::now(),
            attributes: vec![
                ("sluice.tenant", self.tenant.into()),
                ("sluice.channel", self.channel.into()),
                ("sluice.event_id", self.event_id.into()),
                ("sluice.outcome", self.outcome.into()),
                ("sluice.module_versions", self.versions.join(",")),
            ],
            error: self.outcome == "error",
        })
    }

    fn emit(self, metrics: &Metrics, history: &History) {
        metrics.outcome(self.channel, self.outcome, self.path);
        // The durable path is what the page's history shows; a synchronous
        // caller sees its own answer, and its requests are counted apart.
        if self.path != "ingest" {
            return;
        }
        // On the per-event path: no allocation, one lock of the history.
        let counts: &[(Count, u64)] = match self.outcome {
            "reject" => &[(Count::In, 1), (Count::Rejected, 1)],
            "error" => &[(Count::In, 1), (Count::Faulted, 1)],
            _ => &[(Count::In, 1)],
        };
        history.add_all(self.channel, counts, now_ms());
        tracing::info!(
            tenant = %self.tenant,
            channel = %self.channel,
            event_id = %self.event_id,
            correlation_id = %self.correlation_id,
            outcome = self.outcome,
            trace_id = %self.trace.trace_hex(),
            span_id = %hex::encode(transform_span(self.tenant, self.event_id, self.channel)),
            "event transformed"
        );
    }
}

/// Where an event left the pipeline for the dead letters.
#[derive(Clone, Copy)]
pub(crate) enum Stage {
    Transform,
    Delivery,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Transform => "transform",
            Stage::Delivery => "delivery",
        }
    }
}

/// An event that became a dead letter, and why (`rejected`, `fault`,
/// `attempts-exhausted`, …).
pub(crate) struct DeadLettered<'a> {
    pub stage: Stage,
    pub tenant: &'a str,
    pub channel: &'a str,
    pub event_id: &'a str,
    pub correlation_id: &'a str,
    pub destination: Option<&'a str>,
    pub reason: &'a str,
}

impl InternalEvent for DeadLettered<'_> {
    /// A transform's dead letter is told by its `transformed` entry.
    fn story(&self) -> Option<StoryEntry> {
        matches!(self.stage, Stage::Delivery).then(|| {
            StoryEntry::new(
                self.tenant,
                self.event_id,
                StoryKind::DeadLettered,
                json!({"stage": self.stage.label(), "destination": self.destination, "reason": self.reason}),
            )
            .on(self.channel)
        })
    }

    fn emit(self, metrics: &Metrics, history: &History) {
        metrics.dead_lettered(self.channel, self.stage.label());
        history.add(self.channel, Count::DeadLettered, 1, now_ms());
        tracing::warn!(
            stage = self.stage.label(),
            tenant = %self.tenant,
            channel = %self.channel,
            destination = self.destination.unwrap_or(""),
            event_id = %self.event_id,
            correlation_id = %self.correlation_id,
            reason = %self.reason,
            "event dead-lettered"
        );
    }
}

/// What one delivery attempt came to.
#[derive(Clone, Copy)]
pub(crate) enum AttemptOutcome {
    /// Accepted, this long after ingest.
    Delivered { end_to_end_ms: u64 },
    /// Failed and will be tried again.
    Retry,
    /// Failed for good; a [`DeadLettered`] follows.
    Failed,
}

/// One request to a destination.
pub(crate) struct DeliveryAttempted<'a> {
    pub destination: &'a str,
    pub tenant: &'a str,
    pub channel: &'a str,
    pub event_id: &'a str,
    pub correlation_id: &'a str,
    pub idempotency_key: &'a str,
    pub attempt: u32,
    pub status: Option<u16>,
    pub elapsed: Duration,
    pub outcome: AttemptOutcome,
    /// Its trace and its own span (the one its `traceparent` named).
    pub trace: TraceContext,
    pub span: [u8; 8],
    pub entity_key: &'a str,
}

impl InternalEvent for DeliveryAttempted<'_> {
    fn span_record(&self) -> Option<SpanRecord> {
        let end = std::time::SystemTime::now();
        Some(SpanRecord {
            trace_id: self.trace.trace_id,
            span_id: self.span,
            parent: Some(transform_span(self.tenant, self.event_id, self.channel)),
            name: format!("deliver {}", self.destination),
            kind: SpanKind::Client,
            start: end.checked_sub(self.elapsed).unwrap_or(end),
            end,
            attributes: vec![
                ("sluice.tenant", self.tenant.into()),
                ("sluice.channel", self.channel.into()),
                ("sluice.destination", self.destination.into()),
                ("sluice.event_id", self.event_id.into()),
                ("sluice.entity_key", self.entity_key.into()),
                ("sluice.attempt", self.attempt.to_string()),
                (
                    "http.response.status_code",
                    self.status.map_or_else(String::new, |s| s.to_string()),
                ),
            ],
            error: !matches!(self.outcome, AttemptOutcome::Delivered { .. }),
        })
    }

    fn emit(self, metrics: &Metrics, history: &History) {
        metrics.delivery_time(self.destination, self.elapsed.as_secs_f64());
        match self.outcome {
            AttemptOutcome::Delivered { end_to_end_ms } => {
                metrics.delivered(self.destination, end_to_end_ms as f64 / 1000.0);
                history.delivered(self.channel, end_to_end_ms, now_ms());
            }
            AttemptOutcome::Retry => metrics.retried(self.destination),
            AttemptOutcome::Failed => {}
        }
        tracing::info!(
            destination = %self.destination,
            tenant = %self.tenant,
            channel = %self.channel,
            event_id = %self.event_id,
            correlation_id = %self.correlation_id,
            idempotency_key = %self.idempotency_key,
            attempt = self.attempt,
            status = self.status.unwrap_or(0),
            elapsed_ms = self.elapsed.as_millis() as u64,
            trace_id = %self.trace.trace_hex(),
            span_id = %hex::encode(self.span),
            "delivery attempt"
        );
    }
}

/// Events a channel's pipeline emitted into its destination's outbox.
pub(crate) struct Emitted<'a> {
    pub channel: &'a str,
    pub count: usize,
}

impl InternalEvent for Emitted<'_> {
    fn emit(self, metrics: &Metrics, history: &History) {
        metrics.emitted(self.channel, self.count);
        history.add(self.channel, Count::Emitted, self.count as u64, now_ms());
    }
}

/// Deliveries that were not sent: a newer one of their key went instead
/// (`superseded`), or the destination already had the same (`unchanged`).
pub(crate) struct NotSent<'a> {
    pub destination: &'a str,
    pub channel: &'a str,
    pub superseded: u64,
    pub unchanged: u64,
}

impl InternalEvent for NotSent<'_> {
    fn emit(self, metrics: &Metrics, history: &History) {
        if self.superseded > 0 {
            metrics.superseded(self.destination, self.superseded);
        }
        if self.unchanged > 0 {
            metrics.unchanged(self.destination, self.unchanged);
        }
        history.add_all(
            self.channel,
            &[
                (Count::Superseded, self.superseded),
                (Count::Unchanged, self.unchanged),
            ],
            now_ms(),
        );
        tracing::debug!(
            destination = %self.destination,
            channel = %self.channel,
            superseded = self.superseded,
            unchanged = self.unchanged,
            "deliveries not sent"
        );
    }
}
