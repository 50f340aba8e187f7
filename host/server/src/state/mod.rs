//! The sidecar's shared state: channels (with their swappable pipelines,
//! switches and circuit breakers), destinations, tenants (limits, quotas,
//! fairness), tokens, and the stores.

pub mod auth;
mod channel;
mod destination;
pub(crate) mod entity_key;
mod named;
pub(crate) mod owned;
mod tenant;

pub use channel::{Channel, versions};
pub use destination::Destination;
pub use named::Named;
pub use tenant::Tenant;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::change::shadow::CanaryPick;
use crate::config::ServerConfig;
use crate::observe::metrics::Metrics;
use crate::state::auth::{Caller, Tokens};
use crate::state::entity_key::EntityKey;
use crate::store::{Queue, Registry, StoreError};
use crate::workers::supervisor::WorkerBoard;
use sluice_engine::Engine;
use sluice_engine::event::{EventJson, OutcomeJson};
use sluice_engine::pipeline::{Pipeline, PipelineSpec, Step, StepSpec};

/// Why the shared state refused a request; `api/` turns it into an answer.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No such channel, or one of another tenant's: they are told apart by no one.
    #[error("there is no channel `{0}`")]
    UnknownChannel(String),
    /// The tenant's transform permits were closed, which only a shutdown does.
    #[error("the tenant's transform permits are closed")]
    PermitsClosed,
}

/// What [`App::run_pipeline`] did with a batch.
pub struct Ran {
    /// The events, as given.
    pub events: Vec<EventJson>,
    /// One outcome per event.
    pub outcomes: Vec<OutcomeJson>,
    /// With a canary: which outcomes came from the candidate.
    pub canary: Option<CanaryPick>,
    /// Per event, the state its steps wrote (contract 0.2), to commit with
    /// its outcome; a canary's share has the candidate's writes. A shadow's
    /// writes are never kept.
    pub writes: Vec<sluice_engine::state::StateChange>,
}

/// Everything a request handler or worker needs; shared by all of them.
pub struct App {
    /// Channels by name.
    pub channels: Named<Channel>,
    /// Destinations by name.
    pub destinations: Named<Destination>,
    tenants: RwLock<BTreeMap<String, Arc<Tenant>>>,
    config: ServerConfig,
    /// Who may call.
    pub tokens: Tokens,
    /// Whether `/metrics` needs a token.
    pub metrics_need_token: bool,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// How long an event id is remembered for duplicate detection.
    pub idempotency_window: Duration,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Per-minute history of every channel (the operations page's plots).
    pub history: crate::observe::history::History,
    /// Every background worker's state, for `/readyz`.
    pub workers: Arc<WorkerBoard>,
    /// The server's own limits and timeouts.
    pub settings: Settings,
    /// Where events' story entries go (see [`crate::observe::story`]).
    pub stories: Arc<crate::observe::story::StoryLog>,
    /// Where spans go (see [`crate::observe::trace`]).
    pub telemetry: Arc<crate::observe::trace::Telemetry>,
    /// Deliveries being sent by this node, by (tenant, event id), for a
    /// story's "in flight".
    /// Keyed by a hash of the three, so that counting costs no allocation.
    pub(crate) in_flight: Mutex<std::collections::HashMap<u64, usize>>,
    /// Module uploads being checked at once are bounded by these permits.
    pub upload_permits: Arc<Semaphore>,
    /// The durable queue.
    pub queue: Arc<dyn Queue>,
    /// Tenants, tokens, modules and activations.
    pub registry: Arc<dyn Registry>,
    /// Loads uploaded modules.
    pub engine: Engine,
    /// Where uploaded components are kept, as `<sha256>.wasm`.
    pub modules_dir: PathBuf,
    /// Where uploaded lookup tables are kept, as `<sha256>.table`.
    pub lookups_dir: PathBuf,
    /// Uploaded lookup tables in memory, shared by the steps that use them.
    pub(crate) lookup_tables: crate::modules::lookups::LoadedTables,
    /// Whether the module cache is this sidecar's alone, so that it may
    /// delete the artifacts it does not use.
    pub collects_module_cache: bool,
    /// Sources, the operator's and the tenants', their secrets loaded.
    pub(crate) sources: crate::sources::Catalog,
    /// Which addresses the URLs tenants set may reach.
    pub(crate) network_policy: Arc<crate::outbound::guard::NetworkPolicy>,
    /// Held while a tenant's destination or channel is checked, stored and
    /// swapped in, so two requests for one name cannot interleave.
    pub(crate) owned_changes: tokio::sync::Mutex<()>,
}

/// The server's own limits and timeouts, from `sluice.toml`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Most events per synchronous request.
    pub max_events_per_request: usize,
    /// Largest batch that first tries to run inline; 0: none.
    pub inline_batch_events: usize,
    /// Largest synchronous answer, in bytes.
    pub max_response_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to send a request's headers.
    pub header_timeout: Duration,
    /// Time to send a request's body.
    pub body_timeout: Duration,
    /// Time to finish in-flight work on shutdown.
    pub shutdown_grace: Duration,
    /// Caps on transform state.
    pub state_quota: sluice_engine::state::StateQuota,
}

