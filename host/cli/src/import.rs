//! `sluice import`: a catalog file (CSV with a header row, or JSONL) sent
//! to a running sidecar as events of one source, in batches, through the
//! same durable, idempotent ingest as webhooks. A row's id is its
//! `--id-column`, or a hash of its content, so a second run of the same
//! file is all duplicates and a changed row is a new event.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::admin::{ServerArgs, send_status};

/// Longest line of an import file, in bytes: a row (or a CSV cell) larger
/// than this is refused, naming its line, rather than read into memory.
const MAX_LINE_BYTES: usize = 4 << 20;
/// Most tries of one batch the sidecar answers 429 or 503 to.
const MAX_TRIES: u32 = 30;

/// `sluice import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The source the rows come from: their events' `source` (a channel
    /// that lists sources takes them by it).
    #[arg(long)]
    source: String,
    /// The event kind of every row (`product`, `inventory`, `price`, …).
    #[arg(long, default_value = "product")]
    kind: String,
    /// The column (CSV) or top-level field (JSONL) with each row's id;
    /// without it, a row's id is a hash of its content.
    #[arg(long)]
    id_column: Option<String>,
    /// Rows per request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// A `.csv` file with a header row, or a `.jsonl` file.
    file: PathBuf,
}

/// What the sidecar answered, added up.
#[derive(Default)]
struct Totals {
    rows: u64,
    accepted: u64,
    duplicates: u64,
}

pub fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let file =
        std::fs::File::open(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let reader = std::io::BufReader::new(LineCapped::new(file));
    let jsonl = args
        .file
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "ndjson");
    let mut totals = Totals::default();
    let mut batch = Vec::with_capacity(args.batch);
    let flush = |batch: &mut Vec<String>, totals: &mut Totals| -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let answer = post_batch(&args.server, &batch.join("\n"))?;
        totals.accepted += answer["accepted"].as_u64().unwrap_or(0);
        totals.duplicates += answer["duplicates"].as_u64().unwrap_or(0);
        totals.rows += batch.len() as u64;
        batch.clear();
        progress(totals);
        Ok(())
    };
    let push = |row: Map<String, Value>, line: u64, batch: &mut Vec<String>| -> anyhow::Result<()> {
        batch.push(event(&args, row, line)?.to_string());
        Ok(())
    };
    if jsonl {
        for (index, line) in reader.lines().enumerate() {
            let number = index as u64 + 1;
            let line = line.with_context(|| format!("{}: line {number}", args.file.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let row: Map<String, Value> = serde_json::from_str(&line)
                .with_context(|| format!("{}: line {number} is not a JSON object", args.file.display()))?;
            push(row, number, &mut batch)?;
            if batch.len() >= args.batch {
                flush(&mut batch, &mut totals)?;
            }
        }
    } else {
        let mut csv = csv::ReaderBuilder::new().flexible(false).from_reader(reader);
        let headers = csv
            .headers()
            .with_context(|| format!("{}: the header row cannot be read", args.file.display()))?
            .clone();
        for record in csv.records() {
            let record = record.map_err(|err| {
                let line = err.position().map_or(0, |p| p.line());
                anyhow::anyhow!("{}: line {line}: {err}", args.file.display())
            })?;
            let line = record.position().map_or(0, |p| p.line());
            let row = headers
                .iter()
                .zip(record.iter())
                .map(|(key, value)| (key.to_string(), Value::String(value.to_string())))
                .collect();
            push(row, line, &mut batch)?;
            if batch.len() >= args.batch {
                flush(&mut batch, &mut totals)?;
            }
        }
    }
    flush(&mut batch, &mut totals)?;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    println!(
        "{} rows from {}: {} accepted, {} duplicates",
        totals.rows,
        args.file.display(),
        totals.accepted,
        totals.duplicates
    );
    Ok(ExitCode::SUCCESS)
}

/// The event of one row: its id from `--id-column` or from its content.
fn event(args: &ImportArgs, row: Map<String, Value>, line: u64) -> anyhow::Result<Value> {
    let id = match &args.id_column {
        Some(column) => match row.get(column) {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            Some(Value::Number(id)) => id.to_string(),
            _ => bail!("{}: line {line} has no `{column}`", args.file.display()),
        },
        None => {
            let content = serde_json::to_string(&row)?;
            hex::encode(&Sha256::digest(content.as_bytes())[..16])
        }
    };
    Ok(json!({
        "id": format!("{}:{id}", args.source),
        "kind": args.kind,
        "source": args.source,
        "payload": row,
    }))
}

/// Sends one batch as JSONL; waits out 429 and 503 as `Retry-After` says.
fn post_batch(server: &ServerArgs, body: &str) -> anyhow::Result<Value> {
    for _ in 0..MAX_TRIES {
        let (status, retry_after, answer) =
            send_status(server, "POST", &server.url("/v1/events"), body.as_bytes())?;
        match status {
            202 => return Ok(serde_json::from_str(&answer).unwrap_or(Value::Null)),
            429 | 503 => std::thread::sleep(
                retry_after
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(60)),
            ),
            _ => bail!("the sidecar refused a batch ({status}): {answer}"),
        }
    }
    bail!(
        "the sidecar kept answering 429 or 503 after {MAX_TRIES} tries; run the import again (what was stored is a duplicate then)"
    )
}

/// The rows sent so far, on a terminal.
fn progress(totals: &Totals) {
    let mut stderr = std::io::stderr();
    if stderr.is_terminal() {
        let _ = write!(
            stderr,
            "\r{} rows sent, {} accepted, {} duplicates",
            totals.rows, totals.accepted, totals.duplicates
        );
        let _ = stderr.flush();
    }
}

/// A reader that fails on a line longer than [`MAX_LINE_BYTES`].
struct LineCapped<R> {
    inner: R,
    line: usize,
}

impl<R> LineCapped<R> {
    fn new(inner: R) -> Self {
        Self { inner, line: 0 }
    }
}

impl<R: Read> Read for LineCapped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        for &byte in &buf[..read] {
            self.line = if byte == b'\n' { 0 } else { self.line + 1 };
            if self.line > MAX_LINE_BYTES {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a line is over {MAX_LINE_BYTES} bytes"),
                ));
            }
        }
        Ok(read)
    }
}
