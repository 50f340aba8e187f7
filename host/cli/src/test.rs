//! `sluice test`: golden fixtures, readable diffs, `--bless`, JUnit output,
//! resource reports and budgets, and comparison with an older version.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use sluice_engine::fixtures::{
    CaseResult, CaseStatus, Subject, SuiteOptions, SuiteReport, junit_xml, run_suite,
};
use sluice_engine::locate::{TestTarget, load_pipeline, test_target};
use sluice_engine::{Limits, Module};

use super::EngineArgs;

/// Arguments of `sluice test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Transform folders (a Rust crate like `transforms/b2b-portal`, a
    /// Python or JavaScript transform with `app.py` or `app.js`, built first
    /// if its sources changed) or channel folders with a `pipeline.json`
    /// (`transforms/channels/b2b-from-magento`), whose components and
    /// `fixtures/` are found automatically; or, with `--module`, one
    /// fixtures folder.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Test this component against the fixtures folder given as the path.
    #[arg(long)]
    module: Option<PathBuf>,
    /// Rewrite every `expected.json` from the actual output instead of
    /// comparing, and `expected-state.json` where a case has state. Budgets
    /// are left alone.
    #[arg(long, env = "BLESS", value_parser = clap::builder::FalseyValueParser::new())]
    bless: bool,
    /// Write every case's `budget.json` from its measured fuel, memory and
    /// output bytes plus this headroom (`20%`), instead of checking budgets.
    #[arg(long, value_name = "PERCENT", value_parser = percent)]
    bless_budgets: Option<f64>,
    /// Print each case's instructions (fuel), peak guest memory, output
    /// bytes and wall time.
    #[arg(long)]
    report: bool,
    /// Also write those figures, per case, as JSON to this file.
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
    /// Also write the results as JUnit XML to this file (figures as properties).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Run every case through this older version too (a `.wasm` component,
    /// or a `pipeline.json`), and compare outputs and resources with it
    /// instead of with `expected.json`.
    #[arg(long, value_name = "OLD", conflicts_with_all = ["bless", "bless_budgets"])]
    baseline: Option<PathBuf>,
    /// With `--baseline`: outputs that differ are shown but do not fail.
    #[arg(long, requires = "baseline")]
    allow_output_changes: bool,
    /// With `--baseline`: fail a case whose fuel, memory or output bytes grow
    /// by more than this (`10%`).
    #[arg(long, value_name = "PERCENT", value_parser = percent, default_value = "10%", requires = "baseline")]
    max_regression: f64,
    /// Where the Python and JavaScript toolchains are installed, for
    /// transforms that must be built first.
    #[arg(long, env = "SLUICE_TOOLS_DIR", default_value_os_t = super::build::default_tools_dir())]
    tools_dir: PathBuf,
    #[command(flatten)]
    engine: EngineArgs,
}

