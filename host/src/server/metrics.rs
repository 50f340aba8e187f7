//! Prometheus metrics of the sidecar, served at `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-channel request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The channel.
    pub channel: String,
    /// The HTTP status answered.
    pub status: u16,
}

/// Labels of per-channel outcome counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The channel.
    pub channel: String,
    /// `emit`, `drop`, `reject` or `error`.
    pub outcome: String,
}

/// Labels of per-channel histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// The channel.
    pub channel: String,
}

/// Every metric the sidecar keeps.
pub struct Metrics {
    registry: Registry,
    /// Sync transform requests, by channel and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Events transformed, by channel and outcome.
    pub outcomes: Family<OutcomeLabels, Counter>,
    /// Time spent in the pipeline per request, in seconds.
    pub transform_seconds: Family<ChannelLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let requests = Family::<RequestLabels, Counter>::default();
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        let transform_seconds = Family::<ChannelLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0001, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register(
            "sync_requests",
            "Sync transform requests by channel and status",
            requests.clone(),
        );
        registry.register(
            "events_transformed",
            "Events transformed by channel and outcome",
            outcomes.clone(),
        );
        registry.register(
            "transform_seconds",
            "Time spent running a channel's pipeline per request",
            transform_seconds.clone(),
        );
        Self {
            registry,
            requests,
            outcomes,
            transform_seconds,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
