//! Scale-out end to end: a real `nats-server` with JetStream on file
//! storage, three real `sluice serve` processes sharing it, real
//! components, and a real HTTP destination ([`Sink`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_server::sink::{Received, Reply, Responder, Sink};

use crate::support::guest;
use crate::support::nats::Nats;
use crate::support::sidecar::{Sidecar, stock_config, token_hash, wait_for};

const PATIENCE: Duration = Duration::from_secs(120);
const ACME: &str = "acme-cluster-token";

fn sink(respond: impl Fn(&Received, &[Received]) -> Reply + Send + Sync + 'static) -> Sink {
    let respond: Arc<Responder> = Arc::new(respond);
    Sink::start("127.0.0.1:0".parse().unwrap(), respond).unwrap()
}

/// `nodes` sidecars on `nats`, each in its own folder under `dir`, on the
/// stock channel (see [`stock_config`]) with `extra` destination settings.
fn cluster(
    dir: &std::path::Path,
    nats: &Nats,
    destination: &Sink,
    extra: &str,
    nodes: usize,
) -> Vec<Sidecar> {
    let config = format!(
        "queue = \"{}\"\nallow-networks = [\"127.0.0.0/8\"]\n[[tenant]]\nname = \"acme\"\ntoken-sha256 = [\"{}\"]\ncircuit-breaker = 3\n{}",
        nats.url(),
        token_hash(ACME),
        stock_config(destination.addr, extra, "qty")
    );
    (0..nodes)
        .map(|node| {
            let folder = dir.join(format!("node{node}"));
            std::fs::create_dir_all(&folder).unwrap();
            Sidecar::start(&folder, &config)
        })
        .collect()
}

fn stock_event(id: &str, sku: &str, qty: usize) -> Value {
    json!({"id": id, "kind": "inventory", "tenant": "acme", "payload": {"sku": sku, "qty": qty}})
}

fn ingest(node: &Sidecar, events: &[Value]) -> (u16, Value) {
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    node.post("/v1/events", &body)
}

/// What the sink received, one entry per `Idempotency-Key` (its first
/// arrival), after checking that every event id always came with the same key.
fn first_deliveries(received: &[Received]) -> Vec<&Received> {
    let mut keys: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut first = Vec::new();
    for r in received {
        let event = r.header("x-sluice-source-event-id").unwrap();
        let key = r.header("idempotency-key").unwrap();
        keys.entry(event).or_default().insert(key);
        if seen.insert(key) {
            first.push(r);
        }
    }
    for (event, keys) in keys {
        assert_eq!(
            keys.len(),
            1,
            "event {event} was delivered under several keys: {keys:?}"
        );
    }
    first
}

/// Per SKU, quantities arrive in ingest order.
fn assert_sku_order(deliveries: &[&Received]) {
    let mut by_sku: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in deliveries {
        let body = r.json();
        by_sku
            .entry(body["sku"].as_str().unwrap().to_string())
            .or_default()
            .push(body["qty"].as_u64().unwrap());
    }
    for (sku, quantities) in by_sku {
        assert!(quantities.is_sorted(), "{sku}: {quantities:?}");
    }
}

