//! Prometheus metrics of the sidecar, served at `GET /metrics`.
//!
//! Label values are only ever configured names (channels, destinations,
//! tenants) or fixed words: a caller cannot grow the number of series.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::Depth;

/// Labels of per-channel request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The channel.
    pub channel: String,
    /// The HTTP status answered.
    pub status: u16,
}

/// Labels of per-channel outcome counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    /// The channel.
    pub channel: String,
    /// `emit`, `drop`, `reject` or `error`.
    pub outcome: String,
    /// `sync` (the transform API) or `ingest` (durable delivery).
    pub path: String,
}

/// Labels of per-channel series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    /// The channel.
    pub channel: String,
}

/// Labels of per-tenant series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    /// The tenant.
    pub tenant: String,
}

/// Labels of per-destination series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    /// The destination.
    pub destination: String,
}

/// Labels of dead-letter counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLetterLabels {
    /// The channel.
    pub channel: String,
    /// `transform` or `delivery`.
    pub stage: String,
}

/// Labels of refused source deliveries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    /// The source, as `tenant/source` (configured names only).
    pub source: String,
    /// `missing`, `malformed`, `mismatch` or `stale`.
    pub reason: String,
}

/// Labels of module-upload counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UploadLabels {
    /// The tenant.
    pub tenant: String,
    /// `stored`, `unchanged` or `refused`.
    pub result: String,
}

/// Labels of queue-depth gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DepthLabels {
    /// The channel.
    pub channel: String,
    /// `transform` (waiting for the pipeline) or `delivery` (in the outbox).
    pub queue: String,
}

/// Labels of a background worker's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    /// `transform:<channel>`, `delivery:<destination>` or `housekeeping`.
    pub worker: String,
}

/// Labels of pipeline-run counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlacementLabels {
    pub channel: String,
    /// `inline` (on an async worker) or `blocking` (on a blocking thread).
    pub placement: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the sidecar keeps.
