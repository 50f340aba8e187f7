//! `sluice serve`: the sidecar.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use sluice_host::engine::{Engine, EngineOptions};
use sluice_host::server::config::ServerConfig;
use sluice_host::server::{App, Channel, run as serve, shutdown_signal};
use sluice_host::store::SqliteQueue;

use super::locate::{load_pipeline, pipeline_from_steps};

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
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let config = ServerConfig::load(&args.config)?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| relative_to(&args.config, &config.data_dir));
    let engine = Engine::new(&EngineOptions {
        fuel: args.fuel,
        cache_dir: Some(data_dir.join("module-cache")),
        ..EngineOptions::default()
    })?;
    let base = args.config.parent().unwrap_or(Path::new("."));
    let mut channels = Vec::new();
    for channel in &config.channels {
        let limits = config.channel_limits(channel);
        let pipeline = match &channel.pipeline {
            Some(file) => load_pipeline(&base.join(file), &engine, &limits),
            None => pipeline_from_steps(&channel.steps, base, &engine, &limits),
        }
        .with_context(|| format!("channel `{}`", channel.name))?;
        channels.push(Channel::new(&channel.name, &channel.tenant, pipeline));
    }
    for destination in &config.destinations {
        sluice_host::server::tls::client_config(destination.ca_file.as_deref())
            .map_err(|err| anyhow::anyhow!("destination `{}`: {err}", destination.name))?;
    }
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let database = data_dir.join("sluice.db");
    let queue = Arc::new(
        SqliteQueue::open(&database).with_context(|| format!("cannot open {}", database.display()))?,
    );
    let app = Arc::new(App::new(
        &config,
        channels,
        queue.clone(),
        queue.clone(),
        engine,
        data_dir.clone(),
    )?);
    if config.admin_token_sha256.is_empty() && config.tenants.iter().all(|t| t.token_sha256.is_empty()) {
        tracing::warn!("no admin or tenant token is configured: every /v1 call will answer 401");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listen = args.listen.unwrap_or(config.listen);
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let shutdown = shutdown_signal()?;
        // Tests and scripts read this line to find the port.
        println!("sluice listening on http://{}", listener.local_addr()?);
        tracing::info!(listen = %listener.local_addr()?, database = %database.display(), "sluice serving");
        serve(listener, app, shutdown).await;
        tracing::info!("sluice stopped");
        anyhow::Ok(())
    })?;
    // Blocking work still running (a pipeline, an upload check) is abandoned
    // after the grace: nothing it did was acknowledged, so it is redone.
    runtime.shutdown_timeout(std::time::Duration::from_millis(config.shutdown_grace_ms));
    queue.close();
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

/// A path from the config file, taken relative to the file's folder.
fn relative_to(config: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        config.parent().unwrap_or(Path::new(".")).join(path)
    }
}
