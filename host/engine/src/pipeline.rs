//! A channel's pipeline: ordered steps, each a module with its config.
//!
//! The output of one step feeds the next. Per input event:
//! - `emit` passes every emitted event to the next step (a fan-out grows the batch);
//! - `drop` ends that branch; if every branch is dropped the event is dropped,
//!   with the reasons joined;
//! - `reject` on any branch rejects the whole input event, with every
//!   violation found in that step;
//! - `partial` (contract 0.2) passes its events on and keeps its
//!   violations: the input ends `partial` (or `reject`, if nothing is left
//!   to deliver);
//! - a fault on any branch fails the whole input event with that fault;
//! - an input event whose branches together produce more outputs (events
//!   and violations) or more bytes (drop reasons included) in one step than
//!   the step's `max-fan-out` and `output-bytes-per-event` fails with a
//!   fault of that step, so fan-outs cannot multiply past the caps.
//!
//! State (contract 0.2): each step has its own, named by
//! [`Pipeline::step_names`]. The writes an input's branches made come back
//! with its outcome ([`Run::writes`]) when it ends `emit`, `drop` or
//! `partial`; a rejected or faulted input keeps none, though later events
//! of the same run may have read them.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bindings::{Event, Outcome};
use crate::event::{EventJson, OutcomeJson, ViolationJson};
use crate::placement::{GiveUp, InlineAttempt, NeedsBlockingThread, Placement};
use crate::state::{CallContext, RunContext, RunState, StateChange};
use crate::{Fault, FaultKind, Module};

/// One step: a loaded module and the config its `init` receives.
#[derive(Clone)]
pub struct Step {
    /// The transform component.
    pub module: Arc<Module>,
    /// The step's configuration, as JSON text.
    pub config: String,
    /// Its lookup tables (contract 0.2), loaded with the pipeline; a run's
    /// [`RunContext::lookups`] is used for a step that has none.
    pub lookups: Arc<crate::state::StepLookups>,
}

/// A channel's pipeline as data (`pipeline.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PipelineSpec {
    /// The steps, in order.
    pub steps: Vec<StepSpec>,
}

/// One step as data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StepSpec {
    /// A transform's name (`magento-source`), or a `.wasm` file relative to
    /// the pipeline file; with `version`, the name of an uploaded module.
    pub module: String,
    /// The version (SHA-256, or a unique prefix of 8 or more characters) of
    /// an uploaded module; only for pipelines activated through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The step's configuration.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Lookup tables (contract 0.2): table name to a JSON or CSV file,
    /// relative to the pipeline file (see [`crate::lookup`]).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub lookups: std::collections::BTreeMap<String, String>,
}

impl StepSpec {
    /// The configuration as `init` receives it: `{}` when none is given.
    pub fn config_text(&self) -> String {
        match &self.config {
            serde_json::Value::Null => "{}".into(),
            config => config.to_string(),
        }
    }
}

/// The ordered steps of one channel.
#[derive(Clone, Default)]
pub struct Pipeline {
    steps: Vec<Step>,
}

/// Where one input event stands while it moves through the steps.
#[derive(Default)]
struct Progress {
    input_id: String,
    live: Vec<Event>,
    /// What the last step emitted, as JSON.
    done: Vec<EventJson>,
    dropped: Vec<String>,
    violations: Vec<ViolationJson>,
    /// What `partial` outcomes left out.
    left_out: Vec<ViolationJson>,
    fault: Option<Box<Fault>>,
    writes: StateChange,
}

/// What a run made of its inputs: one outcome each, in order, and the
/// state each one's steps wrote, to commit with its outcome.
#[derive(Debug, Default)]
pub struct Run {
    /// One outcome per input.
    pub outcomes: Vec<OutcomeJson>,
    /// Per input, the state writes to keep with its outcome.
    pub writes: Vec<StateChange>,
}

impl Pipeline {
    /// A pipeline of these steps, run in order.
    pub fn new(steps: Vec<Step>) -> Self {
        Self { steps }
    }

    /// A pipeline of one module with its config (JSON text).
    pub fn single(module: impl Into<Arc<Module>>, config: impl Into<String>) -> Self {
        Self::new(vec![Step {
            module: module.into(),
            config: config.into(),
            lookups: Default::default(),
        }])
    }

