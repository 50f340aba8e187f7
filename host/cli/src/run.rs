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
    /// Events per pipeline run (a step passes its module at most 128 at a time).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
    /// Batches run at once, each on its own thread (default: every core).
    /// Output line N still answers input line N.
    #[arg(long, env = "SLUICE_JOBS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    jobs: Option<u32>,
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
                lookups: Default::default(),
            }])
        }
        (None, Some(path)) => load_pipeline(path, &engine, &args.engine.limits())?,
        (None, None) => unreachable!("clap requires --module or --pipeline"),
    };

    let (reader, total): (Box<dyn BufRead + Send>, Option<u64>) = match &args.input {
        Some(path) => {
            let file = File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
            let lines = BufReader::new(File::open(path)?).lines().count() as u64;
            (Box::new(BufReader::new(file)), Some(lines))
        }
        None => (Box::new(BufReader::new(std::io::stdin())), None),
    };
    let progress = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    };
    progress.set_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} events  {per_sec}  {elapsed_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let jobs = args
        .jobs
        .map(|jobs| jobs as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut out = BufWriter::new(std::io::stdout().lock());
    let invalid = run_parallel(&pipeline, reader, args.batch as usize, jobs, &mut out, &progress)?;
    out.flush()?;
    progress.finish_and_clear();
    if invalid > 0 {
        eprintln!("{invalid} input line(s) were not valid events");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Lines of input, numbered from 1, read together and transformed together.
struct Chunk {
    seq: usize,
    first_line: usize,
    lines: Vec<String>,
}

/// What a chunk became: its output lines, ready to write, and how many of
/// its lines were not valid events.
struct Done {
    seq: usize,
    lines: usize,
    output: Vec<u8>,
    invalid: usize,
}

/// Reads `batch` lines at a time, transforms the chunks on `jobs` threads,
/// and writes their outputs in input order. Returns how many lines were invalid.
fn run_parallel(
    pipeline: &Pipeline,
    reader: Box<dyn BufRead + Send>,
    batch: usize,
    jobs: usize,
    out: &mut impl Write,
    progress: &ProgressBar,
) -> anyhow::Result<usize> {
    use std::collections::BTreeMap;
    use std::sync::mpsc::{Receiver, sync_channel};
    use std::sync::{Arc, Mutex};

    // At most `window` chunks are between the reader and the writer at
    // once (queued, running, or done but waiting for an earlier one): the
    // reader takes a credit per chunk, the writer gives it back once the
    // chunk is written. Memory stays bounded however slow one chunk is.
    let window = jobs * 2;
    let (credit, credits) = sync_channel::<()>(window);
    for _ in 0..window {
        credit.send(()).expect("the credit channel holds the window");
    }
    std::thread::scope(|scope| {
        let (to_workers, chunks) = sync_channel::<Chunk>(window);
        let (to_writer, done) = sync_channel::<anyhow::Result<Done>>(window);
        let chunks: Arc<Mutex<Receiver<Chunk>>> = Arc::new(Mutex::new(chunks));
        for _ in 0..jobs {
            let (chunks, to_writer) = (chunks.clone(), to_writer.clone());
            scope.spawn(move || {
                loop {
                    let next = chunks
                        .lock()
                        .map_err(|_| ())
                        .and_then(|rx| rx.recv().map_err(|_| ()));
                    let Ok(chunk) = next else { return };
                    // A panic in the engine fails this run with an error, not a hang.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        transform_chunk(pipeline, chunk)
                    }))
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("transforming a batch panicked")));
                    if to_writer.send(result).is_err() {
                        return;
                    }
                }
            });
        }
        // Only the workers hold the queue now: once they are gone, the reader's sends fail.
        drop(chunks);
        drop(to_writer);
        let reading = scope.spawn(move || -> anyhow::Result<()> {
            let mut chunk = Chunk {
                seq: 0,
                first_line: 1,
                lines: Vec::with_capacity(batch),
            };
            let send = |chunk: Chunk| credits.recv().is_ok() && to_workers.send(chunk).is_ok();
            for (index, line) in reader.lines().enumerate() {
                let line_no = index + 1;
                chunk
                    .lines
                    .push(line.with_context(|| format!("cannot read input line {line_no}"))?);
                if chunk.lines.len() == batch {
                    let next = Chunk {
                        seq: chunk.seq + 1,
                        first_line: line_no + 1,
                        lines: Vec::with_capacity(batch),
                    };
                    if !send(std::mem::replace(&mut chunk, next)) {
                        return Ok(());
                    }
                }
            }
            if !chunk.lines.is_empty() {
                send(chunk);
            }
            Ok(())
        });
        // Write chunks in order, holding back any that finish early.
        let written = (|| {
            let mut waiting = BTreeMap::new();
            let mut next = 0;
            let mut invalid = 0;
            for finished in done {
                let finished = finished?;
                waiting.insert(finished.seq, finished);
                while let Some(ready) = waiting.remove(&next) {
                    out.write_all(&ready.output)?;
                    invalid += ready.invalid;
                    progress.inc(ready.lines as u64);
                    next += 1;
                    let _ = credit.send(());
                }
            }
            anyhow::Ok(invalid)
        })();
        // On an error, returning the credits lets a waiting reader see that the workers are gone.
        drop(credit);
        let read = reading
            .join()
            .map_err(|_| anyhow::anyhow!("the input reader panicked"))?;
        let invalid = written?;
        read?;
        Ok(invalid)
    })
}

/// Parses a chunk's lines and runs its events through the pipeline; an
/// invalid line answers `invalid-input` in its place.
fn transform_chunk(pipeline: &Pipeline, chunk: Chunk) -> anyhow::Result<Done> {
    enum Slot {
        Event,
        Invalid(usize, String),
    }
    let mut slots = Vec::with_capacity(chunk.lines.len());
    let mut events: Vec<EventJson> = Vec::with_capacity(chunk.lines.len());
    for (offset, line) in chunk.lines.iter().enumerate() {
        let line_no = chunk.first_line + offset;
        if line.trim().is_empty() {
            continue;
        }
        match parse_events(line) {
            Ok(mut parsed) if parsed.len() == 1 => {
                events.push(parsed.remove(0));
                slots.push(Slot::Event);
            }
            Ok(_) => slots.push(Slot::Invalid(
                line_no,
                "expected one event object per line".into(),
            )),
            Err(err) => {
                eprintln!("input line {line_no}: {err}");
                slots.push(Slot::Invalid(line_no, err.to_string()));
            }
        }
    }
    let mut outcomes = pipeline.run(&events).into_iter();
    let mut output = Vec::new();
    let mut invalid = 0;
    for slot in slots {
        match slot {
            Slot::Event => {
                let outcome = outcomes.next().expect("one outcome per event");
                serde_json::to_writer(&mut output, &outcome)?;
                output.push(b'\n');
            }
            Slot::Invalid(line, error) => {
                write_invalid(&mut output, line, &error)?;
                invalid += 1;
            }
        }
    }
    Ok(Done {
        seq: chunk.seq,
        lines: chunk.lines.len(),
        output,
        invalid,
    })
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