#[test]
fn three_nodes_deliver_every_event_once_in_order_and_spot_duplicates_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let destination = sink(|_, _| Reply::status(200));
    let nodes = cluster(dir.path(), &nats, &destination, "", 3);

    const EVENTS: usize = 3000;
    let event = |n: usize| stock_event(&format!("e-{n:04}"), &format!("SKU-{}", n % 50), n);
    for batch in 0..EVENTS / 10 {
        let events: Vec<Value> = (batch * 10..batch * 10 + 10).map(event).collect();
        let (status, answer) = ingest(&nodes[batch % 3], &events);
        assert_eq!((status, &answer["accepted"]), (202, &json!(10)), "{answer}");
    }
    // 10% of the events again, each through another node than the first time.
    for n in (0..EVENTS).step_by(10) {
        let (status, answer) = ingest(&nodes[(n / 10 + 1) % 3], &[event(n)]);
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["events"][0]["duplicate"], true, "e-{n:04}: {answer}");
    }

    // The same new event through two nodes at the same instant: one of
    // them queues it, the other answers 503 (retry) and then "duplicate".
    const RACES: usize = 30;
    for race in 0..RACES {
        let racing = stock_event(&format!("race-{race}"), "RACE", EVENTS + race);
        let receipts: Vec<bool> = std::thread::scope(|scope| {
            let runs = [0, 1].map(|i| {
                let (node, racing) = (&nodes[(race + i) % 3], &racing);
                scope.spawn(move || {
                    loop {
                        let (status, answer) = ingest(node, std::slice::from_ref(racing));
                        match status {
                            202 => return answer["events"][0]["duplicate"].as_bool().unwrap(),
                            503 => std::thread::sleep(Duration::from_millis(20)),
                            other => panic!("{other}: {answer}"),
                        }
                    }
                })
            });
            runs.into_iter().map(|run| run.join().unwrap()).collect()
        });
        assert_eq!(
            receipts.iter().filter(|d| !**d).count(),
            1,
            "race-{race}: {receipts:?}"
        );
    }

    let total = EVENTS + RACES;
    wait_for("every event delivered", PATIENCE, || destination.count() >= total);
    std::thread::sleep(Duration::from_secs(1));
    let received = destination.received();
    let first = first_deliveries(&received);
    assert_eq!(first.len(), total);
    assert_eq!(received.len(), total, "no crash: nothing is sent twice");
    assert_sku_order(&first);
    // Every node sees the same queues (empty) through the shared store.
    for node in &nodes {
        let (status, channel) = node.get("/v1/channels/stock");
        assert_eq!(status, 200);
        assert_eq!(
            channel["queued"],
            json!({"transform": 0, "delivery": 0}),
            "{channel}"
        );
    }
}

#[test]
fn a_destination_rate_limit_holds_in_total_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let destination = sink(|_, _| Reply::status(200));
    let nodes = cluster(dir.path(), &nats, &destination, "rate-limit = \"20/s\"", 3);

    const EVENTS: usize = 90;
    for n in 0..EVENTS {
        let (status, _) = ingest(
            &nodes[n % 3],
            &[stock_event(&format!("r-{n}"), &format!("S{}", n % 9), n)],
        );
        assert_eq!(status, 202);
    }
    wait_for("every event delivered", PATIENCE, || {
        destination.count() >= EVENTS
    });
    let received = destination.received();
    // 20/s with a burst of 1: at most 21 requests in any 1 s window.
    for (i, first) in received.iter().enumerate() {
        let in_window = received[i..]
            .iter()
            .filter(|r| r.at - first.at < Duration::from_secs(1))
            .count();
        assert!(in_window <= 21, "{in_window} requests within 1 s of request {i}");
    }
    assert_sku_order(&first_deliveries(&received));
}