    /// This pipeline with instances of its own (see [`Module::isolated`]).
    pub fn isolated(&self) -> Pipeline {
        Self::new(
            self.steps
                .iter()
                .map(|step| Step {
                    module: Arc::new(step.module.isolated()),
                    config: step.config.clone(),
                    lookups: step.lookups.clone(),
                })
                .collect(),
        )
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Each step's name in state and lookups: its module's name, and
    /// `#2`, `#3`… after it when the module appears again. A step keeps its
    /// state through new versions of its module and moves in the pipeline.
    pub fn step_names(&self) -> Vec<String> {
        let mut seen: std::collections::HashMap<&str, usize> = Default::default();
        self.steps
            .iter()
            .map(|step| {
                let count = seen.entry(step.module.name()).or_default();
                *count += 1;
                match *count {
                    1 => step.module.name().to_string(),
                    n => format!("{}#{n}", step.module.name()),
                }
            })
            .collect()
    }

    /// Whether any step imports `state`.
    pub fn stateful(&self) -> bool {
        self.steps.iter().any(|step| step.module.stateful())
    }

    /// Runs a batch of events through every step; one outcome per input, in order.
    /// It may block until the steps' deadlines: on an async runtime, call it
    /// from a blocking thread, or try [`Pipeline::try_run_inline`] first.
    pub fn run(&self, inputs: &[EventJson]) -> Vec<OutcomeJson> {
        self.run_in(inputs, &RunContext::empty()).outcomes
    }

    /// [`Pipeline::run`] with state and lookup tables: reads go to the
    /// context's store, and the writes come back per input, for the caller
    /// to commit with the outcomes.
    pub fn run_in(&self, inputs: &[EventJson], context: &RunContext) -> Run {
        self.run_on(inputs, Placement::Blocking, context)
            .unwrap_or_else(|_| unreachable!("a blocking run never needs another thread"))
    }

    /// Runs a small batch on the calling thread (an async runtime's worker),
    /// only if that takes no more than a few milliseconds and never waits;
    /// otherwise gives up with [`NeedsBlockingThread`], having kept nothing,
    /// and the batch must go to [`Pipeline::run`] on a blocking thread. It
    /// gives up at once while a step's module has needed a blocking thread
    /// within the last minute. This saves the two thread hand-offs a
    /// blocking thread costs, which on small requests are most of the time.
    ///
    /// ```ignore
    /// # async fn sketch(pipeline: std::sync::Arc<sluice_engine::Pipeline>, events: Vec<sluice_engine::event::EventJson>) {
    /// let outcomes = match pipeline.try_run_inline(&events) {
    ///     Ok(outcomes) => outcomes,
    ///     Err(_) => tokio::task::spawn_blocking(move || pipeline.run(&events)).await.unwrap(),
    /// };
    /// # }
    /// ```
    pub fn try_run_inline(&self, inputs: &[EventJson]) -> Result<Vec<OutcomeJson>, NeedsBlockingThread> {
        // A state read may wait for the store.
        if self
            .steps
            .iter()
            .any(|step| step.module.recently_slow() || step.module.stateful())
        {
            return Err(NeedsBlockingThread);
        }
        let attempt = InlineAttempt::start();
        // A WASI call that needs a blocking thread panics on an async
        // worker; that ends the attempt like any other inline limit.
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.run_on(inputs, Placement::Inline(&attempt), &RunContext::empty())
        }))
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::warn!(%message, "an inline transform panicked; it runs on a blocking thread instead");
            Err(GiveUp::Slow)
        });
        let slow = match ran {
            Err(GiveUp::Slow) => true,
            Err(GiveUp::Trapped) => attempt.half_spent(),
            _ => attempt.spent(),
        };
        if slow {
            self.steps.iter().for_each(|step| step.module.mark_slow());
        }
        match ran {
            Ok(run) => {
                attempt.succeed();
                Ok(run.outcomes)
            }
            Err(_) => Err(NeedsBlockingThread),
        }
    }

    // Longer than most functions on purpose: one pass per step, in chunks,
    // charging each input's caps as its results arrive; each phase reads
    // and writes the same `progress`, and split into helpers that borrow
    // it in turn the order of the checks (fault, caps, outcome) would no
    // longer read top to bottom.
    fn run_on<'m>(
        &'m self,
        inputs: &[EventJson],
        placement: Placement<'_, 'm>,
        context: &RunContext,
    ) -> Result<Run, GiveUp> {
        let run_state = RunState::new(context);
        let names = self.step_names();
        let mut progress: Vec<Progress> = inputs
            .iter()
            .map(|input| Progress {
                input_id: input.id.clone(),
                live: vec![input.to_wit()],
                ..Progress::default()
            })
            .collect();
        for (index, (step, name)) in self.steps.iter().zip(&names).enumerate() {
            let call = CallContext {
                run: run_state.clone(),
                step: name.as_str().into(),
                lookups: if step.lookups.is_empty() {
                    context.lookups.get(name).cloned().map(Arc::new)
                } else {
                    Some(step.lookups.clone())
                },
            };
            // Payloads are checked once: a middle step's before the next
            // step reads them, the last step's as they become JSON values.
            let last = index + 1 == self.steps.len();
            let mut work = Vec::new();
            for (owner, state) in progress.iter_mut().enumerate() {
                work.extend(state.live.drain(..).map(|event| (owner, event)));
            }
            if work.is_empty() {
                break;
            }
            // A step with more work than one call takes is no small batch:
            // inline, it would hold an instance slot per chunk until the end.
            if matches!(placement, Placement::Inline(_)) && work.len() > STEP_CHUNK {
                return Err(GiveUp::Slow);
            }
            // Run the step in chunks, and charge each input event for what
            // its branches produce as the results come in: an input over
            // its caps stops there, so a fan-out can never pile up more
            // than one chunk of results beyond the caps.
            let mut spent = vec![Spent::default(); progress.len()];
            let mut work = work.into_iter().peekable();
            while work.peek().is_some() {
                let (owners, batch): (Vec<usize>, Vec<Event>) = work
                    .by_ref()
                    .filter(|(owner, _)| progress[*owner].fault.is_none())
                    .take(STEP_CHUNK)
                    .unzip();
                if batch.is_empty() {
                    continue;
                }
                let (mut results, staged): (Vec<_>, Vec<_>) = step
                    .module
                    .run_on(&step.config, &batch, placement, Some(&call))?
                    .into_iter()
                    .unzip();
                let mut finished: Vec<Option<Vec<EventJson>>> = vec![None; results.len()];
                for ((result, event), done) in results.iter_mut().zip(&batch).zip(&mut finished) {
                    if let Ok(outcome) = result {
                        if !last {
                            let outcome = std::mem::replace(outcome, Outcome::Drop(String::new()));
                            *result = step.module.check_payloads(outcome, event);
                        } else if let Some(events) = crate::module::emitted(outcome) {
                            match step.module.to_json(events, event) {
                                Ok(json) => *done = Some(json),
                                Err(fault) => *result = Err(fault),
                            }
                        }
                    }
                }
                if let Placement::Inline(attempt) = placement
                    && attempt.spent()
                {
                    return Err(GiveUp::Slow);
                }
                for ((((owner, event), result), done), staged) in owners
                    .into_iter()
                    .zip(&batch)
                    .zip(results)
                    .zip(finished)
                    .zip(staged)
                {
                    // A rejected input still collects every violation of this
                    // step; a faulted one is done.
                    let state = &mut progress[owner];
                    if state.fault.is_some() {
                        continue;
                    }
                    if let Ok(outcome) = &result
                        && let Some(kind) = spent[owner].charge(outcome, step.module.limits())
                    {
                        state.fail(step, kind);
                        continue;
                    }
                    // A branch left out keeps none of its writes: it is not delivered.
                    let left_out =
                        matches!(&result, Ok(Outcome::Partial(partial)) if partial.emit.is_empty());
                    if !left_out {
                        state.writes.add(name, staged);
                    }
                    match result {
                        Ok(Outcome::Emit(events)) => match done {
                            Some(json) => state.done.extend(json),
                            None => state.live.extend(events),
                        },
                        Ok(Outcome::Partial(partial)) => {
                            state.left_out.extend(
                                partial
                                    .reject
                                    .into_iter()
                                    .map(|v| ViolationJson::new(v, &event.id, &state.input_id)),
                            );
                            match done {
                                Some(json) => state.done.extend(json),
                                None => state.live.extend(partial.emit),
                            }
                        }
                        Ok(Outcome::Drop(reason)) => state.dropped.push(reason),
                        Ok(Outcome::Reject(found)) => state.violations.extend(
                            found
                                .into_iter()
                                .map(|v| ViolationJson::new(v, &event.id, &state.input_id)),
                        ),
                        Err(fault) => {
                            state.fault.get_or_insert(fault);
                        }
                    }
                }
            }
            for state in &mut progress {
                if !state.still_running() {
                    state.live.clear();
                }
            }
        }
        let (outcomes, writes) = progress.into_iter().map(finish).unzip();
        Ok(Run { outcomes, writes })
    }
}

