//! Sluice: an embeddable WebAssembly transformation engine for retail
//! product and inventory data.
//!
//! - [`engine`]: the sandboxed runtime that loads and runs transform components.
//! - [`pipeline`]: a channel's ordered steps, composing their outcomes.
//! - [`fixtures`]: golden-fixture testing behind `sluice test`.
//! - [`event`]: the JSON forms of events and outcomes.
//! - [`store`]: the durable queue between ingest, transform and delivery.
//! - [`server`]: the sidecar (HTTP API, channel workers, delivery workers).
//! - [`sink`]: a local HTTP destination that records what it receives.

pub mod bindings;
pub mod diff;
pub mod engine;
pub mod event;
pub mod fixtures;
pub mod pipeline;
pub mod server;
pub mod sink;
pub mod store;