pub struct Metrics {
    registry: Registry,
    /// Sync transform requests, by channel and status.
    requests: Family<RequestLabels, Counter>,
    /// Events ingested (duplicates included), by tenant.
    events_in: Family<TenantLabels, Counter>,
    /// Ingested events whose id was already stored, by tenant.
    duplicates: Family<TenantLabels, Counter>,
    /// Ingested events not queued for a channel that was off with `when-off = "skip"`.
    skipped: Family<ChannelLabels, Counter>,
    /// Events transformed, by channel, outcome and path.
    outcomes: Family<OutcomeLabels, Counter>,
    /// Events emitted into the outbox, by channel.
    emitted: Family<ChannelLabels, Counter>,
    /// Deliveries the destination accepted.
    delivered: Family<DestinationLabels, Counter>,
    /// Delivery attempts that failed and will be retried.
    retried: Family<DestinationLabels, Counter>,
    /// Queued deliveries replaced by a newer one of their entity key.
    superseded: Family<DestinationLabels, Counter>,
    /// Deliveries not sent because the destination accepted the same last.
    unchanged: Family<DestinationLabels, Counter>,
    /// Events moved to dead letters, by channel and stage.
    dead_lettered: Family<DeadLetterLabels, Counter>,
    /// Story entries dropped (the writer behind, or the store failing).
    story_dropped: Counter,
    /// Spans dropped (the exporter behind, or the OTLP endpoint failing).
    spans_dropped: Counter,
    /// Spans the OTLP endpoint accepted.
    spans_exported: Counter,
    /// Events waiting, by channel and queue.
    depth: Family<DepthLabels, Gauge>,
    /// 1 while a channel's circuit breaker holds it paused.
    circuit_open: Family<ChannelLabels, Gauge>,
    /// Ingest requests refused by a tenant's `ingest-rate`.
    rate_limited: Family<TenantLabels, Counter>,
    /// Module uploads, by tenant and result (`stored`, `unchanged`, `refused`).
    uploads: Family<UploadLabels, Counter>,
    /// Restarts of background workers that died.
    worker_restarts: Family<WorkerLabels, Counter>,
    /// Ingest requests refused because the tenant holds its `max-stored-events`.
    storage_refused: Family<TenantLabels, Counter>,
    source_refused: Family<SourceLabels, Counter>,
    /// Records read from polled sources.
    source_polled: Family<SourceLabels, Counter>,
    /// Failed page reads of polled sources, by reason.
    source_poll_failures: Family<SourceLabels, Counter>,
    /// Time spent running a channel's pipeline per batch, in seconds.
    transform_seconds: Histograms<ChannelLabels>,
    /// Pipeline runs, by where they ran.
    placements: Family<PlacementLabels, Counter>,
    /// Time of one delivery request, in seconds.
    delivery_seconds: Histograms<DestinationLabels>,
    /// Time from ingest to accepted delivery, in seconds.
    end_to_end_seconds: Histograms<DestinationLabels>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

impl Default for Metrics {
    // Longer than most functions on purpose: each metric is declared and
    // registered with its help text in one place, in the order
    // docs/reference/metrics-and-logs.md lists them.
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let metrics = Self {
            requests: Family::default(),
            events_in: Family::default(),
            duplicates: Family::default(),
            skipped: Family::default(),
            outcomes: Family::default(),
            emitted: Family::default(),
            delivered: Family::default(),
            retried: Family::default(),
            superseded: Family::default(),
            unchanged: Family::default(),
            dead_lettered: Family::default(),
            story_dropped: Counter::default(),
            spans_dropped: Counter::default(),
            spans_exported: Counter::default(),
            depth: Family::default(),
            circuit_open: Family::default(),
            rate_limited: Family::default(),
            uploads: Family::default(),
            worker_restarts: Family::default(),
            storage_refused: Family::default(),
            source_refused: Family::default(),
            source_polled: Family::default(),
            source_poll_failures: Family::default(),
            transform_seconds: Family::new_with_constructor(latency_histogram),
            placements: Family::default(),
            delivery_seconds: Family::new_with_constructor(latency_histogram),
            end_to_end_seconds: Family::new_with_constructor(latency_histogram),
            registry: Registry::default(),
        };
        let m = &metrics;
        registry.register(
            "sync_requests",
            "Sync transform requests by channel and status",
            m.requests.clone(),
        );
        registry.register(
            "events_in",
            "Events ingested, duplicates included",
            m.events_in.clone(),
        );
        registry.register(
            "duplicates",
            "Ingested events whose id was already stored",
            m.duplicates.clone(),
        );
        registry.register(
            "events_skipped",
            "Events not queued for a channel that was off (when-off = skip)",
            m.skipped.clone(),
        );
        registry.register(
            "events_transformed",
            "Events transformed by channel, outcome and path",
            m.outcomes.clone(),
        );
        registry.register(
            "pipeline_runs",
            "Pipeline runs by channel and placement: inline on an async worker, or on a blocking thread",
            m.placements.clone(),
        );
        registry.register(
            "events_emitted",
            "Events emitted into the outbox",
            m.emitted.clone(),
        );
        registry.register(
            "delivered",
            "Deliveries accepted by the destination",
            m.delivered.clone(),
        );
        registry.register(
            "retried",
            "Delivery attempts that failed and will be retried",
            m.retried.clone(),
        );
        registry.register(
            "deliveries_superseded",
            "Queued deliveries replaced by a newer one of their entity key (coalesce)",
            m.superseded.clone(),
        );
        registry.register(
            "deliveries_unchanged",
            "Deliveries not sent because the destination accepted the same output last (skip-unchanged)",
            m.unchanged.clone(),
        );
        registry.register(
            "story_entries_dropped",
            "Story entries not kept: the story writer was behind or the store failed; delivery is never held for them",
            m.story_dropped.clone(),
        );
        registry.register(
            "spans_dropped",
            "Spans not exported: the exporter's queue was full, or the OTLP endpoint was down, slow or failing",
            m.spans_dropped.clone(),
        );
        registry.register(
            "spans_exported",
            "Spans the OTLP endpoint accepted",
            m.spans_exported.clone(),
        );
        registry.register(
            "dead_lettered",
            "Events moved to dead letters, by channel and stage",
            m.dead_lettered.clone(),
        );
        registry.register(
            "queue_depth",
            "Events waiting, by channel and queue",
            m.depth.clone(),
        );
        registry.register(
            "circuit_open",
            "1 while a channel's circuit breaker holds it paused",
            m.circuit_open.clone(),
        );
        registry.register(
            "ingest_rate_limited",
            "Ingest requests refused by a tenant's ingest-rate",
            m.rate_limited.clone(),
        );
        registry.register(
            "module_uploads",
            "Module uploads by tenant and result",
            m.uploads.clone(),
        );
        registry.register(
            "worker_restarts",
            "Background workers that died (panicked or stopped) and were restarted",
            m.worker_restarts.clone(),
        );
        registry.register(
            "source_refused",
            "Source deliveries refused for their signature, per source and reason",
            m.source_refused.clone(),
        );
        registry.register(
            "source_polled_records",
            "Records read from polled sources, per source (reason `ok`) or refused (`no-id`, `bad-id`)",
            m.source_polled.clone(),
        );
        registry.register(
            "source_poll_failures",
            "Failed page reads of polled sources, per source and reason",
            m.source_poll_failures.clone(),
        );
        registry.register(
            "ingest_storage_refused",
            "Ingest requests refused because the tenant holds its max-stored-events",
            m.storage_refused.clone(),
        );
        registry.register(
            "transform_seconds",
            "Time running a channel's pipeline per batch",
            m.transform_seconds.clone(),
        );
        registry.register(
            "delivery_seconds",
            "Time of one delivery request",
            m.delivery_seconds.clone(),
        );
        registry.register(
            "end_to_end_seconds",
            "Time from ingest to accepted delivery",
            m.end_to_end_seconds.clone(),
        );
        Self { registry, ..metrics }
    }
}