#[test]
fn killing_nodes_or_jetstream_loses_nothing_and_repeats_keep_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path());
    let destination = sink(|_, _| Reply::status(200));
    // Slow enough that kills land in the middle of delivery.
    let mut nodes = cluster(dir.path(), &nats, &destination, "rate-limit = \"300/s\"", 3);
    let mut accepted = 0;
    let send = |nodes: &[Sidecar], round: usize, count: usize| {
        for n in 0..count {
            let id = format!("k{round}-{n:03}");
            // Answers other than 202 (JetStream down) accept nothing; the client retries.
            for attempt in 0.. {
                let event = stock_event(&id, &format!("S{}", n % 20), round * 1000 + n);
                let (status, _) = ingest(&nodes[(n + attempt) % 3], &[event]);
                if status == 202 {
                    break;
                }
                assert!(attempt < 600, "{id} never accepted");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        count
    };
    for round in 0..3 {
        accepted += send(&nodes, round, 300);
        wait_for("delivery under way", PATIENCE, || {
            destination.count() >= accepted - 250
        });
        nodes[round].kill9();
        std::thread::sleep(Duration::from_millis(300));
        nodes[round].restart();
    }
    // JetStream itself dies mid-delivery and comes back on its files.
    accepted += send(&nodes, 3, 300);
    nats.kill9();
    std::thread::sleep(Duration::from_millis(500));
    nats.restart();
    accepted += send(&nodes, 4, 100);

    wait_for("every accepted event delivered", PATIENCE, || {
        first_deliveries(&destination.received()).len() >= accepted
    });
    let received = destination.received();
    let first = first_deliveries(&received);
    assert_eq!(first.len(), accepted);
    // Per SKU, first arrivals are in order.
    assert_sku_order(&first);
    // Through the node kills (rounds 0-2, before JetStream itself died)
    // every arrival is in order, repeats included: a node's unacknowledged
    // delivery goes to another node before anything later of its SKU.
    // nats-server killed with -9 may forget acknowledgements it had not
    // written yet and deliver such an update again after a newer one;
    // that repeat carries its first `Idempotency-Key` (checked above).
    let before_jetstream_died: Vec<&Received> = received
        .iter()
        .filter(|r| r.json()["qty"].as_u64().unwrap() < 3000)
        .collect();
    assert_sku_order(&before_jetstream_died);
}

#[test]
fn switches_activations_tokens_and_dead_letters_are_shared_by_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    // SKU `BAD` is refused once (a dead letter), then accepted.
    let refused = Arc::new(AtomicBool::new(false));
    let once = refused.clone();
    let destination = sink(move |r, _| {
        if r.json()["sku"] == "BAD" && !once.swap(true, Ordering::SeqCst) {
            Reply::status(400)
        } else {
            Reply::status(200)
        }
    });
    let nodes = cluster(dir.path(), &nats, &destination, "", 3);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // A module uploaded and activated on A is what B's events run through.
    let module = std::fs::read(guest("json-mapping")).unwrap();
    let (status, uploaded) = a.send(
        "PUT",
        "/v1/modules/mapper",
        Some(ACME),
        &module,
        "application/wasm",
    );
    assert_eq!(status, 201, "{uploaded}");
    let version = uploaded["version"].as_str().unwrap();
    let pipeline = json!({"steps": [{"module": "mapper", "version": version,
        "config": {"rules": [{"target": "sku", "source": "$.sku"}, {"target": "quantity", "source": "$.qty"}]}}]});
    let (status, answer) = a.send(
        "POST",
        "/v1/channels/stock/activate",
        Some(ACME),
        pipeline.to_string().as_bytes(),
        "",
    );
    assert_eq!(status, 200, "{answer}");
    wait_for("B runs the activation", PATIENCE, || {
        b.get("/v1/channels/stock").1["modules"] == answer["modules"]
    });
    for n in 0..6 {
        assert_eq!(ingest(b, &[stock_event(&format!("v-{n}"), "A", n)]).0, 202);
    }
    wait_for("six deliveries", PATIENCE, || destination.count() >= 6);
    for r in destination.received() {
        assert!(
            r.json().get("quantity").is_some(),
            "made by the activated mapping: {}",
            r.json()
        );
    }

    // Switched off on B: no node delivers until C switches it on.
    assert_eq!(b.post("/v1/channels/stock/disable", "").0, 200);
    wait_for("every node sees the switch", PATIENCE, || {
        nodes
            .iter()
            .all(|n| n.get("/v1/channels/stock").1["enabled"] == false)
    });
    for n in 0..5 {
        assert_eq!(ingest(a, &[stock_event(&format!("off-{n}"), "B", n)]).0, 202);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(destination.count(), 6, "held while off, on every node");
    assert_eq!(c.post("/v1/channels/stock/enable", "").0, 200);
    wait_for("the held events", PATIENCE, || destination.count() >= 11);

    // A dead letter, listed and replayed through another node than the ingest's.
    assert_eq!(ingest(a, &[stock_event("bad-1", "BAD", 1)]).0, 202);
    let mut letters = Value::Null;
    wait_for("a dead letter on C", PATIENCE, || {
        letters = c.get("/v1/dead-letters").1;
        letters.as_array().is_some_and(|l| !l.is_empty())
    });
    let id = letters[0]["id"].as_i64().unwrap();
    assert_eq!(letters[0]["reason"], "rejected-by-destination", "{letters}");
    let (status, shown) = b.get(&format!("/v1/dead-letters/{id}"));
    assert_eq!(status, 200);
    assert_eq!(shown["event_id"], "bad-1", "{shown}");
    let (status, answer) = c.post(&format!("/v1/dead-letters/{id}/replay"), "");
    assert_eq!(status, 202, "{answer}");
    wait_for("the replayed letter", PATIENCE, || {
        destination.count_where(|r| r.json()["sku"] == "BAD") >= 2
    });
    assert_eq!(a.get("/v1/dead-letters").1, json!([]));

    // A module that panics, activated on B, trips the breaker on whichever
    // node runs it, and every node holds the channel; a rollback on C
    // closes it everywhere.
    let hostile = std::fs::read(guest("hostile")).unwrap();
    let (status, uploaded) = b.send(
        "PUT",
        "/v1/modules/hostile",
        Some(ACME),
        &hostile,
        "application/wasm",
    );
    assert_eq!(status, 201, "{uploaded}");
    let steps = json!({"steps": [{"module": "hostile", "version": uploaded["version"], "config": {}}]});
    let (status, answer) = b.send(
        "POST",
        "/v1/channels/stock/activate",
        Some(ACME),
        steps.to_string().as_bytes(),
        "",
    );
    assert_eq!(status, 200, "{answer}");
    wait_for("every node runs the hostile module", PATIENCE, || {
        nodes
            .iter()
            .all(|n| n.get("/v1/channels/stock").1["modules"] == answer["modules"])
    });
    for (n, node) in nodes.iter().enumerate() {
        let event = json!({"id": format!("trap-{n}"), "kind": "inventory", "tenant": "acme",
                           "payload": {"sku": "T", "qty": n, "attack": "panic"}});
        assert_eq!(ingest(node, &[event]).0, 202);
    }
    wait_for("every node sees the open breaker", PATIENCE, || {
        nodes.iter().all(|n| {
            let channel = n.get("/v1/channels/stock").1;
            channel["enabled"] == false && channel["circuit-breaker"].is_string()
        })
    });
    assert_eq!(c.post("/v1/channels/stock/rollback", "").0, 200);
    wait_for("every node back on the mapper, breaker closed", PATIENCE, || {
        nodes.iter().all(|n| {
            let channel = n.get("/v1/channels/stock").1;
            channel["enabled"] == true
                && channel["circuit-breaker"].is_null()
                && channel["modules"] == json!(["mapper@".to_string() + &version[..12]])
        })
    });

    // A tenant and token made on A work on C.
    let (status, created) = a.send(
        "PUT",
        "/v1/tenants/globex",
        Some(crate::support::sidecar::ADMIN_TOKEN),
        b"",
        "",
    );
    assert_eq!(status, 201, "{created}");
    let (status, issued) = a.post("/v1/tenants/globex/tokens", "");
    assert_eq!(status, 201, "{issued}");
    let token = issued["token"].as_str().unwrap();
    wait_for("C accepts the token", PATIENCE, || {
        c.send("GET", "/v1/channels", Some(token), b"", "").0 == 200
    });
    assert_eq!(c.send("GET", "/v1/channels", Some(token), b"", "").1, json!([]));

    // A source a tenant makes on A takes B's webhooks at once; deleted on
    // B, C refuses them. (Shopify's scheme: base64 HMAC-SHA256 of the body.)
    let (status, made) = a.send(
        "PUT",
        "/v1/sources/shop",
        Some(ACME),
        br#"{"kind": "shopify", "secret": "cluster-shop-secret-01"}"#,
        "application/json",
    );
    assert_eq!(status, 201, "{made}");
    let webhook = |node: &Sidecar, id: &str| {
        use base64::Engine as _;
        use hmac::Mac;
        let body = br#"{"sku": "HOOK", "qty": 1}"#;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"cluster-shop-secret-01").unwrap();
        mac.update(body);
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        match ureq::post(&format!("{}/v1/sources/acme/shop", node.base))
            .set("x-shopify-hmac-sha256", &signature)
            .set("x-shopify-event-id", id)
            .set("x-shopify-topic", "inventory_levels/update")
            .send_bytes(body)
        {
            Ok(answer) => answer.status(),
            Err(ureq::Error::Status(status, _)) => status,
            Err(err) => panic!("{err}"),
        }
    };
    wait_for("B takes the source's webhooks", PATIENCE, || {
        webhook(b, "hook-1") == 202
    });
    let (status, _) = b.send("DELETE", "/v1/sources/shop", Some(ACME), b"", "");
    assert_eq!(status, 200);
    wait_for("C refuses them once it is deleted", PATIENCE, || {
        webhook(c, "hook-2") == 401
    });

    // A destination and a channel the tenant makes on A deliver what B
    // ingests, with no restart anywhere.
    let own = sink(|_, _| Reply::status(200));
    let (status, made) = a.send(
        "PUT",
        "/v1/destinations/own",
        Some(ACME),
        json!({"url": format!("http://{}/own/{{$.sku}}", own.addr), "method": "PUT"})
            .to_string()
            .as_bytes(),
        "application/json",
    );
    assert_eq!(status, 201, "{made}");
    let (status, made) = a.send(
        "PUT",
        "/v1/channels/own",
        Some(ACME),
        json!({"destination": "own", "steps": pipeline["steps"]})
            .to_string()
            .as_bytes(),
        "application/json",
    );
    assert_eq!(status, 201, "{made}");
    wait_for("B has the channel", PATIENCE, || {
        b.get("/v1/channels/own").0 == 200
    });
    assert_eq!(ingest(b, &[stock_event("own-1", "OWN", 7)]).0, 202);
    wait_for("the tenant's own channel delivers", PATIENCE, || {
        own.count_where(|r| r.path == "/own/OWN") == 1
    });

    // Deleted with ?discard=true on JetStream: what it holds to transform
    // (a channel with no steps holds its events) and to deliver (a
    // destination that answers 503) becomes dead letters on every node.
    let down = sink(|_, _| Reply::status(503));
    for (path, entry) in [
        (
            "/v1/destinations/down",
            json!({"url": format!("http://{}/down", down.addr), "retry": {"max-attempts": 100}}),
        ),
        (
            "/v1/channels/failing",
            json!({"destination": "down", "steps": pipeline["steps"]}),
        ),
        ("/v1/channels/holding", json!({"destination": "own"})),
    ] {
        let (status, made) = a.send(
            "PUT",
            path,
            Some(ACME),
            entry.to_string().as_bytes(),
            "application/json",
        );
        assert_eq!(status, 201, "{path}: {made}");
    }
    wait_for("B has both channels", PATIENCE, || {
        b.get("/v1/channels/failing").0 == 200 && b.get("/v1/channels/holding").0 == 200
    });
    let doomed: Vec<Value> = (0..3)
        .map(|n| stock_event(&format!("doomed-{n}"), &format!("D{n}"), n))
        .collect();
    assert_eq!(ingest(b, &doomed).0, 202);
    // (JetStream counts what waits for a transform in batches: one here.)
    wait_for("the events held by each channel", PATIENCE, || {
        b.get("/v1/channels/holding").1["queued"]["transform"] == 1
            && b.get("/v1/channels/failing").1["queued"]["delivery"] == 3
            && down.count() >= 3
    });
    for channel in ["holding", "failing"] {
        let path = format!("/v1/channels/{channel}");
        assert_eq!(a.send("DELETE", &path, Some(ACME), b"", "").0, 409, "{channel}");
        let (status, deleted) = a.send("DELETE", &format!("{path}?discard=true"), Some(ACME), b"", "");
        assert_eq!(status, 200, "{channel}: {deleted}");
        let letters = c.get(&format!("/v1/dead-letters?channel={channel}")).1;
        let mut ids: Vec<&str> = letters
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["reason"] == "discarded")
            .map(|l| l["event_id"].as_str().unwrap())
            .collect();
        ids.sort();
        assert_eq!(ids, ["doomed-0", "doomed-1", "doomed-2"], "{channel}: {letters}");
    }
    let failed_before = down.count();
    std::thread::sleep(Duration::from_secs(3));
    // An attempt in flight at the delete may finish (one per partition); none follows.
    assert!(
        down.count() <= failed_before + 3,
        "discarded deliveries are not retried"
    );
    // Nothing of the deleted channels is left in JetStream: no consumer of
    // their queues or of any partition of their deliveries, on any node.
    wait_for("the deleted channels' consumers gone", PATIENCE, || {
        let left = consumer_names(&nats);
        left.iter()
            .all(|name| !name.contains("holding") && !name.contains("failing"))
            && left.iter().any(|name| name == "transform_own")
    });
}

