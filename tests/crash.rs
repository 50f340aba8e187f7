//! Crash safety: `kill -9` (and once SIGTERM) the real sidecar again and again while it
//! ingests and delivers; after the last restart every accepted event has
//! been delivered, and every duplicate delivery carries the same
//! idempotency key as the first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::support::sidecar::{Sidecar, stock_config, wait_for};
use serde_json::{Value, json};
use sluice_server::sink::{Reply, Responder, Sink};

const ROUNDS: usize = 5;
const EVENTS_PER_ROUND: usize = 120;

#[test]
fn every_accepted_event_is_delivered_across_kill_9_rounds() {
    let respond: Arc<Responder> = Arc::new(|_, _| Reply::status(200));
    let destination = Sink::start("127.0.0.1:0".parse().unwrap(), respond).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Paced at 100/s so each kill lands mid-delivery.
    let config = stock_config(destination.addr, "rate-limit = \"100/s\"\nburst = 10", "qty");
    let mut sidecar = Sidecar::start(dir.path(), &config);
    let mut accepted = BTreeSet::new();
    let mut next = 0;
    for round in 0..ROUNDS {
        // Several small ingests, so that some land while deliveries are in flight.
        for _ in 0..6 {
            let batch: String = (0..EVENTS_PER_ROUND / 6)
                .map(|_| {
                    next += 1;
                    let event = json!({
                        "id": format!("e-{next}"),
                        "kind": "inventory",
                        "tenant": "acme",
                        "payload": {"sku": format!("SKU-{}", next % 17), "qty": next},
                    });
                    format!("{event}\n")
                })
                .collect();
            let (status, body) = sidecar.post("/v1/events", &batch);
            assert_eq!(status, 202, "{body}");
            for receipt in body["events"].as_array().unwrap() {
                accepted.insert(receipt["id"].as_str().unwrap().to_string());
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        // Kill at a varying moment after the last ingest.
        std::thread::sleep(Duration::from_millis(50 + 70 * round as u64));
        let delivered_before = destination.count();
        if round == 2 {
            // One round ends with SIGTERM instead: a clean, draining stop mid-delivery.
            let status = sidecar.terminate();
            assert!(status.success(), "SIGTERM mid-delivery: {status:?}");
            eprintln!("round {round}: SIGTERM after {delivered_before} requests");
        } else {
            sidecar.kill9();
            eprintln!("round {round}: killed after {delivered_before} requests");
        }
        sidecar.restart();
    }
    let delivered = || {
        destination
            .received()
            .iter()
            .map(|r| r.header("x-sluice-source-event-id").unwrap().to_string())
            .collect::<BTreeSet<_>>()
    };
    assert!(
        delivered().len() < accepted.len(),
        "the kills should land before everything is delivered"
    );
    wait_for("every accepted event delivered", Duration::from_secs(120), || {
        delivered().len() >= accepted.len()
    });
    std::thread::sleep(Duration::from_millis(300));

    let received = destination.received();
    assert_eq!(delivered(), accepted, "exactly the accepted events, all of them");
    // Duplicates are allowed only with the key (and body) of the first delivery.
    let mut by_event: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for request in &received {
        by_event
            .entry(request.header("x-sluice-source-event-id").unwrap().to_string())
            .or_default()
            .push((
                request.header("idempotency-key").unwrap().to_string(),
                request.json(),
            ));
    }
    let mut duplicates = 0;
    for (event, sends) in &by_event {
        duplicates += sends.len() - 1;
        assert!(
            sends.iter().all(|s| s == &sends[0]),
            "{event} was sent with different keys or bodies: {sends:?}"
        );
    }
    let keys: BTreeSet<&str> = received
        .iter()
        .map(|r| r.header("idempotency-key").unwrap())
        .collect();
    assert_eq!(
        keys.len(),
        accepted.len(),
        "one idempotency key per accepted event"
    );
    eprintln!(
        "{} accepted, {} requests, {duplicates} duplicates (same key), {ROUNDS} stops",
        accepted.len(),
        received.len()
    );
    assert_eq!(accepted.len(), ROUNDS * EVENTS_PER_ROUND);
}
