//! Changing a transform safely on a live sidecar: a shadow with its counts,
//! per-path samples and promotion; a canary that keeps per-SKU order; a
//! backfill over stored events; live events recorded as fixtures that
//! `sluice test` passes, with a redacted email. The real `sluice serve`,
//! real uploaded components, a real sink, the real CLI.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::support::guest;
use crate::support::sidecar::{Sidecar, token_hash, wait_for};
use serde_json::{Value, json};
use sluice_server::sink::{Received, Reply, Sink};

const PATIENCE: Duration = Duration::from_secs(60);
const ACME: &str = "acme-token";

fn config(sink: &Sink) -> String {
    format!(
        r#"
[limits]
timeout-ms = 10000

[[tenant]]
name = "acme"
token-sha256 = ["{acme}"]

[[destination]]
name = "portal"
url = "http://{addr}/stock"
concurrency = 4

[[channel]]
name = "stock"
tenant = "acme"
destination = "portal"
[[channel.step]]
module = "json-mapping"
config = {{ rules = [ {{ target = "sku", source = "$.sku" }}, {{ target = "qty", source = "$.qty" }} ] }}
"#,
        acme = token_hash(ACME),
        addr = sink.addr,
    )
}

/// The current mapping (`qty`) and the candidate's (`quantity`, and a
/// required `price` it rejects events without).
fn rules(candidate: bool) -> Value {
    if candidate {
        json!({"rules": [{"target": "sku", "source": "$.sku"}, {"target": "quantity", "source": "$.qty"},
                          {"target": "price", "source": "$.price", "required": true}]})
    } else {
        json!({"rules": [{"target": "sku", "source": "$.sku"}, {"target": "qty", "source": "$.qty"},
                          {"target": "contact", "source": "$.customer.email"}]})
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    sink: Sink,
    sidecar: Sidecar,
    /// The candidate's pipeline file.
    candidate: std::path::PathBuf,
}

/// A sidecar whose `stock` channel runs an uploaded json-mapping with the
/// current rules; the candidate's pipeline file written beside it.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| Reply::status(200)),
    )
    .unwrap();
    let sidecar = Sidecar::start(dir.path(), &config(&sink));
    let module = std::fs::read(guest("json-mapping")).unwrap();
    let (status, uploaded) = sidecar.send(
        "PUT",
        "/v1/modules/mapper",
        Some(ACME),
        &module,
        "application/wasm",
    );
    assert_eq!(status, 201, "{uploaded}");
    let version = uploaded["version"].as_str().unwrap();
    let pipeline =
        |candidate| json!({"steps": [{"module": "mapper", "version": version, "config": rules(candidate)}]});
    let (status, answer) = sidecar.send(
        "POST",
        "/v1/channels/stock/activate",
        Some(ACME),
        pipeline(false).to_string().as_bytes(),
        "",
    );
    assert_eq!(status, 200, "{answer}");
    let candidate = dir.path().join("candidate.json");
    std::fs::write(&candidate, pipeline(true).to_string()).unwrap();
    Setup {
        _dir: dir,
        sink,
        sidecar,
        candidate,
    }
}

fn event(id: &str, sku: &str, qty: u32, price: Option<&str>) -> Value {
    let mut payload =
        json!({"sku": sku, "qty": qty, "customer": {"email": format!("{}@shop.test", sku.to_lowercase())}});
    if let Some(price) = price {
        payload["price"] = price.into();
    }
    json!({"id": id, "kind": "inventory", "payload": payload})
}

fn ingest(sidecar: &Sidecar, events: &[Value]) {
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    let (status, answer) = sidecar.send(
        "POST",
        "/v1/events",
        Some(ACME),
        body.as_bytes(),
        "application/x-ndjson",
    );
    assert_eq!(status, 202, "{answer}");
}

fn delivered(sink: &Sink) -> Vec<Value> {
    sink.received().iter().map(Received::json).collect()
}

