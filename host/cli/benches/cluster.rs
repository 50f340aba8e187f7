//! Ingest to delivered on one SQLite sidecar and on NATS JetStream with 1,
//! 2 and 3 sidecars, side by side in one run: the `b2b-portal-from-magento`
//! channel, real Magento products in JSONL batches of 100, clients spread
//! over the nodes, a local HTTP sink. Reports events/s, p50/p99 of
//! ingest-to-delivered, and CPU per event (every sidecar and nats-server
//! together, from `/proc`).
//!
//! Run with `scripts/dev bench`, which installs nats-server and names it in
//! `SLUICE_NATS_SERVER`. `SLUICE_CLUSTER_EVENTS` (default 10,000) and
//! `SLUICE_LOAD_CLIENTS` (default 4) change the load.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sluice_server::sink::{Reply, Sink};
use support::{Server, cpu_seconds, env_number, ingest_to_delivery, root};

mod support;

/// nats-server with JetStream on file storage: written to the kernel on
/// every write, fsynced every 2 min (its default; survives `kill -9`), or
/// fsynced on every write (`sync_interval: always`; survives a power cut).
struct Nats {
    child: Child,
    url: String,
}

impl Nats {
    fn start(dir: &std::path::Path, fsync_always: bool) -> Self {
        let binary = std::env::var("SLUICE_NATS_SERVER")
            .expect("run through `scripts/dev bench`, which installs nats-server");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\nmax_payload: 8MB\njetstream {{ store_dir: \"{}\" {} }}\n",
            dir.join("jetstream").display(),
            if fsync_always {
                ", sync_interval: always"
            } else {
                ""
            },
        );
        std::fs::write(dir.join("nats.conf"), config).unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(dir.join("nats.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    let total = env_number("SLUICE_CLUSTER_EVENTS", 10_000) as usize;
    let clients = env_number("SLUICE_LOAD_CLIENTS", 4) as usize;
    let channel = root().join("transforms/channels/b2b-portal-from-magento");
    let event: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(channel.join("fixtures/simple-product/input.json")).unwrap(),
    )
    .unwrap();
    println!(
        "ingest to delivered: {total} Magento products in JSONL batches of 100 by {clients} clients spread over the nodes"
    );
    let mut baseline = None;
    // `SLUICE_CLUSTER_ONLY=N` runs only the setups with N nodes (for profiling).
    let only = std::env::var("SLUICE_CLUSTER_ONLY")
        .ok()
        .and_then(|n| n.parse::<usize>().ok());
    let setups = [
        ("SQLite, 1 node", 0, false),
        ("JetStream, 1 node", 1, false),
        ("JetStream, 2 nodes", 2, false),
        ("JetStream, 3 nodes", 3, false),
        ("JetStream, 3 nodes, fsync always", 3, true),
    ];
    for (label, nodes, fsync_always) in setups
        .into_iter()
        .filter(|(_, n, _)| only.is_none_or(|only| only == *n))
    {
        let dir = tempfile::tempdir().unwrap();
        let nats = (nodes > 0).then(|| Nats::start(dir.path(), fsync_always));
        let sink = Sink::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(|_, _| Reply::status(200)),
        )
        .unwrap();
        let config = format!(
            "{queue}[[tenant]]\nname = \"acme\"\ntransform-concurrency = 2\n\
             [[destination]]\nname = \"sink\"\nurl = \"http://{}/in\"\nconcurrency = 32\n\
             [[channel]]\nname = \"b2b-portal\"\ntenant = \"acme\"\npipeline = \"{}\"\ndestination = \"sink\"\n",
            sink.addr,
            channel.join("pipeline.json").display(),
            queue = nats
                .as_ref()
                .map_or(String::new(), |n| format!("queue = \"{}\"\n", n.url)),
        );
        let servers: Vec<Server> = (0..nodes.max(1))
            .map(|node| {
                let folder = dir.path().join(format!("node{node}"));
                std::fs::create_dir_all(&folder).unwrap();
                Server::start(&folder, &config)
            })
            .collect();
        let sidecars: Vec<u32> = servers.iter().map(Server::pid).collect();
        let nats_pid: Vec<u32> = nats.as_ref().map(|n| n.child.id()).into_iter().collect();
        let cpu = |pids: &[u32]| pids.iter().map(|&pid| cpu_seconds(pid)).sum::<f64>();
        let before = (cpu(&sidecars), cpu(&nats_pid));
        let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
        let result = ingest_to_delivery(&bases, &event, &sink, clients, total);
        let per_event = |now: f64, then: f64| (now - then) / total as f64 * 1e6;
        let (sidecar_cpu, nats_cpu) = (
            per_event(cpu(&sidecars), before.0),
            per_event(cpu(&nats_pid), before.1),
        );
        let base_rate = *baseline.get_or_insert(result.rate);
        println!(
            "  {label:<33} {:>7.0} events/s ({:.2}x SQLite)   p50 {:>9.1?}   p99 {:>9.1?}   CPU {:>5.0} µs/event (sidecars {:.0}, nats-server {:.0})",
            result.rate,
            result.rate / base_rate,
            result.p50,
            result.p99,
            sidecar_cpu + nats_cpu,
            sidecar_cpu,
            nats_cpu,
        );
    }
}
