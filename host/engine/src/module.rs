//! Loading a component (checks, compile, cache) and running batches on it.

use std::path::{Path, PathBuf};
use std::slice;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Store, UpdateDeadline};

use super::placement::{BudgetSpent, GiveUp, Placement, SlowMark};
use super::slots::Slot;
use super::{CacheOutcome, EPOCH_TICK, Engine, Fault, FaultKind, Limits, Sandbox};
use crate::bindings::{Event, Outcome};
use crate::contract::{self, Bindings, Pre, Unknown};
use crate::event::EventJson;
use crate::state::{CallContext, CallState, Staged};

/// Import namespaces the host provides. WASI is linked with no
/// capabilities, so these give a transform nothing of the outside world.
const PROVIDED_IMPORTS: &[&str] = &[
    "sluice:transform/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:io/",
    "wasi:random/",
    "wasi:sockets/",
];

/// Why a file cannot be used as a transform.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read module file `{path}`: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Not WebAssembly at all.
    #[error("module `{name}` is not WebAssembly: it does not start with the `\\0asm` magic bytes")]
    NotWasm {
        /// The module's name.
        name: String,
    },
    /// A core module where a component is needed.
    #[error(
        "module `{name}` is a core WebAssembly module, not a component: build it with \
         `--target wasm32-wasip2`, or wrap it with `wasm-tools component new`"
    )]
    CoreModule {
        /// The module's name.
        name: String,
    },
    /// wasmtime could not compile it.
    #[error("module `{name}` does not compile: {detail}")]
    Compile {
        /// The module's name.
        name: String,
        /// What the compiler said.
        detail: String,
    },
    /// It is a component, but of another world.
    #[error("module `{name}` does not implement a `sluice:transform` world (0.1.0 or 0.2.0): {detail}")]
    WrongWorld {
        /// The module's name.
        name: String,
        /// What is missing or mistyped.
        detail: String,
    },
    /// It was built for a contract version this host does not run (a
    /// newer Sluice's): upgrade the host, or build it for a version it runs.
    #[error(
        "module `{name}` is built for contract `sluice:transform@{version}`, which this Sluice \
         does not run (it runs {known}): upgrade Sluice, or build the module against a contract it runs"
    )]
    UnknownContract {
        /// The module's name.
        name: String,
        /// The version it was built for.
        version: String,
        /// The versions this host runs.
        known: &'static str,
    },
    /// It needs something the host does not give transforms.
    #[error("module `{name}` imports `{import}`, which Sluice does not provide to transforms{hint}")]
    UnsupportedImport {
        /// The module's name.
        name: String,
        /// The import.
        import: String,
        /// A hint on why, when there is one.
        hint: String,
    },
}

/// What `sluice check` reports about a component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentReport {
    /// Size of the file, in bytes.
    pub size: usize,
    /// Full sha256 of the bytes.
    pub sha256: String,
    /// Names of everything the component imports.
    pub imports: Vec<String>,
    /// Names of everything the component exports.
    pub exports: Vec<String>,
    /// Imports that are linked but denied: any call fails its event
    /// (see [`crate::deny`]).
    pub denied: Vec<String>,
}

/// What one event became in one step: an outcome, or a fault.
pub type StepResult = Result<Outcome, Box<Fault>>;

/// A loaded, type-checked transform component with its limits.
pub struct Module {
    name: String,
    sha256: String,
    size: usize,
    pre: Pre,
    /// It imports `state`: each event is its own call, so that its writes
    /// can be kept or dropped with its outcome.
    stateful: bool,
    limits: Limits,
    engine: Engine,
    cache: CacheOutcome,
    warm: std::sync::Mutex<Vec<Warm>>,
    slow: SlowMark,
}

/// Idle instances kept per module, ready for the next call.
const WARM_PER_MODULE: usize = 4;

/// An idle instance that already ran `init` with `config`.
struct Warm {
    config: String,
    instance: Instance,
    calls: u32,
}

impl Engine {
    /// Reads and loads a component file; the name is the file stem.
    pub fn load_file(&self, path: &Path, limits: Limits) -> Result<Module, LoadError> {
        let bytes = std::fs::read(path).map_err(|error| LoadError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let name = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().replace('_', "-"))
            .unwrap_or_else(|| "module".into());
        self.load(&name, &bytes, limits)
    }

