//! Resource budgets of fixture cases (`budget.json`), and how one run's
//! figures compare with another's.
//!
//! A `budget.json` in `fixtures/` applies to every case; one in a case
//! folder overrides it figure by figure:
//!
//! ```json
//! {"fuel": 2500000, "memory-bytes": 1245184, "output-bytes": 900}
//! ```

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::usage::Usage;

/// The file name of a budget, in `fixtures/` or a case folder.
pub const BUDGET_FILE: &str = "budget.json";

/// The most a case may cost; a figure left out is not limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Budget {
    /// Fuel (instructions), `init` included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Peak linear memory of any one instance, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Bytes the guests returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
}

/// One measured figure over its budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Overrun {
    /// `fuel`, `memory-bytes` or `output-bytes`.
    pub figure: &'static str,
    /// The budget.
    pub budget: u64,
    /// What the case used.
    pub value: u64,
}

impl fmt::Display for Overrun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} is over its budget of {} ({})",
            self.figure,
            self.value,
            self.budget,
            percent_change(self.budget, self.value)
        )
    }
}

/// How one figure moved from a baseline run to this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delta {
    /// `fuel`, `memory-bytes` or `output-bytes`.
    pub figure: &'static str,
    /// The baseline's value.
    pub before: u64,
    /// This run's value.
    pub after: u64,
}

impl Delta {
    /// Whether the figure grew by more than `percent` per cent.
    pub fn regressed(&self, percent: f64) -> bool {
        self.after as f64 > self.before as f64 * (1.0 + percent / 100.0)
    }
}

impl fmt::Display for Delta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({} → {})",
            self.figure,
            percent_change(self.before, self.after),
            self.before,
            self.after
        )
    }
}

/// `+12%`, `-3%`, `±0%`, or `new` when growing from zero.
fn percent_change(before: u64, after: u64) -> String {
    if before == after {
        return "±0%".into();
    }
    if before == 0 {
        return "new".into();
    }
    let change = (after as f64 - before as f64) / before as f64 * 100.0;
    format!("{change:+.0}%")
}

/// The figures of a usage, named as in `budget.json`; fuel only if metered.
fn figures(usage: &Usage) -> impl Iterator<Item = (&'static str, u64)> {
    [
        usage.fuel.map(|fuel| ("fuel", fuel)),
        Some(("memory-bytes", usage.memory_bytes)),
        Some(("output-bytes", usage.output_bytes)),
    ]
    .into_iter()
    .flatten()
}

impl Budget {
    /// Reads `budget.json` in `dir`, if there is one; the error names the file.
    pub fn read(dir: &Path, shown_as: &str) -> Result<Option<Budget>, String> {
        let path = dir.join(BUDGET_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|err| format!("cannot read {shown_as}: {}", err.kind()))?;
        serde_json::from_str(&text).map(Some).map_err(|err| {
            format!("{shown_as}: {err} (expected {{\"fuel\": N, \"memory-bytes\": N, \"output-bytes\": N}})")
        })
    }

    /// This budget with every figure `over` sets replacing its own.
    pub fn overridden_by(self, over: Budget) -> Budget {
        Budget {
            fuel: over.fuel.or(self.fuel),
            memory_bytes: over.memory_bytes.or(self.memory_bytes),
            output_bytes: over.output_bytes.or(self.output_bytes),
        }
    }

    fn limit(&self, figure: &str) -> Option<u64> {
        match figure {
            "fuel" => self.fuel,
            "memory-bytes" => self.memory_bytes,
            _ => self.output_bytes,
        }
    }

    /// Every figure of `usage` over this budget. Fuel is checked only when
    /// it was metered.
    pub fn check(&self, usage: &Usage) -> Vec<Overrun> {
        figures(usage)
            .filter_map(|(figure, value)| {
                let budget = self.limit(figure)?;
                (value > budget).then_some(Overrun {
                    figure,
                    budget,
                    value,
                })
            })
            .collect()
    }

