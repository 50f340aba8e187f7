//! `sluice run` on every core, side by side with the same pipeline run
//! natively in process, on one thread and on every core.
//!
//! 20,000 real Magento products (the channel's three examples, with new
//! ids and SKUs) go through `b2b-portal-from-magento` (`magento-source` →
//! `b2b-portal`). The native runs do the same work per line: parse the
//! event, run both steps in batches of 64, write one JSON outcome line.
//! `sluice run` (the release binary) is timed as a whole process after one
//! warm-up run has filled its compile cache, so its time includes starting,
//! loading the cached components and reading and writing the files.
//!
//! Run with `scripts/dev bench` (or `cargo bench -p sluice-cli --bench run`).
//! `SLUICE_RUN_EVENTS` changes the count.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use b2b_portal::B2bPortal;
use magento_source::MagentoSource;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sluice_guest::native::NativeRunner;
use sluice_guest::source::Source;
use sluice_guest::{Event, EventKind, Outcome};
use support::{env_number, root};

mod support;

const BATCH: usize = 64;

fn main() {
    let count = env_number("SLUICE_RUN_EVENTS", 20_000) as usize;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let channel = root().join("transforms/channels/b2b-portal-from-magento");
    let examples: Vec<Value> = std::fs::read_to_string(channel.join("examples/magento-products.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let lines: Vec<String> = (0..count)
        .map(|n| {
            let mut event = examples[n % examples.len()].clone();
            event["id"] = format!("bench-{n}").into();
            event["payload"]["sku"] = format!("SKU-{n:06}").into();
            event.to_string()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("products.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let pipeline = channel.join("pipeline.json");
    let steps: Value = serde_json::from_str(&std::fs::read_to_string(&pipeline).unwrap()).unwrap();
    let configs = [
        steps["steps"][0]["config"].to_string(),
        steps["steps"][1]["config"].to_string(),
    ];

    let native_one = time(count, || native(&lines, &configs));
    let native_all = time(count, || {
        let chunk = lines.len().div_ceil(cores);
        std::thread::scope(|scope| {
            let parts: Vec<_> = lines
                .chunks(chunk)
                .map(|part| scope.spawn(|| native(part, &configs)))
                .collect();
            parts.into_iter().map(|part| part.join().unwrap()).sum::<usize>()
        })
    });
    sluice_run(&input, &pipeline, cores); // Warm-up: fills the compile cache.
    let wasm_one = time(count, || sluice_run(&input, &pipeline, 1));
    let wasm_all = time(count, || sluice_run(&input, &pipeline, cores));

    println!("sluice run: {count} Magento products through magento-source → b2b-portal, {cores} cores");
    let rate = |elapsed: Duration| count as f64 / elapsed.as_secs_f64();
    for (name, elapsed) in [
        ("native, one thread", native_one),
        ("native, every core", native_all),
        ("sluice run --jobs 1", wasm_one),
        ("sluice run, every core", wasm_all),
    ] {
        println!(
            "  {name:<24} {:>7.2} s {:>9.0} events/s   {:.2}x of native on one thread",
            elapsed.as_secs_f64(),
            rate(elapsed),
            rate(elapsed) / rate(native_one)
        );
    }
    println!(
        "  every core vs one: native {:.2}x, sluice run {:.2}x; sluice run on every core is {:.2}x of native on every core",
        rate(native_all) / rate(native_one),
        rate(wasm_all) / rate(wasm_one),
        rate(wasm_all) / rate(native_all)
    );
}

/// Runs `work` once and says how long it took; `work` answers how many
/// outcome lines it wrote, which must be one per event.
fn time(count: usize, work: impl FnOnce() -> usize) -> Duration {
    let started = Instant::now();
    let written = work();
    let elapsed = started.elapsed();
    assert_eq!(written, count, "one outcome line per event");
    elapsed
}

/// Both steps natively over `lines`, in batches; the outcome lines' count.
fn native(lines: &[String], configs: &[String; 2]) -> usize {
    let mut source = NativeRunner::<Source<MagentoSource>>::new(&configs[0]).unwrap();
    let mut portal = NativeRunner::<B2bPortal>::new(&configs[1]).unwrap();
    let mut out = Vec::new();
    for batch in lines.chunks(BATCH) {
        let events: Vec<Event> = batch.iter().map(|line| wit_event(line)).collect();
        for outcome in source.apply(events) {
            match outcome {
                Outcome::Emit(emitted) => {
                    out.extend_from_slice(br#"{"outcome":"emit","events":["#);
                    for result in portal.apply(emitted) {
                        let Outcome::Emit(events) = result else {
                            panic!("b2b-portal should emit");
                        };
                        for (n, event) in events.iter().enumerate() {
                            if n > 0 {
                                out.push(b',');
                            }
                            out.extend_from_slice(br#"{"id":"#);
                            serde_json::to_writer(&mut out, &event.id).unwrap();
                            out.extend_from_slice(br#","payload":"#);
                            out.extend_from_slice(event.payload.as_bytes());
                            out.push(b'}');
                        }
                    }
                    out.extend_from_slice(b"]}");
                }
                Outcome::Drop(reason) => {
                    serde_json::to_writer(&mut out, &json!({"outcome": "drop", "reason": reason})).unwrap()
                }
                Outcome::Reject(_) | Outcome::Partial(_) => panic!("magento-source should not reject"),
            }
            out.push(b'\n');
        }
    }
    std::hint::black_box(&out);
    out.iter().filter(|&&b| b == b'\n').count()
}

/// One input line, its payload left as text (as `sluice run` reads it).
#[derive(serde::Deserialize)]
struct Line<'a> {
    id: String,
    tenant: String,
    channel: String,
    source: String,
    #[serde(borrow)]
    payload: &'a RawValue,
}

fn wit_event(line: &str) -> Event {
    let line: Line = serde_json::from_str(line).unwrap();
    Event {
        correlation_id: line.id.clone(),
        id: line.id,
        kind: EventKind::Product,
        tenant: line.tenant,
        channel: line.channel,
        source: line.source,
        payload: line.payload.get().to_string(),
        topic: String::new(),
        headers: Vec::new(),
        delivery: None,
    }
}

/// `sluice run --jobs N` on the file; the outcome lines' count (none a fault).
fn sluice_run(input: &std::path::Path, pipeline: &std::path::Path, jobs: usize) -> usize {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--pipeline"])
        .arg(pipeline)
        .arg(input)
        .args(["--jobs", &jobs.to_string()])
        .env("CARGO_TARGET_DIR", root().join("target"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "sluice run failed");
    let lines = output.stdout.iter().filter(|&&b| b == b'\n').count();
    let faults = output
        .stdout
        .split(|&b| b == b'\n')
        .filter(|line| {
            line.starts_with(br#"{"outcome":"error""#) || line.starts_with(br#"{"outcome":"reject""#)
        })
        .count();
    assert_eq!(faults, 0, "no product should fail");
    lines
}