    /// Checks, compiles (or loads from cache) and type-checks a component,
    /// then keeps its compiled artifact in the cache for the next start.
    pub fn load(&self, name: &str, bytes: &[u8], limits: Limits) -> Result<Module, LoadError> {
        let module = self.load_unsaved(name, bytes, limits)?;
        module.save_artifact();
        Ok(module)
    }

    /// [`Engine::load`] without writing to the cache: for a module that
    /// still has checks to pass (an upload), so a refused module leaves
    /// nothing on disk. Call [`Module::save_artifact`] once it is accepted.
    pub fn load_unsaved(&self, name: &str, bytes: &[u8], limits: Limits) -> Result<Module, LoadError> {
        let (component, sha256, cache) = self.compile(name, bytes)?;
        let report = self.report(&component, bytes.len(), sha256.clone());
        for import in &report.imports {
            if !PROVIDED_IMPORTS.iter().any(|prefix| import.starts_with(prefix))
                && !crate::deny::is_denied(import)
            {
                return Err(LoadError::UnsupportedImport {
                    name: name.into(),
                    import: import.clone(),
                    hint: String::new(),
                });
            }
        }
        let version = match contract::detect(&report.exports) {
            Ok(version) => version,
            Err(Unknown::Version(version)) => {
                return Err(LoadError::UnknownContract {
                    name: name.into(),
                    version,
                    known: contract::KNOWN,
                });
            }
            Err(Unknown::NoTransform) => {
                return Err(LoadError::WrongWorld {
                    name: name.into(),
                    detail: format!(
                        "it exports neither `init` and `apply` (0.1.0) nor `{}`; it exports [{}]",
                        contract::V0_2_EXPORT,
                        report.exports.join(", ")
                    ),
                });
            }
        };
        let stateful = report
            .imports
            .iter()
            .any(|import| import.starts_with("sluice:transform/state@"));
        // Without WASI linked, its imports are traps: a guest that imports
        // it (as every Rust guest does, for panics) runs until it calls one.
        #[cfg(not(feature = "wasi"))]
        let linker = {
            let mut linker = (*self.linker).clone();
            linker
                .define_unknown_imports_as_traps(&component)
                .map_err(|err| LoadError::WrongWorld {
                    name: name.into(),
                    detail: format!("{err:#}"),
                })?;
            linker
        };
        #[cfg(feature = "wasi")]
        let linker = if report.denied.is_empty() {
            std::borrow::Cow::Borrowed(&*self.linker)
        } else {
            let mut linker = (*self.linker).clone();
            crate::deny::link(&mut linker, &component, &self.wasmtime).map_err(|err| {
                LoadError::WrongWorld {
                    name: name.into(),
                    detail: format!("{err:#}"),
                }
            })?;
            std::borrow::Cow::Owned(linker)
        };
        let instance_pre =
            linker
                .instantiate_pre(&component)
                .map_err(|err| LoadError::UnsupportedImport {
                    name: name.into(),
                    import: format!("{err:#}"),
                    hint: String::new(),
                })?;
        let pre = Pre::new(version, instance_pre).map_err(|err| LoadError::WrongWorld {
            name: name.into(),
            detail: format!("{err:#}"),
        })?;
        Ok(Module {
            name: name.into(),
            sha256,
            size: bytes.len(),
            pre,
            stateful,
            limits,
            engine: self.clone(),
            cache,
            warm: Default::default(),
            slow: SlowMark::default(),
        })
    }

    /// Compiles a component and lists its imports and exports, without
    /// checking that it fits the world (for `sluice check`).
    pub fn inspect(&self, name: &str, bytes: &[u8]) -> Result<ComponentReport, LoadError> {
        let (component, sha256, _) = self.compile(name, bytes)?;
        Ok(self.report(&component, bytes.len(), sha256))
    }

