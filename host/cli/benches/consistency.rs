//! Time to consistency under a rate limit (the consistency issue's item
//! 5): N SKUs × M stock updates each, in one burst (interleaved, as a mass
//! update fires them), through a real sidecar on SQLite to a destination
//! on loopback limited to 10 requests a second. Side by side in one run,
//! with and without `coalesce` and `skip-unchanged`: the time until the
//! destination holds every SKU's final state, and the requests spent.
//! Then every final state is sent again, unchanged, and the extra requests
//! are counted.
//!
//! Run with `cargo bench -p sluice-cli --bench consistency` (part of
//! `scripts/dev bench`). The rate limit, not the CPU, sets the pace, so a
//! debug build measures the same: `cargo bench --profile dev …`.
//! `SLUICE_CONSISTENCY_LARGE=0` skips the 500-SKU run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_server::sink::{Received, Reply, Sink};
use support::{Server, TOKEN, auth_header, env_number};

mod support;

/// Requests a second the destination allows.
const RATE: u32 = 10;
/// Events per ingest request of the burst.
const PER_REQUEST: usize = 100;

fn main() {
    let mut runs = vec![(50, 20, false), (50, 20, true)];
    if env_number("SLUICE_CONSISTENCY_LARGE", 1) == 1 {
        runs.push((500, 20, true));
    }
    println!("consistency: N SKUs x M stock updates in one burst to a destination limited to {RATE}/s");
    println!(
        "  {:<28} {:>10} {:>12} {:>10} {:>12} {:>18}",
        "run", "updates", "consistent", "requests", "stale left", "unchanged resent"
    );
    for (skus, updates, latest) in runs {
        let result = run(skus, updates, latest);
        let name = format!(
            "{skus} x {updates}, {}",
            if latest {
                "coalesce + skip-unchanged"
            } else {
                "every update"
            }
        );
        println!(
            "  {name:<28} {:>10} {:>11.1}s {:>10} {:>12} {:>11} requests",
            skus * updates as usize,
            result.consistent.as_secs_f64(),
            result.requests,
            result.stale,
            result.resent_requests
        );
    }
    println!("  (the floor: N SKUs at {RATE}/s, that is N/{RATE} s and N requests)");
}

struct RunResult {
    consistent: Duration,
    requests: usize,
    stale: usize,
    resent_requests: usize,
}

fn run(skus: usize, updates: u32, latest: bool) -> RunResult {
    let sink = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| Reply::status(200)),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[limits]
timeout-ms = 10000

[[destination]]
name = "portal"
url = "http://{addr}/stock"
rate-limit = "{RATE}/s"
concurrency = 8
coalesce = {latest}
skip-unchanged = {latest}

[[channel]]
name = "stock"
tenant = "acme"
destination = "portal"
[[channel.step]]
module = "json-mapping"
config = {{ rules = [ {{ target = "sku", source = "$.sku" }}, {{ target = "qty", source = "$.qty" }} ] }}
"#,
        addr = sink.addr
    );
    let server = Server::start(dir.path(), &config);
    let event = |id: String, sku: usize, qty: u32| {
        serde_json::json!({"id": id, "kind": "inventory", "tenant": "acme",
            "payload": {"sku": format!("SKU-{sku}"), "qty": qty}})
        .to_string()
    };
    let mut burst = Vec::new();
    for qty in 1..=updates {
        for sku in 0..skus {
            burst.push(event(format!("u-{sku}-{qty}"), sku, qty));
        }
    }
    let wanted: BTreeMap<String, u64> = (0..skus).map(|s| (format!("SKU-{s}"), updates as u64)).collect();
    let started = Instant::now();
    for chunk in burst.chunks(PER_REQUEST) {
        post(&server, &chunk.join("\n"));
    }
    let consistent = loop {
        if state(&sink.received()) == wanted {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(900), "never consistent");
        std::thread::sleep(Duration::from_millis(20));
    };
    let requests = sink.count();
    // Nothing later may take a SKU back to an older state.
    std::thread::sleep(Duration::from_secs(2));
    let stale = state(&sink.received())
        .iter()
        .filter(|(sku, qty)| wanted.get(*sku) != Some(qty))
        .count();

    // The final states again, under new ids, and as long again to settle.
    let before = sink.count();
    let again: Vec<String> = (0..skus)
        .map(|sku| event(format!("again-{sku}"), sku, updates))
        .collect();
    for chunk in again.chunks(PER_REQUEST) {
        post(&server, &chunk.join("\n"));
    }
    let settle = Instant::now() + Duration::from_secs(5) + Duration::from_secs_f64(skus as f64 / RATE as f64);
    while Instant::now() < settle && sink.count() < before + skus {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !latest {
        // Every one is sent: wait for all of them.
        while sink.count() < before + skus {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    RunResult {
        consistent,
        requests,
        stale,
        resent_requests: sink.count() - before,
    }
}

fn post(server: &Server, body: &str) {
    let answer = ureq::post(&format!("{}/v1/events", server.base))
        .set("authorization", &auth_header(TOKEN))
        .send_string(body)
        .unwrap();
    assert_eq!(answer.status(), 202);
}

/// Each SKU's last accepted quantity at the destination.
fn state(received: &[Received]) -> BTreeMap<String, u64> {
    let mut state = BTreeMap::new();
    for request in received {
        let body = request.json();
        if let (Some(sku), Some(qty)) = (body["sku"].as_str(), body["qty"].as_u64()) {
            state.insert(sku.to_string(), qty);
        }
    }
    state
}