/// Events passed to a module per call within one step.
const STEP_CHUNK: usize = 128;

/// What one input event's branches have produced in the current step.
#[derive(Debug, Clone, Copy, Default)]
struct Spent {
    outputs: usize,
    bytes: usize,
}

impl Spent {
    /// Adds an outcome (every event or violation, every byte, drop reasons
    /// included); the fault if that takes the input past the step's caps.
    fn charge(&mut self, outcome: &Outcome, limits: &crate::Limits) -> Option<FaultKind> {
        self.outputs += crate::module::outcome_count(outcome);
        self.bytes += crate::outcome_bytes(outcome);
        if self.outputs > limits.max_fan_out {
            return Some(FaultKind::TooManyOutputs {
                count: self.outputs,
                limit: limits.max_fan_out,
            });
        }
        (self.bytes > limits.output_bytes_per_event).then_some(FaultKind::OutputTooLarge {
            bytes: self.bytes,
            limit_bytes: limits.output_bytes_per_event,
        })
    }
}

impl Progress {
    /// Neither faulted nor rejected: its branches still go on.
    fn still_running(&self) -> bool {
        self.fault.is_none() && self.violations.is_empty()
    }

    /// Fails the input event with a fault of `step`'s module.
    fn fail(&mut self, step: &Step, kind: FaultKind) {
        self.live.clear();
        self.fault = Some(Box::new(Fault {
            module: step.module.name().to_string(),
            version: step.module.version().to_string(),
            event: self.input_id.clone(),
            kind,
            log: String::new(),
        }));
    }
}

