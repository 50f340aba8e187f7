//! What an operator sees: Prometheus [`metrics`], the per-minute
//! [`history`] of each channel, and the typed [`events`] that feed both
//! and the log.

pub(crate) mod events;
pub(crate) mod history;
pub(crate) mod metrics;
