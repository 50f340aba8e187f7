//! The sandboxed WebAssembly runtime: one wasmtime engine, configured once
//! per process, that loads transform components and runs them under limits.
//!
//! - Components are compiled once and cached on disk ([`ArtifactCache`]).
//! - Instances come from the pooling allocator via a type-checked
//!   `InstancePre`, so a fresh instance per batch costs microseconds.
//! - Every call runs under a wall-clock deadline (epoch interruption),
//!   optionally fuel, a memory cap and an output cap ([`Limits`]).
//! - A trapped instance is discarded; the rest of its batch is retried one
//!   event at a time on fresh instances, so one bad event fails alone.

mod cache;
mod fault;
mod limits;
mod module;
mod sandbox;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use cache::{ArtifactCache, CacheOutcome};
pub use fault::{Fault, FaultKind};
pub use limits::Limits;
pub use module::{ComponentReport, LoadError, Module, StepResult};
pub use sandbox::{LogBuffer, Sandbox};

/// How often the epoch advances; deadlines are measured in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Process-wide engine settings. Changing any of them changes the compiled
/// code, so artifacts are cached per setting.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Meter fuel as well as wall-clock time. Deterministic, but slower
    /// (see the benchmark numbers in the README).
    pub fuel: bool,
    /// Where to cache compiled components; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// How many instances may be live at once across all modules.
    pub max_instances: u32,
    /// The largest memory any module may be granted, in bytes.
    pub max_memory_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            fuel: false,
            cache_dir: None,
            max_instances: 64,
            max_memory_bytes: 1 << 30,
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
    #[error("cannot use the module cache directory `{path}`: {source}")]
    Cache {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The runtime. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Engine {
    wasmtime: wasmtime::Engine,
    linker: Arc<Linker<Sandbox>>,
    cache: Option<ArtifactCache>,
    fuel: bool,
    warm: Arc<WarmBudget>,
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
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(options.max_instances)
            .total_core_instances(options.max_instances * 16)
            .total_memories(options.max_instances * 4)
            .total_tables(options.max_instances * 16)
            .max_memory_size(options.max_memory_bytes);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(options.fuel)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let wasmtime = wasmtime::Engine::new(&config).map_err(|e| EngineError::Config(e.to_string()))?;

        let mut linker = Linker::<Sandbox>::new(&wasmtime);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| EngineError::Config(e.to_string()))?;
        crate::bindings::sluice::transform::host::add_to_linker::<Sandbox, HasSelf<Sandbox>>(
            &mut linker,
            |sandbox| sandbox,
        )
        .map_err(|e| EngineError::Config(e.to_string()))?;

        let cache = match &options.cache_dir {
            Some(dir) => Some(ArtifactCache::open(dir).map_err(|source| EngineError::Cache {
                path: dir.clone(),
                source,
            })?),
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
        })
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
