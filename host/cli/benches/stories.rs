//! What keeping every event's story and trace costs, end to end against
//! the real sidecar: `sluice serve` (release build) on 127.0.0.1 with the
//! `b2b-portal-from-magento` channel (one real Magento product per event),
//! ingest → committed → transformed → delivered to a local HTTP sink, side
//! by side in one run:
//!
//! 1. stories off (`[stories] enabled = false`), no telemetry;
//! 2. stories on (the default): every accept, transform, queued delivery
//!    and attempt with its request and response kept in SQLite;
//! 3. stories on and traces exported over OTLP to a local receiver.
//!
//! Each runs `SLUICE_STORY_ROUNDS` (3) times, alternating, on a fresh data
//! dir; the best of each is compared (the machines are shared and noisy),
//! and all against the same two steps run natively in process.
//!
//! Run with `cargo bench -p sluice-cli --bench stories`
//! (`SLUICE_STORY_VARIANT=1` runs only the second, to profile it).
//! `SLUICE_LOAD_CLIENTS` and `SLUICE_LOAD_EVENTS` change the defaults
//! (4 clients, 20,000 events).

use std::sync::Arc;

use sluice_server::sink::{Reply, Sink};
use support::{IngestResult, Server, env_number, ingest_to_delivery, native_magento_to_portal, root};

mod support;

/// One configuration of the comparison.
struct Variant {
    name: &'static str,
    stories: bool,
    traces: bool,
}

fn main() {
    let clients = env_number("SLUICE_LOAD_CLIENTS", 4) as usize;
    let total = env_number("SLUICE_LOAD_EVENTS", 20_000) as usize;
    let rounds = env_number("SLUICE_STORY_ROUNDS", 3);
    let channel = root().join("transforms/channels/b2b-portal-from-magento");
    let event = std::fs::read_to_string(channel.join("fixtures/simple-product/input.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&event).unwrap();
    let native = native_magento_to_portal(&channel, &event);

    let otlp = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| Reply::status(200)),
    )
    .unwrap();
    let variants = [
        Variant {
            name: "stories off, no traces",
            stories: false,
            traces: false,
        },
        Variant {
            name: "stories on (default)",
            stories: true,
            traces: false,
        },
        Variant {
            name: "stories on, traces over OTLP",
            stories: true,
            traces: true,
        },
    ];
    let mut best: Vec<Option<IngestResult>> = variants.iter().map(|_| None).collect();
    println!(
        "ingest to delivery: {total} events in JSONL batches of 100 by {clients} clients, {rounds} rounds"
    );
    for round in 0..rounds {
        for (index, variant) in variants.iter().enumerate() {
            // `SLUICE_STORY_VARIANT=N` runs only the Nth (to profile one).
            if std::env::var("SLUICE_STORY_VARIANT").is_ok_and(|only| only != index.to_string()) {
                continue;
            }
            let sink = Sink::start(
                "127.0.0.1:0".parse().unwrap(),
                Arc::new(|_, _| Reply::status(200)),
            )
            .unwrap();
            let config = format!(
                "[stories]\nenabled = {}\n{}\
                 [[tenant]]\nname = \"acme\"\ntransform-concurrency = 2\n\
                 [[destination]]\nname = \"sink\"\nurl = \"http://{}/in\"\nconcurrency = 32\n\
                 [[channel]]\nname = \"b2b-portal\"\ntenant = \"acme\"\npipeline = \"{}\"\ndestination = \"sink\"\n",
                variant.stories,
                if variant.traces {
                    format!("[telemetry]\notlp-endpoint = \"http://{}\"\n", otlp.addr)
                } else {
                    String::new()
                },
                sink.addr,
                channel.join("pipeline.json").display(),
            );
            let dir = tempfile::tempdir().unwrap();
            let server = Server::start(dir.path(), &config);
            let result =
                ingest_to_delivery(std::slice::from_ref(&server.base), &parsed, &sink, clients, total);
            drop(server);
            println!(
                "  round {round}: {:<30} {:>8.0} events/s   p50 {:?}   p99 {:?}",
                variant.name, result.rate, result.p50, result.p99
            );
            if best[index].as_ref().is_none_or(|b| result.rate > b.rate) {
                best[index] = Some(result);
            }
        }
    }
    if best.iter().any(Option::is_none) {
        return;
    }
    let best: Vec<IngestResult> = best.into_iter().map(Option::unwrap).collect();
    let off = best[0].rate;
    println!("best of {rounds}:");
    for (variant, result) in variants.iter().zip(&best) {
        println!(
            "  {:<30} {:>8.0} events/s   {:.2}x of stories off   {:.2}x of native ({native:.0} events/s)",
            variant.name,
            result.rate,
            result.rate / off,
            result.rate / native
        );
    }
    println!("  spans the OTLP receiver got: {} exports", otlp.count());
}
