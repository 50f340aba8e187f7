//! Shared by the load benchmarks: the release `sluice serve` as a child process.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_server::sink::Sink;

/// The admin token of every benchmarked server.
pub const TOKEN: &str = "bench-admin-token";

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running `sluice serve`, stopped with SIGTERM when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:port`.
    pub base: String,
}

impl Server {
    /// Writes `config` (plus the admin token and `dir/data` as data dir) and starts the server.
    /// Logs are at `warn` unless `SLUICE_LOG` says otherwise.
    pub fn start(dir: &Path, config: &str) -> Self {
        let path = dir.join("sluice.toml");
        let text = format!(
            "admin-token-sha256 = [\"{}\"]\ndata-dir = \"{}\"\n{config}",
            sluice_server::auth::hash_token(TOKEN),
            dir.join("data").display()
        );
        std::fs::write(&path, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "serve",
                "--config",
                path.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .env("CARGO_TARGET_DIR", root().join("target"))
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("sluice listening on ")
            .unwrap()
            .to_string();
        Self { child, base }
    }
}

impl Server {
    /// The process id, to read its CPU time.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// CPU seconds (user + system) a process has used so far, from `/proc`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line (11 and 12 after the name), in 1/100 s.
    (ticks(11) + ticks(12)) / 100.0
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The value at quantile `p` of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A number from the environment, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `Authorization` header value for `token`.
pub fn auth_header(token: &str) -> String {
    format!("Bearer {token}")
}

/// A lean keep-alive HTTP/1.1 client for load: one prepared request,
/// written with one syscall, and the answer read by its `Content-Length`.
/// It costs the shared machine far less CPU than a general client, so the
/// load generator takes less from the server it measures (as `wrk` would).
pub struct RawClient {
    stream: std::net::TcpStream,
    request: Vec<u8>,
    buffer: Vec<u8>,
}

impl RawClient {
    /// Connects to `base` (`http://host:port`) to POST `body` to `path` with `token`.
    pub fn new(base: &str, path: &str, token: &str, body: &str) -> Self {
        let address = base.strip_prefix("http://").expect("an http:// base");
        let stream = std::net::TcpStream::connect(address).expect("connect");
        stream.set_nodelay(true).unwrap();
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        Self {
            stream,
            request,
            buffer: Vec::with_capacity(64 * 1024),
        }
    }

    /// Sends the request once and returns the status and the body.
    pub fn send(&mut self) -> (u16, &[u8]) {
        use std::io::{Read, Write};
        self.stream.write_all(&self.request).expect("write the request");
        self.buffer.clear();
        let mut chunk = [0u8; 16 * 1024];
        let head_end = loop {
            let read = self.stream.read(&mut chunk).expect("read the answer");
            assert!(read > 0, "the server closed the connection");
            self.buffer.extend_from_slice(&chunk[..read]);
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = std::str::from_utf8(&self.buffer[..head_end]).expect("an ASCII head");
        let status: u16 = head[9..12].parse().expect("a status code");
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().expect("a length"))
            })
            .expect("a Content-Length");
        while self.buffer.len() < head_end + length {
            let read = self.stream.read(&mut chunk).expect("read the body");
            assert!(read > 0, "the server closed the connection");
            self.buffer.extend_from_slice(&chunk[..read]);
        }
        (status, &self.buffer[head_end..head_end + length])
    }
}

/// Ingest-to-delivered throughput and latency.
pub struct IngestResult {
    /// Events per second from the first ingest to the last delivery.
    pub rate: f64,
    /// Median ingest-to-delivered time.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

/// Ingests `total` copies of `event` (distinct ids and SKUs), client `i`
/// through `bases[i % len]`, and waits until the sink has them all.
pub fn ingest_to_delivery(
    bases: &[String],
    event: &serde_json::Value,
    sink: &Sink,
    clients: usize,
    total: usize,
) -> IngestResult {
    const BATCH: usize = 100;
    let batches: Vec<(usize, String)> = (0..total / BATCH)
        .map(|batch| {
            let body: String = (0..BATCH)
                .map(|i| {
                    let n = batch * BATCH + i;
                    let mut event = event.clone();
                    event["id"] = format!("load-{n}").into();
                    event["payload"]["sku"] = format!("MS-Champ-{n}").into();
                    format!("{event}\n")
                })
                .collect();
            (batch, body)
        })
        .collect();
    let batches = Arc::new(std::sync::Mutex::new(batches));
    let started = Instant::now();
    let posters: Vec<_> = (0..clients)
        .map(|client| {
            let url = format!("{}/v1/events", bases[client % bases.len()]);
            let batches = batches.clone();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().build();
                let mut sent_at = Vec::new();
                loop {
                    let Some((batch, body)) = batches.lock().unwrap().pop() else {
                        return sent_at;
                    };
                    let at = Instant::now();
                    let response = agent
                        .post(&url)
                        .set("authorization", &format!("Bearer {TOKEN}"))
                        .send_string(&body)
                        .expect("ingest succeeds");
                    assert_eq!(response.status(), 202);
                    sent_at.push((batch, at));
                }
            })
        })
        .collect();
    let sent_at: HashMap<usize, Instant> = posters.into_iter().flat_map(|p| p.join().unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    // Counted without copying: copying the sink's log every 20 ms took a
    // third of the machine from the server it measures.
    while sink.count() < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} delivered",
            sink.count()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let received = sink.received();
    let last = received.iter().map(|r| r.at).max().unwrap();
    let mut latencies: Vec<Duration> = received
        .iter()
        .map(|r| {
            let id = r.header("x-sluice-source-event-id").unwrap();
            let n: usize = id.trim_start_matches("load-").parse().unwrap();
            r.at - sent_at[&(n / BATCH)]
        })
        .collect();
    latencies.sort();
    IngestResult {
        rate: total as f64 / (last - started).as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    }
}

/// Events per second of the `b2b-portal-from-magento` channel's two steps
/// (magento-source, then b2b-portal) run natively in process on one
/// thread for 2 s, on the event in `event` (its fixture's `input.json`).
pub fn native_magento_to_portal(channel: &Path, event: &str) -> f64 {
    use b2b_portal::B2bPortal;
    use magento_source::MagentoSource;
    use sluice_guest::native::NativeRunner;
    use sluice_guest::source::Source;

    let pipeline_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(channel.join("pipeline.json")).unwrap()).unwrap();
    let mut source =
        NativeRunner::<Source<MagentoSource>>::new(&pipeline_json["steps"][0]["config"].to_string()).unwrap();
    let mut portal =
        NativeRunner::<B2bPortal>::new(&pipeline_json["steps"][1]["config"].to_string()).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(event).unwrap();
    let wit_event = sluice_guest::Event {
        id: parsed["id"].as_str().unwrap().into(),
        kind: sluice_guest::EventKind::Product,
        tenant: "acme".into(),
        channel: "b2b-portal".into(),
        source: "magento".into(),
        correlation_id: "c".into(),
        payload: parsed["payload"].to_string(),
        topic: String::new(),
        headers: Vec::new(),
        delivery: None,
    };
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        let sluice_guest::Outcome::Emit(events) = source.apply(vec![wit_event.clone()]).remove(0) else {
            panic!("magento-source should emit");
        };
        let out = portal.apply(events);
        assert!(matches!(out[0], sluice_guest::Outcome::Emit(_)));
        count += 1;
    }
    count as f64 / started.elapsed().as_secs_f64()
}