/// The final outcome for one input event, and the state writes kept with it.
fn finish(mut state: Progress) -> (OutcomeJson, StateChange) {
    let writes = std::mem::take(&mut state.writes);
    let outcome = outcome_of(state);
    match outcome {
        OutcomeJson::Error { .. } | OutcomeJson::Reject { .. } => (outcome, StateChange::default()),
        _ => (outcome, writes),
    }
}

fn outcome_of(mut state: Progress) -> OutcomeJson {
    if let Some(error) = state.fault {
        return OutcomeJson::Error { error: *error };
    }
    if !state.violations.is_empty() {
        state.violations.append(&mut state.left_out);
        return OutcomeJson::Reject {
            violations: state.violations,
        };
    }
    let mut events = state.done;
    // Events still live never met a step: a pipeline of no steps.
    for event in state.live {
        let id = event.id.clone();
        match EventJson::from_wit(event) {
            Ok(event) => events.push(event),
            Err(err) => {
                return OutcomeJson::Error {
                    error: Fault {
                        module: "pipeline".into(),
                        version: String::new(),
                        event: state.input_id,
                        kind: crate::module::invalid_payload(&id, &err),
                        log: String::new(),
                    },
                };
            }
        }
    }
    if events.is_empty() && !state.left_out.is_empty() {
        return OutcomeJson::Reject {
            violations: state.left_out,
        };
    }
    if events.is_empty() {
        return OutcomeJson::Drop {
            reason: state.dropped.join("; "),
        };
    }
    if !state.left_out.is_empty() {
        return OutcomeJson::Partial {
            events,
            violations: state.left_out,
        };
    }
    OutcomeJson::Emit { events }
}
