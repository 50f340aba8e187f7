//! Fairness between tenants on one sidecar: tenant `quiet` sends one
//! product at a time, synchronously and through durable ingest, first
//! alone and then while tenant `flood` floods ingest with JSONL batches and
//! sync requests on its own channel. Reports the quiet tenant's latencies
//! in both phases and their ratio. Both tenants run the same
//! `magento-source` → `b2b-portal` pipeline; each has
//! `transform-concurrency = 1`. Runs twice: with no limit on the flooding
//! tenant, and with `ingest-rate = "2000/s"` on it.
//!
//! Run with `cargo bench -p sluice-cli --bench fairness` (part of
//! `scripts/dev bench`); `SLUICE_FAIRNESS_SECONDS` sets each phase's length (10 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice_server::sink::{Reply, Sink};
use support::{Server, TOKEN, auth_header, env_number, percentile, root};

mod support;

struct Phase {
    sync: Vec<Duration>,
    delivered: Vec<Duration>,
}

fn main() {
    let seconds = env_number("SLUICE_FAIRNESS_SECONDS", 10);
    let channel = root().join("transforms/channels/b2b-portal-from-magento");
    let event: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(channel.join("fixtures/simple-product/input.json")).unwrap(),
    )
    .unwrap();
    let sink = Arc::new(
        Sink::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(|_, _| Reply::status(200)),
        )
        .unwrap(),
    );
    for flood_rate in [None, Some("2000/s")] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::new();
        if let Some(rate) = flood_rate {
            config.push_str(&format!(
                "[[tenant]]\nname = \"flood\"\ningest-rate = \"{rate}\"\n"
            ));
        }
        for tenant in ["quiet", "flood"] {
            config.push_str(&format!(
                "[[destination]]\nname = \"{tenant}\"\nurl = \"http://{}/{tenant}\"\nconcurrency = 16\n\
                 [[channel]]\nname = \"{tenant}\"\ntenant = \"{tenant}\"\npipeline = \"{}\"\ndestination = \"{tenant}\"\n",
                sink.addr,
                channel.join("pipeline.json").display()
            ));
        }
        let server = Server::start(dir.path(), &config);
        let delivered_before = sink.count_where(|r| r.path == "/flood");

        let alone = quiet_phase(&server.base, &event, &sink, seconds, "alone");
        let flooding = Arc::new(AtomicBool::new(true));
        let flooders: Vec<_> = (0..3)
            .map(|client| {
                let (base, event, flooding) = (server.base.clone(), event.clone(), flooding.clone());
                std::thread::spawn(move || flood(&base, &event, &flooding, client))
            })
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        let loaded = quiet_phase(&server.base, &event, &sink, seconds, "loaded");
        flooding.store(false, Ordering::Release);
        let flood_sent: usize = flooders.into_iter().map(|f| f.join().unwrap()).sum();

        let limit = flood_rate.map_or("no ingest-rate".to_string(), |r| format!("ingest-rate = \"{r}\""));
        println!(
            "fairness: tenant `quiet` alone, then while tenant `flood` ({limit}) floods: {flood_sent} events and requests sent in {seconds} s"
        );
        for (what, pick) in [("sync transform", 0), ("ingest to delivered", 1)] {
            let stats = |phase: &Phase| {
                let mut sorted = if pick == 0 {
                    phase.sync.clone()
                } else {
                    phase.delivered.clone()
                };
                sorted.sort();
                (percentile(&sorted, 0.5), percentile(&sorted, 0.99))
            };
            let (a50, a99) = stats(&alone);
            let (l50, l99) = stats(&loaded);
            println!(
                "  {what:<20} alone p50 {a50:>10.2?} p99 {a99:>10.2?}   flooded p50 {l50:>10.2?} p99 {l99:>10.2?}   ratio p50 {:.1}x p99 {:.1}x",
                l50.as_secs_f64() / a50.as_secs_f64(),
                l99.as_secs_f64() / a99.as_secs_f64()
            );
        }
        let flood_delivered = sink.count_where(|r| r.path == "/flood") - delivered_before;
        println!("  flood events delivered meanwhile: {flood_delivered}");
    }
}

/// The quiet tenant for `seconds`: one sync request, then one ingested event
/// waited for until the sink has it, every 50 ms.
fn quiet_phase(base: &str, event: &serde_json::Value, sink: &Sink, seconds: u64, phase: &str) -> Phase {
    let agent = ureq::AgentBuilder::new().build();
    let auth = auth_header(TOKEN);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut result = Phase {
        sync: Vec::new(),
        delivered: Vec::new(),
    };
    let mut n = 0;
    while Instant::now() < deadline {
        let mut quiet = event.clone();
        quiet["tenant"] = "quiet".into();
        quiet["id"] = format!("quiet-{phase}-{n}").into();
        quiet["payload"]["sku"] = format!("Q-{phase}-{n}").into();
        n += 1;
        let sent = Instant::now();
        agent
            .post(&format!("{base}/v1/channels/quiet/transform"))
            .set("authorization", &auth)
            .send_string(&quiet.to_string())
            .unwrap();
        result.sync.push(sent.elapsed());

        let quiet_delivered = || sink.count_where(|r| r.path == "/quiet");
        let before = quiet_delivered();
        let sent = Instant::now();
        agent
            .post(&format!("{base}/v1/events"))
            .set("authorization", &auth)
            .send_string(&quiet.to_string())
            .unwrap();
        while quiet_delivered() == before {
            std::thread::sleep(Duration::from_micros(200));
        }
        result.delivered.push(sent.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    result
}

/// Floods tenant `flood`: JSONL batches of 100 (and, for client 0, sync
/// requests) until told to stop; returns how many events it sent.
fn flood(base: &str, event: &serde_json::Value, flooding: &AtomicBool, client: usize) -> usize {
    let agent = ureq::AgentBuilder::new().build();
    let auth = auth_header(TOKEN);
    let mut sent = 0;
    let mut n = 0;
    while flooding.load(Ordering::Acquire) {
        if client == 0 {
            let mut one = event.clone();
            one["tenant"] = "flood".into();
            let _ = agent
                .post(&format!("{base}/v1/channels/flood/transform"))
                .set("authorization", &auth)
                .send_string(&one.to_string());
            sent += 1;
            continue;
        }
        let body: String = (0..100)
            .map(|_| {
                n += 1;
                let mut one = event.clone();
                one["tenant"] = "flood".into();
                one["id"] = format!("flood-{client}-{n}").into();
                one["payload"]["sku"] = format!("F-{client}-{n}").into();
                format!("{one}\n")
            })
            .collect();
        let _ = agent
            .post(&format!("{base}/v1/events"))
            .set("authorization", &auth)
            .send_string(&body);
        sent += 100;
    }
    sent
}