#[test]
fn a_shadow_compares_per_path_delivers_nothing_of_the_candidate_and_is_promoted() {
    let Setup {
        _dir,
        sink,
        sidecar,
        candidate,
    } = setup();
    let (ok, started) = sidecar.cli_as(
        ACME,
        &["channels", "shadow", "stock", candidate.to_str().unwrap()],
    );
    assert!(ok, "{started}");
    assert_eq!(started["compared"], 0);

    // 12 events: 4 with a price (the candidate maps them), 8 without (it rejects them).
    let events: Vec<Value> = (0..12)
        .map(|n| {
            event(
                &format!("s-{n}"),
                &format!("SKU-{n}"),
                n,
                (n % 3 == 0).then_some("9.99"),
            )
        })
        .collect();
    ingest(&sidecar, &events);
    wait_for("12 deliveries", PATIENCE, || sink.received().len() >= 12);
    // Sync-path events are compared too.
    let probe = event("sync-1", "SKU-S", 1, Some("1.00")).to_string();
    let (status, _) = sidecar.send(
        "POST",
        "/v1/channels/stock/transform",
        Some(ACME),
        probe.as_bytes(),
        "",
    );
    assert_eq!(status, 200);

    let (ok, report) = sidecar.cli_as(ACME, &["channels", "shadow-report", "stock"]);
    assert!(ok, "{report}");
    assert_eq!(report["compared"], 13, "{report}");
    assert_eq!(report["equal"], 0, "{report}");
    assert_eq!(report["different"], 13, "{report}");
    assert_eq!(report["candidate-rejected"], 8, "{report}");
    assert_eq!(report["candidate-faulted"], 0, "{report}");
    let failures = report["candidate-failures"].as_array().unwrap();
    assert_eq!(failures.len(), 5, "{report}");
    assert_eq!(failures[0]["outcome"], "reject");
    assert_eq!(failures[0]["detail"][0]["path"], "$['price']", "{report}");
    // The 5 mapped ones differ at the renamed field, with before and after.
    let paths = report["paths"].as_object().unwrap();
    let qty = &paths["$['events'][0]['payload']['qty']"];
    assert_eq!(qty["count"], 5, "{report}");
    let samples = qty["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 5);
    assert_eq!(samples[0]["event"], "s-0");
    assert_eq!(samples[0]["before"], 0);
    assert_eq!(samples[0]["after"], Value::Null);
    let quantity = &paths["$['events'][0]['payload']['quantity']"];
    assert_eq!(quantity["samples"][1]["after"], 3, "{report}");
    // The rejected ones differ at the outcome itself.
    assert_eq!(paths["$['outcome']"]["count"], 8, "{report}");

    // Nothing of the candidate was delivered.
    let sent = delivered(&sink);
    assert_eq!(sent.len(), 12);
    assert!(
        sent.iter()
            .all(|body| body.get("qty").is_some() && body.get("quantity").is_none()),
        "{sent:?}"
    );

    // Promote: the candidate runs, the shadow is gone, rollback would undo it.
    let (ok, promoted) = sidecar.cli_as(ACME, &["channels", "promote", "stock"]);
    assert!(ok, "{promoted}");
    assert_eq!(promoted["promoted"]["compared"], 13, "{promoted}");
    let (status, _) = sidecar.send("GET", "/v1/channels/stock/shadow", Some(ACME), b"", "");
    assert_eq!(status, 404);
    ingest(&sidecar, &[event("after-1", "SKU-A", 7, Some("2.50"))]);
    wait_for("the promoted version's delivery", PATIENCE, || {
        sink.received().len() >= 13
    });
    let last = delivered(&sink).pop().unwrap();
    assert_eq!(last["quantity"], 7, "{last}");
    assert_eq!(last["price"], "2.50", "{last}");

    // Stopping when none runs, and a bad canary, are clear errors.
    let (ok, stopped) = sidecar.cli_as(ACME, &["channels", "shadow-stop", "stock"]);
    assert!(!ok);
    assert_eq!(stopped["code"], "no-shadow", "{stopped}");
    let (status, answer) = sidecar.send(
        "POST",
        "/v1/channels/stock/shadow?canary=101",
        Some(ACME),
        std::fs::read(&candidate).unwrap().as_slice(),
        "",
    );
    assert_eq!(
        (status, &answer["code"]),
        (400, &json!("invalid-canary")),
        "{answer}"
    );
}

#[test]
fn a_canary_delivers_a_stable_share_of_skus_from_the_candidate_in_per_sku_order() {
    let Setup {
        _dir,
        sink,
        sidecar,
        candidate,
    } = setup();
    let (ok, started) = sidecar.cli_as(
        ACME,
        &[
            "channels",
            "shadow",
            "stock",
            candidate.to_str().unwrap(),
            "--canary",
            "30",
        ],
    );
    assert!(ok, "{started}");
    assert_eq!(started["canary-percent"], 30);

    // 20 SKUs, 5 updates each, interleaved, in batches.
    let events: Vec<Value> = (0..5)
        .flat_map(|round| {
            (0..20).map(move |sku| {
                event(
                    &format!("c-{round}-{sku}"),
                    &format!("SKU-{sku}"),
                    round,
                    Some("1.00"),
                )
            })
        })
        .collect();
    for batch in events.chunks(7) {
        ingest(&sidecar, batch);
    }
    wait_for("100 deliveries", PATIENCE, || sink.received().len() >= 100);

    let mut per_sku: BTreeMap<String, Vec<(u64, bool)>> = BTreeMap::new();
    for body in delivered(&sink) {
        let from_candidate = body.get("quantity").is_some();
        let qty = body[if from_candidate { "quantity" } else { "qty" }]
            .as_u64()
            .unwrap();
        per_sku
            .entry(body["sku"].as_str().unwrap().to_string())
            .or_default()
            .push((qty, from_candidate));
    }
    assert_eq!(per_sku.len(), 20);
    let mut canary_skus = 0;
    for (sku, arrivals) in &per_sku {
        let order: Vec<u64> = arrivals.iter().map(|(qty, _)| *qty).collect();
        assert_eq!(order, [0, 1, 2, 3, 4], "{sku} arrived out of order");
        let sides: std::collections::BTreeSet<bool> = arrivals.iter().map(|(_, side)| *side).collect();
        assert_eq!(sides.len(), 1, "{sku} switched between versions: {arrivals:?}");
        canary_skus += usize::from(sides.contains(&true));
    }
    assert!(
        (1..20).contains(&canary_skus),
        "a share of SKUs, not none or all: {canary_skus}"
    );
    let (_, report) = sidecar.send("GET", "/v1/channels/stock/shadow", Some(ACME), b"", "");
    assert_eq!(report["from-candidate"], canary_skus as u64 * 5, "{report}");
    assert_eq!(report["compared"], 100, "{report}");
}

#[test]
fn a_backfill_runs_stored_events_through_a_candidate_and_delivers_nothing() {
    let Setup {
        _dir,
        sink,
        sidecar,
        candidate,
    } = setup();
    let events: Vec<Value> = (0..300)
        .map(|n| {
            event(
                &format!("b-{n}"),
                &format!("SKU-{}", n % 40),
                n,
                (n % 2 == 0).then_some("3.00"),
            )
        })
        .collect();
    ingest(&sidecar, &events);
    wait_for("300 deliveries", PATIENCE, || sink.received().len() >= 300);

    let (ok, report) = sidecar.cli_as(
        ACME,
        &["channels", "backfill", "stock", candidate.to_str().unwrap()],
    );
    assert!(ok, "{report}");
    assert_eq!(report["state"], "done", "{report}");
    assert_eq!(report["processed"], 300, "{report}");
    assert_eq!(report["progress"], 1.0);
    let comparison = &report["comparison"];
    assert_eq!(comparison["compared"], 300, "{report}");
    assert_eq!(comparison["different"], 300);
    assert_eq!(comparison["candidate-rejected"], 150);
    assert_eq!(
        comparison["paths"]["$['events'][0]['payload']['qty']"]["count"],
        150
    );

    // With a limit, and from a time after every event: fewer, or none.
    let (ok, limited) = sidecar.cli_as(
        ACME,
        &[
            "channels",
            "backfill",
            "stock",
            candidate.to_str().unwrap(),
            "--limit",
            "50",
        ],
    );
    assert!(ok && limited["processed"] == 50, "{limited}");
    let (ok, later) = sidecar.cli_as(
        ACME,
        &[
            "channels",
            "backfill",
            "stock",
            candidate.to_str().unwrap(),
            "--since",
            "2999-01-01T00:00:00Z",
        ],
    );
    assert!(ok && later["processed"] == 0, "{later}");

    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.received().len(), 300, "a backfill delivers nothing");
    // Live traffic goes on the current version.
    let (_, channel) = sidecar.send("GET", "/v1/channels/stock", Some(ACME), b"", "");
    assert_eq!(channel["queued"]["delivery"], 0, "{channel}");
}