/// `20%` or `20` → 20.0.
fn percent(text: &str) -> Result<f64, String> {
    let number = text.strip_suffix('%').unwrap_or(text).trim();
    match number.parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        _ => Err(format!("`{text}` is not a percentage like `20%`")),
    }
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    // Fuel is always metered under test: it is the deterministic figure
    // that reports and budgets rest on.
    let engine = args.engine.engine_with_fuel(true)?;
    // Golden fixtures are hermetic: a fresh instance per case, so no case
    // depends on what an earlier one left in the guest.
    let limits = Limits {
        calls_per_instance: 1,
        ..args.engine.limits()
    };
    let load = |path: &PathBuf| -> anyhow::Result<Module> {
        engine
            .load_file(path, limits.clone())
            .with_context(|| format!("cannot load `{}`", path.display()))
    };
    let mut targets: Vec<(String, Subject, PathBuf)> = Vec::new();
    match &args.module {
        Some(module) => {
            let [fixtures] = args.paths.as_slice() else {
                bail!("with `--module`, give exactly one fixtures folder");
            };
            let module = load(module)?;
            targets.push((
                module.name().to_string(),
                Subject::Module(Arc::new(module)),
                fixtures.clone(),
            ));
        }
        None => {
            for dir in &args.paths {
                super::build::build_if_needed(dir, &args.tools_dir)?;
                let (name, target, fixtures) = test_target(dir, &engine, &limits)?;
                let subject = match target {
                    TestTarget::Module(component) => Subject::Module(Arc::new(load(&component)?)),
                    TestTarget::Pipeline(pipeline) => Subject::Pipeline(pipeline),
                };
                targets.push((name, subject, fixtures));
            }
        }
    }
    let baseline = match &args.baseline {
        None => None,
        Some(path) if path.extension().is_some_and(|e| e == "wasm") => {
            Some(Subject::Module(Arc::new(load(path)?)))
        }
        Some(path) => Some(Subject::Pipeline(
            load_pipeline(path, &engine, &limits)
                .with_context(|| format!("cannot load the baseline `{}`", path.display()))?,
        )),
    };
    if let Some(baseline) = &baseline {
        println!("\nbaseline: {}", describe(baseline));
    }
    let options = SuiteOptions {
        bless: args.bless,
        bless_budgets: args.bless_budgets,
        baseline: baseline.as_ref(),
        allow_output_changes: args.allow_output_changes,
        max_regression: Some(args.max_regression),
    };

    let started = Instant::now();
    let mut suites: Vec<SuiteReport> = Vec::new();
    for (name, subject, fixtures) in targets {
        println!("\nrunning fixtures of {}", describe_named(&name, &subject));
        let report = run_suite(&name, &subject, &fixtures, &options)?;
        for case in &report.cases {
            print_case(&name, case, &args);
        }
        suites.push(report);
    }

    if let Some(path) = &args.junit {
        std::fs::write(path, junit_xml(&suites))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.report_json {
        let cases: Vec<serde_json::Value> = suites
            .iter()
            .flat_map(|suite| {
                suite.cases.iter().map(|case| {
                    let mut json = case.to_json();
                    json["suite"] = suite.name.clone().into();
                    json
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&serde_json::json!({ "cases": cases }))?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    let passed: usize = suites.iter().map(SuiteReport::passed).sum();
    let failed: usize = suites.iter().map(SuiteReport::failed).sum();
    println!(
        "\nfixture result: {}. {passed} passed; {failed} failed; finished in {:.2}s",
        if failed == 0 { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `module@version`, or the steps of a pipeline joined by arrows.
fn describe(subject: &Subject) -> String {
    match subject {
        Subject::Module(module) => format!("{}@{}", module.name(), module.version()),
        Subject::Pipeline(pipeline) => pipeline
            .steps()
            .iter()
            .map(|s| format!("{}@{}", s.module.name(), s.module.version()))
            .collect::<Vec<_>>()
            .join(" → "),
    }
}

fn describe_named(name: &str, subject: &Subject) -> String {
    match subject {
        Subject::Module(module) => format!("`{name}` (version {})", module.version()),
        Subject::Pipeline(_) => format!("channel `{name}` ({})", describe(subject)),
    }
}

fn print_case(suite: &str, case: &CaseResult, args: &TestArgs) {
    let verdict = match (&case.status, case.failed()) {
        (_, true) => "FAILED",
        (CaseStatus::Blessed, _) => "blessed",
        _ => "ok",
    };
    println!("case {suite}/{} ... {verdict}", case.name);
    if args.report {
        let usage = &case.usage;
        let fuel = usage.fuel.map_or("-".into(), |fuel| fuel.to_string());
        println!(
            "    fuel {fuel}  memory {} B  output {} B  wall {:.2} ms",
            usage.memory_bytes,
            usage.output_bytes,
            case.duration.as_secs_f64() * 1000.0
        );
    }
    if let Some(baseline) = &case.baseline {
        let deltas: Vec<String> = baseline.deltas.iter().map(ToString::to_string).collect();
        println!("    vs baseline: {}", deltas.join(", "));
        if !baseline.differences.is_empty() {
            let allowed = if args.allow_output_changes {
                " (allowed)"
            } else {
                ""
            };
            println!(
                "    output changed at {}{allowed}:",
                baseline.differences.counted("path(s)")
            );
            for difference in &baseline.differences {
                let text = difference
                    .to_string()
                    .replace("expected:", "baseline:")
                    .replace("actual:  ", "new:     ");
                for line in text.lines() {
                    println!("    {line}");
                }
            }
        }
    }
    if case.failed() {
        for line in case.message().lines() {
            println!("    {line}");
        }
    }
}