    /// A budget of `usage` plus `headroom_percent`, rounded up.
    pub fn from_usage(usage: &Usage, headroom_percent: f64) -> Budget {
        let grow = |value: u64| (value as f64 * (1.0 + headroom_percent / 100.0)).ceil() as u64;
        Budget {
            fuel: usage.fuel.map(grow),
            memory_bytes: Some(grow(usage.memory_bytes)),
            output_bytes: Some(grow(usage.output_bytes)),
        }
    }
}

/// Each figure's move from `before` to `after`; fuel only if both metered it.
pub fn deltas(before: &Usage, after: &Usage) -> Vec<Delta> {
    figures(before)
        .filter_map(|(figure, before)| {
            let (_, after) = figures(after).find(|(other, _)| *other == figure)?;
            Some(Delta {
                figure,
                before,
                after,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(fuel: u64, memory: u64, output: u64) -> Usage {
        Usage {
            fuel: Some(fuel),
            memory_bytes: memory,
            output_bytes: output,
        }
    }

    #[test]
    fn deltas_pair_figures_by_name_when_only_one_side_metered_fuel() {
        let unmetered = Usage {
            fuel: None,
            ..usage(0, 100, 10)
        };
        let moved = deltas(&unmetered, &usage(5, 150, 10));
        assert_eq!(moved.len(), 2, "memory and output, not fuel");
        assert_eq!((moved[0].before, moved[0].after), (100, 150));
        assert_eq!((moved[1].before, moved[1].after), (10, 10));
    }

    #[test]
    fn a_case_budget_overrides_the_suite_budget_figure_by_figure() {
        let suite = Budget {
            fuel: Some(100),
            memory_bytes: Some(1000),
            output_bytes: None,
        };
        let case = Budget {
            fuel: Some(50),
            ..Budget::default()
        };
        let budget = suite.overridden_by(case);
        assert_eq!(
            budget.check(&usage(60, 1001, 1 << 40)),
            vec![
                Overrun {
                    figure: "fuel",
                    budget: 50,
                    value: 60
                },
                Overrun {
                    figure: "memory-bytes",
                    budget: 1000,
                    value: 1001
                },
            ]
        );
        assert_eq!(
            budget.check(&usage(60, 1001, 0))[0].to_string(),
            "fuel 60 is over its budget of 50 (+20%)"
        );
        let unmetered = Usage {
            fuel: None,
            ..usage(0, 0, 0)
        };
        assert!(
            budget.check(&unmetered).is_empty(),
            "fuel not metered is not checked"
        );
    }

    #[test]
    fn blessed_budgets_add_headroom_and_deltas_name_regressions() {
        let blessed = Budget::from_usage(&usage(1000, 65536, 10), 20.0);
        assert_eq!(blessed.fuel, Some(1200));
        assert_eq!(blessed.memory_bytes, Some(78644));
        assert_eq!(blessed.output_bytes, Some(12));
        assert!(blessed.check(&usage(1200, 65536, 12)).is_empty());

        let deltas = deltas(&usage(1000, 100, 10), &usage(1120, 100, 0));
        assert_eq!(deltas[0].to_string(), "fuel +12% (1000 → 1120)");
        assert!(deltas[0].regressed(10.0) && !deltas[0].regressed(12.0));
        assert_eq!(deltas[1].to_string(), "memory-bytes ±0% (100 → 100)");
        assert!(!deltas[2].regressed(0.0), "shrinking is no regression");
    }

    #[test]
    fn unknown_figures_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(BUDGET_FILE), r#"{"instructions": 5}"#).unwrap();
        let err = Budget::read(dir.path(), "case/budget.json").unwrap_err();
        assert!(
            err.starts_with("case/budget.json: unknown field `instructions`"),
            "{err}"
        );
        assert_eq!(Budget::read(&dir.path().join("none"), "x").unwrap(), None);
    }
}
