//! Event stories end to end: a real sidecar (on SQLite, and two on a real
//! `nats-server`), a real component, and a destination on loopback that
//! first answers 503 as SP-API does under load, then 200. The story shows
//! the accept, the pipeline's outcome with its module version, both
//! attempts with the request as sent and the answer as received, secrets
//! masked; another tenant gets 404; retention removes old stories.
//!
//! The destination's answers follow SP-API's error shape (`errors[]` with
//! `code` and `message`, "Error responses" in the Selling Partner API
//! reference) and its `x-amzn-RequestId` header.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_server::sink::{Reply, Responder, Sink};

use crate::support::sidecar::{Sidecar, stock_config, token_hash, wait_for};

const PATIENCE: Duration = Duration::from_secs(60);
const ACME: &str = "acme-stories-token";
const GLOBEX: &str = "globex-stories-token";
const BEARER: &str = "tok-secret-123";
const QUERY_KEY: &str = "k-secret-456";

/// 503 (with SP-API's error body and a session cookie) for a payload's
/// first request, 200 after.
fn flaky_destination() -> Sink {
    let respond: Arc<Responder> = Arc::new(|request, before| {
        let sku = request.json()["sku"].clone();
        let first = !before.iter().any(|r| r.json()["sku"] == sku);
        let mut reply = if first {
            Reply {
                body: json!({"errors": [{"code": "InvalidInput", "message": "Invalid Data: attribute `item_type_keyword` is required"}]}).to_string(),
                ..Reply::status(503)
            }
        } else {
            Reply {
                body: json!({"status": "ACCEPTED", "submissionId": "s-1"}).to_string(),
                ..Reply::status(200)
            }
        };
        reply.headers.push(("x-amzn-RequestId".into(), "r-1".into()));
        reply
            .headers
            .push(("set-cookie".into(), "session=cookie-secret-789".into()));
        reply
    });
    Sink::start("127.0.0.1:0".parse().unwrap(), respond).unwrap()
}

fn config(destination: &Sink, extra_top: &str) -> String {
    let extra = format!(
        "entity-key = \"$.sku\"\nheaders = {{ Authorization = \"Bearer {BEARER}\" }}\n[destination.retry]\ninitial-backoff-ms = 50\nmax-backoff-ms = 200"
    );
    let config = stock_config(destination.addr, &extra, "quantity")
        .replace("/stock\"", &format!("/stock?api_key={QUERY_KEY}\""));
    format!(
        "{extra_top}\n[[tenant]]\nname = \"acme\"\ntoken-sha256 = [\"{}\"]\n[[tenant]]\nname = \"globex\"\ntoken-sha256 = [\"{}\"]\n{config}",
        token_hash(ACME),
        token_hash(GLOBEX)
    )
}

fn story(node: &Sidecar, token: &str, id: &str) -> (u16, Value) {
    node.send("GET", &format!("/v1/events/{id}"), Some(token), b"", "")
}

/// Posts `e-1`, waits for its story to say delivered, and checks all of
/// it; another tenant sees none of it.
fn the_story_of_a_retried_delivery(nodes: &[Sidecar], destination: &Sink) {
    let event =
        json!({"id": "e-1", "kind": "inventory", "tenant": "acme", "payload": {"sku": "TEE-1", "qty": 4}});
    let (status, answer) = nodes[0].send("POST", "/v1/events", Some(ACME), event.to_string().as_bytes(), "");
    assert_eq!(status, 202, "{answer}");
    wait_for("both attempts", PATIENCE, || destination.count() == 2);
    let last = nodes.len() - 1;
    let mut shown = Value::Null;
    wait_for("the story says delivered", PATIENCE, || {
        shown = story(&nodes[last], ACME, "e-1").1;
        shown["now"]["stock"] == "delivered"
    });
    let entries = shown["entries"].as_array().unwrap();
    let kinds: Vec<&str> = entries.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["accepted", "transformed", "attempt", "attempt"],
        "{shown:#}"
    );
    assert!(shown["accepted_ms"].as_i64().unwrap() > 0);
    let transformed = &entries[1]["detail"];
    assert_eq!(transformed["outcome"], "emit");
    assert!(
        transformed["versions"][0]
            .as_str()
            .unwrap()
            .starts_with("json-mapping@"),
        "{transformed}"
    );
    assert_eq!(transformed["events"][0]["id"], "e-1");
    assert_eq!(transformed["deliveries"][0]["entity_key"], "TEE-1");
    assert_eq!(transformed["deliveries"][0]["destination"], "portal");
    assert_eq!(entries[1]["entity_key"], "TEE-1");

    let (first, second) = (&entries[2]["detail"], &entries[3]["detail"]);
    assert_eq!(
        (first["attempt"].as_u64(), first["result"].as_str()),
        (Some(1), Some("retry"))
    );
    assert_eq!(
        (second["attempt"].as_u64(), second["result"].as_str()),
        (Some(2), Some("delivered"))
    );
    for attempt in [first, second] {
        let request = &attempt["request"];
        assert_eq!(request["method"], "POST");
        assert_eq!(
            request["url"],
            format!("http://{}/stock?api_key=***", destination.addr)
        );
        let body: Value = serde_json::from_str(request["body"]["text"].as_str().unwrap()).unwrap();
        assert_eq!(body, json!({"sku": "TEE-1", "quantity": 4}), "the body as sent");
        let header = |headers: &Value, name: &str| {
            headers
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
                .map(|h| h[1].clone())
        };
        assert_eq!(header(&request["headers"], "authorization"), Some(json!("***")));
        assert_eq!(
            header(&request["headers"], "x-sluice-event-id"),
            Some(json!("e-1"))
        );
        assert_eq!(
            header(&attempt["response"]["headers"], "set-cookie"),
            Some(json!("***"))
        );
        assert_eq!(
            header(&attempt["response"]["headers"], "x-amzn-requestid"),
            Some(json!("r-1"))
        );
    }
    assert_eq!(first["response"]["status"], 503);
    assert!(
        first["response"]["body"]["text"]
            .as_str()
            .unwrap()
            .contains("Invalid Data: attribute `item_type_keyword` is required"),
        "{first}"
    );
    assert_eq!(second["response"]["status"], 200);
    assert!(
        second["response"]["body"]["text"]
            .as_str()
            .unwrap()
            .contains("ACCEPTED")
    );
    let text = shown.to_string();
    for secret in [BEARER, QUERY_KEY, "cookie-secret-789"] {
        assert!(!text.contains(secret), "{secret} is in the story");
    }

    // Where is TEE-1? Found by its entity key, as the CLI finds it.
    let (status, found) = nodes[last].send("GET", "/v1/events?entity=TEE-1", Some(ACME), b"", "");
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["events"][0]["event_id"], "e-1", "{found}");
    let (ok, cli) = nodes[0].cli_as(ACME, &["events", "show", "e-1"]);
    assert!(ok, "{cli}");
    assert_eq!(cli["now"]["stock"], "delivered");
    let (ok, cli) = nodes[0].cli_as(ACME, &["events", "find", "--entity", "TEE-1"]);
    assert!(ok, "{cli}");
    assert_eq!(cli["events"][0]["event_id"], "e-1");

    // Another tenant: 404 for the event, nothing for the key.
    let (status, theirs) = story(&nodes[0], GLOBEX, "e-1");
    assert_eq!(
        (status, theirs["code"].as_str()),
        (404, Some("unknown-event")),
        "{theirs}"
    );
    let (_, theirs) = nodes[0].send("GET", "/v1/events?entity=TEE-1", Some(GLOBEX), b"", "");
    assert_eq!(theirs["events"], json!([]));
    // A huge key is refused, not looked up.
    let huge = "K".repeat(5000);
    let (status, _) = nodes[0].send("GET", &format!("/v1/events?entity={huge}"), Some(ACME), b"", "");
    assert_eq!(status, 400);
}

