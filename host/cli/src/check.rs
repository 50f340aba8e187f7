//! `sluice check`: is this file a Sluice transform, and what does it need?

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sluice_engine::{ComponentReport, Limits};

use super::EngineArgs;

/// Arguments of `sluice check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The `.wasm` file to check.
    file: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let engine = args.engine.engine()?;
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("cannot read `{}`", args.file.display()))?;
    let name = args.file.display().to_string();
    let report = engine.inspect(&name, &bytes);
    let verdict = engine
        .load(&name, &bytes, Limits::default())
        .map(|module| (module.contract(), module.stateful()));

    if args.json {
        let json = serde_json::json!({
            "file": name,
            "ok": verdict.is_ok(),
            "contract": verdict.as_ref().ok().map(|(contract, _)| contract),
            "stateful": verdict.as_ref().ok().map(|(_, stateful)| stateful),
            "error": verdict.as_ref().err().map(ToString::to_string),
            "component": report.as_ref().ok(),
        });
        println!("{json:#}");
    } else {
        match &verdict {
            Ok((contract, stateful)) => println!(
                "{name}: ok, implements sluice:transform@{contract}{}",
                if *stateful { ", keeps state" } else { "" }
            ),
            Err(err) => println!("{name}: NOT a usable Sluice transform\n  why: {err}"),
        }
        if let Ok(report) = &report {
            print_report(report);
        }
    }
    Ok(if verdict.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(report: &ComponentReport) {
    println!("  size:    {} bytes", report.size);
    println!("  sha256:  {}", report.sha256);
    println!(
        "  imports: {}",
        if report.imports.is_empty() {
            "(none)".into()
        } else {
            report.imports.len().to_string()
        }
    );
    for import in &report.imports {
        if report.denied.contains(import) {
            println!("    - {import}  (linked but denied: any call fails its event)");
        } else {
            println!("    - {import}");
        }
    }
    println!("  exports: {}", report.exports.len());
    for export in &report.exports {
        println!("    - {export}");
    }
}
