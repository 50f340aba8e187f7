//! Technical faults: what happens when a module traps, hits a limit or
//! breaks the contract. A fault fails one event on one step; it is never
//! confused with a business rejection.

use serde::{Deserialize, Serialize};
use wasmtime::Trap;

use super::limits::MemoryLimitExceeded;

/// A module failed on an event. Says which module (name and version),
/// which event, what happened, and what the guest logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("module `{module}` (version {version}) failed on event `{event}`: {kind}")]
pub struct Fault {
    /// The module's name.
    pub module: String,
    /// The module's version: the first 12 hex digits of its sha256.
    pub version: String,
    /// The id of the event being transformed.
    pub event: String,
    /// What went wrong.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// What the guest wrote to stdout, stderr and `host.log` during the call.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log: String,
}

/// The ways a module can fail on an event. The `code` in JSON is stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "kebab-case")]
pub enum FaultKind {
    /// The wall-clock deadline passed (an infinite loop, or far too much work).
    #[error("ran past its {limit_ms} ms deadline")]
    Timeout {
        /// The deadline for the call, in milliseconds.
        limit_ms: u64,
    },
    /// The fuel budget ran out.
    #[error("ran out of fuel after {fuel} units")]
    OutOfFuel {
        /// The budget for the call.
        fuel: u64,
    },
    /// The module tried to grow its memory past the cap.
    #[error("tried to grow its memory past the {limit_bytes}-byte cap")]
    MemoryLimit {
        /// The cap, in bytes.
        limit_bytes: usize,
    },
    /// The module's stack overflowed. In a Rust guest this often surfaces as
    /// an out-of-bounds memory access, which is reported the same way.
    #[error("overflowed its stack or accessed memory out of bounds")]
    StackOverflow,
    /// The module panicked or hit another trap.
    #[error("trapped: {detail}")]
    Trap {
        /// The trap, and the panic message when the guest printed one.
        detail: String,
    },
    /// The outcome for one event was larger than the output cap.
    #[error("produced {bytes} bytes of output, over the {limit_bytes}-byte cap")]
    OutputTooLarge {
        /// Size of the outcome.
        bytes: usize,
        /// The cap.
        limit_bytes: usize,
    },
    /// One event's outcome held more events (or violations) than the fan-out cap.
    #[error("produced {count} outputs for one event, over the cap of {limit}")]
    TooManyOutputs {
        /// Events emitted (or violations reported).
        count: usize,
        /// The cap.
        limit: usize,
    },
    /// An emitted payload was not valid JSON.
    #[error("emitted a payload that is not JSON: {detail}")]
    InvalidPayload {
        /// The parser's complaint.
        detail: String,
    },
    /// `apply` returned a different number of outcomes than it got events.
    #[error("returned {got} outcomes for {expected} events")]
    OutcomeCount {
        /// Outcomes returned.
        got: usize,
        /// Events passed.
        expected: usize,
    },
    /// `init` refused the step's configuration.
    #[error("refused its configuration: {message}")]
    Init {
        /// The module's explanation.
        message: String,
    },
    /// The module could not be instantiated (for example its memory
    /// declaration alone exceeds the cap).
    #[error("could not be instantiated: {detail}")]
    Instantiate {
        /// What wasmtime said.
        detail: String,
    },
    /// A state call ended the call: too many keys written for one event.
    #[error("state: {detail}")]
    State {
        /// What happened.
        detail: String,
    },
    /// The state store could not be read in time: not the event's fault.
    /// A host runs the batch again later instead of keeping this outcome.
    #[error("state could not be read: {detail}")]
    StateUnavailable {
        /// What the store said.
        detail: String,
    },
    /// The module called an import that is linked but denied (an outgoing
    /// HTTP request): nothing was sent.
    #[error("{}", crate::deny::Denied { import: import.clone() })]
    Denied {
        /// The function called.
        import: String,
    },
}

impl FaultKind {
    /// Classifies a wasmtime error from a call into a module. `log` is the
    /// guest's log for the call, searched for a panic message.
    pub(crate) fn from_call_error(err: &wasmtime::Error, timeout_ms: u64, fuel: u64, log: &str) -> FaultKind {
        if let Some(exceeded) = err.downcast_ref::<MemoryLimitExceeded>() {
            return FaultKind::MemoryLimit {
                limit_bytes: exceeded.limit,
            };
        }
        match err.downcast_ref::<crate::state::StateFault>() {
            Some(crate::state::StateFault::Read(read)) => {
                return FaultKind::StateUnavailable {
                    detail: read.to_string(),
                };
            }
            Some(fault) => {
                return FaultKind::State {
                    detail: fault.to_string(),
                };
            }
            None => {}
        }
        if let Some(denied) = err.downcast_ref::<crate::deny::Denied>() {
            return FaultKind::Denied {
                import: denied.import.clone(),
            };
        }
        #[cfg(feature = "wasi")]
        if err.downcast_ref::<crate::wasi::DeadlineExceeded>().is_some() {
            return FaultKind::Timeout { limit_ms: timeout_ms };
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => FaultKind::Timeout { limit_ms: timeout_ms },
            Some(Trap::OutOfFuel) => FaultKind::OutOfFuel { fuel },
            Some(Trap::StackOverflow | Trap::MemoryOutOfBounds) => FaultKind::StackOverflow,
            Some(Trap::UnreachableCodeReached) => FaultKind::Trap {
                detail: match panic_message(log) {
                    Some(panic) => format!("the guest panicked: {panic}"),
                    None => "the guest executed `unreachable` (a Rust guest does this when it panics)".into(),
                },
            },
            Some(trap) => FaultKind::Trap {
                detail: trap.to_string(),
            },
            None => FaultKind::Trap {
                detail: err.to_string(),
            },
        }
    }
}

/// Whether a call failed only because it ran inline: a host call would
/// have waited, or the attempt's CPU budget ran out.
pub(crate) fn needs_blocking_thread(err: &wasmtime::Error, sandbox: &crate::Sandbox) -> bool {
    if !sandbox.inline {
        return false;
    }
    #[cfg(feature = "wasi")]
    if err.downcast_ref::<crate::wasi::WouldWait>().is_some() {
        return true;
    }
    err.downcast_ref::<crate::placement::BudgetSpent>().is_some()
}

/// The panic message a Rust guest printed to stderr, if any.
fn panic_message(log: &str) -> Option<String> {
    let start = log.find("panicked at ")?;
    let rest = &log[start + "panicked at ".len()..];
    let message: Vec<&str> = rest
        .lines()
        .take_while(|line| !line.starts_with("note:"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    Some(message.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_lifted_from_the_log() {
        let log = "thread '<unnamed>' panicked at src/lib.rs:7:9:\nboom: bad sku\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(panic_message(log).unwrap(), "src/lib.rs:7:9: boom: bad sku");
    }

    #[test]
    fn fault_json_has_a_stable_code() {
        let fault = Fault {
            module: "acme".into(),
            version: "0123456789ab".into(),
            event: "evt-1".into(),
            kind: FaultKind::Timeout { limit_ms: 200 },
            log: String::new(),
        };
        let json = serde_json::to_value(&fault).unwrap();
        assert_eq!(json["code"], "timeout");
        assert_eq!(
            fault.to_string(),
            "module `acme` (version 0123456789ab) failed on event `evt-1`: ran past its 200 ms deadline"
        );
    }
}
