//! What an operator sees: Prometheus [`metrics`] and the per-minute
//! [`history`] of each channel.

pub(crate) mod history;
pub(crate) mod metrics;