    fn compile(&self, name: &str, bytes: &[u8]) -> Result<(Component, String, CacheOutcome), LoadError> {
        match bytes.get(..8) {
            // The header's last two bytes are the layer: 1 for a component, 0 for a core module.
            Some([0, b'a', b's', b'm', _, _, 0x01, 0x00]) => {}
            Some([0, b'a', b's', b'm', _, _, 0x00, 0x00]) => {
                return Err(LoadError::CoreModule { name: name.into() });
            }
            _ => return Err(LoadError::NotWasm { name: name.into() }),
        }
        let sha256 = hex::encode(Sha256::digest(bytes));
        if let Some(component) = self.cache.as_ref().and_then(|c| c.load(&self.wasmtime, &sha256)) {
            return Ok((component, sha256, CacheOutcome::Hit));
        }
        let component = Component::new(&self.wasmtime, bytes).map_err(|err| LoadError::Compile {
            name: name.into(),
            detail: format!("{err:#}"),
        })?;
        let outcome = if self.cache.is_some() {
            CacheOutcome::Compiled
        } else {
            CacheOutcome::Uncached
        };
        Ok((component, sha256, outcome))
    }

    fn report(&self, component: &Component, size: usize, sha256: String) -> ComponentReport {
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.wasmtime)
            .map(|(name, _)| name.to_string())
            .collect();
        ComponentReport {
            size,
            sha256,
            denied: imports
                .iter()
                .filter(|i| crate::deny::is_denied(i))
                .cloned()
                .collect(),
            imports,
            exports: ty
                .exports(&self.wasmtime)
                .map(|(name, _)| name.to_string())
                .collect(),
        }
    }
}

/// A live instance, initialised with one step's configuration. It holds
/// one of the engine's instance slots while it lives.
struct Instance {
    store: Store<Sandbox>,
    bindings: Bindings,
    _slot: Slot,
}

/// A failed call, before it is attributed to an event.
#[derive(Debug, Clone)]
struct CallFailure {
    kind: FaultKind,
    log: String,
    /// The instance could not start (instantiation or `init`): every event
    /// of the batch would fail the same way, so none is retried.
    at_start: bool,
    /// The call ran inline and gave up: the failure says nothing about the events.
    needs_thread: Option<GiveUp>,
}

impl Module {
    /// The same compiled module with instances of its own: warm instances
    /// keep a guest's state between calls (a dedup cache, say), so a trial
    /// (a backfill, a recording's expected outputs) run through the live
    /// module's instances could change what the live channel emits next.
    pub fn isolated(&self) -> Module {
        Module {
            name: self.name.clone(),
            sha256: self.sha256.clone(),
            size: self.size,
            pre: self.pre.clone(),
            stateful: self.stateful,
            limits: self.limits.clone(),
            engine: self.engine.clone(),
            cache: self.cache,
            warm: Default::default(),
            slow: SlowMark::default(),
        }
    }

    /// The module's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The module's version: the first 12 hex digits of its sha256.
    pub fn version(&self) -> &str {
        &self.sha256[..12]
    }

