//! Durable ingest and delivery end to end: the real `sluice serve` binary,
//! real transform components, a real SQLite file, and a real HTTP
//! destination ([`Sink`]) whose answers each test scripts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::support::sidecar::{Sidecar, stock_config, wait_for};
use serde_json::{Value, json};
use sluice_server::sink::{Received, Reply, Responder, Sink};

const PATIENCE: Duration = Duration::from_secs(60);

/// The `stock` channel's config (see [`stock_config`]) delivering to `sink`.
fn config(sink: &Sink, extra: &str, quantity_field: &str) -> String {
    stock_config(sink.addr, extra, quantity_field)
}

fn stock_event(id: &str, sku: &str, qty: u32) -> Value {
    json!({"id": id, "kind": "inventory", "tenant": "acme", "payload": {"sku": sku, "qty": qty}})
}

fn jsonl(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

fn sink(respond: impl Fn(&Received, &[Received]) -> Reply + Send + Sync + 'static) -> Sink {
    let respond: Arc<Responder> = Arc::new(respond);
    Sink::start("127.0.0.1:0".parse().unwrap(), respond).unwrap()
}

#[test]
fn the_same_event_id_twice_is_delivered_once() {
    let destination = sink(|_, _| Reply::status(200));
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path(), &config(&destination, "", "qty"));

    let event = stock_event("webhook-1", "A", 5);
    let (status, body) = sidecar.post("/v1/events", &event.to_string());
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["events"][0], json!({"id": "webhook-1", "duplicate": false}));
    // The webhook is delivered again, alone and inside a JSONL batch.
    let (status, body) = sidecar.post("/v1/events", &event.to_string());
    assert_eq!((status, &body["duplicates"]), (202, &json!(1)), "{body}");
    let (status, body) = sidecar.post("/v1/events", &jsonl(&[stock_event("webhook-2", "B", 1), event]));
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["events"][1], json!({"id": "webhook-1", "duplicate": true}));

    wait_for("two deliveries", PATIENCE, || destination.count() >= 2);
    std::thread::sleep(Duration::from_millis(500));
    let received = destination.received();
    assert_eq!(received.len(), 2, "{received:?}");
    let first = received
        .iter()
        .find(|r| r.header("x-sluice-source-event-id") == Some("webhook-1"))
        .unwrap();
    assert_eq!(first.json(), json!({"sku": "A", "qty": 5}));
    assert_eq!(first.header("x-correlation-id"), Some("webhook-1"));
    assert_eq!(first.header("x-sluice-channel"), Some("stock"));
    assert_eq!(first.header("idempotency-key").map(str::len), Some(32));

    let metrics = sidecar.metrics();
    for line in [
        r#"sluice_events_in_total{tenant="acme"} 4"#,
        r#"sluice_duplicates_total{tenant="acme"} 2"#,
        r#"sluice_delivered_total{destination="portal"} 2"#,
        r#"sluice_events_transformed_total{channel="stock",outcome="emit",path="ingest"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} missing in\n{metrics}");
    }
    // Every inbound event, transform and outbound call is logged with its ids.
    let logs = sidecar.logs();
    for message in ["event accepted", "event transformed", "delivery attempt"] {
        let line = logs
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no `{message}` log"));
        assert_eq!(line["tenant"], "acme", "{line}");
        assert!(
            line["event_id"].is_string() && line["correlation_id"].is_string(),
            "{line}"
        );
    }

    // Bad input is refused with the line and the field.
    let (status, body) = sidecar.post(
        "/v1/events",
        "{\"id\": \"x\", \"kind\": \"product\", \"payload\": {}}\n{\"id\": 7}\n",
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid-event")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("line 2"), "{body}");
    let (status, body) = sidecar.post(
        "/v1/events",
        &json!({"id": "y", "kind": "product", "tenant": "nobody", "payload": {}}).to_string(),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("unknown-tenant")),
        "{body}"
    );

    // Every text field is capped as an id is, named by its path, on
    // ingest and on the synchronous path alike; nothing of it is stored.
    for field in ["kind", "source", "channel", "correlation_id"] {
        let mut event = json!({"id": "big", "kind": "product", "payload": {}});
        event[field] = json!("k".repeat(513));
        for route in ["/v1/events", "/v1/channels/stock/transform"] {
            let (status, body) = sidecar.post(route, &event.to_string());
            assert_eq!(
                (status, body["path"].as_str()),
                (400, Some(format!("$['{field}']").as_str())),
                "{route}: {body}"
            );
            assert!(
                body["message"].as_str().unwrap().contains("is 513 bytes long"),
                "{body}"
            );
        }
    }
}

