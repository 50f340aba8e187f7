//! A whole sidecar built from a `sluice.toml`: the engine, every channel's
//! pipeline, the store and the shared state, ready to serve. `sluice serve`
//! is this plus logging and signals; another program can start one too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice_engine::locate::{LocateError, load_pipeline, pipeline_from_steps};
use sluice_engine::{Engine, EngineError, EngineOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{ConfigError, ServerConfig};
use crate::state::{ActivationError, App, Channel};
use crate::store::{NatsStore, Queue, Registry, SqliteQueue, StoreError};

/// What may replace the config file's own settings (flags, environment).
#[derive(Debug, Clone, Default)]
pub struct SidecarOptions {
    /// Listen here instead of the config's `listen`.
    pub listen: Option<SocketAddr>,
    /// Keep state here instead of the config's `data-dir`.
    pub data_dir: Option<PathBuf>,
    /// Meter fuel as well as wall-clock time.
    pub fuel: bool,
    /// Use this NATS JetStream (`nats://host:4222`) instead of the config's `queue`.
    pub queue: Option<String>,
    /// Keep compiled modules here instead of `<data-dir>/module-cache`, so
    /// that sidecars on one machine compile a module once rather than once
    /// each. A shared cache is never collected: another sidecar may need
    /// what this one does not.
    pub module_cache: Option<PathBuf>,
}

/// The store a sidecar keeps its queues and registry in.
enum Store {
    Sqlite(Arc<SqliteQueue>),
    Nats(Arc<NatsStore>),
}

/// Why a sidecar cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// `sluice.toml` cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The WebAssembly engine cannot be set up.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A channel's pipeline cannot be found or loaded.
    #[error("channel `{channel}`: {error}")]
    Channel {
        /// The channel.
        channel: String,
        /// Why.
        error: Box<LocateError>,
    },
    /// A destination's TLS settings cannot be used.
    #[error("destination `{destination}`: {detail}")]
    Destination {
        /// The destination.
        destination: String,
        /// Why.
        detail: String,
    },
    /// A source cannot be set up (a secret is missing, a setting is wrong).
    #[error("source `{name}`: {detail}")]
    Source {
        /// `tenant/source`.
        name: String,
        /// Why.
        detail: String,
    },
    /// The data directory cannot be created.
    #[error("cannot create the data directory `{}`: {error}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// NATS JetStream cannot be reached or set up.
    #[error("cannot use the queue `{url}`: {error}")]
    Queue {
        /// The queue's address.
        url: String,
        /// Why.
        error: StoreError,
    },
    /// The database cannot be opened.
    #[error("cannot open `{}`: {error}", path.display())]
    Store {
        /// The database file.
        path: PathBuf,
        /// Why.
        error: StoreError,
    },
    /// Activated pipelines cannot be restored.
    #[error(transparent)]
    Restore(#[from] ActivationError),
}

/// Whether a destination's TLS, credential and signature can be set up
/// (its secrets are there): checked before the sidecar starts.
fn check_destination(destination: &crate::config::DestinationConfig, base: &Path) -> Result<(), String> {
    let client = crate::outbound::client(destination.ca_file.as_deref(), None)?;
    let none = crate::config::InlineSecrets::default();
    if let Some(auth) = &destination.auth {
        crate::outbound::auth::Authenticator::new(auth, &none, base, client)?;
    }
    if let Some(sign) = &destination.sign {
        crate::outbound::sign::Signer::new(sign, &none, base)?;
    }
    Ok(())
}

/// A sidecar ready to serve.
pub struct Sidecar {
    app: Arc<App>,
    store: Store,
    listen: SocketAddr,
    grace: Duration,
    location: String,
}

impl Sidecar {
    /// Reads `config` and builds everything it describes: the engine (with
    /// its module cache in the data directory or `module_cache`), every channel's pipeline,
    /// the SQLite store and the app state.
    pub fn build(config_path: &Path, options: &SidecarOptions) -> Result<Self, SidecarError> {
        let config = ServerConfig::load(config_path)?;
        let base = config_path.parent().unwrap_or(Path::new("."));
        let data_dir = options.data_dir.clone().unwrap_or_else(|| {
            if config.data_dir.is_absolute() {
                config.data_dir.clone()
            } else {
                base.join(&config.data_dir)
            }
        });
        let engine = Engine::new(&EngineOptions {
            fuel: options.fuel,
            cache_dir: Some(
                options
                    .module_cache
                    .clone()
                    .unwrap_or_else(|| data_dir.join("module-cache")),
            ),
            // A tenant's upload compiles on one low-priority core (see `modules::compile`).
            parallel_compilation: false,
            ..EngineOptions::default()
        })?;
        let channels = load_channels(&config, base, &engine)?;
        for destination in &config.destinations {
            // Its paths were made relative to the config's folder when it was loaded.
            check_destination(destination, Path::new(".")).map_err(|detail| SidecarError::Destination {
                destination: destination.name.clone(),
                detail,
            })?;
        }
        std::fs::create_dir_all(&data_dir).map_err(|error| SidecarError::DataDir {
            path: data_dir.clone(),
            error,
        })?;
        let (store, queue, registry, location) = open_store(&config, options, &data_dir)?;
        let mut app = App::new(&config, channels, queue, registry, engine, data_dir)?;
        app.collects_module_cache = options.module_cache.is_none();
        for source in &config.sources {
            let loaded =
                crate::sources::Source::load(source, None, base, &app.network_policy).map_err(|detail| {
                    SidecarError::Source {
                        name: format!("{}/{}", source.tenant, source.name),
                        detail,
                    }
                })?;
            app.sources.insert(loaded);
        }
        let stored = app
            .registry
            .settings(crate::sources::catalog::SETTING_KIND)
            .map_err(crate::state::ActivationError::Store)?;
        app.sources.sync(&stored, base, &app.network_policy);
        app.sync_owned();
        let app = Arc::new(app);
        if config.admin_token_sha256.is_empty() && config.tenants.iter().all(|t| t.token_sha256.is_empty()) {
            tracing::warn!("no admin or tenant token is configured: every /v1 call will answer 401");
        }
        Ok(Self {
            app,
            store,
            listen: options.listen.unwrap_or(config.listen),
            grace: Duration::from_millis(config.shutdown_grace_ms),
            location,
        })
    }

    /// Where it should listen.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// How long shutdown may take before work is abandoned.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// The shared state, for embedding programs that want to look inside.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Serves on `listener` until `shutdown` completes (see [`run`]).
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tracing::info!(store = %self.location, "sluice serving");
        run(listener, self.app.clone(), shutdown).await;
        tracing::info!("sluice stopped");
    }

    /// Closes the store: the last commit is flushed and the writer ends.
    pub fn close(&self) {
        match &self.store {
            Store::Sqlite(sqlite) => sqlite.close(),
            Store::Nats(nats) => nats.close(),
        }
    }
}

