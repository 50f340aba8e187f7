//! `sluice serve`: the sidecar.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sluice_server::shutdown_signal;
use sluice_server::sidecar::{Sidecar, SidecarOptions};

/// Arguments of `sluice serve`. Each can also be set by its environment variable.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The operator's configuration file.
    #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
    config: PathBuf,
    /// Listen here instead of the config's `listen` (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "SLUICE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Keep state here instead of the config's `data-dir`.
    #[arg(long, env = "SLUICE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Meter fuel as well as wall-clock time.
    #[arg(long, env = "SLUICE_FUEL")]
    fuel: bool,
    /// Share queues and state through this NATS JetStream (`nats://host:4222`)
    /// instead of the config's `queue` (or SQLite when neither is set).
    #[arg(long, env = "SLUICE_QUEUE")]
    queue: Option<String>,
    /// Keep compiled modules in this directory instead of
    /// `<data-dir>/module-cache`, shared by the sidecars on this machine (it
    /// must be private to this user; it is never pruned).
    #[arg(long, env = "SLUICE_MODULE_CACHE")]
    module_cache: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let sidecar = Sidecar::build(
        &args.config,
        &SidecarOptions {
            listen: args.listen,
            data_dir: args.data_dir.clone(),
            fuel: args.fuel,
            queue: args.queue.clone(),
            module_cache: args.module_cache.clone(),
        },
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listen = sidecar.listen();
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let shutdown = shutdown_signal()?;
        // Tests and scripts read this line to find the port.
        println!("sluice listening on http://{}", listener.local_addr()?);
        sidecar.serve(listener, shutdown).await;
        anyhow::Ok(())
    })?;
    // Blocking work still running (a pipeline, an upload check) is abandoned
    // after the grace: nothing it did was acknowledged, so it is redone.
    runtime.shutdown_timeout(sidecar.grace());
    sidecar.close();
    Ok(ExitCode::SUCCESS)
}

/// JSON log lines on stderr, filtered by `SLUICE_LOG` (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .flatten_event(true)
        .with_current_span(false)
        .try_init();
}
