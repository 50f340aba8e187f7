//! What an operator sees: Prometheus [`metrics`], the per-minute
//! [`history`] of each channel, each event's [`story`] (its secrets
//! [`mask`]ed), and the typed [`events`] that feed them and the log.

pub(crate) mod events;
pub(crate) mod history;
pub mod mask;
pub(crate) mod metrics;
pub mod story;
pub mod trace;
