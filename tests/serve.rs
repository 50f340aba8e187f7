//! `sluice serve` as a real child process on 127.0.0.1: the synchronous
//! transform path, its errors, health, metrics and graceful shutdown.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::sidecar::{ADMIN_TOKEN, Sidecar, raw_request};
use crate::support::workspace;
use serde_json::{Value, json};

/// Starts `sluice serve` on a free port with this config text.
fn start(config: &str) -> (Sidecar, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Sidecar::start(dir.path(), config), dir)
}

const CONFIG: &str = r#"
max-body-bytes = 65536

[limits]
timeout-ms = 10000

[[channel]]
name = "b2b-portal"
tenant = "acme"
pipeline = "{channels}/b2b-portal-from-magento/pipeline.json"
"#;

fn magento_event(case: &str) -> Value {
    let path = workspace().join(format!(
        "transforms/channels/b2b-portal-from-magento/fixtures/{case}/input.json"
    ));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// POSTs `body` and returns the status and the JSON answer, whatever the status.
fn post(url: &str, body: &str) -> (u16, Value) {
    let response = match ureq::post(url)
        .set("content-type", "application/json")
        .set("authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .send_string(body)
    {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(err) => panic!("{url}: {err}"),
    };
    let status = response.status();
    (status, response.into_json().unwrap())
}

#[test]
fn sync_transform_round_trip_and_errors() {
    let (sidecar, _dir) = start(CONFIG);
    let url = format!("{}/v1/channels/b2b-portal/transform", sidecar.base);

    // One event in, one outcome out: the real Magento product as a listing.
    let (status, outcome) = post(&url, &magento_event("simple-product").to_string());
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["outcome"], "emit");
    assert_eq!(outcome["events"][0]["payload"]["weight_kg"], "0.227");
    assert_eq!(
        outcome["events"][0]["channel"], "test",
        "an event's own channel is kept"
    );

    // A rejection carries the JSON path; strict mode turns it into a 422.
    let rejected = magento_event("missing-weight-is-rejected");
    let (status, outcome) = post(&url, &rejected.to_string());
    assert_eq!(status, 200);
    assert_eq!(outcome["outcome"], "reject");
    assert_eq!(outcome["violations"][0]["path"], "$['weight']");
    let (status, body) = post(&format!("{url}?strict=true"), &rejected.to_string());
    assert_eq!(status, 422);
    assert_eq!(body["code"], "rejected");
    assert_eq!(body["outcomes"]["violations"][0]["path"], "$['weight']");

    // An array in, an array out, in order; events without tenant get the channel's.
    let mut no_tenant = magento_event("configurable-parent-is-dropped");
    no_tenant.as_object_mut().unwrap().remove("tenant");
    let batch = json!([magento_event("simple-product"), no_tenant]);
    let (status, outcomes) = post(&url, &batch.to_string());
    assert_eq!(status, 200);
    assert_eq!(outcomes[0]["outcome"], "emit");
    assert_eq!(outcomes[1]["outcome"], "drop");

    // Malformed JSON, an invalid event, an unknown channel, a huge body.
    let (status, body) = post(&url, "{\"id\": ");
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid-json")),
        "{body}"
    );
    let (status, body) = post(&url, r#"[{"id": "e1", "payload": {}}]"#);
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid-event")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("missing field `kind`"),
        "{body}"
    );
    assert_eq!(body["path"], "$[0]");
    let (status, body) = post(&format!("{}/v1/channels/nope/transform", sidecar.base), "{}");
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown-channel")),
        "{body}"
    );
    // A body over the limit is refused from its Content-Length, before it is sent or buffered.
    let answer = raw_request(
        &sidecar.base,
        &format!(
            "POST /v1/channels/b2b-portal/transform HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Length: 100000000\r\n\r\n"
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":\"payload-too-large\""), "{answer}");

    // Health, readiness and metrics.
    assert_eq!(
        ureq::get(&format!("{}/healthz", sidecar.base))
            .call()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        ureq::get(&format!("{}/readyz", sidecar.base))
            .call()
            .unwrap()
            .status(),
        200
    );
    let metrics = ureq::get(&format!("{}/metrics", sidecar.base))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains(r#"sluice_sync_requests_total{channel="b2b-portal",status="200"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_sync_requests_total{channel="(unknown)",status="404"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"sluice_events_transformed_total{channel="b2b-portal",outcome="reject",path="sync"} 2"#
        ),
        "{metrics}"
    );
}

#[test]
fn sigterm_stops_the_sidecar_cleanly() {
    let (mut sidecar, _dir) = start(CONFIG);
    let status = sidecar.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_config_with_an_unknown_key_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\nmax-body = 5\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown field `max-body`"), "{stderr}");
    assert!(
        stderr.contains(Path::new("sluice.toml").to_str().unwrap()),
        "{stderr}"
    );
}