#[test]
fn retries_honour_retry_after_backoff_rate_limit_and_per_sku_order() {
    // Per idempotency key: 429 with Retry-After: 1, then 503, then 200.
    let destination = sink(|request, earlier| {
        let key = request.header("idempotency-key");
        match earlier
            .iter()
            .filter(|r| r.header("idempotency-key") == key)
            .count()
        {
            0 => Reply {
                status: 429,
                headers: vec![("retry-after".into(), "1".into())],
                body: "slow down".into(),
            },
            1 => Reply::status(503),
            _ => Reply::status(200),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path(), &config(&destination, "rate-limit = \"5/s\"", "qty"));
    let events: Vec<Value> = (1..=3)
        .flat_map(|qty| ["A", "B"].map(|sku| stock_event(&format!("{sku}-{qty}"), sku, qty)))
        .collect();
    let (status, body) = sidecar.post("/v1/events", &jsonl(&events));
    assert_eq!(status, 202, "{body}");

    wait_for("18 requests", PATIENCE, || destination.count() >= 18);
    std::thread::sleep(Duration::from_millis(300));
    let received = destination.received();
    assert_eq!(received.len(), 18, "6 events × (429, 503, 200)");

    let mut by_key: BTreeMap<&str, Vec<&Received>> = BTreeMap::new();
    for request in &received {
        by_key
            .entry(request.header("idempotency-key").unwrap())
            .or_default()
            .push(request);
    }
    assert_eq!(by_key.len(), 6, "one key per event, the same on every attempt");
    for attempts in by_key.values() {
        assert_eq!(attempts.len(), 3);
        assert!(
            attempts.iter().all(|a| a.body == attempts[0].body),
            "a retry sends the same body"
        );
        assert_eq!(
            attempts
                .iter()
                .map(|a| a.header("x-sluice-attempt").unwrap())
                .collect::<Vec<_>>(),
            ["1", "2", "3"]
        );
        let after_429 = attempts[1].at - attempts[0].at;
        assert!(
            after_429 >= Duration::from_millis(990),
            "Retry-After: 1 honoured, waited {after_429:?}"
        );
        let after_503 = attempts[2].at - attempts[1].at;
        assert!(
            after_503 >= Duration::from_millis(50),
            "backoff of at least half of 100 ms, waited {after_503:?}"
        );
    }
    // Rate: 5/s with a burst of 1 allows at most 6 requests in any 1 s window.
    for (i, first) in received.iter().enumerate() {
        let in_window = received[i..]
            .iter()
            .filter(|r| r.at - first.at < Duration::from_secs(1))
            .count();
        assert!(in_window <= 6, "{in_window} requests within 1 s of request {i}");
    }
    // Per SKU, quantities arrive in order: no update overtakes an earlier one.
    for sku in ["A", "B"] {
        let quantities: Vec<u64> = received
            .iter()
            .map(Received::json)
            .filter(|body| body["sku"] == sku)
            .map(|body| body["qty"].as_u64().unwrap())
            .collect();
        assert!(quantities.is_sorted(), "{sku}: {quantities:?}");
    }
    assert!(
        sidecar
            .metrics()
            .contains(r#"sluice_retried_total{destination="portal"} 12"#)
    );
}

#[test]
fn a_rejected_delivery_is_dead_lettered_and_repaired_by_replay_with_retransform() {
    // The portal requires `qty`; version 1 of the mapping sends `quantity`.
    let destination = sink(|request, _| {
        if request.json()["qty"].is_number() {
            Reply::status(201)
        } else {
            Reply {
                status: 400,
                headers: Vec::new(),
                body: r#"{"error": "qty is required"}"#.into(),
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::start(dir.path(), &config(&destination, "", "quantity"));
    let (status, _) = sidecar.post("/v1/events", &stock_event("e-1", "A", 7).to_string());
    assert_eq!(status, 202);

    let mut letters = Value::Null;
    wait_for("a dead letter", PATIENCE, || {
        letters = sidecar.get("/v1/dead-letters").1;
        letters.as_array().is_some_and(|l| !l.is_empty())
    });
    assert_eq!(destination.count(), 1, "a 400 is not retried");
    let id = letters[0]["id"].as_i64().unwrap();
    assert_eq!(letters[0]["reason"], "rejected-by-destination");
    assert_eq!(letters[0]["stage"], "delivery");

    // Inspect through the CLI: original, output, attempts and module versions.
    let (ok, letter) = sidecar.cli(&["dead-letters", "show", &id.to_string()]);
    assert!(ok, "{letter}");
    assert_eq!(letter["original"]["payload"], json!({"sku": "A", "qty": 7}));
    assert_eq!(letter["output"]["payload"], json!({"sku": "A", "quantity": 7}));
    assert_eq!(letter["attempts"][0]["status"], 400);
    assert!(
        letter["attempts"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("qty is required")
    );
    assert!(
        letter["versions"][0]
            .as_str()
            .unwrap()
            .starts_with("json-mapping@"),
        "{letter}"
    );

    // A plain replay resends the same broken output: dead again.
    let (status, _) = sidecar.post(&format!("/v1/dead-letters/{id}/replay"), "");
    assert_eq!(status, 202);
    wait_for("the resend", PATIENCE, || destination.count() == 2);
    let received = destination.received();
    assert_eq!(
        received[0].header("idempotency-key"),
        received[1].header("idempotency-key")
    );
    let mut again = Value::Null;
    wait_for("the resend's dead letter", PATIENCE, || {
        again = sidecar.get("/v1/dead-letters").1;
        again.as_array().is_some_and(|l| !l.is_empty())
    });
    let id = again[0]["id"].as_i64().unwrap();

    // Fix the mapping and restart; the dead letter survives the restart.
    sidecar.terminate();
    Sidecar::write_config(dir.path(), &config(&destination, "", "qty"));
    sidecar.restart();
    let (ok, answer) = sidecar.cli(&["dead-letters", "replay", &id.to_string(), "--retransform"]);
    assert!(ok, "{answer}");
    wait_for("the repaired delivery", PATIENCE, || destination.count() == 3);
    let repaired = &destination.received()[2];
    assert_eq!(repaired.json(), json!({"sku": "A", "qty": 7}));
    assert_ne!(
        repaired.header("idempotency-key"),
        received[0].header("idempotency-key"),
        "a different output gets a different key"
    );
    let (_, letters) = sidecar.get("/v1/dead-letters");
    assert_eq!(letters, json!([]));

    // Unknown ids and purges.
    let (status, body) = sidecar.post("/v1/dead-letters/999/replay", "");
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown-dead-letter"))
    );
    let (ok, body) = sidecar.cli(&["dead-letters", "purge", "--all"]);
    assert!(ok && body["purged"] == 0, "{body}");
}

#[test]
fn a_rejection_by_the_pipeline_is_a_dead_letter_with_its_path() {
    let destination = sink(|_, _| Reply::status(200));
    let dir = tempfile::tempdir().unwrap();
    let text =
        config(&destination, "", "qty").replace("source = \"$.qty\"", "source = \"$.qty\", required = true");
    let sidecar = Sidecar::start(dir.path(), &text);
    let event = json!({"id": "no-qty", "kind": "inventory", "tenant": "acme", "payload": {"sku": "A"}});
    sidecar.post("/v1/events", &event.to_string());
    let mut letters = Value::Null;
    wait_for("a dead letter", PATIENCE, || {
        letters = sidecar.get("/v1/dead-letters?channel=stock").1;
        letters.as_array().is_some_and(|l| !l.is_empty())
    });
    assert_eq!(letters[0]["stage"], "transform");
    assert_eq!(letters[0]["reason"], "rejected");
    let (_, letter) = sidecar.get(&format!("/v1/dead-letters/{}", letters[0]["id"]));
    assert_eq!(letter["detail"][0]["path"], "$['qty']", "{letter}");
    let (status, body) = sidecar.post(&format!("/v1/dead-letters/{}/replay", letters[0]["id"]), "");
    assert_eq!((status, body["code"].as_str()), (409, Some("nothing-to-resend")));
    assert!(destination.received().is_empty());
}

#[test]
fn switching_channels_off_holds_or_skips_as_configured() {
    let destination = sink(|_, _| Reply::status(200));
    let dir = tempfile::tempdir().unwrap();
    let base = config(&destination, "", "qty");
    let skip = base[base.find("[[channel]]").unwrap()..]
        .replace("name = \"stock\"", "name = \"stock-skip\"\nwhen-off = \"skip\"");
    let mut sidecar = Sidecar::start(dir.path(), &format!("{base}\n{skip}"));

    for channel in ["stock", "stock-skip"] {
        let (ok, answer) = sidecar.cli(&["channels", "disable", channel]);
        assert!(ok && answer["enabled"] == false, "{answer}");
    }
    sidecar.post("/v1/events", &stock_event("while-off", "A", 1).to_string());
    let (_, channel) = sidecar.get("/v1/channels/stock");
    wait_for("the held event", PATIENCE, || {
        sidecar.get("/v1/channels/stock").1["queued"]["transform"] == 1
    });
    assert_eq!(channel["when-off"], "hold");
    let (status, body) = sidecar.post(
        "/v1/channels/stock/transform",
        &stock_event("s", "A", 1).to_string(),
    );
    assert_eq!((status, body["code"].as_str()), (409, Some("channel-disabled")));
    assert!(
        sidecar
            .metrics()
            .contains(r#"sluice_events_skipped_total{channel="stock-skip"} 1"#)
    );

    // The switch is durable: it survives kill -9, and the held event too.
    sidecar.kill9();
    sidecar.restart();
    std::thread::sleep(Duration::from_millis(500));
    assert!(destination.received().is_empty(), "nothing flows while off");
    let (_, channels) = sidecar.cli(&["channels", "list"]);
    assert!(
        channels.as_array().unwrap().iter().all(|c| c["enabled"] == false),
        "{channels}"
    );

    for channel in ["stock", "stock-skip"] {
        assert!(sidecar.cli(&["channels", "enable", channel]).0);
    }
    sidecar.post("/v1/events", &stock_event("while-on", "A", 2).to_string());
    wait_for("three deliveries", PATIENCE, || destination.count() >= 3);
    std::thread::sleep(Duration::from_millis(300));
    let delivered: Vec<(String, String)> = destination
        .received()
        .iter()
        .map(|r| {
            (
                r.header("x-sluice-channel").unwrap().to_string(),
                r.header("x-sluice-source-event-id").unwrap().to_string(),
            )
        })
        .collect();
    let of = |channel: &str| {
        delivered
            .iter()
            .filter(|(c, _)| c == channel)
            .map(|(_, e)| e.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of("stock"),
        ["while-off", "while-on"],
        "held, then delivered in order"
    );
    assert_eq!(of("stock-skip"), ["while-on"], "skipped while off");
}

#[test]
fn a_failing_destination_neither_blocks_another_channel_nor_retries_forever() {
    // `/down` always answers 503; `/up` accepts.
    let destination = sink(|request, _| Reply::status(if request.path == "/down" { 503 } else { 200 }));
    let dir = tempfile::tempdir().unwrap();
    let up = config(&destination, "", "qty");
    let down = up
        .replace("name = \"portal\"", "name = \"down\"")
        .replace("/stock\"", "/down\"")
        .replace(
            "concurrency = 4",
            "concurrency = 4\n[destination.retry]\nmax-attempts = 3\ninitial-backoff-ms = 20",
        )
        .replace("name = \"stock\"", "name = \"stock-down\"")
        .replace("destination = \"portal\"", "destination = \"down\"");
    let down = &down[down.find("[[destination]]").unwrap()..];
    let sidecar = Sidecar::start(dir.path(), &format!("{up}\n{down}"));

    sidecar.post("/v1/events", &stock_event("e-1", "A", 1).to_string());
    let mut letters = Value::Null;
    wait_for("the dead letter of the down destination", PATIENCE, || {
        letters = sidecar.get("/v1/dead-letters").1;
        letters.as_array().is_some_and(|l| !l.is_empty())
    });
    assert_eq!(letters[0]["reason"], "attempts-exhausted");
    assert_eq!(letters[0]["destination"], "down");
    let (_, letter) = sidecar.get(&format!("/v1/dead-letters/{}", letters[0]["id"]));
    let statuses: Vec<&Value> = letter["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(statuses, [&json!(503); 3], "{letter}");

    let received = destination.received();
    let up_count = received.iter().filter(|r| r.path == "/stock").count();
    assert_eq!(up_count, 1, "the healthy channel delivered");
    assert_eq!(received.iter().filter(|r| r.path == "/down").count(), 3);
    assert!(
        sidecar
            .metrics()
            .contains(r#"sluice_dead_lettered_total{channel="stock-down",stage="delivery"} 1"#)
    );
}

#[test]
fn https_destinations_are_verified_against_their_ca() {
    // A portal with a certificate from a private CA (self-signed for localhost).
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(issued.signing_key.serialize_der().into());
    let server =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![issued.cert.der().clone()], key)
            .unwrap();
    let respond: Arc<Responder> = Arc::new(|_, _| Reply::status(200));
    let destination =
        Sink::start_with_tls("127.0.0.1:0".parse().unwrap(), respond, Some(Arc::new(server))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("portal-ca.pem"), issued.cert.pem()).unwrap();

    // `trusted` names the CA; `untrusted` does not, and gives up after 2 attempts.
    let port = destination.addr.port();
    let trusted = config(&destination, "ca-file = \"portal-ca.pem\"", "qty").replace(
        &format!("http://{}", destination.addr),
        &format!("https://localhost:{port}"),
    );
    let untrusted = trusted
        .replace(
            "ca-file = \"portal-ca.pem\"",
            "[destination.retry]\nmax-attempts = 2\ninitial-backoff-ms = 20",
        )
        .replace("name = \"portal\"", "name = \"untrusted\"")
        .replace("name = \"stock\"", "name = \"stock-untrusted\"")
        .replace("destination = \"portal\"", "destination = \"untrusted\"");
    let untrusted = &untrusted[untrusted.find("[[destination]]").unwrap()..];
    let sidecar = Sidecar::start(dir.path(), &format!("{trusted}\n{untrusted}"));

    sidecar.post("/v1/events", &stock_event("tls-1", "A", 3).to_string());
    wait_for("the delivery over TLS", PATIENCE, || destination.count() >= 1);
    let received = destination.received();
    assert_eq!(received[0].json(), json!({"sku": "A", "qty": 3}));
    let mut letters = Value::Null;
    wait_for("the untrusted destination's dead letter", PATIENCE, || {
        letters = sidecar.get("/v1/dead-letters").1;
        letters.as_array().is_some_and(|l| !l.is_empty())
    });
    let (_, letter) = sidecar.get(&format!("/v1/dead-letters/{}", letters[0]["id"]));
    assert_eq!(letter["destination"], "untrusted");
    let detail = letter["attempts"][0]["detail"].as_str().unwrap();
    assert!(detail.to_lowercase().contains("certificate"), "{detail}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        destination.count(),
        1,
        "nothing reached the portal without a verified certificate"
    );
}

#[test]
fn hostile_retry_after_values_neither_kill_nor_stall_delivery() {
    // Per key: 503 with a Retry-After past u64 seconds, 429 asking for 31
    // years, 500 with one (ignored: only 429 and 503 may ask), then 200.
    let destination = sink(|request, earlier| {
        let key = request.header("idempotency-key");
        let seen = earlier
            .iter()
            .filter(|r| r.header("idempotency-key") == key)
            .count();
        let (status, wait) = match seen {
            0 => (503, "18446744073709551615"),
            1 => (429, "1000000000"),
            2 => (500, "5000"),
            _ => return Reply::status(200),
        };
        Reply {
            status,
            headers: vec![("retry-after".into(), wait.into())],
            body: "later".into(),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path(), &config(&destination, "", "qty"));
    let events: Vec<Value> = (1..=3)
        .map(|n| stock_event(&format!("e-{n}"), &format!("S{n}"), n))
        .collect();
    let (status, body) = sidecar.post("/v1/events", &jsonl(&events));
    assert_eq!(status, 202, "{body}");
    // max-backoff-ms is 1000 in this config: every wait is capped there.
    wait_for("three deliveries", PATIENCE, || {
        destination.count_where(|r| r.header("x-sluice-attempt") == Some("4")) == 3
    });
    let metrics = sidecar.metrics();
    assert!(
        !metrics.contains("sluice_worker_restarts_total{"),
        "no worker died:\n{metrics}"
    );
    let (status, ready) = sidecar.get("/readyz");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["workers"]["delivery:portal"]["running"], true, "{ready}");
}
