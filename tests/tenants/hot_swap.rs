//! Activation swaps a channel's pipeline under load, and rollback returns.

use super::*;

/// A different version of the same behaviour: the component with a custom section appended.
fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    let mut payload = vec![tag.len() as u8];
    payload.extend(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    out.push(payload.len() as u8);
    out.extend(payload);
    out
}

#[test]
fn activation_hot_swaps_under_load_and_rollback_returns() {
    let destination = sink();
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path(), &config(&destination, ""));
    let base = wasm("json-mapping");
    let v1 = upload(&sidecar, ACME, "mapper", &variant(&base, "v1")).1["version"]
        .as_str()
        .unwrap()
        .to_string();
    let v2 = upload(&sidecar, ACME, "mapper", &variant(&base, "v2")).1["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(v1, v2);
    let pipeline = |version: &str| {
        json!({"steps": [{"module": "mapper", "version": &version[..12],
                          "config": {"rules": [{"target": "sku", "source": "$.sku"}, {"target": "qty", "source": "$.qty"}]}}]})
        .to_string()
    };
    let (status, answer) = sidecar.send(
        "POST",
        "/v1/channels/acme-stock/activate",
        Some(ACME),
        pipeline(&v1).as_bytes(),
        "",
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["modules"], json!([format!("mapper@{}", &v1[..12])]));

    // Ingest continuously while v2 is activated, then rolled back.
    const TOTAL: usize = 300;
    let base_url = sidecar.base.clone();
    let ingest = std::thread::spawn(move || {
        for batch in 0..TOTAL / 10 {
            let body: String = (0..10)
                .map(|i| {
                    let n = batch * 10 + i;
                    format!(
                        "{}\n",
                        event(
                            &format!("e-{n:03}"),
                            "acme",
                            json!({"sku": format!("S{}", n % 7), "qty": n})
                        )
                    )
                })
                .collect();
            let response = ureq::post(&format!("{base_url}/v1/events"))
                .set("authorization", &format!("Bearer {ACME}"))
                .send_string(&body)
                .unwrap();
            assert_eq!(response.status(), 202);
            std::thread::sleep(Duration::from_millis(15));
        }
    });
    wait_for("some deliveries", PATIENCE, || destination.count() >= 60);
    let (status, answer) = sidecar.send(
        "POST",
        "/v1/channels/acme-stock/activate",
        Some(ACME),
        pipeline(&v2).as_bytes(),
        "",
    );
    assert_eq!(status, 200, "{answer}");
    wait_for("deliveries on v2", PATIENCE, || destination.count() >= 150);
    let (status, answer) = sidecar.send("POST", "/v1/channels/acme-stock/rollback", Some(ACME), b"", "");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["modules"], json!([format!("mapper@{}", &v1[..12])]));
    ingest.join().unwrap();
    wait_for("every event delivered", PATIENCE, || destination.count() >= TOTAL);
    std::thread::sleep(Duration::from_millis(300));

    let received = destination.received();
    assert_eq!(received.len(), TOTAL, "each event exactly once");
    let keys: BTreeSet<&str> = received
        .iter()
        .map(|r| r.header("idempotency-key").unwrap())
        .collect();
    assert_eq!(keys.len(), TOTAL, "one idempotency key per event");
    // By event number, versions form runs v1…, v2…, v1…: each batch finished on the version it took.
    let by_event: BTreeMap<String, String> = received
        .iter()
        .map(|r| {
            let version = r.header("x-sluice-module-versions").unwrap();
            (
                r.header("x-sluice-source-event-id").unwrap().to_string(),
                version.to_string(),
            )
        })
        .collect();
    let runs: Vec<&String> = by_event.values().fold(Vec::new(), |mut runs, v| {
        if runs.last() != Some(&v) {
            runs.push(v);
        }
        runs
    });
    let name = |v: &str| format!("mapper@{}", &v[..12]);
    assert_eq!(runs, [&name(&v1), &name(&v2), &name(&v1)], "{by_event:?}");
    // Rolling back past every activation returns to the config's pipeline, then there is nothing left.
    assert_eq!(
        sidecar
            .send("POST", "/v1/channels/acme-stock/rollback", Some(ACME), b"", "")
            .0,
        200
    );
    let (_, channel) = sidecar.send("GET", "/v1/channels/acme-stock", Some(ACME), b"", "");
    assert!(
        channel["modules"][0]
            .as_str()
            .unwrap()
            .starts_with("json-mapping@"),
        "{channel}"
    );
    assert_eq!(
        code(&sidecar.send("POST", "/v1/channels/acme-stock/rollback", Some(ACME), b"", "")),
        (409, "nothing-to-roll-back")
    );
}