/// A config whose `hostile` channel runs the hostile test guest, delivering
/// ingested events to `sink` (or nowhere).
fn hostile_config(extra: &str, sink: Option<std::net::SocketAddr>) -> String {
    let module = crate::support::guest("hostile");
    let destination = match sink {
        Some(addr) => format!(
            "destination = \"out\"\n\n[[destination]]\nname = \"out\"\nurl = \"http://{addr}/in\"\nentity-key = \"$.id\"\n"
        ),
        None => String::new(),
    };
    format!(
        r#"{extra}
[limits]
timeout-ms = 300

[[channel]]
name = "hostile"
tenant = "acme"
{destination}
[[channel.step]]
module = "{}"
"#,
        module.display()
    )
}

fn attack(id: &str, attack: &str) -> Value {
    json!({"id": id, "kind": "product", "payload": {"attack": attack}})
}

#[test]
fn a_looping_guest_leaves_the_async_workers_and_runs_out_its_deadline_on_a_blocking_thread() {
    let (sidecar, _dir) = start(&hostile_config("", None));
    let send = |id: &str, name: &str| {
        let (status, body) = sidecar.post("/v1/channels/hostile/transform", &attack(id, name).to_string());
        assert_eq!(status, 200, "{body}");
        body
    };
    let runs = |placement: &str| {
        let metrics = sidecar.metrics();
        let prefix = format!(r#"sluice_pipeline_runs_total{{channel="hostile",placement="{placement}"}} "#);
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map_or(0, |count| count.parse::<u64>().unwrap())
    };
    assert_eq!(send("first", "none")["outcome"], "emit");
    assert_eq!((runs("inline"), runs("blocking")), (1, 0));
    // The loop is cut off inline after a few milliseconds, then runs to its
    // own 300 ms deadline on a blocking thread.
    let body = send("looping", "loop");
    assert_eq!(body["outcome"], "error", "{body}");
    assert_eq!(body["error"]["code"], "timeout", "{body}");
    assert_eq!(body["error"]["limit_ms"], 300, "{body}");
    assert_eq!((runs("inline"), runs("blocking")), (1, 1));
    // The module is marked slow: its next events skip the inline attempt.
    assert_eq!(send("after", "none")["outcome"], "emit");
    assert_eq!((runs("inline"), runs("blocking")), (1, 2));
}

#[test]
fn a_sleeping_guest_behaves_the_same_on_the_sync_and_durable_paths() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    let responder: Arc<sluice_server::sink::Responder> = Arc::new(move |request, _| {
        log.lock().unwrap().push(request.json());
        sluice_server::sink::Reply::status(200)
    });
    let sink = sluice_server::sink::Sink::start("127.0.0.1:0".parse().unwrap(), responder).unwrap();
    let (sidecar, _dir) = start(&hostile_config("", Some(sink.addr)));
    let url = format!("{}/v1/channels/hostile/transform", sidecar.base);
    let started = Instant::now();
    let (status, body) = post(
        &url,
        &json!([attack("s-1", "sleep-hour"), attack("s-2", "sleep-forever")]).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["outcome"], "emit", "{body}");
    assert!(body[0]["events"][0]["payload"]["slept_secs"] == 3600, "{body}");
    assert_eq!(body[1]["outcome"], "emit", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    let (status, body) = sidecar.post(
        "/v1/events",
        &format!(
            "{}\n{}\n",
            attack("d-1", "sleep-hour"),
            attack("d-2", "sleep-forever")
        ),
    );
    assert_eq!(status, 202, "{body}");
    crate::support::sidecar::wait_for("the slept event's delivery", Duration::from_secs(60), || {
        received.lock().unwrap().iter().any(|b| b["slept_secs"] == 3600)
    });
    crate::support::sidecar::wait_for("the forever sleeper's delivery", Duration::from_secs(60), || {
        received
            .lock()
            .unwrap()
            .iter()
            .any(|b| b["attack"] == "sleep-forever")
    });
}

#[test]
fn slow_clients_are_cut_off_and_the_server_stays_up() {
    let (sidecar, _dir) = start(&format!(
        "header-timeout-ms = 300\nbody-timeout-ms = 300\nmax-connections = 4\n{CONFIG}"
    ));
    let addr = sidecar.base.trim_start_matches("http://").to_string();
    // Slowloris: headers that never end, on more connections than allowed.
    let mut slow: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(&addr).unwrap();
            stream
                .write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            stream
        })
        .collect();
    // A body that never finishes.
    let mut trickle = std::net::TcpStream::connect(&addr).unwrap();
    trickle
        .write_all(format!("POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 1000\r\n\r\n{{").as_bytes())
        .unwrap();
    // The server must close each connection itself (EOF), not leave it to our read timeout.
    let closed = |stream: &mut std::net::TcpStream| {
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .expect("the server closes the connection");
        String::from_utf8_lossy(&answer).into_owned()
    };
    for stream in &mut slow {
        let answer = closed(stream);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
    }
    let answer = closed(&mut trickle);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body-timeout"), "{answer}");
    // A client that sends requests but never reads the answers is cut off too.
    let mut deaf = std::net::TcpStream::connect(&addr).unwrap();
    deaf.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n");
    let started = Instant::now();
    let mut cut_off = false;
    while started.elapsed() < Duration::from_secs(20) {
        if let Err(err) = deaf.write_all(request.as_bytes()) {
            // Our own write timeout would mean the server kept the connection open.
            cut_off = !matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            );
            break;
        }
    }
    assert!(cut_off, "a client that never reads is still connected after 20 s");
    // The server still answers.
    let (status, _) = sidecar.get("/healthz");
    assert_eq!(status, 200);
}