/// The durable consumers of both queue streams.
fn consumer_names(nats: &Nats) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let mut names = Vec::new();
        for stream in ["SLUICE_IN", "SLUICE_OUT"] {
            let stream = jetstream.get_stream(stream).await.unwrap();
            let mut listed = stream.consumer_names();
            while let Some(name) = futures_util::StreamExt::next(&mut listed).await {
                names.push(name.unwrap());
            }
        }
        names
    })
}

/// The hardening issue's JetStream case: two nodes, 12 stock updates of 6
/// SKUs spread over partitions, and a destination that answers its first
/// request with 429 and a `Retry-After` (20 s) longer than JetStream's
/// `ack_wait` (15 s). Every message a node holds, in an inbox too, is kept
/// alive while the destination is paused, so no other node takes it over:
/// the destination sees each update accepted once, in order per SKU, and
/// ends on every SKU's latest quantity. (Before, five of 12 were sent twice
/// and two SKUs ended on a stale quantity.) The 429 and `Retry-After`
/// follow RFC 6585 §4 and RFC 9110 §10.2.3.
#[test]
fn a_retry_after_longer_than_ack_wait_sends_nothing_twice_and_ends_on_the_latest_state() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let answered = AtomicBool::new(false);
    let destination = sink(move |_, _| {
        if answered.swap(true, Ordering::SeqCst) {
            Reply::status(200)
        } else {
            Reply {
                headers: vec![("Retry-After".into(), "20".into())],
                ..Reply::status(429)
            }
        }
    });
    let extra = "[destination.retry]\ninitial-backoff-ms = 100\nmax-backoff-ms = 30000";
    let nodes = cluster(dir.path(), &nats, &destination, extra, 2);

    const SKUS: usize = 6;
    let event = |n: usize| stock_event(&format!("u-{n:02}"), &format!("SKU-{}", n % SKUS), n);
    for (node, updates) in [(0, 0..SKUS), (1, SKUS..2 * SKUS)] {
        let events: Vec<Value> = updates.map(event).collect();
        let (status, answer) = ingest(&nodes[node], &events);
        assert_eq!((status, &answer["accepted"]), (202, &json!(SKUS)), "{answer}");
    }
    let accepted = |received: &[Received]| received.len().saturating_sub(1);
    wait_for("every update accepted", PATIENCE, || {
        accepted(&destination.received()) >= 2 * SKUS
    });
    // Long enough for a message taken over by the other node to arrive too.
    std::thread::sleep(Duration::from_secs(3));

    let received = destination.received();
    let mut sent: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &received {
        *sent.entry(r.header("idempotency-key").unwrap()).or_default() += 1;
    }
    let first_key = received[0].header("idempotency-key").unwrap();
    for (key, times) in &sent {
        let expected = if *key == first_key { 2 } else { 1 };
        assert_eq!(*times, expected, "{key} was sent {times} times: {sent:?}");
    }
    assert_eq!(sent.len(), 2 * SKUS);
    assert_sku_order(&first_deliveries(&received));
    // The last accepted quantity of each SKU is its latest.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for r in &received[1..] {
        let body = r.json();
        last.insert(
            body["sku"].as_str().unwrap().to_string(),
            body["qty"].as_u64().unwrap(),
        );
    }
    for sku in 0..SKUS {
        assert_eq!(last[&format!("SKU-{sku}")], (sku + SKUS) as u64, "{last:?}");
    }
}

