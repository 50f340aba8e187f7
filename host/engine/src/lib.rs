//! The Sluice engine: loads tenants' transform components (the
//! `sluice:transform` world in `wit/`) and runs them in a sandbox, alone or
//! as a channel's pipeline. Embed it in any program: it needs no server,
//! database or async runtime of yours.
//!
//! ```no_run
//! use sluice_engine::{Engine, EngineOptions, Limits, Pipeline};
//! use sluice_engine::event::{parse_events, OutcomeJson};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::new(&EngineOptions::default())?;
//! let module = engine.load_file("b2b_portal.wasm".as_ref(), Limits::default())?;
//! let pipeline = Pipeline::single(module, "{}");
//! let events = parse_events(r#"{"id": "1", "kind": "product", "payload": {"sku": "A"}}"#)?;
//! for outcome in pipeline.run(&events) {
//!     match outcome {
//!         OutcomeJson::Emit { events } => println!("deliver {} events", events.len()),
//!         OutcomeJson::Drop { reason } => println!("dropped: {reason}"),
//!         OutcomeJson::Reject { violations } => println!("rejected at {}", violations[0].path),
//!         OutcomeJson::Partial { events, violations } => {
//!             println!("deliver {} events, {} left out", events.len(), violations.len())
//!         }
//!         OutcomeJson::Error { error } => println!("fault: {error}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! How it runs:
//!
//! - Components are compiled once and cached on disk ([`ArtifactCache`]).
//! - Instances come from the pooling allocator via a type-checked
//!   `InstancePre`, so a fresh instance per batch costs microseconds.
//! - Every call runs under a wall-clock deadline (epoch interruption, and
//!   every host call that can wait stops at it: see the `wasi` module), optionally
//!   fuel, a memory budget per instance and output caps ([`Limits`]).
//! - At most `max_instances` instances are live at once; a call that finds
//!   none free waits for one (backpressure, never a fault).
//! - A trapped instance is discarded; the rest of its batch is retried one
//!   event at a time on fresh instances, so one bad event fails alone.

pub mod bindings;
pub mod budget;
mod cache;
mod contract;
pub mod deny;
pub mod diff;
pub mod event;
mod fault;
pub mod fixtures;
mod limits;
pub mod locate;
pub mod lookup;
mod module;
pub mod pipeline;
mod placement;
mod sandbox;
mod slots;
pub mod state;
pub mod usage;
#[cfg(feature = "wasi")]
pub mod wasi;

pub use pipeline::{Pipeline, PipelineSpec, Step, StepSpec};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use cache::{ArtifactCache, CacheError, CacheOutcome};
pub use fault::{Fault, FaultKind};
pub use limits::{Limits, MemoryBudget, MemoryLimitExceeded};
pub use module::{ComponentReport, LoadError, Module, StepResult, event_bytes, outcome_bytes};
pub use placement::NeedsBlockingThread;
pub use sandbox::{LogBuffer, Sandbox};

/// How often the epoch advances; deadlines are measured in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Most core module instances one component may hold.
pub const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;
/// Most linear memories one component may hold. Their sizes together are
/// capped by the instance's memory budget.
pub const MAX_MEMORIES_PER_COMPONENT: u32 = 8;
/// Most tables one component may hold.
pub const MAX_TABLES_PER_COMPONENT: u32 = 32;

/// Process-wide engine settings. Changing any of them changes the compiled
/// code, so artifacts are cached per setting.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Meter fuel as well as wall-clock time. Deterministic, but slower
    /// (see docs/operations/performance.md).
    pub fuel: bool,
    /// Where to cache compiled components; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// How many instances may be live at once across all modules.
    pub max_instances: u32,
    /// The largest memory any module may be granted, in bytes.
    pub max_memory_bytes: usize,
    /// Compile one component on several threads (wasmtime's own pool). A
    /// sidecar turns it off, so that compiling a tenant's upload takes one
    /// core, at the priority of the thread that asked, rather than all of
    /// them. Does not change the compiled code.
    pub parallel_compilation: bool,
    /// Adjusts wasmtime's configuration before Sluice applies its own, for
    /// measuring speed levers side by side (`benches/transform.rs`). Only
    /// with the `levers` feature: a tuning can change more than speed (stack
    /// size, proposals), so nothing built for production can set one.
    #[cfg(feature = "levers")]
    pub tune: Option<fn(&mut Config)>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            fuel: false,
            cache_dir: None,
            max_instances: 64,
            max_memory_bytes: 1 << 30,
            parallel_compilation: true,
            #[cfg(feature = "levers")]
            tune: None,
        }
    }
}

/// Errors setting up the engine itself.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("cannot configure the WebAssembly engine: {0}")]
    Config(String),
    /// The artifact cache directory cannot be used.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// The runtime. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Engine {
    wasmtime: wasmtime::Engine,
    linker: Arc<Linker<Sandbox>>,
    cache: Option<ArtifactCache>,
    fuel: bool,
    warm: Arc<WarmBudget>,
    slots: Arc<slots::Slots>,
    _ticker: Arc<EpochTicker>,
}

/// How many idle warm instances all modules together may keep, so that
/// warm pools never use up the instance pool that fresh instances need.
pub(crate) struct WarmBudget {
    held: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl WarmBudget {
    /// Reserves room for one more idle instance.
    pub(crate) fn reserve(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.max).then_some(held + 1)
            })
            .is_ok()
    }

    /// Gives back the room of an idle instance taken out of a pool.
    pub(crate) fn release(&self) {
        self.held.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Engine {
    /// Builds the engine and starts its epoch ticker thread.
    pub fn new(options: &EngineOptions) -> Result<Self, EngineError> {
        // Per-component caps times the instance count: the pool can never
        // run out while the instance slots are respected.
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(options.max_instances)
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
            .total_core_instances(options.max_instances * MAX_CORE_INSTANCES_PER_COMPONENT)
            .total_memories(options.max_instances * MAX_MEMORIES_PER_COMPONENT)
            .total_tables(options.max_instances * MAX_TABLES_PER_COMPONENT)
            .max_memory_size(options.max_memory_bytes);

        let mut config = Config::new();
        #[cfg(feature = "levers")]
        if let Some(tune) = options.tune {
            tune(&mut config);
        }
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(options.fuel)
            .parallel_compilation(options.parallel_compilation)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let wasmtime = wasmtime::Engine::new(&config).map_err(|e| EngineError::Config(e.to_string()))?;

        let mut linker = Linker::<Sandbox>::new(&wasmtime);
        #[cfg(feature = "wasi")]
        wasi::add_to_linker(&mut linker).map_err(|e| EngineError::Config(e.to_string()))?;
        contract::add_to_linker(&mut linker).map_err(|e| EngineError::Config(e.to_string()))?;

        let cache = match &options.cache_dir {
            Some(dir) => Some(ArtifactCache::open(dir)?),
            None => None,
        };
        Ok(Self {
            _ticker: Arc::new(EpochTicker::start(wasmtime.clone())),
            wasmtime,
            linker: Arc::new(linker),
            cache,
            fuel: options.fuel,
            warm: Arc::new(WarmBudget {
                held: Default::default(),
                max: options.max_instances as usize / 2,
            }),
            slots: Arc::new(slots::Slots::new(options.max_instances as usize)),
        })
    }

    /// The on-disk cache of compiled components, if one is configured.
    pub fn cache(&self) -> Option<&ArtifactCache> {
        self.cache.as_ref()
    }

    /// The wasmtime engine underneath.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.wasmtime
    }

    /// Whether fuel is metered.
    pub fn fuel(&self) -> bool {
        self.fuel
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: wasmtime::Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
