//! `sluice serve` as a real child process on 127.0.0.1: the synchronous
//! transform path, its errors, health, metrics and graceful shutdown.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::sidecar::{ADMIN_TOKEN, Sidecar, raw_request};
use support::workspace;

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
