//! What guests cost while a piece of work runs: instructions (fuel), peak
//! memory and bytes returned. `sluice test --report` and budgets read it.
//!
//! Measuring is per thread: [`measure`] counts the guest calls made on the
//! calling thread, which is where [`crate::Pipeline::run`] makes them. Off a
//! measurement, recording is one thread-local read per call.

use std::cell::Cell;

use serde::{Deserialize, Serialize};

/// What the guests of a measured piece of work cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Usage {
    /// Fuel burnt (about one per WebAssembly instruction), `init` included;
    /// `None` when the engine does not meter fuel.
    pub fuel: Option<u64>,
    /// The most linear memory any one instance held, in bytes.
    pub memory_bytes: u64,
    /// Bytes the guests returned (events, violations, drop reasons).
    pub output_bytes: u64,
}

thread_local! {
    static METER: Cell<Option<Usage>> = const { Cell::new(None) };
}

/// Runs `work` and returns what the guest calls it made on this thread cost.
/// Measurements nest: an inner one's usage also counts in the outer one.
pub fn measure<R>(work: impl FnOnce() -> R) -> (R, Usage) {
    let outer = METER.with(|meter| meter.replace(Some(Usage::default())));
    let result = work();
    let usage = METER.with(|meter| meter.replace(outer)).unwrap_or_default();
    if outer.is_some() {
        METER.with(|meter| meter.set(Some(add(outer.unwrap_or_default(), usage))));
    }
    (result, usage)
}

fn add(a: Usage, b: Usage) -> Usage {
    Usage {
        fuel: match (a.fuel, b.fuel) {
            (None, None) => None,
            (x, y) => Some(x.unwrap_or(0) + y.unwrap_or(0)),
        },
        memory_bytes: a.memory_bytes.max(b.memory_bytes),
        output_bytes: a.output_bytes + b.output_bytes,
    }
}

/// Adds one guest call's cost to the measurement in progress, if any.
pub(crate) fn record(fuel: Option<u64>, memory_bytes: usize, output_bytes: usize) {
    METER.with(|meter| {
        if let Some(usage) = meter.get() {
            meter.set(Some(add(
                usage,
                Usage {
                    fuel,
                    memory_bytes: memory_bytes as u64,
                    output_bytes: output_bytes as u64,
                },
            )));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_inside_a_measurement_and_nests() {
        record(Some(5), 10, 10);
        let ((), outer) = {
            measure(|| {
                record(Some(1), 100, 3);
                let ((), inner) = measure(|| record(Some(2), 50, 4));
                assert_eq!(
                    inner,
                    Usage {
                        fuel: Some(2),
                        memory_bytes: 50,
                        output_bytes: 4
                    }
                );
            })
        };
        assert_eq!(
            outer,
            Usage {
                fuel: Some(3),
                memory_bytes: 100,
                output_bytes: 7
            }
        );
        let ((), none) = measure(|| record(None, 0, 0));
        assert_eq!(none.fuel, None);
    }
}
