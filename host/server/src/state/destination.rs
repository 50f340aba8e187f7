//! A destination as served, and what its delivery worker is doing.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::config::{DestinationConfig, RetryPolicy};
use crate::state::entity_key::EntityKey;

/// A destination as served: its config, retry policy and compiled entity key.
pub struct Destination {
    /// As configured.
    pub config: DestinationConfig,
    /// Its retry policy (its own, or the config's default).
    pub retry: RetryPolicy,
    /// Selects the entity (SKU) whose order is kept.
    pub entity_key: Arc<EntityKey>,
    /// Where each payload goes: its URL, from the payload's values.
    pub(crate) target: Arc<crate::outbound::target::UrlTemplate>,
    /// The request's method.
    pub(crate) method: hyper::Method,
    /// What its delivery worker is doing, for the operations page.
    pub status: Mutex<DestinationStatus>,
    pub(crate) wake: Notify,
    /// Whose it is and what was stored, when a tenant made it through the
    /// API; `None` for the operator's, from `sluice.toml`.
    pub(crate) owned: Option<super::owned::Owned>,
}

/// A destination's delivery worker as last seen.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DestinationStatus {
    /// Requests being sent now.
    pub in_flight: usize,
    /// Until when a `Retry-After` pauses it (ms since the Unix epoch).
    pub paused_until: Option<i64>,
    /// The last failed attempt: when, the status (if any) and a snippet.
    pub last_error: Option<crate::store::Attempt>,
}