    /// The full sha256 of the component bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Size of the component, in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The contract version it was built for (`0.1.0`, `0.2.0`).
    pub fn contract(&self) -> &'static str {
        self.pre.version().as_str()
    }

    /// Whether it imports `state` (contract 0.2).
    pub fn stateful(&self) -> bool {
        self.stateful
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether loading hit the artifact cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    /// Writes the compiled component to the engine's cache, if it has one
    /// and the artifact is not there yet. A cache that cannot be written
    /// only costs a compile on the next start, so that is logged, not returned.
    pub fn save_artifact(&self) {
        if let (Some(cache), CacheOutcome::Compiled) = (&self.engine.cache, self.cache)
            && let Err(err) = cache.save(
                &self.engine.wasmtime,
                &self.sha256,
                self.pre.instance_pre().component(),
            )
        {
            tracing::warn!(module = %self.name, error = %err, "cannot cache the compiled module");
        }
    }

    /// Runs one batch: one result per event, in order. The batch shares one
    /// instance (a warm one if the module has one idle for this config); if
    /// that instance traps, it is discarded and the batch is re-run one
    /// event at a time on fresh instances, so that only the events that
    /// really fail get a fault.
    pub fn run(&self, config: &str, batch: &[Event]) -> Vec<StepResult> {
        self.run_on(config, batch, Placement::Blocking, None)
            .unwrap_or_else(|_| unreachable!("a blocking call never needs another thread"))
            .into_iter()
            .zip(batch)
            .map(|((result, _), event)| result.and_then(|outcome| self.check_payloads(outcome, event)))
            .collect()
    }

    /// [`Module::run`], on the calling thread or only where it may block,
    /// without checking that emitted payloads are JSON: a pipeline checks
    /// them once, where it next reads them (see [`Module::check_payloads`]).
    ///
    /// Each result comes with the state its event wrote (see
    /// [`crate::state`]); a stateful module runs one event per call, so
    /// that the writes belong to one event, and never inline, since a read
    /// may wait for the store.
    pub(crate) fn run_on<'m>(
        &'m self,
        config: &str,
        batch: &[Event],
        placement: Placement<'_, 'm>,
        context: Option<&CallContext>,
    ) -> Result<Vec<(StepResult, Staged)>, GiveUp> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if let Placement::Inline(attempt) = placement
            && attempt.spent()
        {
            return Err(GiveUp::Slow);
        }
        if self.stateful {
            if matches!(placement, Placement::Inline(_)) {
                return Err(GiveUp::Slow);
            }
            return Ok(self.run_one_by_one(config, batch, context));
        }
        let whole = match self.take_warm(config) {
            Some((instance, calls)) => Ok((instance, calls)),
            None => self.instantiate(config, placement).map(|instance| (instance, 0)),
        }
        .and_then(|(mut instance, calls)| {
            let (outcomes, _) = instance.apply(self, batch, placement, context)?;
            match placement {
                Placement::Blocking => self.keep_warm(config, instance, calls + 1),
                // Back to the pool only if the whole attempt succeeds: an
                // instance of an abandoned attempt would see the batch twice.
                Placement::Inline(attempt) => {
                    let config = config.to_string();
                    attempt.on_success(Box::new(move || self.keep_warm(&config, instance, calls + 1)));
                }
            }
            Ok(outcomes)
        });
        Ok(match whole {
            Ok(outcomes) => outcomes
                .into_iter()
                .zip(batch)
                .map(|(outcome, event)| (self.check_output(outcome, event), Staged::default()))
                .collect(),
            Err(CallFailure {
                needs_thread: Some(give_up),
                ..
            }) => return Err(give_up),
            Err(failure) if batch.len() == 1 || failure.at_start => batch
                .iter()
                .map(|event| (Err(self.fault(event, failure.clone())), Staged::default()))
                .collect(),
            // Re-running event by event may take as long as the batch's deadlines.
            Err(_) if matches!(placement, Placement::Inline(_)) => return Err(GiveUp::Trapped),
            Err(_) => self.run_one_by_one(config, batch, context),
        })
    }

    /// Whether an inline attempt with this module gave up as slow lately.
    pub(crate) fn recently_slow(&self) -> bool {
        self.slow.is_recent()
    }

    /// Notes that an inline attempt with this module gave up as slow.
    pub(crate) fn mark_slow(&self) {
        self.slow.set();
    }

    /// Instantiates the module once, without calling it: refuses a module
    /// that cannot start within its limits (a huge declared memory, say).
    pub fn check_instantiate(&self) -> Result<(), FaultKind> {
        let _slot = self.engine.slots.take();
        let mut store = Store::new(&self.engine.wasmtime, Sandbox::new(&self.limits));
        store.limiter(|sandbox| &mut sandbox.limits);
        self.arm(&mut store, 1, Placement::Blocking);
        self.pre
            .instantiate(&mut store)
            .map(|_| ())
            .map_err(|err| self.start_fault(&err, &store.data().log.text()))
    }

    /// An idle instance initialised with `config`, and how many calls it served.
    fn take_warm(&self, config: &str) -> Option<(Instance, u32)> {
        let mut warm = self.warm.lock().unwrap_or_else(|e| e.into_inner());
        let index = warm.iter().rposition(|w| w.config == config)?;
        let Warm { instance, calls, .. } = warm.swap_remove(index);
        self.engine.warm.release();
        Some((instance, calls))
    }

    /// Keeps an instance that finished a call cleanly for the next call,
    /// unless it has served its calls or there is no room.
    fn keep_warm(&self, config: &str, instance: Instance, calls: u32) {
        if calls >= self.limits.calls_per_instance {
            return;
        }
        let mut warm = self.warm.lock().unwrap_or_else(|e| e.into_inner());
        if warm.len() < WARM_PER_MODULE && self.engine.warm.reserve() {
            warm.push(Warm {
                config: config.to_string(),
                instance,
                calls,
            });
        }
    }

    /// Runs a batch event by event, reusing an instance until it traps (on
    /// a blocking thread only). An event's state writes are kept only if
    /// its call succeeds and its outcome is within the caps; then the rest
    /// of the run sees them.
    fn run_one_by_one(
        &self,
        config: &str,
        batch: &[Event],
        context: Option<&CallContext>,
    ) -> Vec<(StepResult, Staged)> {
        let mut instance: Option<(Instance, u32)> = None;
        let mut results = Vec::with_capacity(batch.len());
        for event in batch {
            let live = match instance.take() {
                Some(live) => Ok(live),
                None if self.stateful => match self.take_warm(config) {
                    Some(warm) => Ok(warm),
                    None => self.instantiate(config, Placement::Blocking).map(|i| (i, 0)),
                },
                None => self.instantiate(config, Placement::Blocking).map(|i| (i, 0)),
            };
            let result = live.and_then(|(mut live, calls)| {
                let outcome = live.apply(self, slice::from_ref(event), Placement::Blocking, context)?;
                instance = Some((live, calls + 1));
                Ok(outcome)
            });
            results.push(match result {
                Ok((mut outcomes, staged)) => match self.check_output(outcomes.remove(0), event) {
                    Ok(outcome) => {
                        if let Some(context) = context {
                            context.run.merge(&context.step, &staged);
                        }
                        (Ok(outcome), staged)
                    }
                    Err(fault) => (Err(fault), Staged::default()),
                },
                Err(failure) => (Err(self.fault(event, failure)), Staged::default()),
            });
        }
        if let Some((live, calls)) = instance
            && self.stateful
        {
            self.keep_warm(config, live, calls);
        }
        results
    }

    /// A fault while the instance starts: a plain trap is reported as
    /// "could not be instantiated"; a limit (deadline, fuel, memory) as itself.
    fn start_fault(&self, err: &wasmtime::Error, log: &str) -> FaultKind {
        match self.classify(err, 1, log) {
            FaultKind::Trap { detail } => FaultKind::Instantiate { detail },
            other => other,
        }
    }

    /// A fresh instance, initialised with `config`. Waits for a free
    /// instance slot (inline: takes one only if it is free at once); `init`
    /// runs under one event's limits.
    fn instantiate(&self, config: &str, placement: Placement) -> Result<Instance, CallFailure> {
        let give_up = |why| CallFailure {
            kind: FaultKind::Instantiate {
                detail: "the inline attempt gave up".into(),
            },
            log: String::new(),
            at_start: true,
            needs_thread: Some(why),
        };
        let slot = match placement {
            Placement::Blocking => self.engine.slots.take(),
            Placement::Inline(attempt) if attempt.spent() => return Err(give_up(GiveUp::Slow)),
            Placement::Inline(_) => self
                .engine
                .slots
                .try_take()
                .ok_or_else(|| give_up(GiveUp::Busy))?,
        };
        let mut store = Store::new(&self.engine.wasmtime, Sandbox::new(&self.limits));
        store.limiter(|sandbox| &mut sandbox.limits);
        self.arm(&mut store, 1, placement);
        let bindings = match self.pre.instantiate(&mut store) {
            Ok(bindings) => bindings,
            Err(err) => return Err(self.failure(&err, 1, &store, true)),
        };
        let init = bindings.call_init(&mut store, config);
        self.meter(&store, 1, 0);
        match init {
            Ok(Ok(())) => Ok(Instance {
                store,
                bindings,
                _slot: slot,
            }),
            Ok(Err(message)) => Err(CallFailure {
                kind: FaultKind::Init { message },
                log: store.data().log.text(),
                at_start: true,
                needs_thread: None,
            }),
            Err(err) => Err(self.failure(&err, 1, &store, true)),
        }
    }

    /// What a failed call means: a fault of its events, or (inline) only
    /// that it needs a blocking thread.
    fn failure(
        &self,
        err: &wasmtime::Error,
        events: usize,
        store: &Store<Sandbox>,
        at_start: bool,
    ) -> CallFailure {
        let log = store.data().log.text();
        let needs_thread = crate::fault::needs_blocking_thread(err, store.data()).then_some(GiveUp::Slow);
        let kind = if at_start {
            self.start_fault(err, &log)
        } else {
            self.classify(err, events, &log)
        };
        CallFailure {
            kind,
            log,
            at_start,
            needs_thread,
        }
    }

    /// Sets the deadline and fuel for a call covering `events` events.
    /// Inline, the epoch is looked at every tick: the call ends (as
    /// [`BudgetSpent`]) once the attempt's CPU budget is used up, or when
    /// its own deadline passes, and a blocking thread decides which it was.
    fn arm(&self, store: &mut Store<Sandbox>, events: usize, placement: Placement) {
        let timeout_ms = self.timeout_ms(events);
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let sandbox = store.data_mut();
        sandbox.deadline = deadline;
        sandbox.inline = matches!(placement, Placement::Inline(_));
        match placement {
            Placement::Blocking => {
                store.epoch_deadline_trap();
                store.set_epoch_deadline(timeout_ms.div_ceil(EPOCH_TICK.as_millis() as u64).max(1));
            }
            Placement::Inline(attempt) => {
                let budget = attempt.budget();
                store.epoch_deadline_callback(move |_| {
                    if budget.spent() || Instant::now() >= deadline {
                        return Err(wasmtime::Error::new(BudgetSpent));
                    }
                    Ok(UpdateDeadline::Continue(1))
                });
                store.set_epoch_deadline(1);
            }
        }
        if self.engine.fuel {
            // Cannot fail: fuel metering is on.
            let _ = store.set_fuel(self.fuel(events));
        }
    }

    /// A call's budget covers at most this many events' worth: a batch that
    /// needs more (a looping event in a big batch) is stopped early and
    /// re-run one event at a time, each with its own full budget, so one bad
    /// event holds a batch for at most 10 × `timeout` before it is isolated.
    const BUDGET_EVENTS: usize = 10;

    /// Adds a finished call's cost (armed for `events` events) to the
    /// measurement in progress on this thread, if any.
    fn meter(&self, store: &Store<Sandbox>, events: usize, output_bytes: usize) {
        let fuel = self
            .engine
            .fuel
            .then(|| self.fuel(events).saturating_sub(store.get_fuel().unwrap_or(0)));
        crate::usage::record(fuel, store.data().limits.used(), output_bytes);
    }

    fn timeout_ms(&self, events: usize) -> u64 {
        let events = events.min(Self::BUDGET_EVENTS);
        (self.limits.timeout.as_millis() as u64).saturating_mul(events as u64)
    }

    fn fuel(&self, events: usize) -> u64 {
        let events = events.min(Self::BUDGET_EVENTS);
        self.limits.fuel_per_event.saturating_mul(events as u64)
    }

    fn classify(&self, err: &wasmtime::Error, events: usize, log: &str) -> FaultKind {
        FaultKind::from_call_error(err, self.timeout_ms(events), self.fuel(events), log)
    }

    fn fault(&self, event: &Event, failure: CallFailure) -> Box<Fault> {
        Box::new(Fault {
            module: self.name.clone(),
            version: self.version().to_string(),
            event: event.id.clone(),
            kind: failure.kind,
            log: failure.log,
        })
    }

    /// The fault of `event` whose output broke a rule (a cap, invalid JSON).
    fn output_fault(&self, event: &Event, kind: FaultKind) -> Box<Fault> {
        self.fault(
            event,
            CallFailure {
                kind,
                log: String::new(),
                at_start: false,
                needs_thread: None,
            },
        )
    }

    /// Enforces the output caps (every byte of the outcome counts, and the fan-out).
    fn check_output(&self, outcome: Outcome, event: &Event) -> StepResult {
        let fail = |kind| Err(self.output_fault(event, kind));
        let count = outcome_count(&outcome);
        if count > self.limits.max_fan_out {
            return fail(FaultKind::TooManyOutputs {
                count,
                limit: self.limits.max_fan_out,
            });
        }
        let bytes = outcome_bytes(&outcome);
        if bytes > self.limits.output_bytes_per_event {
            return fail(FaultKind::OutputTooLarge {
                bytes,
                limit_bytes: self.limits.output_bytes_per_event,
            });
        }
        Ok(outcome)
    }

    /// Checks that every payload `event`'s outcome emits is JSON; the fault
    /// names the emitted event.
    pub(crate) fn check_payloads(&self, outcome: Outcome, event: &Event) -> StepResult {
        if let Some(events) = emitted(&outcome) {
            for emitted in events {
                if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(&emitted.payload) {
                    return Err(self.output_fault(event, invalid_payload(&emitted.id, &err)));
                }
            }
        }
        Ok(outcome)
    }

    /// The emitted events as JSON values, which checks their payloads; the
    /// fault names the emitted event that is not JSON. The events are
    /// copied, so that the outcome can still be measured against the caps.
    pub(crate) fn to_json(&self, events: &[Event], event: &Event) -> Result<Vec<EventJson>, Box<Fault>> {
        events
            .iter()
            .map(|emitted| {
                EventJson::from_wit(emitted.clone())
                    .map_err(|err| self.output_fault(event, invalid_payload(&emitted.id, &err)))
            })
            .collect()
    }
}