#[test]
fn an_events_story_shows_each_step_and_both_attempts_as_sent_and_received_on_sqlite() {
    let destination = flaky_destination();
    let dir = tempfile::tempdir().unwrap();
    let node = Sidecar::start(dir.path(), &config(&destination, ""));
    the_story_of_a_retried_delivery(&[node], &destination);
}

#[test]
fn an_events_story_is_told_by_every_node_of_jetstream() {
    let destination = flaky_destination();
    let dir = tempfile::tempdir().unwrap();
    let nats = crate::support::nats::Nats::start(dir.path());
    let config = config(&destination, &format!("queue = \"{}\"", nats.url()));
    let nodes: Vec<Sidecar> = (0..2)
        .map(|node| {
            let folder = dir.path().join(format!("node{node}"));
            std::fs::create_dir_all(&folder).unwrap();
            Sidecar::start(&folder, &config)
        })
        .collect();
    the_story_of_a_retried_delivery(&nodes, &destination);
}

#[test]
fn superseded_and_unchanged_deliveries_show_as_such_and_retention_removes_old_stories() {
    // The first request is told to wait a second (429 with Retry-After, as
    // SP-API throttles), so that the next two updates queue up behind it.
    let respond: Arc<Responder> = Arc::new(|_, before| {
        if before.is_empty() {
            let mut reply = Reply::status(429);
            reply.headers.push(("Retry-After".into(), "1".into()));
            reply
        } else {
            Reply::status(200)
        }
    });
    let destination = Sink::start("127.0.0.1:0".parse().unwrap(), respond).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = stock_config(
        destination.addr,
        "entity-key = \"$.sku\"\ncoalesce = true\nskip-unchanged = true",
        "quantity",
    );
    // Kept for 11 seconds, so that the test sees them go.
    let config = format!("[stories]\nkeep-hours = 0.003\n{config}");
    let sidecar = Sidecar::start(dir.path(), &config);
    let post = |id: &str, qty: u64| {
        let event =
            json!({"id": id, "kind": "inventory", "tenant": "acme", "payload": {"sku": "TEE-1", "qty": qty}});
        assert_eq!(sidecar.post("/v1/events", &event.to_string()).0, 202);
    };
    post("e-1", 1);
    wait_for("the throttled first request", PATIENCE, || {
        destination.count() == 1
    });
    post("e-2", 2);
    post("e-3", 3);
    let now = |id: &str| sidecar.get(&format!("/v1/events/{id}?tenant=acme")).1["now"]["stock"].clone();
    wait_for("e-3 delivered", PATIENCE, || now("e-3") == "delivered");
    wait_for("e-2 superseded", PATIENCE, || now("e-2") == "superseded");
    // The same state again: not sent, and its story says so.
    post("e-4", 3);
    wait_for("e-4 unchanged", PATIENCE, || now("e-4") == "unchanged");
    assert!(destination.received().iter().all(|r| r.json()["quantity"] != 2));

    // Retention: every story goes once it is older than `keep-hours`.
    wait_for("the old stories removed", PATIENCE, || {
        sidecar.get("/v1/events/e-1?tenant=acme").0 == 404
            && sidecar.get("/v1/events/e-4?tenant=acme").0 == 404
    });
}
