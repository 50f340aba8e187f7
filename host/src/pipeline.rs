//! A channel's pipeline: ordered steps, each a module with its config.
//!
//! The output of one step feeds the next. Per input event:
//! - `emit` passes every emitted event to the next step (a fan-out grows the batch);
//! - `drop` ends that branch; if every branch is dropped the event is dropped,
//!   with the reasons joined;
//! - `reject` on any branch rejects the whole input event, with every
//!   violation found in that step;
//! - a fault on any branch fails the whole input event with that fault;
//! - an input event whose branches together hold more events, or more bytes,
//!   than the step's `max-fan-out` and `output-bytes-per-event` fails with
//!   a fault of that step, so fan-outs cannot multiply past the caps.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bindings::{Event, Outcome};
use crate::engine::{Fault, FaultKind, Module};
use crate::event::{EventJson, OutcomeJson, ViolationJson};

/// One step: a loaded module and the config its `init` receives.
#[derive(Clone)]
pub struct Step {
    /// The transform component.
    pub module: Arc<Module>,
    /// The step's configuration, as JSON text.
    pub config: String,
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
    dropped: Vec<String>,
    violations: Vec<ViolationJson>,
    fault: Option<Box<Fault>>,
}

impl Pipeline {
    /// A pipeline of these steps, run in order.
    pub fn new(steps: Vec<Step>) -> Self {
        Self { steps }
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Runs a batch of events through every step; one outcome per input, in order.
    pub fn run(&self, inputs: &[EventJson]) -> Vec<OutcomeJson> {
        let mut progress: Vec<Progress> = inputs
            .iter()
            .map(|input| Progress {
                input_id: input.id.clone(),
                live: vec![input.to_wit()],
                ..Progress::default()
            })
            .collect();
        for step in &self.steps {
            let mut owners = Vec::new();
            let mut batch = Vec::new();
            for (owner, state) in progress.iter_mut().enumerate() {
                for event in state.live.drain(..) {
                    owners.push(owner);
                    batch.push(event);
                }
            }
            if batch.is_empty() {
                break;
            }
            let results = step.module.run(&step.config, &batch);
            for ((owner, event), result) in owners.into_iter().zip(&batch).zip(results) {
                let state = &mut progress[owner];
                match result {
                    Ok(Outcome::Emit(events)) => state.live.extend(events),
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
            for state in &mut progress {
                if state.fault.is_none()
                    && let Some(kind) = over_caps(&state.live, step.module.limits())
                {
                    state.fault = Some(Box::new(Fault {
                        module: step.module.name().to_string(),
                        version: step.module.version().to_string(),
                        event: state.input_id.clone(),
                        kind,
                        log: String::new(),
                    }));
                }
                if state.fault.is_some() || !state.violations.is_empty() {
                    state.live.clear();
                }
            }
        }
        progress.into_iter().map(finish).collect()
    }
}

/// The fault for one input event whose live branches exceed a step's caps.
fn over_caps(live: &[Event], limits: &crate::engine::Limits) -> Option<FaultKind> {
    if live.len() > limits.max_fan_out {
        return Some(FaultKind::TooManyOutputs {
            count: live.len(),
            limit: limits.max_fan_out,
        });
    }
    let bytes: usize = live.iter().map(crate::engine::event_bytes).sum();
    (bytes > limits.output_bytes_per_event).then_some(FaultKind::OutputTooLarge {
        bytes,
        limit_bytes: limits.output_bytes_per_event,
    })
}

/// The final outcome for one input event.
fn finish(state: Progress) -> OutcomeJson {
    if let Some(error) = state.fault {
        return OutcomeJson::Error { error: *error };
    }
    if !state.violations.is_empty() {
        return OutcomeJson::Reject {
            violations: state.violations,
        };
    }
    if state.live.is_empty() {
        return OutcomeJson::Drop {
            reason: state.dropped.join("; "),
        };
    }
    let mut events = Vec::with_capacity(state.live.len());
    for event in state.live {
        let id = event.id.clone();
        match EventJson::from_wit(event) {
            Ok(event) => events.push(event),
            Err(err) => {
                // Unreachable in practice: every step checks its payloads.
                return OutcomeJson::Error {
                    error: Fault {
                        module: "pipeline".into(),
                        version: String::new(),
                        event: id,
                        kind: FaultKind::InvalidPayload {
                            detail: err.to_string(),
                        },
                        log: String::new(),
                    },
                };
            }
        }
    }
    OutcomeJson::Emit { events }
}