/// Caps the messages of the events stream (`SLUICE_IN`) at `bytes`, as
/// JetStream's `max_msg_size` stream setting does, so that one publish of
/// a request is refused by the real server while the others are stored.
fn cap_inbound_messages(nats: &Nats, bytes: i32) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let stream = jetstream.get_stream("SLUICE_IN").await.unwrap();
        let mut config = stream.cached_info().config.clone();
        config.max_message_size = bytes;
        jetstream.update_stream(config).await.unwrap();
    });
}

/// The hardening issue's failed ingest: a request whose events go out in
/// several messages, one of which JetStream refuses. Nothing of the
/// request counts: the batches it stored are inert, its claims are
/// released, and the client's retry (at once, not after the claims'
/// lease) is delivered exactly once. (Before, the stored batches were
/// delivered although the answer was an error, and a retry delivered them
/// again.)
#[test]
fn a_request_that_fails_half_way_delivers_nothing_and_its_retry_delivers_once() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let destination = sink(|_, _| Reply::status(200));
    let config = format!(
        "queue = \"{}\"\nmax-body-bytes = 33554432\n[[tenant]]\nname = \"acme\"\ntoken-sha256 = [\"{}\"]\n{}",
        nats.url(),
        token_hash(ACME),
        stock_config(destination.addr, "", "qty")
    );
    let node = Sidecar::start(dir.path(), &config);
    // Each 5 MB event is a message of its own (the server takes 8 MB);
    // the stream takes at most 5.5 MB, so the 6 MB one is refused.
    cap_inbound_messages(&nats, 5_500_000);
    let event = |id: &str, sku: &str, padding: usize| json!({"id": id, "kind": "inventory", "tenant": "acme", "payload": {"sku": sku, "qty": 1, "pad": "x".repeat(padding)}});
    let failing = [
        event("f-1", "A", 5_000_000),
        event("f-2", "B", 6_000_000),
        event("f-3", "C", 5_000_000),
    ];
    let (status, answer) = ingest(&node, &failing);
    assert!(status >= 500, "{status}: {answer}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(destination.count(), 0, "a failed request delivered events");

    // The retry, with the large event made smaller, is taken at once.
    let retry = [
        event("f-1", "A", 5_000_000),
        event("f-2", "B", 10),
        event("f-3", "C", 5_000_000),
    ];
    let (status, answer) = ingest(&node, &retry);
    assert_eq!((status, &answer["accepted"]), (202, &json!(3)), "{answer}");
    wait_for("the retry delivered", PATIENCE, || destination.count() >= 3);
    std::thread::sleep(Duration::from_secs(2));
    let mut skus: Vec<String> = destination
        .received()
        .iter()
        .map(|r| r.json()["sku"].as_str().unwrap().to_string())
        .collect();
    skus.sort();
    assert_eq!(skus, ["A", "B", "C"]);
}

