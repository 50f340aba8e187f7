//! `sluice`: run, test and check WebAssembly transforms for retail data.
//! This binary parses arguments and prints; the work is done by
//! `sluice-engine` and `sluice-server`.

mod admin;
mod build;
mod check;
mod import;
mod new;
mod run;
mod serve;
mod sink;
mod test;
mod trial;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sluice_engine::{Engine, EngineOptions, Limits};

/// Sluice: WebAssembly transforms that reshape product and inventory data
/// for every channel.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a transform against golden fixtures; exits non-zero on any
    /// difference, any case over its budget, or (with --baseline) any change
    /// from the older version.
    ///
    /// Each case is a folder with `input.json` (one event) or `input.jsonl`
    /// (many), an optional `config.json`, `expected.json`, and an optional
    /// `budget.json` (`{"fuel": N, "memory-bytes": N, "output-bytes": N}`;
    /// one in the fixtures folder applies to every case). A contract 0.2
    /// transform's case may add `state.json` (the state before, key to JSON
    /// value), `expected-state.json` (the state after) and `lookups.json`
    /// (table to key to JSON value); for a channel, each is keyed by step
    /// name first. State lives in memory only.
    Test(test::TestArgs),
    /// Transform events from JSONL (stdin or a file) and print outcomes as JSONL.
    Run(run::RunArgs),
    /// Check that a file is a component implementing the Sluice world, and
    /// show its imports, exports and size.
    Check(check::CheckArgs),
    /// Scaffold a new transform (Rust, Python or JavaScript) with one fixture case.
    New(new::NewArgs),
    /// Build transform folders into components: Rust with cargo, Python
    /// with componentize-py, JavaScript with componentize-js (both
    /// installed, pinned, on first use).
    Build(build::BuildArgs),
    /// Run the sidecar for the channels in `sluice.toml`: synchronous
    /// transforms, durable ingest, delivery with retries, dead letters.
    ///
    /// Logs are JSON lines on stderr, filtered by `SLUICE_LOG` (default `info`).
    Serve(serve::ServeArgs),
    /// A running sidecar's channels: list them with their queues, switch them
    /// on and off, activate uploaded module versions, roll back.
    Channels(admin::ChannelsArgs),
    /// List, inspect, replay and purge a running sidecar's dead letters.
    DeadLetters(admin::DeadLettersArgs),
    /// Upload transform modules to a running sidecar, and list them.
    Modules(admin::ModulesArgs),
    /// Find any event: its story end to end by id, or the newest events of an entity key.
    Events(admin::EventsArgs),
    /// Upload lookup tables (CSV or JSON) for contract 0.2 steps to a
    /// running sidecar, and list them.
    Lookups(admin::LookupsArgs),
    /// Destinations on a running sidecar: list, show, and your own: create
    /// or replace from a JSON file, delete.
    Destinations(admin::DestinationsArgs),
    /// Your sources on a running sidecar: list, show, create or replace
    /// from a JSON file, delete.
    Sources(admin::SourcesArgs),
    /// Make API tokens and their hashes for `sluice.toml`.
    Token(admin::TokenArgs),
    /// A local destination that prints every request it receives as a JSON line.
    Sink(sink::SinkArgs),
    /// Send a catalog file (CSV with a header row, or JSONL) to a running
    /// sidecar as events of one source, in batches that wait out 429 and
    /// 503. A row's id is its `--id-column`, or a hash of its content, so
    /// running the same file again sends only duplicates.
    Import(import::ImportArgs),
}

/// Engine and limit settings shared by the commands that run modules.
#[derive(Debug, Args)]
struct EngineArgs {
    /// Directory for compiled modules, so each is compiled only once.
    #[arg(long, env = "SLUICE_CACHE_DIR", default_value_os_t = default_cache_dir())]
    cache_dir: PathBuf,
    /// Compile on every run; do not read or write the cache.
    #[arg(long, env = "SLUICE_NO_CACHE")]
    no_cache: bool,
    /// Meter fuel as well as wall-clock time.
    #[arg(long, env = "SLUICE_FUEL")]
    fuel: bool,
    /// Wall-clock budget per event, in milliseconds.
    #[arg(long, env = "SLUICE_TIMEOUT_MS", default_value_t = 200)]
    timeout_ms: u64,
    /// Memory cap per instance, in MiB.
    #[arg(long, env = "SLUICE_MEMORY_MIB", default_value_t = 128)]
    memory_mib: usize,
    /// Output cap per event, in KiB: every byte of what one event becomes.
    #[arg(long, env = "SLUICE_OUTPUT_KIB", default_value_t = 4096)]
    output_kib: usize,
    /// Most events (or violations) one event may become, per step and after the pipeline.
    #[arg(long, env = "SLUICE_MAX_FAN_OUT", default_value_t = 1000)]
    max_fan_out: usize,
}

impl EngineArgs {
    fn engine(&self) -> anyhow::Result<Engine> {
        self.engine_with_fuel(self.fuel)
    }

    fn engine_with_fuel(&self, fuel: bool) -> anyhow::Result<Engine> {
        let options = EngineOptions {
            fuel,
            cache_dir: (!self.no_cache).then(|| self.cache_dir.clone()),
            ..EngineOptions::default()
        };
        Ok(Engine::new(&options)?)
    }

    fn limits(&self) -> Limits {
        Limits {
            timeout: Duration::from_millis(self.timeout_ms),
            memory_bytes: self.memory_mib.saturating_mul(1 << 20),
            output_bytes_per_event: self.output_kib.saturating_mul(1 << 10),
            max_fan_out: self.max_fan_out,
            ..Limits::default()
        }
    }
}

pub(crate) fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("sluice")
}

/// Runs the parsed command; the exit code says whether it succeeded.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Test(args) => test::run(args),
        Command::Run(args) => run::run(args),
        Command::Check(args) => check::run(args),
        Command::New(args) => new::run(args),
        Command::Build(args) => build::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Channels(args) => admin::channels(args),
        Command::DeadLetters(args) => admin::dead_letters(args),
        Command::Modules(args) => admin::modules(args),
        Command::Lookups(args) => admin::lookups(args),
        Command::Events(args) => admin::events(args),
        Command::Sources(args) => admin::sources(args),
        Command::Destinations(args) => admin::destinations(args),
        Command::Token(args) => admin::token(args),
        Command::Sink(args) => sink::run(args),
        Command::Import(args) => import::run(args),
    }
}

fn main() -> ExitCode {
    let args = Cli::parse();
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
