//! `sluice run`: JSONL events in, JSONL outcomes out.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_engine::event::{EventJson, parse_events};
use sluice_engine::pipeline::{Pipeline, Step};

use super::EngineArgs;
use sluice_engine::locate::load_pipeline;

/// Arguments of `sluice run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The transform component.
    #[arg(long, required_unless_present = "pipeline", conflicts_with = "pipeline")]
    module: Option<PathBuf>,
    /// The step's configuration (a JSON file) for `--module`; `{}` when left out.
    #[arg(long, requires = "module")]
    config: Option<PathBuf>,
    /// A channel's `pipeline.json` (steps naming built transforms or `.wasm` files).
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Events to read, one JSON object per line; stdin when left out.
    input: Option<PathBuf>,
    /// Events per call into the module.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Printed instead of an outcome for a line that is not a valid event, so
/// output line N always answers input line N.
#[derive(serde::Serialize)]
struct InvalidLine<'a> {
    outcome: &'static str,
    line: usize,
    error: &'a str,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let engine = args.engine.engine()?;
    let pipeline = match (&args.module, &args.pipeline) {
        (Some(module), _) => {
            let module = engine
                .load_file(module, args.engine.limits())
                .with_context(|| format!("cannot load `{}`", module.display()))?;
            let config = match &args.config {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read config `{}`", path.display()))?;
                    serde_json::from_str::<serde_json::Value>(&text)
                        .with_context(|| format!("config `{}` is not JSON", path.display()))?;
                    text
                }
                None => "{}".into(),
            };
            Pipeline::new(vec![Step {
                module: Arc::new(module),
                config,
            }])
        }
        (None, Some(path)) => load_pipeline(path, &engine, &args.engine.limits())?,
        (None, None) => unreachable!("clap requires --module or --pipeline"),
    };

    let (reader, total): (Box<dyn BufRead>, Option<u64>) = match &args.input {
        Some(path) => {
            let file = File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
            let lines = BufReader::new(File::open(path)?).lines().count() as u64;
            (Box::new(BufReader::new(file)), Some(lines))
        }
        None => (Box::new(std::io::stdin().lock()), None),
    };
    let progress = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    };
    progress.set_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} events  {per_sec}  {elapsed_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut pending: Vec<EventJson> = Vec::new();
    let mut invalid = 0usize;
    let flush = |pending: &mut Vec<EventJson>, out: &mut BufWriter<_>| -> anyhow::Result<()> {
        let events: Vec<EventJson> = std::mem::take(pending);
        for outcome in pipeline.run(&events) {
            serde_json::to_writer(&mut *out, &outcome)?;
            out.write_all(b"\n")?;
        }
        progress.inc(events.len() as u64);
        Ok(())
    };
    for (index, line) in reader.lines().enumerate() {
        let line_no = index + 1;
        let line = line.with_context(|| format!("cannot read input line {line_no}"))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_events(&line) {
            Ok(mut events) if events.len() == 1 => pending.push(events.remove(0)),
            Ok(_) => {
                flush(&mut pending, &mut out)?;
                write_invalid(&mut out, line_no, "expected one event object per line")?;
                invalid += 1;
            }
            Err(err) => {
                flush(&mut pending, &mut out)?;
                write_invalid(&mut out, line_no, &err.to_string())?;
                eprintln!("input line {line_no}: {err}");
                invalid += 1;
            }
        }
        if pending.len() >= args.batch as usize {
            flush(&mut pending, &mut out)?;
        }
    }
    flush(&mut pending, &mut out)?;
    out.flush()?;
    progress.finish_and_clear();
    if invalid > 0 {
        eprintln!("{invalid} input line(s) were not valid events");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn write_invalid(out: &mut impl Write, line: usize, error: &str) -> anyhow::Result<()> {
    serde_json::to_writer(
        &mut *out,
        &InvalidLine {
            outcome: "invalid-input",
            line,
            error,
        },
    )?;
    out.write_all(b"\n")?;
    Ok(())
}
