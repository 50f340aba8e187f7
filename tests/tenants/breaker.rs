//! The circuit breaker: repeated faults pause a channel until a new activation.

use super::*;

#[test]
fn repeated_faults_pause_the_channel_until_a_new_activation() {
    let destination = sink();
    let dir = tempfile::tempdir().unwrap();
    // Acme's modules get a 300 ms deadline and the breaker opens after 3 faults.
    let extra = "circuit-breaker = 3\n[tenant.limits]\ntimeout-ms = 300";
    let mut sidecar = Sidecar::start(dir.path(), &config(&destination, extra));
    let hostile = upload(&sidecar, ACME, "hostile", &wasm("hostile")).1["version"]
        .as_str()
        .unwrap()
        .to_string();
    // The mapper goes up through the CLI, with a fixture case that must pass.
    let fixtures = dir.path().join("mapper-fixtures/sku-only");
    std::fs::create_dir_all(&fixtures).unwrap();
    std::fs::write(
        fixtures.join("input.json"),
        event("f-1", "acme", json!({"sku": "A"})),
    )
    .unwrap();
    std::fs::write(
        fixtures.join("config.json"),
        json!({"rules": [{"target": "sku", "source": "$.sku"}]}).to_string(),
    )
    .unwrap();
    let expected = json!({"outcome": "emit", "events": [{"id": "f-1", "kind": "inventory", "tenant": "acme", "payload": {"sku": "A"}}]});
    std::fs::write(fixtures.join("expected.json"), expected.to_string()).unwrap();
    let component = guest("json-mapping");
    let (ok, pushed) = sidecar.cli_as(
        ACME,
        &[
            "modules",
            "push",
            component.to_str().unwrap(),
            "--name",
            "mapper",
            "--fixtures",
            dir.path().join("mapper-fixtures").to_str().unwrap(),
        ],
    );
    assert!(ok, "{pushed}");
    assert_eq!(pushed["fixtures"][0]["status"], "passed", "{pushed}");
    let mapper = pushed["version"].as_str().unwrap().to_string();
    let (ok, listed) = sidecar.cli_as(ACME, &["modules", "list"]);
    assert!(ok && listed.as_array().unwrap().len() == 2, "{listed}");
    let activate = |sidecar: &Sidecar, module: &str, version: &str, config: Value| {
        let body = json!({"steps": [{"module": module, "version": version, "config": config}]}).to_string();
        sidecar.send(
            "POST",
            "/v1/channels/acme-stock/activate",
            Some(ACME),
            body.as_bytes(),
            "",
        )
    };
    assert_eq!(activate(&sidecar, "hostile", &hostile, json!({})).0, 200);
    // Files and sockets are not there for a tenant's module: each attempt fails its own event.
    for attack in ["open-socket", "read-file"] {
        let probe = event("probe", "acme", json!({"sku": "A", "attack": attack}));
        let (status, outcome) = sidecar.send(
            "POST",
            "/v1/channels/acme-stock/transform",
            Some(ACME),
            probe.as_bytes(),
            "",
        );
        assert_eq!((status, &outcome["outcome"]), (200, &json!("error")), "{outcome}");
        assert!(
            outcome["error"]["message"]
                .as_str()
                .unwrap_or(&outcome.to_string())
                .contains("failed"),
            "{outcome}"
        );
    }

    let attacks: String = (0..4)
        .map(|n| {
            format!(
                "{}\n",
                event(
                    &format!("bad-{n}"),
                    "acme",
                    json!({"sku": "A", "qty": n, "attack": "loop"})
                )
            )
        })
        .collect();
    assert_eq!(
        sidecar
            .send("POST", "/v1/events", Some(ACME), attacks.as_bytes(), "")
            .0,
        202
    );
    wait_for("the breaker", PATIENCE, || {
        sidecar
            .send("GET", "/v1/channels/acme-stock", Some(ACME), b"", "")
            .1["circuit-breaker"]
            .is_string()
    });
    let (_, channel) = sidecar.send("GET", "/v1/channels/acme-stock", Some(ACME), b"", "");
    assert_eq!(channel["enabled"], false);
    let reason = channel["circuit-breaker"].as_str().unwrap().to_string();
    assert!(
        reason.contains("consecutive module faults") && reason.contains("300 ms"),
        "{reason}"
    );
    let metrics = sidecar.metrics();
    assert!(
        metrics.contains(r#"sluice_circuit_open{channel="acme-stock"} 1"#),
        "{metrics}"
    );
    // The faulted events are kept as dead letters, with the per-tenant limit
    // in the fault (the breaker opens as the faults are counted, before the
    // batch's outcomes are committed).
    wait_for("the dead letters", PATIENCE, || {
        let (_, letters) = sidecar.send("GET", "/v1/dead-letters", Some(ACME), b"", "");
        letters.as_array().is_some_and(|l| l.len() >= 4)
    });
    let (_, letters) = sidecar.send("GET", "/v1/dead-letters", Some(ACME), b"", "");
    assert_eq!(letters.as_array().unwrap().len(), 4);
    assert!(letters.as_array().unwrap().iter().all(|l| l["reason"] == "fault"));

    // While open, new events wait.
    let good = event("good-1", "acme", json!({"sku": "B", "qty": 1}));
    assert_eq!(
        sidecar
            .send("POST", "/v1/events", Some(ACME), good.as_bytes(), "")
            .0,
        202
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(destination.count(), 0);
    let (_, channel) = sidecar.send("GET", "/v1/channels/acme-stock", Some(ACME), b"", "");
    assert_eq!(channel["queued"]["transform"], 1, "{channel}");

    // The pause, its reason and the held event survive a crash.
    sidecar.kill9();
    sidecar.restart();
    let (_, channel) = sidecar.send("GET", "/v1/channels/acme-stock", Some(ACME), b"", "");
    assert_eq!(
        channel["circuit-breaker"].as_str(),
        Some(reason.as_str()),
        "{channel}"
    );
    assert_eq!(channel["queued"]["transform"], 1, "{channel}");
    assert!(
        sidecar
            .metrics()
            .contains(r#"sluice_circuit_open{channel="acme-stock"} 1"#)
    );

    // A new activation closes the breaker; the held event flows, and the
    // dead letters are repaired by replay with re-transform.
    let rules =
        json!({"rules": [{"target": "sku", "source": "$.sku"}, {"target": "qty", "source": "$.qty"}]});
    assert_eq!(activate(&sidecar, "mapper", &mapper, rules).0, 200);
    wait_for("the held event", PATIENCE, || destination.count() == 1);
    for letter in letters.as_array().unwrap() {
        let path = format!("/v1/dead-letters/{}/replay?retransform=true", letter["id"]);
        assert_eq!(sidecar.send("POST", &path, Some(ACME), b"", "").0, 202);
    }
    wait_for("the repaired events", PATIENCE, || destination.count() == 5);
    assert!(
        sidecar
            .metrics()
            .contains(r#"sluice_circuit_open{channel="acme-stock"} 0"#)
    );
}