/// Serves `app` on `listener` with its supervised workers until `shutdown`
/// completes (see [`shutdown_signal`]). Then it stops accepting, lets
/// in-flight requests and each worker's current batch finish, and returns;
/// all of that within the config's `shutdown-grace-ms`, after which it
/// returns anyway (unfinished work is redone after a restart, since
/// nothing is acknowledged before it is stored).
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let (stop, stopped) = watch::channel(false);
    let mut workers = crate::workers::start(&app, &stopped);
    let grace = app.settings.shutdown_grace;
    crate::api::serve(listener, app.clone(), shutdown).await;
    let _ = stop.send(true);
    let drained = tokio::time::timeout(grace, async { while workers.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "workers still busy at the end of the shutdown grace; stopping anyway"
        );
        workers.abort_all();
    }
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is
/// called, so call it before announcing that the server listens: a signal
/// that arrives early is then still a clean shutdown.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// Every configured channel with its pipeline loaded.
fn load_channels(config: &ServerConfig, base: &Path, engine: &Engine) -> Result<Vec<Channel>, SidecarError> {
    let mut channels = Vec::new();
    for channel in &config.channels {
        let limits = config.channel_limits(channel);
        let pipeline = match &channel.pipeline {
            Some(file) => load_pipeline(&base.join(file), engine, &limits),
            None => pipeline_from_steps(&channel.steps, base, engine, &limits),
        }
        .map_err(|error| SidecarError::Channel {
            channel: channel.name.clone(),
            error: Box::new(error),
        })?;
        channels.push(Channel::new(&channel.name, &channel.tenant, pipeline));
    }
    Ok(channels)
}

/// An open store: the handle the sidecar closes, its queue and registry,
/// and where it is (for the log).
type OpenStore = (Store, Arc<dyn Queue>, Arc<dyn Registry>, String);

/// The store the config (or `--queue`) names: NATS JetStream, or the
/// embedded SQLite file in the data folder.
fn open_store(
    config: &ServerConfig,
    options: &SidecarOptions,
    data_dir: &Path,
) -> Result<OpenStore, SidecarError> {
    let store: (Store, Arc<dyn Queue>, Arc<dyn Registry>, String) =
        match options.queue.clone().or_else(|| config.queue.clone()) {
            Some(url) => {
                let routes: Vec<(String, String)> = config
                    .channels
                    .iter()
                    .filter_map(|c| Some((c.name.clone(), c.destination.clone()?)))
                    .collect();
                let window = Duration::from_secs(config.idempotency_window_hours * 3600);
                let nats =
                    NatsStore::connect(&url, window, &routes).map_err(|error| SidecarError::Queue {
                        url: url.clone(),
                        error,
                    })?;
                let nats = Arc::new(nats);
                (Store::Nats(nats.clone()), nats.clone(), nats, url)
            }
            None => {
                let database = data_dir.join("sluice.db");
                let sqlite = Arc::new(SqliteQueue::open(&database).map_err(|error| SidecarError::Store {
                    path: database.clone(),
                    error,
                })?);
                let location = database.display().to_string();
                (Store::Sqlite(sqlite.clone()), sqlite.clone(), sqlite, location)
            }
        };
    Ok(store)
}
