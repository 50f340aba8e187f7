//! `sluice serve`: the sidecar.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use sluice_host::engine::{Engine, EngineOptions};
use sluice_host::server::config::ServerConfig;
use sluice_host::server::{App, Channel, serve, shutdown_signal};

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
    let mut channels = HashMap::new();
    for channel in &config.channels {
        let pipeline = match &channel.pipeline {
            Some(file) => load_pipeline(&base.join(file), &engine, &config.limits),
            None => pipeline_from_steps(&channel.steps, base, &engine, &config.limits),
        }
        .with_context(|| format!("channel `{}`", channel.name))?;
        channels.insert(
            channel.name.clone(),
            Channel {
                tenant: channel.tenant.clone(),
                pipeline,
            },
        );
    }
    let app = Arc::new(App {
        channels,
        max_body_bytes: config.max_body_bytes,
        metrics: Default::default(),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listen = args.listen.unwrap_or(config.listen);
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let shutdown = shutdown_signal()?;
        // Tests and scripts read this line to find the port.
        println!("sluice listening on http://{}", listener.local_addr()?);
        serve(listener, app, shutdown).await;
        eprintln!("sluice: stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A path from the config file, taken relative to the file's folder.
fn relative_to(config: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        config.parent().unwrap_or(Path::new(".")).join(path)
    }
}
