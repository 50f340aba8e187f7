//! Building outcomes: emit, drop, reject and partial.

use serde::Serialize;

use crate::path::JsonPath;
use crate::{Event, Outcome, Partial, Violation};

impl Outcome {
    /// Emits one event: `input`'s identity with `payload` as its body.
    pub fn emit<T: Serialize + ?Sized>(input: &Event, payload: &T) -> Outcome {
        Outcome::Emit(vec![input.with_payload(payload)])
    }

    /// Passes the input event on unchanged.
    pub fn pass(input: &Event) -> Outcome {
        Outcome::Emit(vec![input.clone()])
    }

    /// Drops the event on purpose, with a reason an operator can read.
    pub fn skip(reason: impl Into<String>) -> Outcome {
        Outcome::Drop(reason.into())
    }

    /// Sends `emit` on and rejects the rest of the input with `reject`
    /// (the violations name what was left out). With nothing to reject it is
    /// a plain emit.
    pub fn partial(emit: Vec<Event>, reject: Vec<Violation>) -> Outcome {
        if reject.is_empty() {
            return Outcome::Emit(emit);
        }
        Outcome::Partial(Partial { emit, reject })
    }

    /// Leaves this event out of its input's delivery, with these
    /// violations, and lets the input's other parts go on: a variant that
    /// breaks a rule, in a product fanned out per variant by an earlier
    /// step. The input is rejected only if no part of it is left.
    pub fn leave_out(violations: Vec<Violation>) -> Outcome {
        Outcome::Partial(Partial {
            emit: Vec::new(),
            reject: violations,
        })
    }

    /// Rejects the event with one violation.
    pub fn reject_one(path: &JsonPath, code: &str, message: impl Into<String>) -> Outcome {
        Outcome::Reject(vec![Violation::new(path, code, message)])
    }
}

impl Violation {
    /// A violation at `path` with a stable machine-readable `code`.
    pub fn new(path: &JsonPath, code: &str, message: impl Into<String>) -> Violation {
        Violation {
            path: path.to_string(),
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// Collects violations while a transform checks a payload, so that all
/// problems are reported at once instead of only the first.
#[derive(Debug, Default)]
pub struct Violations(Vec<Violation>);

impl Violations {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one violation.
    pub fn push(&mut self, path: &JsonPath, code: &str, message: impl Into<String>) {
        self.0.push(Violation::new(path, code, message));
    }

    /// Unwraps `value`, or records a `required` violation at `path` and returns `None`.
    pub fn require<T>(&mut self, value: Option<T>, path: &JsonPath, what: &str) -> Option<T> {
        if value.is_none() {
            self.push(path, "required", format!("{what} is required"));
        }
        value
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was recorded, otherwise [`Outcome::leave_out`].
    pub fn into_left_out(self) -> Result<(), Outcome> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Outcome::leave_out(self.0))
        }
    }

    /// `Ok(())` when nothing was recorded, otherwise the rejection outcome.
    pub fn into_result(self) -> Result<(), Outcome> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Outcome::Reject(self.0))
        }
    }
}