/// A poll source on a shared store: one node polls at a time (under a
/// lease), the cursor is shared, and when that node is killed another
/// takes over from the page it had not finished.
#[test]
fn one_node_polls_a_source_at_a_time_and_another_takes_over_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let destination = sink(|_, _| Reply::status(200));
    // Two pages, the second held back (429) until the test lets it through.
    let hold = Arc::new(AtomicBool::new(true));
    let held = hold.clone();
    let catalog = sink(move |request, _| {
        let page = |items: Value, next: Value| Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: json!({"items": items, "next": next}).to_string(),
        };
        if request.query.contains("cursor=p2") {
            if held.load(Ordering::SeqCst) {
                return Reply {
                    status: 429,
                    headers: vec![("retry-after".into(), "1".into())],
                    body: String::new(),
                };
            }
            return page(json!([{"id": 3, "sku": "P-3", "qty": 3}]), Value::Null);
        }
        page(
            json!([{"id": 1, "sku": "P-1", "qty": 1}, {"id": 2, "sku": "P-2", "qty": 2}]),
            json!("p2"),
        )
    });
    let source = format!(
        "[[source]]\nname = \"pos\"\ntenant = \"acme\"\nkind = \"poll\"\nurl = \"http://{}/items\"\nevery = \"1h\"\n\
         records = \"$.items[*]\"\ntimeout-ms = 1000\nnext = {{ cursor = \"$.next\", param = \"cursor\" }}\n",
        catalog.addr
    );
    let config = format!(
        "queue = \"{}\"\n[[tenant]]\nname = \"acme\"\ntoken-sha256 = [\"{}\"]\n{}{source}",
        nats.url(),
        token_hash(ACME),
        stock_config(destination.addr, "", "qty")
    );
    let mut nodes: Vec<Sidecar> = (0..2)
        .map(|node| {
            let folder = dir.path().join(format!("node{node}"));
            std::fs::create_dir_all(&folder).unwrap();
            Sidecar::start(&folder, &config)
        })
        .collect();
    wait_for("page 1 delivered", PATIENCE, || destination.count() == 2);
    wait_for("page 2 tried", PATIENCE, || {
        catalog.count_where(|r| r.query.contains("cursor=p2")) >= 2
    });
    // Only the lease holder reads: page 1 once, not once per node.
    assert_eq!(catalog.count_where(|r| !r.query.contains("cursor")), 1);
    // Find the holder by its log, kill it, and let page 2 through.
    let holder = nodes
        .iter()
        .position(|node| node.logs().iter().any(|line| line["source"] == "acme/pos"))
        .expect("the polling node logged page 2's 429");
    nodes[holder].kill9();
    hold.store(false, Ordering::SeqCst);
    wait_for("the other node delivers page 2", PATIENCE, || {
        destination.count() == 3
    });
    // It resumed from the shared cursor: page 1 was not read again.
    assert_eq!(catalog.count_where(|r| !r.query.contains("cursor")), 1);
    let skus: BTreeSet<String> = destination
        .received()
        .iter()
        .map(|r| r.json()["sku"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(skus, BTreeSet::from(["P-1".into(), "P-2".into(), "P-3".into()]));
    let (status, shown) = nodes[1 - holder].send("GET", "/v1/sources/pos", Some(ACME), b"", "");
    assert_eq!(status, 200, "{shown}");
    assert!(shown["cursor"]["completed_ms"].is_i64(), "{shown}");
}

/// The consistency issue on JetStream: two nodes, 20 SKUs × 10 stock
/// updates in one burst to a destination limited to 20 requests a second,
/// with `coalesce` and `skip-unchanged`. One node is killed with -9 in the
/// middle: the destination still ends on every SKU's latest state, never
/// goes back in time for a SKU, spends far fewer requests than updates,
/// and every update is either delivered or superseded. The final states
/// sent again cost no request.
#[test]
fn coalescing_on_jetstream_ends_on_the_latest_state_through_a_kill_9() {
    use crate::consistency::{counter, destination_state};
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let destination = sink(|_, _| Reply::status(200));
    let extra = "rate-limit = \"20/s\"\nburst = 1\ncoalesce = true\nskip-unchanged = true";
    let mut nodes = cluster(dir.path(), &nats, &destination, extra, 2);
    const SKUS: usize = 20;
    const UPDATES: usize = 10;
    let mut events = Vec::new();
    for qty in 1..=UPDATES {
        for sku in 0..SKUS {
            events.push(stock_event(&format!("c-{sku}-{qty}"), &format!("SKU-{sku}"), qty));
        }
    }
    let (status, answer) = ingest(&nodes[0], &events);
    assert_eq!(status, 202, "{answer}");
    wait_for("a few deliveries", PATIENCE, || destination.count() >= 5);
    nodes[1].kill9();
    let wanted: BTreeMap<String, u64> = (0..SKUS).map(|s| (format!("SKU-{s}"), UPDATES as u64)).collect();
    wait_for("every SKU at its latest state", PATIENCE, || {
        destination_state(&destination.received()) == wanted
    });
    nodes[1].restart();
    wait_for("nothing left queued", PATIENCE, || {
        nodes[0].get("/v1/channels/stock").1["queued"]["delivery"] == 0
    });
    let requests = destination.count();
    println!("{SKUS} SKUs x {UPDATES} updates on JetStream: {requests} requests");
    assert!(requests < SKUS * UPDATES / 2, "{requests} requests");
    // A repeat after the kill resends the same output with the same key;
    // per SKU nothing older ever follows something newer.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for r in destination.received() {
        let body = r.json();
        let (sku, qty) = (
            body["sku"].as_str().unwrap().to_string(),
            body["qty"].as_u64().unwrap(),
        );
        assert!(
            last.get(&sku).is_none_or(|before| *before <= qty),
            "{sku}: {qty} after {last:?}"
        );
        last.insert(sku, qty);
    }
    let total = |name: &str| -> u64 { nodes.iter().map(|n| counter(&n.metrics(), name)).sum() };
    assert!(
        total(r#"sluice_deliveries_superseded_total{destination="portal"}"#) > 0,
        "superseded deliveries are counted"
    );

    // The final states again, under new ids, through both nodes: no request.
    let again: Vec<Value> = (0..SKUS)
        .map(|sku| stock_event(&format!("again-{sku}"), &format!("SKU-{sku}"), UPDATES))
        .collect();
    assert_eq!(ingest(&nodes[1], &again).0, 202);
    wait_for("every resent state counted unchanged", PATIENCE, || {
        total(r#"sluice_deliveries_unchanged_total{destination="portal"}"#) == SKUS as u64
    });
    assert_eq!(destination.count(), requests, "an unchanged state was sent");
}