/// Runs `sluice channels record …` as acme; its stdout.
fn record(sidecar: &Sidecar, args: &[&str]) -> String {
    let output = sidecar
        .command_as(ACME)
        .args(["channels", "record", "stock"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A channel folder whose pipeline.json runs the local json-mapping as the
/// sidecar runs the uploaded one, with `fixtures` as its fixtures.
fn local_channel(dir: &Path) {
    let pipeline = json!({"steps": [{"module": guest("json-mapping"), "config": rules(false)}]});
    std::fs::write(dir.join("pipeline.json"), pipeline.to_string()).unwrap();
}

fn sluice_test(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["test", dir.to_str().unwrap()])
        .env(
            "SLUICE_CACHE_DIR",
            crate::support::target_dir().join("sluice-test-cache"),
        )
        .env("SLUICE_TIMEOUT_MS", "10000")
        .output()
        .unwrap()
}

#[test]
fn recorded_events_become_fixtures_that_pass_with_emails_redacted_alike() {
    let Setup {
        _dir, sink, sidecar, ..
    } = setup();
    let work = tempfile::tempdir().unwrap();
    let channel = work.path().join("stock");
    std::fs::create_dir(&channel).unwrap();
    local_channel(&channel);
    let fixtures = channel.join("fixtures");
    let key = work.path().join("redact-key");

    // The next 3 events, recorded while they arrive.
    let recorder = {
        let mut command = sidecar.command_as(ACME);
        let (fixtures, key) = (fixtures.clone(), key.clone());
        std::thread::spawn(move || {
            command
                .args(["channels", "record", "stock", "--count", "3", "--out"])
                .arg(&fixtures)
                .args([
                    "--redact",
                    "$.payload.customer.email",
                    "--redact",
                    "$.payload.contact",
                    "--redact-key",
                ])
                .arg(&key)
                .output()
                .unwrap()
        })
    };
    wait_for("the recording to start", PATIENCE, || {
        sidecar
            .send("GET", "/v1/channels/stock/record", Some(ACME), b"", "")
            .0
            == 200
    });
    ingest(
        &sidecar,
        &[
            event("r-1", "SKU-1", 1, None),
            event("r-2", "SKU-2", 2, None),
            event("r-3", "SKU-1", 3, None),
        ],
    );
    let output = recorder.join().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("wrote 3 case(s)"));

    let read = |case: &str, file: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(fixtures.join(case).join(file)).unwrap()).unwrap()
    };
    let input = read("recorded-r-1", "input.json");
    let expected = read("recorded-r-1", "expected.json");
    let email = input["payload"]["customer"]["email"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        email.starts_with("redacted-") && email.ends_with("@example.invalid"),
        "{input}"
    );
    assert_eq!(
        expected["events"][0]["payload"]["contact"],
        email.as_str(),
        "{expected}"
    );
    assert_eq!(expected["events"][0]["payload"]["qty"], 1);
    // The same value, the same placeholder: r-3 is SKU-1's email too; r-2's differs.
    assert_eq!(
        read("recorded-r-3", "input.json")["payload"]["customer"]["email"],
        email.as_str()
    );
    assert_ne!(
        read("recorded-r-2", "input.json")["payload"]["customer"]["email"],
        email.as_str()
    );
    let everything = std::fs::read_dir(&fixtures)
        .unwrap()
        .flat_map(|case| std::fs::read_dir(case.unwrap().path()).unwrap())
        .map(|file| std::fs::read_to_string(file.unwrap().path()).unwrap())
        .collect::<String>();
    assert!(
        !everything.contains("@shop.test"),
        "no original email is written: {everything}"
    );

    // `sluice test` passes on them unchanged.
    let tested = sluice_test(&channel);
    let out = String::from_utf8_lossy(&tested.stdout);
    assert!(tested.status.success(), "{out}");
    assert!(out.contains("3 passed; 0 failed"), "{out}");

    // The newest stored events, with the same key: the same placeholders.
    let last = work.path().join("last");
    record(
        &sidecar,
        &[
            "--last",
            "2",
            "--out",
            last.to_str().unwrap(),
            "--redact",
            "$.payload.customer.email",
            "--redact-key",
            key.to_str().unwrap(),
        ],
    );
    let mut cases: Vec<String> = std::fs::read_dir(&last)
        .unwrap()
        .map(|c| c.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    cases.sort();
    assert_eq!(cases, ["recorded-r-2", "recorded-r-3"]);
    let again: Value =
        serde_json::from_str(&std::fs::read_to_string(last.join("recorded-r-3/input.json")).unwrap())
            .unwrap();
    assert_eq!(again["payload"]["customer"]["email"], email.as_str());
    assert_eq!(sink.received().len(), 3, "recording delivers nothing more");

    // Waiting for events that do not come ends with what there is.
    let quiet = work.path().join("quiet");
    let out = record(
        &sidecar,
        &[
            "--count",
            "5",
            "--within",
            "1",
            "--out",
            quiet.to_str().unwrap(),
            "--redact-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(out.contains("wrote 0 case(s)"), "{out}");
    let (status, _) = sidecar.send("GET", "/v1/channels/stock/record", Some(ACME), b"", "");
    assert_eq!(status, 404, "the recording ended");
}

/// A trial runs on instances of its own: the hostile guest's `count`
/// answers how many events its instance has seen, so a backfill or a
/// recording run through the live channel's warm instances would move the
/// count the live channel emits next.
#[test]
fn trials_run_on_instances_of_their_own_and_leave_live_guest_state_alone() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| Reply::status(200)),
    )
    .unwrap();
    let config = config(&sink).replace("name = \"stock\"", "name = \"counter\"");
    let sidecar = Sidecar::start(dir.path(), &config);
    let module = std::fs::read(guest("hostile")).unwrap();
    let (status, uploaded) = sidecar.send(
        "PUT",
        "/v1/modules/counter",
        Some(ACME),
        &module,
        "application/wasm",
    );
    assert_eq!(status, 201, "{uploaded}");
    let pipeline = json!({"steps": [{"module": "counter", "version": uploaded["version"], "config": {}}]});
    let (status, answer) = sidecar.send(
        "POST",
        "/v1/channels/counter/activate",
        Some(ACME),
        pipeline.to_string().as_bytes(),
        "",
    );
    assert_eq!(status, 200, "{answer}");
    let count = |id: &str| json!({"id": id, "kind": "product", "payload": {"attack": "count"}});
    let seen = |sink: &Sink| -> Vec<u64> {
        delivered(sink)
            .iter()
            .map(|p| p["seen"].as_u64().unwrap())
            .collect()
    };

    for n in 0..3 {
        ingest(&sidecar, &[count(&format!("c-{n}"))]);
        wait_for("a delivery", PATIENCE, || sink.received().len() > n);
    }
    let before = seen(&sink);
    let candidate = dir.path().join("candidate.json");
    std::fs::write(&candidate, pipeline.to_string()).unwrap();
    let (ok, report) = sidecar.cli_as(
        ACME,
        &["channels", "backfill", "counter", candidate.to_str().unwrap()],
    );
    assert!(ok && report["processed"] == 3, "{report}");
    let out = dir.path().join("recorded");
    let recorded = sidecar
        .command_as(ACME)
        .args([
            "channels",
            "record",
            "counter",
            "--last",
            "3",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        recorded.status.success(),
        "{}",
        String::from_utf8_lossy(&recorded.stderr)
    );

    ingest(&sidecar, &[count("c-3")]);
    wait_for("the next delivery", PATIENCE, || sink.received().len() >= 4);
    let after = seen(&sink);
    assert_eq!(
        after[3],
        before[2] + 1,
        "the live guest's count moved by a trial: {before:?} then {after:?}"
    );
}
