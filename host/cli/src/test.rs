//! `sluice test`: golden fixtures, readable diffs, `--bless`, JUnit output.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use sluice_engine::Limits;
use sluice_engine::fixtures::{CaseStatus, Subject, SuiteReport, junit_xml, run_suite};

use super::EngineArgs;
use sluice_engine::locate::{TestTarget, test_target};

/// Arguments of `sluice test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Transform crate folders (`transforms/b2b-portal`) or channel folders
    /// with a `pipeline.json` (`transforms/channels/b2b-from-magento`), whose
    /// built components and `fixtures/` are found automatically; or, with
    /// `--module`, one fixtures folder.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Test this component against the fixtures folder given as the path.
    #[arg(long)]
    module: Option<PathBuf>,
    /// Rewrite every `expected.json` from the actual output instead of comparing.
    #[arg(long, env = "BLESS", value_parser = clap::builder::FalseyValueParser::new())]
    bless: bool,
    /// Also write the results as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let engine = args.engine.engine()?;
    // Golden fixtures are hermetic: a fresh instance per case, so no case
    // depends on what an earlier one left in the guest.
    let limits = Limits {
        calls_per_instance: 1,
        ..args.engine.limits()
    };
    let mut targets: Vec<(String, Subject, PathBuf)> = Vec::new();
    match &args.module {
        Some(module) => {
            let [fixtures] = args.paths.as_slice() else {
                bail!("with `--module`, give exactly one fixtures folder");
            };
            let module = engine
                .load_file(module, limits)
                .with_context(|| format!("cannot load `{}`", module.display()))?;
            targets.push((
                module.name().to_string(),
                Subject::Module(Arc::new(module)),
                fixtures.clone(),
            ));
        }
        None => {
            for dir in &args.paths {
                let (name, target, fixtures) = test_target(dir, &engine, &limits)?;
                let subject = match target {
                    TestTarget::Module(component) => Subject::Module(Arc::new(
                        engine
                            .load_file(&component, limits.clone())
                            .with_context(|| format!("cannot load `{}`", component.display()))?,
                    )),
                    TestTarget::Pipeline(pipeline) => Subject::Pipeline(pipeline),
                };
                targets.push((name, subject, fixtures));
            }
        }
    }

    let started = Instant::now();
    let mut suites: Vec<SuiteReport> = Vec::new();
    for (name, subject, fixtures) in targets {
        match &subject {
            Subject::Module(module) => {
                println!("\nrunning fixtures of `{name}` (version {})", module.version())
            }
            Subject::Pipeline(pipeline) => {
                let steps: Vec<String> = pipeline
                    .steps()
                    .iter()
                    .map(|s| format!("{}@{}", s.module.name(), s.module.version()))
                    .collect();
                println!("\nrunning fixtures of channel `{name}` ({})", steps.join(" → "));
            }
        }
        let report = run_suite(&name, &subject, &fixtures, args.bless)?;
        for case in &report.cases {
            match &case.status {
                CaseStatus::Passed => println!("case {name}/{} ... ok", case.name),
                CaseStatus::Blessed => println!("case {name}/{} ... blessed", case.name),
                failed @ (CaseStatus::Failed(_) | CaseStatus::Differs(_)) => {
                    let message = failed.message();
                    println!("case {name}/{} ... FAILED", case.name);
                    for line in message.lines() {
                        println!("    {line}");
                    }
                }
            }
        }
        suites.push(report);
    }

    if let Some(path) = &args.junit {
        std::fs::write(path, junit_xml(&suites))
            .with_context(|| format!("cannot write {}", path.display()))?;
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
