//! Consistency under a rate limit (the consistency issue's items 1 and 2)
//! on SQLite: a real sidecar, real components, and a real destination on
//! loopback limited to a few requests a second. `coalesce` sends only each
//! SKU's latest queued state, `skip-unchanged` sends nothing the
//! destination already has, and `kill -9` in the middle loses nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_server::sink::{Received, Reply, Responder, Sink};

use crate::support::sidecar::{Sidecar, stock_config, wait_for};

const PATIENCE: Duration = Duration::from_secs(90);

fn sink(respond: impl Fn(&Received, &[Received]) -> Reply + Send + Sync + 'static) -> Sink {
    let respond: Arc<Responder> = Arc::new(respond);
    Sink::start("127.0.0.1:0".parse().unwrap(), respond).unwrap()
}

fn stock_event(id: &str, sku: &str, qty: u32) -> Value {
    json!({"id": id, "kind": "inventory", "tenant": "acme", "payload": {"sku": sku, "qty": qty}})
}

fn jsonl(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

/// `skus` SKUs × `updates` stock levels each (1..=updates), interleaved as
/// a mass update fires them, ids prefixed with `run`.
fn burst(run: &str, skus: usize, updates: u32) -> Vec<Value> {
    let mut events = Vec::new();
    for qty in 1..=updates {
        for sku in 0..skus {
            events.push(stock_event(
                &format!("{run}-{sku}-{qty}"),
                &format!("SKU-{sku}"),
                qty,
            ));
        }
    }
    events
}

/// The state the destination holds: each SKU's last accepted quantity.
pub fn destination_state(received: &[Received]) -> BTreeMap<String, u64> {
    let mut state = BTreeMap::new();
    for request in received {
        let body = request.json();
        if let (Some(sku), Some(qty)) = (body["sku"].as_str(), body["qty"].as_u64()) {
            state.insert(sku.to_string(), qty);
        }
    }
    state
}

/// One counter of the Prometheus text, 0 when it is absent.
pub fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn all_at(skus: usize, qty: u64) -> BTreeMap<String, u64> {
    (0..skus).map(|sku| (format!("SKU-{sku}"), qty)).collect()
}

#[test]
fn a_burst_reaches_every_skus_latest_state_in_few_requests_and_unchanged_states_cost_none() {
    let destination = sink(|_, _| Reply::status(200));
    let dir = tempfile::tempdir().unwrap();
    let extra = "rate-limit = \"20/s\"\nburst = 1\ncoalesce = true\nskip-unchanged = true";
    let mut sidecar = Sidecar::start(dir.path(), &stock_config(destination.addr, extra, "qty"));
    let (skus, updates) = (20, 10);

    // 200 updates in one burst: the destination ends on every SKU's last.
    let (status, body) = sidecar.post("/v1/events", &jsonl(&burst("a", skus, updates)));
    assert_eq!(status, 202, "{body}");
    wait_for("every SKU at its latest state", PATIENCE, || {
        destination_state(&destination.received()) == all_at(skus, updates as u64)
    });
    wait_for("every delivery settled", PATIENCE, || {
        sidecar.get("/v1/channels/stock").1["queued"]["delivery"] == 0
    });
    let requests = destination.count();
    let metrics = sidecar.metrics();
    let delivered = counter(&metrics, r#"sluice_delivered_total{destination="portal"}"#);
    let superseded = counter(
        &metrics,
        r#"sluice_deliveries_superseded_total{destination="portal"}"#,
    );
    println!("{skus} SKUs x {updates} updates: {requests} requests, {superseded} superseded");
    // Without coalescing it would be all 200; every output is accounted for.
    assert!(requests <= 3 * skus, "{requests} requests for {skus} SKUs");
    assert_eq!(delivered as usize, requests);
    assert_eq!(
        delivered + superseded,
        (skus * updates as usize) as u64,
        "{metrics}"
    );
    // A coalesced delivery carries the newest output's own identity and
    // key: the key a plain delivery of that output would carry.
    let mut keys = std::collections::BTreeSet::new();
    for request in destination.received() {
        let body = request.json();
        let (sku, qty) = (body["sku"].as_str().unwrap(), body["qty"].as_u64().unwrap());
        let source = request.header("x-sluice-source-event-id").unwrap();
        assert_eq!(source, format!("a-{}-{qty}", &sku[4..]), "{sku} {qty}");
        assert!(keys.insert(request.header("idempotency-key").unwrap().to_string()));
    }
    // Per SKU, what arrived never went back in time.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for request in destination.received() {
        let body = request.json();
        let (sku, qty) = (
            body["sku"].as_str().unwrap().to_string(),
            body["qty"].as_u64().unwrap(),
        );
        assert!(
            last.get(&sku).is_none_or(|before| *before < qty),
            "{sku}: {qty} after {last:?}"
        );
        last.insert(sku, qty);
    }
    // The page's history counts them too.
    let history = sidecar.get("/v1/channels/stock/history?minutes=5").1;
    let counted: u64 = history["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["superseded"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, superseded, "{history}");

    // The final states again, under new event ids: nothing is sent.
    let again: Vec<Value> = (0..skus)
        .map(|sku| stock_event(&format!("again-{sku}"), &format!("SKU-{sku}"), updates))
        .collect();
    assert_eq!(sidecar.post("/v1/events", &jsonl(&again)).0, 202);
    wait_for("every resent state counted unchanged", PATIENCE, || {
        counter(
            &sidecar.metrics(),
            r#"sluice_deliveries_unchanged_total{destination="portal"}"#,
        ) == skus as u64
    });
    assert_eq!(destination.count(), requests, "an unchanged state was sent");

    // A changed one is sent, after a restart: the fingerprints are durable.
    sidecar.kill9();
    sidecar.restart();
    let changed = [
        stock_event("changed-0", "SKU-0", 99),
        stock_event("same-1", "SKU-1", updates),
    ];
    assert_eq!(sidecar.post("/v1/events", &jsonl(&changed)).0, 202);
    wait_for("the changed state delivered", PATIENCE, || {
        destination_state(&destination.received())["SKU-0"] == 99
    });
    wait_for("the unchanged one counted", PATIENCE, || {
        counter(
            &sidecar.metrics(),
            r#"sluice_deliveries_unchanged_total{destination="portal"}"#,
        ) == 1
    });
    assert_eq!(destination.count(), requests + 1);
}

/// A dead letter resent by hand goes even though the destination accepted
/// the same output since.
#[test]
fn a_dead_letter_resent_by_hand_is_sent_even_when_unchanged() {
    // The destination refuses its first request for SKU R, then accepts.
    let destination = sink(|request, earlier| {
        let first = !earlier.iter().any(|r| r.json()["sku"] == "R");
        if first && request.json()["sku"] == "R" {
            Reply::status(400)
        } else {
            Reply::status(200)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(
        dir.path(),
        &stock_config(destination.addr, "skip-unchanged = true", "qty"),
    );
    assert_eq!(
        sidecar
            .post("/v1/events", &stock_event("r-1", "R", 7).to_string())
            .0,
        202
    );
    wait_for("the refusal dead-lettered", PATIENCE, || {
        sidecar
            .get("/v1/dead-letters")
            .1
            .as_array()
            .is_some_and(|l| l.len() == 1)
    });
    assert_eq!(
        sidecar
            .post("/v1/events", &stock_event("r-2", "R", 7).to_string())
            .0,
        202
    );
    wait_for("the same state accepted", PATIENCE, || destination.count() == 2);
    let letter = sidecar.get("/v1/dead-letters").1[0]["id"].clone();
    let (status, replayed) = sidecar.post(&format!("/v1/dead-letters/{letter}/replay"), "");
    assert_eq!(status, 202, "{replayed}");
    wait_for("the resend sent", PATIENCE, || destination.count() == 3);
    assert_eq!(destination.received()[2].json(), json!({"sku": "R", "qty": 7}));
}

/// `kill -9` while coalescing: the destination still ends on every SKU's
/// latest state, and nothing is left queued.
#[test]
fn kill_9_while_coalescing_loses_nothing() {
    let destination = sink(|_, _| Reply::status(200));
    let dir = tempfile::tempdir().unwrap();
    let extra = "rate-limit = \"5/s\"\nburst = 1\ncoalesce = true";
    let mut sidecar = Sidecar::start(dir.path(), &stock_config(destination.addr, extra, "qty"));
    let (skus, updates) = (10, 8);
    assert_eq!(
        sidecar.post("/v1/events", &jsonl(&burst("k", skus, updates))).0,
        202
    );
    wait_for("a few deliveries", PATIENCE, || destination.count() >= 3);
    sidecar.kill9();
    sidecar.restart();
    wait_for("every SKU at its latest state", PATIENCE, || {
        destination_state(&destination.received()) == all_at(skus, updates as u64)
    });
    wait_for("nothing left queued", PATIENCE, || {
        let queued = &sidecar.get("/v1/channels/stock").1["queued"];
        queued["delivery"] == 0 && queued["transform"] == 0
    });
    assert!(
        destination.count() < skus * updates as usize,
        "coalesced across the restart"
    );
}

/// Priority within one destination's budget (item 3): 20 product updates
/// queued ahead of 5 stock updates, to a destination that takes one
/// request at a time: the stock updates go first (inventory has 4 shares
/// to a product's 1 by default), and the products still get their share.
#[test]
fn stock_updates_go_ahead_of_queued_product_updates_and_products_still_move() {
    let destination = sink(|_, _| Reply::status(200));
    let dir = tempfile::tempdir().unwrap();
    let extra = "rate-limit = \"10/s\"\nburst = 1";
    let sidecar = Sidecar::start(dir.path(), &stock_config(destination.addr, extra, "qty"));
    let mut events: Vec<Value> = (0..20)
        .map(|n| json!({"id": format!("p-{n}"), "kind": "product", "tenant": "acme", "payload": {"sku": format!("P-{n}"), "qty": n}}))
        .collect();
    events.extend((0..5).map(|n| stock_event(&format!("i-{n}"), &format!("I-{n}"), n)));
    assert_eq!(sidecar.post("/v1/events", &jsonl(&events)).0, 202);
    wait_for("every update delivered", PATIENCE, || destination.count() == 25);
    let order: String = destination
        .received()
        .iter()
        .map(|r| {
            if r.json()["sku"].as_str().unwrap().starts_with('I') {
                'i'
            } else {
                'p'
            }
        })
        .collect();
    let last_stock = order.rfind('i').unwrap();
    assert!(last_stock < 8, "stock updates waited behind products: {order}");
    assert!(
        order[..last_stock].contains('p'),
        "products got no share: {order}"
    );
}

/// Coalescing while the destination is down: updates keep arriving during
/// the outage; once it is back, each SKU is sent its latest state, with
/// no dead letter and a handful of requests.
#[test]
fn coalescing_while_the_destination_is_down_sends_only_the_latest_once_it_is_back() {
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let answer = down.clone();
    let destination = sink(move |_, _| {
        if answer.load(std::sync::atomic::Ordering::SeqCst) {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let extra = "coalesce = true\n[destination.retry]\ninitial-backoff-ms = 100\nmax-backoff-ms = 500\nmax-attempts = 100";
    let sidecar = Sidecar::start(dir.path(), &stock_config(destination.addr, extra, "qty"));
    let (skus, updates) = (10, 10);
    for qty in 1..=updates {
        let round: Vec<Value> = (0..skus)
            .map(|sku| stock_event(&format!("d-{sku}-{qty}"), &format!("SKU-{sku}"), qty))
            .collect();
        assert_eq!(sidecar.post("/v1/events", &jsonl(&round)).0, 202);
        std::thread::sleep(Duration::from_millis(200));
    }
    let failed = destination.count();
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_for("every SKU at its latest state", PATIENCE, || {
        let accepted: Vec<Received> = destination.received().into_iter().skip(failed).collect();
        destination_state(&accepted) == all_at(skus, updates as u64)
    });
    wait_for("nothing left queued", PATIENCE, || {
        sidecar.get("/v1/channels/stock").1["queued"]["delivery"] == 0
    });
    let after = destination.count() - failed;
    println!("down: {failed} refused attempts; back: {after} requests for {skus} SKUs");
    assert!(after <= 2 * skus, "{after} requests once it was back");
    assert_eq!(sidecar.get("/v1/dead-letters").1, json!([]));
}
