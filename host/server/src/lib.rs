//! The Sluice sidecar: the HTTP server (tokio + hyper), its durable store
//! (SQLite or NATS JetStream), its background workers and a local test
//! destination. [`sidecar::Sidecar`] builds one from a `sluice.toml`, so
//! any program can start a sidecar.
//!
//! The folders follow the data path:
//!
//! ```text
//! api/ ──► store/ ──► workers/transform ──► store/ (outbox) ──► workers/delivery ──► destination
//! ```
//!
//! - [`api`]: every request comes in here; one module per resource, and one
//!   route table (`api::routes`) that the router, the HTTP reference and the
//!   isolation test are checked against.
//! - [`store`]: the queue and the registry, on SQLite or JetStream.
//! - `workers/`: what moves events along, each supervised.
//! - `modules/`: checking and keeping tenants' uploaded components.
//! - `change/`: changing a channel safely (shadow, backfill, record, redact).
//! - `observe/`: metrics, per-minute history and the events that are logged and counted.
//! - `state/`: the running [`App`] with its channels, tenants and destinations.
//!
//! The HTTP API is described in `docs/reference/http-api.md`.

pub mod api;
mod change;
pub mod config;
mod modules;
mod observe;
mod outbound;
pub mod sidecar;
pub mod sink;
mod sources;
mod state;
pub mod store;
mod workers;

pub use sidecar::{run, shutdown_signal};
pub use state::auth;
pub use state::{App, Channel, Destination, Tenant};