/// The fault of an emitted payload that is not JSON.
pub(crate) fn invalid_payload(emitted_id: &str, err: &serde_json::Error) -> FaultKind {
    FaultKind::InvalidPayload {
        detail: format!("event `{emitted_id}`: {err}"),
    }
}

/// The events an outcome sends on, if any (`emit`, or `partial`'s).
pub(crate) fn emitted(outcome: &Outcome) -> Option<&[Event]> {
    match outcome {
        Outcome::Emit(events) => Some(events),
        Outcome::Partial(partial) => Some(&partial.emit),
        Outcome::Drop(_) | Outcome::Reject(_) => None,
    }
}

/// How many outputs an outcome holds: emitted events and violations.
pub(crate) fn outcome_count(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Emit(events) => events.len(),
        Outcome::Drop(_) => 0,
        Outcome::Reject(violations) => violations.len(),
        Outcome::Partial(partial) => partial.emit.len() + partial.reject.len(),
    }
}

/// Every byte an outcome carries: all the text of every emitted event, the
/// drop reason, or every violation.
pub fn outcome_bytes(outcome: &Outcome) -> usize {
    let violations = |found: &[crate::bindings::Violation]| -> usize {
        found
            .iter()
            .map(|v| v.path.len() + v.code.len() + v.message.len())
            .sum()
    };
    match outcome {
        Outcome::Emit(events) => events.iter().map(event_bytes).sum(),
        Outcome::Drop(reason) => reason.len(),
        Outcome::Reject(found) => violations(found),
        Outcome::Partial(partial) => {
            partial.emit.iter().map(event_bytes).sum::<usize>() + violations(&partial.reject)
        }
    }
}

