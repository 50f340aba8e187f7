//! End-to-end tests: the real `sluice` binary, a real sidecar on
//! 127.0.0.1, real components, real SQLite files and real destinations.
//! One test binary for all of them (see `tests/README.md`).

mod support;

mod change;
mod cli;
mod cluster;
mod consistency;
mod contract;
mod crash;
mod delivery;
mod destinations;
mod docs;
mod languages;
mod pipeline;
mod polling;
mod sandbox;
mod serve;
mod sources;
mod stories;
mod tenants;
mod traces;
mod ui;