#[test]
fn sync_requests_are_capped_in_events_and_answer_bytes() {
    let (sidecar, _dir) = start(&format!("max-events-per-request = 3\n{CONFIG}"));
    let url = format!("{}/v1/channels/b2b-portal/transform", sidecar.base);
    let event = magento_event("simple-product");
    let (status, body) = post(&url, &json!([event, event, event, event]).to_string());
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("too-many-events")),
        "{body}"
    );
    let (status, body) = post(&url, &json!([event, event, event]).to_string());
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_huge_jsonl_body_ingests_in_linear_time_and_sigterm_still_exits() {
    let (mut sidecar, _dir) = start(&format!(
        "max-body-bytes = 16777216\nshutdown-grace-ms = 2000\n{}",
        hostile_config("", Some("127.0.0.1:9".parse().unwrap()))
    ));
    let body: String = (0..200_000)
        .map(|n| format!("{{\"id\":\"e-{n}\",\"kind\":\"product\",\"payload\":{{\"n\":{n}}}}}\n"))
        .collect();
    assert!(body.len() > 7_000_000);
    let (status, answer) = sidecar.post("/v1/events", &body);
    assert_eq!(
        status,
        202,
        "{}",
        &answer.to_string()[..200.min(answer.to_string().len())]
    );
    assert_eq!(answer["accepted"], 200_000);
    // The destination is down and 200,000 events wait: SIGTERM must still end it.
    let stopped = Instant::now();
    let status = sidecar.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        stopped.elapsed() < Duration::from_secs(30),
        "took {:?}",
        stopped.elapsed()
    );
}

#[test]
fn a_client_that_leaves_does_not_free_its_tenants_transform_permit() {
    // transform-concurrency is 1 by default: one pipeline of the tenant at a time.
    let (sidecar, _dir) = start(&hostile_config("", None).replace("timeout-ms = 300", "timeout-ms = 4000"));
    let addr = sidecar.base.trim_start_matches("http://").to_string();
    let body = attack("leaver", "loop").to_string();
    let mut leaver = std::net::TcpStream::connect(&addr).unwrap();
    leaver
        .write_all(
            format!(
                "POST /v1/channels/hostile/transform HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
    // Long enough for even a loaded machine to start the pipeline.
    std::thread::sleep(Duration::from_millis(1000));
    drop(leaver);
    // The loop still runs (until its 4000 ms deadline) and holds the permit:
    // the next request of the tenant waits for it.
    let started = Instant::now();
    let url = format!("{}/v1/channels/hostile/transform", sidecar.base);
    let (status, answer) = post(&url, &attack("next", "none").to_string());
    assert_eq!(status, 200, "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "the permit was given back when the client left: answered after {:?}",
        started.elapsed()
    );
}

/// CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[test]
fn running_out_of_file_descriptors_backs_off_instead_of_spinning() {
    let (sidecar, dir) = start(CONFIG);
    let pid = sidecar.child.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let limit = open + 8;
    let status = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:{limit}")])
        .status()
        .unwrap();
    assert!(status.success());
    let addr = sidecar.base.trim_start_matches("http://").to_string();
    // More connections than descriptors left: accept fails with EMFILE.
    let held: Vec<std::net::TcpStream> = (0..30)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_time(pid) - before;
    // A loop on the failing accept would burn a whole core: 2 s in 2 s.
    assert!(
        spent < Duration::from_millis(1000),
        "{spent:?} of CPU in 2 s while out of descriptors"
    );
    drop(held);
    let log = std::fs::read_to_string(dir.path().join("serve-0.log")).unwrap();
    assert!(log.contains("cannot accept a connection"), "{log}");
    // Descriptors back: the server answers again.
    crate::support::sidecar::wait_for("the server to answer again", Duration::from_secs(30), || {
        ureq::get(&format!("{}/healthz", sidecar.base)).call().is_ok()
    });
}

#[test]
fn a_deeply_nested_output_is_answered_verbatim_not_as_null() {
    let (sidecar, _dir) = start(&hostile_config("", None));
    let url = format!("{}/v1/channels/hostile/transform", sidecar.base);
    let response = ureq::post(&url)
        .set("authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .send_string(&attack("deep", "deep-output").to_string())
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.into_string().unwrap();
    let payload = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(
        text.starts_with(r#"{"outcome":"emit""#),
        "{}",
        &text[..100.min(text.len())]
    );
    assert!(
        text.contains(&payload),
        "the payload comes back as the module wrote it"
    );
}