/// Every byte of an event's text fields: what it costs to hold and pass on.
pub fn event_bytes(event: &Event) -> usize {
    let kind = match &event.kind {
        crate::bindings::EventKind::Other(name) => name.len(),
        _ => 0,
    };
    let pairs = |pairs: &[(String, String)]| -> usize { pairs.iter().map(|(k, v)| k.len() + v.len()).sum() };
    event.id.len()
        + kind
        + event.tenant.len()
        + event.channel.len()
        + event.source.len()
        + event.correlation_id.len()
        + event.payload.len()
        + event.topic.len()
        + pairs(&event.headers)
        + event.delivery.as_ref().map_or(0, |hint| pairs(&hint.params))
}

impl Drop for Module {
    fn drop(&mut self) {
        if let Ok(warm) = self.warm.get_mut() {
            for _ in warm.drain(..) {
                self.engine.warm.release();
            }
        }
    }
}

impl Instance {
    /// Calls `apply`; the outcomes come with the state the call wrote.
    fn apply(
        &mut self,
        module: &Module,
        batch: &[Event],
        placement: Placement,
        context: Option<&CallContext>,
    ) -> Result<(Vec<Outcome>, Staged), CallFailure> {
        self.store.data_mut().reset_for_call();
        self.store.data_mut().call = context.map(|context| CallState::new(context.clone()));
        module.arm(&mut self.store, batch.len(), placement);
        let applied = self.bindings.call_apply(&mut self.store, batch);
        let staged = self
            .store
            .data_mut()
            .call
            .take()
            .map(|call| call.staged)
            .unwrap_or_default();
        let returned = applied
            .as_ref()
            .map_or(0, |outcomes| outcomes.iter().map(outcome_bytes).sum());
        module.meter(&self.store, batch.len(), returned);
        match applied {
            Ok(outcomes) if outcomes.len() == batch.len() => Ok((outcomes, staged)),
            Ok(outcomes) => Err(CallFailure {
                kind: FaultKind::OutcomeCount {
                    got: outcomes.len(),
                    expected: batch.len(),
                },
                log: self.store.data().log.text(),
                at_start: false,
                needs_thread: None,
            }),
            Err(err) => Err(module.failure(&err, batch.len(), &self.store, false)),
        }
    }
}
