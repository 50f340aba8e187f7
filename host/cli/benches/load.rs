//! Load against the real sidecar: `sluice serve` (release build) on
//! 127.0.0.1 with the `b2b-portal-from-magento` channel, one real Magento
//! product per event, compared with the same two-step pipeline run
//! natively in-process on one thread.
//!
//! 1. Sync path: keep-alive HTTP clients on `/v1/channels/…/transform` for
//!    a fixed time; throughput and p50/p99 latency per request, with small
//!    batches run inline first (the default) and with every batch sent to a
//!    blocking thread (`inline-batch-events = 0`), side by side.
//! 2. Durable path: clients ingest JSONL batches into `/v1/events`; the
//!    sidecar commits, transforms and delivers to a local sink over HTTP;
//!    throughput from the first ingest to the last delivery, and p50/p99
//!    of ingest-to-delivered per event.
//!
//! Run with `scripts/dev bench` (or `cargo bench -p sluice-cli --bench load`).
//! `SLUICE_LOAD_SECONDS`, `SLUICE_LOAD_CLIENTS` and `SLUICE_LOAD_EVENTS`
//! change the defaults (10 s, 4 clients, 20,000 events).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_server::sink::{Reply, Sink};
use support::{
    RawClient, Server, TOKEN, env_number, ingest_to_delivery, native_magento_to_portal, percentile, root,
};

mod support;

fn main() {
    let seconds = env_number("SLUICE_LOAD_SECONDS", 10);
    let clients = env_number("SLUICE_LOAD_CLIENTS", 4) as usize;
    let root = root();
    let channel = root.join("transforms/channels/b2b-portal-from-magento");
    let event = std::fs::read_to_string(channel.join("fixtures/simple-product/input.json")).unwrap();

    // Native baseline: the same two steps, in process, one thread.
    let native_rate = native_magento_to_portal(&channel, &event);
    let parsed: serde_json::Value = serde_json::from_str(&event).unwrap();

    // The real sidecar, delivering to a local sink.
    let sink = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| Reply::status(200)),
    )
    .unwrap();
    let config = |inline_batch_events: usize| {
        format!(
            "inline-batch-events = {inline_batch_events}\n\
             [[tenant]]\nname = \"acme\"\ntransform-concurrency = {concurrency}\n\
             [[destination]]\nname = \"sink\"\nurl = \"http://{}/in\"\nconcurrency = 32\n\
             [[channel]]\nname = \"b2b-portal\"\ntenant = \"acme\"\npipeline = \"{}\"\ndestination = \"sink\"\n",
            sink.addr,
            channel.join("pipeline.json").display(),
            concurrency = env_number("SLUICE_LOAD_TRANSFORM_CONCURRENCY", 2),
        )
    };
    println!(
        "sync transform load: {clients} keep-alive clients for {seconds} s, one Magento product per request"
    );
    // Side by side: every batch on a blocking thread, then small batches inline first.
    let blocking_dir = tempfile::tempdir().unwrap();
    let blocking = Server::start(blocking_dir.path(), &config(0));
    let (blocking_rate, blocking_p50, blocking_p99) = sync_load(&blocking.base, &event, clients, seconds);
    drop(blocking);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(16));
    let base = server.base.clone();
    let (rate, p50, p99) = sync_load(&base, &event, clients, seconds);
    println!(
        "  sidecar:  {:>9.0} req/s   p50 {:?}   p99 {:?}   (inline-batch-events = 16, the default)",
        rate, p50, p99
    );
    println!(
        "  sidecar:  {:>9.0} req/s   p50 {:?}   p99 {:?}   (inline-batch-events = 0: every batch on a blocking thread)",
        blocking_rate, blocking_p50, blocking_p99
    );
    println!(
        "  native:   {:>9.0} events/s (magento-source + b2b-portal in process, one thread)",
        native_rate
    );
    println!(
        "  ratio:    {:.2}x of native ({:.2}x with every batch on a blocking thread)",
        rate / native_rate,
        blocking_rate / native_rate
    );

    let total = env_number("SLUICE_LOAD_EVENTS", 20_000) as usize;
    let ingest = ingest_to_delivery(std::slice::from_ref(&base), &parsed, &sink, clients, total);
    drop(server);
    println!(
        "ingest to delivery: {total} events in JSONL batches of 100 by {clients} clients, delivered to a local HTTP sink"
    );
    println!(
        "  sidecar:  {:>9.0} events/s   ingest-to-delivered p50 {:?}   p99 {:?}",
        ingest.rate, ingest.p50, ingest.p99
    );
    println!("  ratio:    {:.2}x of native", ingest.rate / native_rate);
}

/// Keep-alive clients sending one product per request for `seconds`:
/// requests per second, p50 and p99.
fn sync_load(base: &str, event: &str, clients: usize, seconds: u64) -> (f64, Duration, Duration) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (base, event) = (base.to_string(), event.to_string());
            std::thread::spawn(move || {
                let mut client = RawClient::new(&base, "/v1/channels/b2b-portal/transform", TOKEN, &event);
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let (status, body) = client.send();
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(body));
                    assert!(
                        body.starts_with(br#"{"outcome":"emit""#),
                        "{}",
                        String::from_utf8_lossy(body)
                    );
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    (
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
    )
}