impl Settings {
    fn from_config(config: &ServerConfig) -> Self {
        Self {
            max_events_per_request: config.max_events_per_request,
            inline_batch_events: config.inline_batch_events,
            max_response_bytes: config.max_response_bytes,
            max_connections: config.max_connections.max(1),
            header_timeout: Duration::from_millis(config.header_timeout_ms),
            body_timeout: Duration::from_millis(config.body_timeout_ms),
            shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
            state_quota: config.state_quota,
        }
    }
}

/// Why an activation cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// A step names a module version the tenant does not have.
    #[error("step {step}: {message}")]
    UnknownModule {
        /// The step's index.
        step: usize,
        /// What is missing.
        message: String,
    },
    /// A step names a lookup table version the tenant does not have.
    #[error("step {step}: {message}")]
    UnknownLookup {
        /// The step's index.
        step: usize,
        /// What is missing.
        message: String,
    },
    /// The stored component cannot be loaded.
    #[error("step {step}: {message}")]
    Load {
        /// The step's index.
        step: usize,
        /// Why.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl App {
    /// Builds the app from the config and the loaded channels: applies the
    /// config's ON/OFF switches (a switch set through the API stands until
    /// the config's value for it changes), restores each channel's
    /// activated pipeline, and loads the tokens.
    pub fn new(
        config: &ServerConfig,
        channels: Vec<Channel>,
        queue: Arc<dyn Queue>,
        registry: Arc<dyn Registry>,
        engine: Engine,
        data_dir: PathBuf,
    ) -> Result<Self, ActivationError> {
        let tokens = Self::tokens(config, registry.as_ref())?;
        let mut tenant_names: Vec<String> = config.tenants.iter().map(|t| t.name.clone()).collect();
        tenant_names.extend(channels.iter().map(|c| c.tenant.clone()));
        tenant_names.extend(registry.tenants()?);
        let tenants = tenant_names
            .into_iter()
            .map(|name| {
                let tenant = Tenant::new(config.tenant(&name), config.tenant_limits(&name));
                (name, Arc::new(tenant))
            })
            .collect();
        let app = Self {
            channels: Named::new(Self::configured_channels(config, channels, queue.as_ref())?),
            destinations: Named::new(Self::destinations(config)),
            tenants: RwLock::new(tenants),
            config: config.clone(),
            metrics_need_token: !config.metrics_token_sha256.is_empty(),
            tokens,
            max_body_bytes: config.max_body_bytes,
            idempotency_window: Duration::from_secs(config.idempotency_window_hours * 3600),
            metrics: Arc::new(Metrics::default()),
            history: Default::default(),
            workers: Arc::default(),
            settings: Settings::from_config(config),
            stories: Arc::new(crate::observe::story::StoryLog::new(config.stories)),
            in_flight: Mutex::default(),
            telemetry: Arc::new(crate::observe::trace::Telemetry::new(config.telemetry.clone())),
            upload_permits: Arc::new(Semaphore::new(config.upload_concurrency.max(1))),
            queue,
            registry,
            engine,
            modules_dir: data_dir.join("modules"),
            lookups_dir: data_dir.join("lookups"),
            lookup_tables: Default::default(),
            collects_module_cache: true,
            sources: Default::default(),
            network_policy: Arc::new(crate::outbound::guard::NetworkPolicy {
                allow: config.allow_networks.clone(),
            }),
            owned_changes: tokio::sync::Mutex::new(()),
        };
        app.restore_activations()?;
        Ok(app)
    }

    /// Every token of the config and of the registry, with its caller.
    fn tokens(config: &ServerConfig, registry: &dyn Registry) -> Result<Tokens, ActivationError> {
        let tokens = Tokens::default();
        for hash in &config.admin_token_sha256 {
            tokens.add(hash, Caller::Admin);
        }
        for hash in &config.metrics_token_sha256 {
            tokens.add(hash, Caller::Metrics);
        }
        for tenant in &config.tenants {
            for hash in &tenant.token_sha256 {
                tokens.add(hash, Caller::Tenant(tenant.name.clone()));
            }
        }
        for (tenant, hash) in registry.tokens()? {
            tokens.add(&hash, Caller::Tenant(tenant));
        }
        Ok(tokens)
    }

    /// Reads the tenants' sources from the store again and applies what
    /// changed (another sidecar on a shared store changed them).
    pub(crate) async fn sync_sources(&self) {
        let registry = self.registry.clone();
        match crate::store::in_store(move || registry.settings(crate::sources::catalog::SETTING_KIND)).await {
            Ok(stored) => self
                .sources
                .sync(&stored, std::path::Path::new("."), &self.network_policy),
            Err(err) => tracing::error!(error = %err, "cannot read the tenants' sources"),
        }
    }

    /// The loaded channels with their config applied: destination, sources,
    /// limits, and the ON/OFF switch and breaker as the store holds them.
    fn configured_channels(
        config: &ServerConfig,
        channels: Vec<Channel>,
        queue: &dyn Queue,
    ) -> Result<BTreeMap<String, Channel>, ActivationError> {
        let mut by_name = BTreeMap::new();
        for mut channel in channels {
            if let Some(spec) = config.channels.iter().find(|c| c.name == channel.name) {
                channel.destination = spec.destination.clone();
                channel.when_off = spec.when_off;
                channel.sources = spec.sources.clone();
                channel.limits = config.channel_limits(spec);
                let enabled = queue.set_enabled(&channel.name, spec.enabled, true)?;
                channel.enabled.store(enabled, Ordering::Release);
                *channel.tripped.lock().expect("breaker lock") = queue.tripped(&channel.name)?;
            }
            by_name.insert(channel.name.clone(), channel);
        }
        Ok(by_name)
    }

    fn destinations(config: &ServerConfig) -> BTreeMap<String, Destination> {
        config
            .destinations
            .iter()
            .map(|spec| {
                let destination = Destination {
                    retry: spec.retry.clone().unwrap_or_else(|| config.retry.clone()),
                    entity_key: Arc::new(
                        EntityKey::compile(&spec.entity_key).expect("checked when the config was parsed"),
                    ),
                    target: Arc::new(spec.target().expect("checked when the config was parsed")),
                    method: spec.method().expect("checked when the config was parsed"),
                    config: spec.clone(),
                    status: Mutex::default(),
                    wake: Notify::new(),
                    owned: None,
                };
                (spec.name.clone(), destination)
            })
            .collect()
    }

    /// Restores each channel's activated pipeline from the registry. A
    /// channel whose activated modules cannot be loaded is degraded: the
    /// server starts, its events wait, and `/readyz` and `GET /v1/channels`
    /// say why.
    fn restore_activations(&self) -> Result<(), ActivationError> {
        for channel in self.channels.values() {
            self.restore_activation_of(&channel)?;
        }
        Ok(())
    }

    /// Restores one channel's activated pipeline (see [`App::new`]); a
    /// store failure is logged.
    pub(crate) fn restore_activation(&self, channel: &Channel) {
        if let Err(err) = self.restore_activation_of(channel) {
            tracing::error!(channel = %channel.name, error = %err, "cannot read the channel's activation");
        }
    }

    fn restore_activation_of(&self, channel: &Channel) -> Result<(), ActivationError> {
        if channel.tripped().is_some() {
            self.metrics.set_tripped(&channel.name, true);
        }
        let Some(text) = self.registry.active_pipeline(&channel.name)? else {
            return Ok(());
        };
        channel.set_active_spec(Some(text.clone()));
        let loaded = serde_json::from_str::<PipelineSpec>(&text)
            .map_err(|err| format!("its stored pipeline is corrupt: {err}"))
            .and_then(|spec| self.load_uploaded(channel, &spec).map_err(|err| err.to_string()));
        match loaded {
            Ok(pipeline) => {
                *channel.pipeline.write().expect("pipeline lock") = pipeline;
                channel.awaiting_activation.store(false, Ordering::Release);
            }
            Err(why) => {
                tracing::error!(channel = %channel.name, tenant = %channel.tenant, reason = %why, "channel degraded: its activated pipeline cannot be loaded");
                *channel.degraded.lock().expect("degraded lock") = Some(why);
            }
        }
        Ok(())
    }

    /// Deletes compiled artifacts that no configured or uploaded module
    /// uses any more (and those of other engine configurations), unless
    /// the cache is shared.
    pub fn collect_artifacts(&self) {
        let Some(cache) = self.engine.cache().filter(|_| self.collects_module_cache) else {
            return;
        };
        let mut keep = std::collections::BTreeSet::new();
        for channel in self.channels.values() {
            for pipeline in [self.config_pipeline(&channel), channel.pipeline()] {
                keep.extend(pipeline.steps().iter().map(|s| s.module.sha256().to_string()));
            }
        }
        for tenant in self.tenant_names() {
            match self.registry.modules(&tenant, None) {
                Ok(modules) => keep.extend(modules.into_iter().map(|m| m.version)),
                // Without the list, keep everything rather than delete a needed artifact.
                Err(_) => return,
            }
        }
        match cache.collect(self.engine.wasmtime(), |digest| keep.contains(digest)) {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "collected unused compiled modules"),
            Err(err) => tracing::warn!(error = %err, "cannot collect the module cache"),
        }
    }

    /// Waits for one of the tenant's transform permits. Move it into the
    /// work it admits, so that it is held exactly as long as that work runs.
    pub async fn transform_permit(&self, tenant: &str) -> Result<Option<OwnedSemaphorePermit>, StateError> {
        match self.tenant(tenant) {
            Some(tenant) => Ok(Some(
                tenant
                    .permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| StateError::PermitsClosed)?,
            )),
            None => Ok(None),
        }
    }

    /// Runs `events` through `pipeline` for `channel`, the one way the
    /// synchronous and durable paths share: it waits for one of the tenant's
    /// `transform-concurrency` permits, runs the pipeline (a small batch
    /// first inline, see [`Pipeline::try_run_inline`]; otherwise, or if that
    /// gives up, on a blocking thread that holds the permit for as long as
    /// it runs, even if the caller goes away), and records the time and
    /// every outcome on `path` (`sync` or `ingest`). The events come back
    /// with their outcomes.
    ///
    /// With a shadow on the channel (see `change::shadow`), the events also
    /// run through the candidate on the same blocking thread, and the
    /// outcomes are compared; a canary's share of outcomes comes from the
    /// candidate, as the returned pick says.
    pub async fn run_pipeline(
        &self,
        channel: &Channel,
        pipeline: Pipeline,
        events: Vec<EventJson>,
        path: &'static str,
        context: Option<sluice_engine::state::RunContext>,
    ) -> Result<Ran, tokio::task::JoinError> {
        let permit = self.transform_permit(&channel.tenant).await.ok().flatten();
        let started = Instant::now();
        let started_at = std::time::SystemTime::now();
        // Only spans carry them (the worker has its own for dispositions).
        let versions = if self.telemetry.enabled() {
            crate::state::channel::versions(&pipeline)
        } else {
            Vec::new()
        };
        let shadow = channel.shadow();
        let entity_key = channel
            .destination
            .as_ref()
            .and_then(|d| self.destinations.get(d))
            .map(|d| d.entity_key.clone());
        let inline = if context.is_none()
            && shadow.is_none()
            && !events.is_empty()
            && events.len() <= self.settings.inline_batch_events
        {
            pipeline.try_run_inline(&events).ok()
        } else {
            None
        };
        self.metrics.transform_placement(&channel.name, inline.is_some());
        let (events, outcomes, canary, writes) = match inline {
            Some(outcomes) => {
                drop(permit);
                let writes = vec![Default::default(); outcomes.len()];
                (events, outcomes, None, writes)
            }
            None => {
                tokio::task::spawn_blocking(move || {
                    let context = context.unwrap_or_default();
                    let run = pipeline.run_in(&events, &context);
                    let (mut outcomes, mut writes) = (run.outcomes, run.writes);
                    let canary = shadow.and_then(|shadow| {
                        // Its own run: what it writes is seen by no one.
                        let candidate = shadow.pipeline.run_in(&events, &context);
                        let pick =
                            shadow.apply(&events, &mut outcomes, candidate.outcomes, entity_key.as_deref());
                        if let Some(pick) = &pick {
                            for ((kept, chosen), theirs) in
                                writes.iter_mut().zip(&pick.from_candidate).zip(candidate.writes)
                            {
                                if *chosen {
                                    *kept = theirs;
                                }
                            }
                        }
                        pick
                    });
                    drop(permit);
                    (events, outcomes, canary, writes)
                })
                .await?
            }
        };
        self.metrics
            .transform_time(&channel.name, started.elapsed().as_secs_f64());
        let recording = channel.recording.lock().expect("recording lock").clone();
        if let Some(recording) = recording {
            recording.capture(&events);
        }
        for (event, outcome) in events.iter().zip(&outcomes) {
            let trace = crate::observe::trace::TraceContext::of_event(
                &event.tenant,
                &event.id,
                event.headers.get("traceparent").map(String::as_str),
            );
            self.emit(crate::observe::events::Transformed {
                tenant: &event.tenant,
                channel: &channel.name,
                event_id: &event.id,
                correlation_id: event.correlation_id.as_deref().unwrap_or(&event.id),
                outcome: outcome.tag(),
                path,
                trace,
                started: started_at,
                versions: &versions,
            });
            if path == "ingest" && self.telemetry.enabled() {
                self.record_step_spans(&channel.name, event, trace, started_at, &versions);
            }
        }
        Ok(Ran {
            events,
            outcomes,
            canary,
            writes,
        })
    }

    /// One span per pipeline step, under the event's transform span. The
    /// engine runs a batch's steps as one call, so each step's span covers
    /// the batch's run; it carries the step's position and module version.
    fn record_step_spans(
        &self,
        channel: &str,
        event: &EventJson,
        trace: crate::observe::trace::TraceContext,
        started: std::time::SystemTime,
        versions: &[String],
    ) {
        let parent = crate::observe::events::transform_span(&event.tenant, &event.id, channel);
        let end = std::time::SystemTime::now();
        for (index, version) in versions.iter().enumerate() {
            let position = index.to_string();
            self.telemetry.record(crate::observe::trace::SpanRecord {
                trace_id: trace.trace_id,
                span_id: crate::observe::trace::span_id(&[
                    "step",
                    &event.tenant,
                    &event.id,
                    channel,
                    &position,
                ]),
                parent: Some(parent),
                name: format!("step {version}"),
                kind: crate::observe::trace::SpanKind::Internal,
                start: started,
                end,
                attributes: vec![
                    ("sluice.tenant", event.tenant.clone()),
                    ("sluice.channel", channel.to_string()),
                    ("sluice.event_id", event.id.clone()),
                    ("sluice.step", position),
                    ("sluice.module_version", version.clone()),
                ],
                error: false,
            });
        }
    }

    /// What a run of `pipeline` for `channel` reads its state from
    /// (contract 0.2), or `None` when no step keeps state, neither its own
    /// nor a shadow's or canary's.
    pub async fn state_context(
        &self,
        channel: &Channel,
        pipeline: &Pipeline,
    ) -> Result<Option<sluice_engine::state::RunContext>, String> {
        if !pipeline.stateful() && !channel.shadow().is_some_and(|shadow| shadow.pipeline.stateful()) {
            return Ok(None);
        }
        let (queue, tenant, name) = (self.queue.clone(), channel.tenant.clone(), channel.name.clone());
        let (store, usage) = crate::store::in_store(move || queue.state(&tenant, &name)).await?;
        Ok(Some(sluice_engine::state::RunContext {
            store: Some(store),
            usage,
            quota: self.settings.state_quota,
            lookups: Default::default(),
        }))
    }

    /// Counts `delivery` as being sent by this node.
    pub(crate) fn enter_flight(&self, delivery: &crate::store::Delivery) {
        if self.stories.config().enabled {
            let key = flight_key(&delivery.tenant, &delivery.event_id, &delivery.channel);
            *self
                .in_flight
                .lock()
                .expect("flight lock")
                .entry(key)
                .or_default() += 1;
        }
    }

    /// Counts `delivery` as sent.
    pub(crate) fn leave_flight(&self, delivery: &crate::store::Delivery) {
        let key = flight_key(&delivery.tenant, &delivery.event_id, &delivery.channel);
        let mut flying = self.in_flight.lock().expect("flight lock");
        if let Some(count) = flying.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                flying.remove(&key);
            }
        }
    }

    /// Whether this node is sending a delivery of the event in `channel`.
    pub(crate) fn is_in_flight(&self, tenant: &str, event_id: &str, channel: &str) -> bool {
        self.in_flight
            .lock()
            .expect("flight lock")
            .contains_key(&flight_key(tenant, event_id, channel))
    }

    /// A tenant's state, if the tenant exists.
    pub fn tenant(&self, name: &str) -> Option<Arc<Tenant>> {
        self.tenants.read().expect("tenants lock").get(name).cloned()
    }

    /// Every tenant's name.
    pub fn tenant_names(&self) -> Vec<String> {
        self.tenants
            .read()
            .expect("tenants lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Adds a tenant created through the admin API.
    pub fn add_tenant(&self, name: &str) {
        let tenant = Tenant::new(self.config.tenant(name), self.config.tenant_limits(name));
        self.tenants
            .write()
            .expect("tenants lock")
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(tenant));
    }

    /// The channel `name` if `caller` may see it; 404 otherwise, whether or
    /// not it exists, so another tenant's channels stay invisible.
    pub fn channel_for(&self, caller: &Caller, name: &str) -> Result<Arc<Channel>, StateError> {
        self.channels
            .get(name)
            .filter(|channel| caller.may_act_for(&channel.tenant))
            .ok_or_else(|| StateError::UnknownChannel(name.to_string()))
    }

    /// Loads the pipeline `spec` from the channel tenant's uploaded modules;
    /// each step names a module and its version (or a unique prefix of it).
    /// Returns the pipeline; `spec` is not stored.
    pub fn load_uploaded(&self, channel: &Channel, spec: &PipelineSpec) -> Result<Pipeline, ActivationError> {
        let mut steps = Vec::with_capacity(spec.steps.len());
        for (index, step) in spec.steps.iter().enumerate() {
            let version =
                self.resolve_version(&channel.tenant, &step.module, step.version.as_deref(), index)?;
            let bytes = crate::modules::files::read_or_fetch(
                &self.modules_dir,
                crate::modules::files::MODULE,
                self.registry.as_ref(),
                &version,
            )
            .map_err(|message| ActivationError::Load {
                step: index,
                message: format!("module `{}` version `{version}`: {message}", step.module),
            })?;
            let module = self
                .engine
                .load(&step.module, &bytes, channel.limits.clone())
                .map_err(|err| ActivationError::Load {
                    step: index,
                    message: err.to_string(),
                })?;
            let mut lookups = sluice_engine::state::StepLookups::new();
            for (table, reference) in &step.lookups {
                lookups.insert(
                    table.clone(),
                    self.load_lookup(&channel.tenant, table, reference, index)?,
                );
            }
            steps.push(Step {
                module: Arc::new(module),
                config: step.config_text(),
                lookups: Arc::new(lookups),
            });
        }
        Ok(Pipeline::new(steps))
    }

    /// Resolves a step's module version and lookup table versions in full,
    /// so that what is stored names exactly what ran.
    pub fn pin_step(&self, tenant: &str, step: &mut StepSpec, index: usize) -> Result<(), ActivationError> {
        step.version = Some(self.resolve_version(tenant, &step.module, step.version.as_deref(), index)?);
        for (table, reference) in step.lookups.iter_mut() {
            let found = self.resolve_lookup(tenant, table, reference, index)?;
            *reference = found.entry_name();
        }
        Ok(())
    }

    /// The tenant's lookup table version that `reference`
    /// (`<name>@<version>`, the version at least 8 characters of it) names
    /// for the step's table `table`.
    fn resolve_lookup(
        &self,
        tenant: &str,
        table: &str,
        reference: &str,
        step: usize,
    ) -> Result<crate::modules::lookups::LookupVersion, ActivationError> {
        let unknown = |message: String| ActivationError::UnknownLookup {
            step,
            message: format!("lookup `{table}`: {message}"),
        };
        let Some((name, wanted)) = crate::modules::lookups::parse_reference(reference) else {
            return Err(unknown(format!(
                "`{reference}` does not name an uploaded table: give `<name>@<version>` (`sluice lookups list` shows them)"
            )));
        };
        // A pinned (full) version is one read of the tenant's own record;
        // a prefix is matched among the tenant's versions of the table.
        let mut matching: Vec<_> = if wanted.len() == 64 {
            self.registry
                .setting(crate::modules::lookups::KIND, tenant, reference)?
                .and_then(|spec| serde_json::from_str::<crate::modules::lookups::LookupVersion>(&spec).ok())
                .into_iter()
                .collect()
        } else {
            crate::modules::lookups::held(self.registry.as_ref(), tenant, Some(name))?
                .into_iter()
                .filter(|held| held.version.starts_with(wanted))
                .collect()
        };
        match matching.len() {
            1 if wanted.len() >= 8 => Ok(matching.remove(0)),
            1 => Err(unknown(format!(
                "version `{wanted}` is too short: give at least 8 characters"
            ))),
            0 => Err(unknown(format!(
                "there is no lookup table `{name}` with version `{wanted}`"
            ))),
            _ => Err(unknown(format!(
                "version `{wanted}` of `{name}` is ambiguous: give more characters"
            ))),
        }
    }

    /// Loads the table a step names, or shares the one in memory. Blocks.
    fn load_lookup(
        &self,
        tenant: &str,
        table: &str,
        reference: &str,
        step: usize,
    ) -> Result<Arc<sluice_engine::state::LookupTable>, ActivationError> {
        let version = self.resolve_lookup(tenant, table, reference, step)?;
        let failed = |message: String| ActivationError::Load {
            step,
            message: format!("lookup `{table}` (`{reference}`): {message}"),
        };
        self.lookup_tables
            .get_or_load(&version, || {
                let bytes = crate::modules::files::read_or_fetch(
                    &self.lookups_dir,
                    crate::modules::files::LOOKUP,
                    self.registry.as_ref(),
                    &version.version,
                )?;
                sluice_engine::lookup::parse_table(&bytes, version.format)
            })
            .map_err(failed)
    }

    /// The full version of the tenant's module `name` matching `wanted`.
    pub fn resolve_version(
        &self,
        tenant: &str,
        name: &str,
        wanted: Option<&str>,
        step: usize,
    ) -> Result<String, ActivationError> {
        let unknown = |message: String| ActivationError::UnknownModule { step, message };
        let Some(wanted) = wanted else {
            return Err(unknown(format!("module `{name}` needs a `version`")));
        };
        let matching: Vec<String> = self
            .registry
            .modules(tenant, Some(name))?
            .into_iter()
            .map(|m| m.version)
            .filter(|v| v.starts_with(wanted))
            .collect();
        match matching.as_slice() {
            [one] if wanted.len() >= 8 => Ok(one.clone()),
            [_] => Err(unknown(format!(
                "version `{wanted}` is too short: give at least 8 characters"
            ))),
            [] => Err(unknown(format!(
                "there is no module `{name}` with version `{wanted}`"
            ))),
            _ => Err(unknown(format!(
                "version `{wanted}` of `{name}` is ambiguous: give more characters"
            ))),
        }
    }

    /// Makes `pipeline` the channel's active pipeline, closes its circuit
    /// breaker, and wakes its workers. Batches already running finish on
    /// the pipeline they took.
    pub fn swap_pipeline(&self, channel: &Channel, pipeline: Pipeline) {
        *channel.pipeline.write().expect("pipeline lock") = pipeline;
        channel.awaiting_activation.store(false, Ordering::Release);
        *channel.degraded.lock().expect("degraded lock") = None;
        self.close_breaker(channel);
    }

    /// The config's pipeline of a channel (what rolling back every activation returns to).
    pub fn config_pipeline(&self, channel: &Channel) -> Pipeline {
        channel.config_pipeline.clone()
    }

    /// Records a switch already stored, closes the breaker, and wakes the workers.
    pub(super) fn set_enabled_in_memory(&self, channel: &Channel, enabled: bool) {
        channel.enabled.store(enabled, Ordering::Release);
        if enabled {
            self.reset_faults(channel);
            *channel.tripped.lock().expect("breaker lock") = None;
            self.metrics.set_tripped(&channel.name, false);
        }
        self.wake_channel(channel);
    }

    /// Applies a switch that another sidecar stored (see [`crate::store::SharedChange`]).
    pub(super) fn apply_shared_switch(&self, channel: &Channel, enabled: bool, tripped: Option<String>) {
        channel.enabled.store(enabled, Ordering::Release);
        if enabled {
            channel.faults.store(0, Ordering::Release);
        }
        self.metrics.set_tripped(&channel.name, tripped.is_some());
        *channel.tripped.lock().expect("breaker lock") = tripped;
        self.wake_channel(channel);
    }

    /// The channel's switch as the config sets it.
    pub(super) fn configured_enabled(&self, channel: &Channel) -> bool {
        self.config
            .channels
            .iter()
            .find(|c| c.name == channel.name)
            .is_none_or(|c| c.enabled)
    }

    /// Marks a channel degraded: its activated pipeline cannot be loaded, and its events wait.
    pub(super) fn degrade(&self, channel: &Channel, why: String) {
        *channel.degraded.lock().expect("degraded lock") = Some(why);
    }

    /// Starts counting a channel's consecutive faults again, here and in a shared store.
    fn reset_faults(&self, channel: &Channel) {
        channel.faults.store(0, Ordering::Release);
        if let Err(err) = self.queue.count_faults(&channel.name, 0, true) {
            tracing::error!(channel = %channel.name, error = %err, "cannot reset the shared fault count");
        }
    }

    /// Closes a channel's circuit breaker and switches it on again, if the breaker had paused it.
    fn close_breaker(&self, channel: &Channel) {
        self.reset_faults(channel);
        if channel.tripped.lock().expect("breaker lock").take().is_some() {
            if let Err(err) = self.queue.set_enabled(&channel.name, true, false) {
                tracing::error!(channel = %channel.name, error = %err, "cannot record the switch");
            }
            channel.enabled.store(true, Ordering::Release);
            self.metrics.set_tripped(&channel.name, false);
            tracing::info!(channel = %channel.name, "circuit breaker closed");
        }
        self.wake_channel(channel);
    }

    /// Counts the module faults among a batch's outcomes (in order); after
    /// the tenant's `circuit-breaker` consecutive ones, pauses the channel.
    /// Its queued and new events wait. Returns whether it tripped now.
    pub fn record_faults(&self, channel: &Channel, faults_in_order: &[Option<String>]) -> bool {
        let threshold = self
            .tenant(&channel.tenant)
            .map_or(0, |t| t.config.circuit_breaker);
        let mut last = None;
        for fault in faults_in_order {
            match fault {
                Some(fault) => {
                    channel.faults.fetch_add(1, Ordering::AcqRel);
                    last = Some(fault.clone());
                }
                None => channel.faults.store(0, Ordering::Release),
            }
        }
        // Sidecars sharing a store count together: the faults may have
        // happened on several nodes, each seeing only some of them.
        let trailing = faults_in_order.iter().rev().take_while(|f| f.is_some()).count() as u32;
        let succeeded = faults_in_order.iter().any(Option::is_none);
        match self.queue.count_faults(&channel.name, trailing, succeeded) {
            Ok(Some(shared)) => channel.faults.store(shared, Ordering::Release),
            Ok(None) => {}
            Err(err) => {
                tracing::error!(channel = %channel.name, error = %err, "cannot count faults in the shared store")
            }
        }
        let count = channel.faults.load(Ordering::Acquire);
        if threshold == 0 || count < threshold || channel.tripped().is_some() {
            return false;
        }
        let reason = format!(
            "circuit open after {count} consecutive module faults; last: {}",
            last.unwrap_or_default()
        );
        tracing::warn!(channel = %channel.name, tenant = %channel.tenant, reason = %reason, "channel paused");
        if let Err(err) = self.queue.trip(&channel.name, &reason) {
            tracing::error!(channel = %channel.name, error = %err, "cannot record the switch");
        }
        *channel.tripped.lock().expect("breaker lock") = Some(reason);
        channel.enabled.store(false, Ordering::Release);
        self.metrics.set_tripped(&channel.name, true);
        true
    }

    /// Wakes a channel's transform worker and its destination's delivery worker.
    pub fn wake_channel(&self, channel: &Channel) {
        channel.wake.notify_one();
        if let Some(destination) = channel
            .destination
            .as_ref()
            .and_then(|d| self.destinations.get(d))
        {
            destination.wake.notify_one();
        }
    }
}

/// The key of a delivery in [`App::in_flight`].
fn flight_key(tenant: &str, event_id: &str, channel: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (tenant, event_id, channel).hash(&mut hasher);
    hasher.finish()
}