/// Labels of one channel.
fn channel(name: &str) -> ChannelLabels {
    ChannelLabels {
        channel: name.to_string(),
    }
}

/// Labels of one tenant.
fn tenant(name: &str) -> TenantLabels {
    TenantLabels {
        tenant: name.to_string(),
    }
}

/// Labels of one destination.
fn destination(name: &str) -> DestinationLabels {
    DestinationLabels {
        destination: name.to_string(),
    }
}

impl Metrics {
    /// Counts a synchronous transform request by its answer's status.
    pub fn sync_request(&self, channel: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                channel: channel.to_string(),
                status,
            })
            .inc();
    }

    /// Counts an ingested event, and whether it was a duplicate.
    pub fn event_in(&self, tenant_name: &str, duplicate: bool) {
        let labels = tenant(tenant_name);
        self.events_in.get_or_create(&labels).inc();
        if duplicate {
            self.duplicates.get_or_create(&labels).inc();
        }
    }

    /// Counts an event not queued for a channel that was off (`when-off = skip`).
    pub fn skipped(&self, channel_name: &str) {
        self.skipped.get_or_create(&channel(channel_name)).inc();
    }

    /// Counts an ingest request refused by the tenant's `ingest-rate`.
    pub fn rate_limited(&self, tenant_name: &str) {
        self.rate_limited.get_or_create(&tenant(tenant_name)).inc();
    }

    /// Counts a source delivery refused for its signature.
    pub fn source_refused(&self, source: &str, reason: &str) {
        self.source_refused
            .get_or_create(&SourceLabels {
                source: source.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts records read from a polled source (`ok`) or refused without an event.
    pub fn source_polled(&self, source: &str, reason: &str, records: u64) {
        self.source_polled
            .get_or_create(&SourceLabels {
                source: source.to_string(),
                reason: reason.to_string(),
            })
            .inc_by(records);
    }

    /// Forgets a deleted source's series, so that sources made and deleted
    /// under new names do not grow the metrics without end.
    pub fn forget_source(&self, source: &str) {
        let labels = |reason: &str| SourceLabels {
            source: source.to_string(),
            reason: reason.to_string(),
        };
        for reason in ["missing", "malformed", "mismatch", "stale"] {
            self.source_refused.remove(&labels(reason));
        }
        for reason in ["ok", "no-id"] {
            self.source_polled.remove(&labels(reason));
        }
        for reason in [
            "status",
            "retry-after",
            "timeout",
            "connection",
            "too-large",
            "not-json",
            "pagination",
            "auth",
            "refused-address",
            "refused",
        ] {
            self.source_poll_failures.remove(&labels(reason));
        }
    }

    /// Counts a failed page read of a polled source.
    pub fn source_poll_failed(&self, source: &str, reason: &str) {
        self.source_poll_failures
            .get_or_create(&SourceLabels {
                source: source.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts an ingest request refused by the tenant's `max-stored-events`.
    pub fn storage_refused(&self, tenant_name: &str) {
        self.storage_refused.get_or_create(&tenant(tenant_name)).inc();
    }

    /// Records how long one pipeline run of a channel took.
    pub fn transform_time(&self, channel_name: &str, seconds: f64) {
        self.transform_seconds
            .get_or_create(&channel(channel_name))
            .observe(seconds);
    }

    /// Counts a pipeline run, inline on an async worker or on a blocking thread.
    pub fn transform_placement(&self, channel: &str, inline: bool) {
        self.placements
            .get_or_create(&PlacementLabels {
                channel: channel.to_string(),
                placement: if inline { "inline" } else { "blocking" }.to_string(),
            })
            .inc();
    }

    /// Counts an event's outcome (`emit`, `drop`, `reject`, `error`) on a path (`sync`, `ingest`).
    pub fn outcome(&self, channel: &str, outcome: &str, path: &str) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                channel: channel.to_string(),
                outcome: outcome.to_string(),
                path: path.to_string(),
            })
            .inc();
    }

    /// Counts events emitted into the outbox.
    pub fn emitted(&self, channel_name: &str, count: usize) {
        self.emitted
            .get_or_create(&channel(channel_name))
            .inc_by(count as u64);
    }

    /// Counts an event moved to dead letters at a stage (`transform`, `delivery`).
    pub fn dead_lettered(&self, channel: &str, stage: &str) {
        self.dead_lettered
            .get_or_create(&DeadLetterLabels {
                channel: channel.to_string(),
                stage: stage.to_string(),
            })
            .inc();
    }

    /// Records how long one delivery request took.
    pub fn delivery_time(&self, destination_name: &str, seconds: f64) {
        self.delivery_seconds
            .get_or_create(&destination(destination_name))
            .observe(seconds);
    }

    /// Counts a delivery the destination accepted, with its time since ingest.
    pub fn delivered(&self, destination_name: &str, end_to_end_seconds: f64) {
        let labels = destination(destination_name);
        self.delivered.get_or_create(&labels).inc();
        self.end_to_end_seconds
            .get_or_create(&labels)
            .observe(end_to_end_seconds);
    }

    /// Counts a failed delivery attempt that will be retried.
    pub fn retried(&self, destination_name: &str) {
        self.retried.get_or_create(&destination(destination_name)).inc();
    }

    /// Counts deliveries a newer one of their key replaced.
    pub fn superseded(&self, destination_name: &str, n: u64) {
        self.superseded
            .get_or_create(&destination(destination_name))
            .inc_by(n);
    }

    /// Brings the counts of dropped story entries, and of dropped and
    /// exported spans, up to these totals.
    pub fn set_observed(&self, story_dropped: u64, spans_dropped: u64, spans_exported: u64) {
        for (counter, total) in [
            (&self.story_dropped, story_dropped),
            (&self.spans_dropped, spans_dropped),
            (&self.spans_exported, spans_exported),
        ] {
            let counted = counter.get();
            if total > counted {
                counter.inc_by(total - counted);
            }
        }
    }

    /// Counts deliveries not sent, being unchanged.
    pub fn unchanged(&self, destination_name: &str, n: u64) {
        self.unchanged
            .get_or_create(&destination(destination_name))
            .inc_by(n);
    }

    /// Counts a module upload by its result (`stored`, `unchanged`, `refused`).
    pub fn upload(&self, tenant: &str, result: &str) {
        self.uploads
            .get_or_create(&UploadLabels {
                tenant: tenant.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts one restart of a worker that died.
    pub fn worker_restarted(&self, worker: &str) {
        self.worker_restarts
            .get_or_create(&WorkerLabels {
                worker: worker.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Records whether a channel's circuit breaker is open.
    pub fn set_tripped(&self, channel: &str, open: bool) {
        self.circuit_open
            .get_or_create(&self::channel(channel))
            .set(i64::from(open));
    }

    /// Records a channel's queue depths.
    pub fn set_depth(&self, channel: &str, depth: &Depth) {
        for (queue, value) in [("transform", depth.to_transform), ("delivery", depth.to_deliver)] {
            self.depth
                .get_or_create(&DepthLabels {
                    channel: channel.to_string(),
                    queue: queue.to_string(),
                })
                .set(value as i64);
        }
    }
}
