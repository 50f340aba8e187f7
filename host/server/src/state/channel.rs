//! A channel as served: its pipeline (swappable), switch, circuit breaker and trials.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use crate::change::backfill::Backfill;
use crate::change::record::Recording;
use crate::change::shadow::Shadow;
use crate::config::WhenOff;
use sluice_engine::Limits;
use sluice_engine::pipeline::Pipeline;

/// A channel as served: its tenant, pipeline, destination and switch.
pub struct Channel {
    /// The channel's name.
    pub name: String,
    /// Its tenant: events are fanned out to the channels of their tenant.
    pub tenant: String,
    /// Where ingested events go after the pipeline; none: sync path only.
    pub destination: Option<String>,
    /// What happens to events ingested while the channel is off.
    pub when_off: WhenOff,
    /// Only events from these sources are fanned out to it (empty: all).
    pub sources: Vec<String>,
    /// Limits of the modules activated on this channel.
    pub limits: Limits,
    pub(super) pipeline: RwLock<Pipeline>,
    pub(super) config_pipeline: Pipeline,
    pub(super) enabled: AtomicBool,
    pub(super) faults: AtomicU32,
    pub(super) tripped: Mutex<Option<String>>,
    pub(super) degraded: Mutex<Option<String>>,
    pub(super) active_spec: Mutex<Option<String>>,
    pub(super) stored: AtomicU64,
    pub(super) shadow: RwLock<Option<Arc<Shadow>>>,
    /// The backfill running or last run, if any.
    pub(crate) backfill: Mutex<Option<Arc<Backfill>>>,
    /// The recording in progress, if any.
    pub(crate) recording: Mutex<Option<Arc<Recording>>>,
    pub(crate) wake: Notify,
    /// What was stored, when a tenant made it through the API; `None` for the operator's.
    pub(crate) owned: Option<String>,
    /// A channel made with no steps holds its events until its first activation.
    pub(crate) awaiting_activation: AtomicBool,
}

impl Channel {
    /// A channel running `pipeline`, switched on.
    pub fn new(name: &str, tenant: &str, pipeline: Pipeline) -> Self {
        Self {
            name: name.to_string(),
            tenant: tenant.to_string(),
            destination: None,
            when_off: WhenOff::Hold,
            sources: Vec::new(),
            limits: Limits::default(),
            pipeline: RwLock::new(pipeline.clone()),
            config_pipeline: pipeline,
            enabled: AtomicBool::new(true),
            faults: AtomicU32::new(0),
            tripped: Mutex::new(None),
            degraded: Mutex::new(None),
            active_spec: Mutex::new(None),
            stored: AtomicU64::new(0),
            shadow: RwLock::new(None),
            backfill: Mutex::new(None),
            recording: Mutex::new(None),
            wake: Notify::new(),
            owned: None,
            awaiting_activation: AtomicBool::new(false),
        }
    }

    /// Whether it holds its events until its first activation.
    pub fn awaiting_activation(&self) -> bool {
        self.awaiting_activation.load(Ordering::Acquire)
    }

    /// Why the channel cannot run its activated pipeline (a stored module
    /// is missing or damaged), if it cannot. Its events wait meanwhile.
    pub fn degraded(&self) -> Option<String> {
        self.degraded.lock().expect("degraded lock").clone()
    }

    /// The activated pipeline's spec as stored (`None`: the config's), as last applied here.
    pub fn active_spec(&self) -> Option<String> {
        self.active_spec.lock().expect("spec lock").clone()
    }

    /// Records which stored spec now runs (see [`Channel::active_spec`]).
    pub fn set_active_spec(&self, spec: Option<String>) {
        *self.active_spec.lock().expect("spec lock") = spec;
    }

    /// Events the channel keeps stored (queued and dead letters), as last counted.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    pub(crate) fn set_stored(&self, count: u64) {
        self.stored.store(count, Ordering::Relaxed);
    }

    /// The candidate running beside the active pipeline, if one does.
    pub fn shadow(&self) -> Option<Arc<Shadow>> {
        self.shadow.read().expect("shadow lock").clone()
    }

    /// Starts (`Some`) or stops (`None`) a shadow; returns the one it replaces.
    pub fn set_shadow(&self, shadow: Option<Arc<Shadow>>) -> Option<Arc<Shadow>> {
        std::mem::replace(&mut *self.shadow.write().expect("shadow lock"), shadow)
    }

    /// The pipeline now active. A batch takes it once and finishes on it,
    /// whatever is activated meanwhile.
    pub fn pipeline(&self) -> Pipeline {
        self.pipeline.read().expect("pipeline lock").clone()
    }

    /// Whether an ingested event of this tenant and source is for this channel.
    pub fn takes(&self, tenant: &str, source: &str) -> bool {
        self.destination.is_some()
            && self.tenant == tenant
            && (self.sources.is_empty() || self.sources.iter().any(|s| s == source))
    }

    /// Whether the channel is switched on and can run (not degraded).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire) && self.degraded().is_none()
    }

    /// Why the circuit breaker paused the channel, if it did.
    pub fn tripped(&self) -> Option<String> {
        self.tripped.lock().expect("breaker lock").clone()
    }

    /// Whether events ingested now are queued for this channel.
    pub fn queues_new_events(&self) -> bool {
        self.enabled()
            || self.when_off == WhenOff::Hold
            || self.tripped().is_some()
            || self.degraded().is_some()
    }
}

/// `module@version` of every step of a pipeline, recorded with what it produces.
pub fn versions(pipeline: &Pipeline) -> Vec<String> {
    pipeline
        .steps()
        .iter()
        .map(|step| format!("{}@{}", step.module.name(), step.module.version()))
        .collect()
}
