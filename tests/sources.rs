//! Webhook sources end to end: a real sidecar receives deliveries signed
//! as each platform documents it, over real HTTP on loopback, and a real
//! sink receives what the channel makes of them.
//!
//! The platform side follows each platform's public documentation:
//! - Shopify, "Deliver webhooks through HTTPS" (verify with
//!   `X-Shopify-Hmac-Sha256`, base64 HMAC-SHA256 of the raw body; delivery
//!   identity in `X-Shopify-Event-Id`, topic in `X-Shopify-Topic`);
//! - WooCommerce REST API, "Webhooks" (`X-WC-Webhook-Signature`, base64
//!   HMAC-SHA256 of the body; `X-WC-Webhook-Delivery-ID`; an unsigned
//!   `webhook_id=N` form ping on creation);
//! - Square, "Verify and validate an event notification"
//!   (`x-square-hmacsha256-signature`, base64 HMAC-SHA256 of the
//!   notification URL followed by the body; `event_id` in the body);
//! - the Standard Webhooks specification v1, with its published test vector.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use sluice_server::sink::{Reply, Sink};

use crate::support::sidecar::{Sidecar, token_hash, wait_for};

const ACME: &str = "acme-sources-token";
const SQUARE_URL: &str = "https://sluice.example/v1/sources/acme/square";

fn sign(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    BASE64.encode(mac.finalize().into_bytes())
}

/// Posts `body` with `headers` to a source; the status and the JSON answer.
fn deliver(sidecar: &Sidecar, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    let mut request = ureq::post(&format!("{}{path}", sidecar.base));
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let (status, text) = match request.send_bytes(body) {
        Ok(answer) => (answer.status(), answer.into_string().unwrap()),
        Err(ureq::Error::Status(status, answer)) => (status, answer.into_string().unwrap()),
        Err(err) => panic!("{path}: {err}"),
    };
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[test]
fn signed_platform_webhooks_become_events_and_anything_else_is_refused_alike() {
    let dir = tempfile::tempdir().unwrap();
    for (file, secret) in [
        ("shop.secret", "shpss_app_secret"),
        ("woo.secret", "woo-webhook-secret"),
        ("square.secret", "sq0-signature-key"),
    ] {
        std::fs::write(dir.path().join(file), format!("{secret}\n")).unwrap();
    }
    std::fs::write(
        dir.path().join("std.secret"),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    .unwrap();
    let sink = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| Reply::status(200)),
    )
    .unwrap();
    let source = |name: &str, kind: &str, extra: &str| {
        format!(
            "[[source]]\nname = \"{name}\"\ntenant = \"acme\"\nkind = \"{kind}\"\nsecret-file = \"{}\"\n{extra}\n",
            dir.path().join(format!("{name}.secret")).display()
        )
    };
    let config = format!(
        "[limits]\ntimeout-ms = 10000\n[[tenant]]\nname = \"acme\"\ntoken-sha256 = [\"{}\"]\n\
         [[destination]]\nname = \"portal\"\nurl = \"http://{}/stock\"\n\
         [[channel]]\nname = \"stock\"\ntenant = \"acme\"\ndestination = \"portal\"\nsources = [\"shop\", \"woo\", \"square\"]\n\
         [[channel.step]]\nmodule = \"json-mapping\"\n\
         config = {{ rules = [ {{ target = \"sku\", source = \"$.sku\" }}, {{ target = \"qty\", source = \"$.qty\" }} ] }}\n{}{}{}{}",
        token_hash(ACME),
        sink.addr,
        source("shop", "shopify", ""),
        source("woo", "woocommerce", ""),
        source(
            "square",
            "square",
            &format!("notification-url = \"{SQUARE_URL}\"")
        ),
        source("std", "standard-webhooks", ""),
    );
    let sidecar = Sidecar::start(dir.path(), &config);

    // Shopify: signed, and its retry (the same X-Shopify-Event-Id) is a duplicate.
    let body = br#"{"sku": "S-1", "qty": 3, "title": "Shirt"}"#;
    let signature = sign(b"shpss_app_secret", &[body]);
    let shopify = [
        ("X-Shopify-Hmac-Sha256", signature.as_str()),
        ("X-Shopify-Topic", "inventory_levels/update"),
        ("X-Shopify-Event-Id", "98880550-7158-44d4-b7cd-2c97c8a091b5"),
        ("X-Shopify-Shop-Domain", "acme.myshopify.com"),
        ("Content-Type", "application/json"),
    ];
    let (status, answer) = deliver(&sidecar, "/v1/sources/acme/shop", &shopify, body);
    assert_eq!((status, &answer["accepted"]), (202, &json!(1)), "{answer}");
    // The platform's id, scoped to the source.
    assert_eq!(
        answer["events"][0]["id"],
        "shop:98880550-7158-44d4-b7cd-2c97c8a091b5"
    );
    let (status, again) = deliver(&sidecar, "/v1/sources/acme/shop", &shopify, body);
    assert_eq!((status, &again["duplicates"]), (202, &json!(1)), "{again}");

    // WooCommerce: the creation ping makes no event; a signed delivery does.
    let (status, ping) = deliver(
        &sidecar,
        "/v1/sources/acme/woo",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"webhook_id=17",
    );
    assert_eq!((status, &ping["ping"]), (200, &json!(true)), "{ping}");
    let woo_body = br#"{"id": 55, "sku": "W-1", "qty": 8}"#;
    let woo_signature = sign(b"woo-webhook-secret", &[woo_body]);
    let (status, answer) = deliver(
        &sidecar,
        "/v1/sources/acme/woo",
        &[
            ("X-WC-Webhook-Signature", &woo_signature),
            ("X-WC-Webhook-Topic", "product.updated"),
            ("X-WC-Webhook-Delivery-ID", "d-1"),
        ],
        woo_body,
    );
    assert_eq!((status, &answer["accepted"]), (202, &json!(1)), "{answer}");

    // Square: the notification URL is signed with the body; the id is the body's event_id.
    let square_body = br#"{"event_id": "6a8f5f28-54a1-4eb0-a98a-3111513fd4fc", "type": "inventory.count.updated", "sku": "Q-1", "qty": 2}"#;
    let square_signature = sign(b"sq0-signature-key", &[SQUARE_URL.as_bytes(), square_body]);
    let (status, answer) = deliver(
        &sidecar,
        "/v1/sources/acme/square",
        &[("x-square-hmacsha256-signature", &square_signature)],
        square_body,
    );
    assert_eq!(
        (status, &answer["events"][0]["id"]),
        (202, &json!("square:6a8f5f28-54a1-4eb0-a98a-3111513fd4fc")),
        "{answer}"
    );

    // Standard Webhooks, signed as the specification says with its test
    // vector's secret, now (the vector itself, from 2021, is checked at its
    // own time in `host/server/src/sources/verify.rs`).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let std_body = br#"{"type": "product.updated", "sku": "X-1"}"#;
    let key = BASE64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let std_signature = format!(
        "v1,{}",
        sign(&key, &[b"msg_1", b".", now.as_bytes(), b".", std_body])
    );
    let (status, answer) = deliver(
        &sidecar,
        "/v1/sources/acme/std",
        &[
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", &now),
            ("webhook-signature", &std_signature),
        ],
        std_body,
    );
    assert_eq!(
        (status, &answer["events"][0]["id"]),
        (202, &json!("std:msg_1")),
        "{answer}"
    );

    // Wrong, missing, other-secret and unknown-source deliveries: one answer for all, nothing stored.
    let wrong = sign(b"not the secret", &[body]);
    let refused = [
        deliver(
            &sidecar,
            "/v1/sources/acme/shop",
            &[("X-Shopify-Hmac-Sha256", &wrong), ("X-Shopify-Event-Id", "e-2")],
            body,
        ),
        deliver(
            &sidecar,
            "/v1/sources/acme/shop",
            &[("X-Shopify-Event-Id", "e-3")],
            body,
        ),
        deliver(
            &sidecar,
            "/v1/sources/acme/woo",
            &[
                ("X-WC-Webhook-Signature", &signature),
                ("X-WC-Webhook-Delivery-ID", "d-2"),
            ],
            body,
        ),
        deliver(&sidecar, "/v1/sources/acme/nope", &shopify, body),
        deliver(&sidecar, "/v1/sources/globex/shop", &shopify, body),
    ];
    for (status, answer) in &refused {
        assert_eq!(*status, 401, "{answer}");
        assert_eq!(answer, &refused[0].1, "every refusal reads alike");
    }
    let stale_body = br#"{"test": 2432232314}"#;
    let (status, _) = deliver(
        &sidecar,
        "/v1/sources/acme/std",
        &[
            ("webhook-id", "msg_2"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ),
        ],
        stale_body,
    );
    assert_eq!(status, 401);

    // The channel took the three platforms' events, once each.
    wait_for("three deliveries", Duration::from_secs(60), || sink.count() >= 3);
    std::thread::sleep(Duration::from_millis(500));
    let mut skus: Vec<String> = sink
        .received()
        .iter()
        .map(|r| r.json()["sku"].as_str().unwrap().to_string())
        .collect();
    skus.sort();
    assert_eq!(skus, ["Q-1", "S-1", "W-1"]);
    let (_, metrics) = sidecar.send("GET", "/metrics", None, b"", "");
    let metrics = metrics
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| metrics.to_string());
    assert!(
        metrics.contains(r#"sluice_source_refused_total{source="acme/shop",reason="mismatch"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"sluice_source_refused_total{source="acme/shop",reason="missing"} 1"#));
}

/// `sluice import` runs a 10,000-row CSV (a BOM, CRLF line endings, a
/// quoted cell with a newline) into a real sidecar in batches; the same
/// file again is all duplicates; a ragged row and an oversized line are
/// refused with their line.
#[test]
fn a_catalog_file_imports_once_and_a_second_run_is_all_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[tenant]]\nname = \"acme\"\ntoken-sha256 = [\"{}\"]\n",
        token_hash(ACME)
    );
    let sidecar = Sidecar::start(dir.path(), &config);
    let mut csv = String::from("\u{feff}sku,title,qty\r\n");
    for n in 0..10_000 {
        if n == 5 {
            csv.push_str("SKU-5,\"A title\r\nover two lines\",5\r\n");
        } else {
            csv.push_str(&format!("SKU-{n},Title {n},{}\r\n", n % 7));
        }
    }
    let file = dir.path().join("catalog.csv");
    std::fs::write(&file, csv).unwrap();
    let import = |args: &[&str]| {
        let output = sidecar
            .command_as(ACME)
            .arg("import")
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let path = file.to_str().unwrap();
    let (ok, out, err) = import(&["--source", "catalog", "--id-column", "sku", path]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("10000 rows from") && out.contains(": 10000 accepted, 0 duplicates"),
        "{out}"
    );
    let (ok, out, err) = import(&["--source", "catalog", "--id-column", "sku", path]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(": 0 accepted, 10000 duplicates"), "{out}");
    // Without an id column, a row's content is its id: unchanged rows are duplicates.
    let (ok, out, _) = import(&["--source", "catalog-by-content", path]);
    assert!(ok && out.contains(": 10000 accepted"), "{out}");
    let (ok, out, _) = import(&["--source", "catalog-by-content", path]);
    assert!(ok && out.contains(": 0 accepted, 10000 duplicates"), "{out}");

    let ragged = dir.path().join("ragged.csv");
    std::fs::write(&ragged, "sku,qty\nA,1\nB,2,extra\n").unwrap();
    let (ok, _, err) = import(&["--source", "catalog", ragged.to_str().unwrap()]);
    assert!(!ok && err.contains("line 3"), "{err}");
    let huge = dir.path().join("huge.jsonl");
    std::fs::write(&huge, format!("{{\"sku\": \"{}\"}}\n", "x".repeat(5 << 20))).unwrap();
    let (ok, _, err) = import(&["--source", "catalog", huge.to_str().unwrap()]);
    assert!(
        !ok && err.contains("line 1") && err.contains("over 4194304 bytes"),
        "{err}"
    );
}

/// The source transforms' fixtures hold real signed deliveries
/// (`delivery.json`: the platform's headers, with a signature made as the
/// platform documents it, and the raw body) whose `input.json` is the
/// event the source endpoint makes of them. Each delivery goes through a
/// real source endpoint into a channel of that transform alone, and what
/// reaches the destination is the fixture's expected output.
#[test]
fn the_source_transforms_accept_exactly_what_the_source_endpoints_make() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../transforms");
    let mut cases = Vec::new();
    for transform in ["shopify-source", "woocommerce-source", "square-source"] {
        for fixture in std::fs::read_dir(root.join(transform).join("fixtures")).unwrap() {
            let dir = fixture.unwrap().path();
            if dir.join("delivery.json").is_file() {
                cases.push((transform, dir));
            }
        }
    }
    assert!(cases.len() >= 4, "{cases:?}");
    for (transform, dir) in cases {
        let read = |name: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
        };
        let delivery = read("delivery.json");
        let input = read("input.json");
        let expected = read("expected.json");
        let config = std::fs::read_to_string(dir.join("config.json")).unwrap_or_else(|_| "{}".into());
        let platform = delivery["platform"].as_str().unwrap();
        let work = tempfile::tempdir().unwrap();
        std::fs::write(
            work.path().join("fixture.secret"),
            delivery["secret"].as_str().unwrap(),
        )
        .unwrap();
        let sink = Sink::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(|_, _| Reply::status(200)),
        )
        .unwrap();
        let notification = delivery["notification-url"]
            .as_str()
            .map(|url| format!("notification-url = \"{url}\"\n"))
            .unwrap_or_default();
        let config = format!(
            "[limits]\ntimeout-ms = 10000\n[[tenant]]\nname = \"acme\"\ntoken-sha256 = [\"{}\"]\n\
             [[destination]]\nname = \"out\"\nurl = \"http://{}/out\"\nentity-key = \"$.no_such_key\"\n\
             [[source]]\nname = \"{platform}\"\ntenant = \"acme\"\nkind = \"{platform}\"\nsecret-file = \"fixture.secret\"\n{notification}\n{}",
            token_hash(ACME),
            sink.addr,
            channel_toml(transform, &serde_json::from_str(&config).unwrap()),
        );
        let sidecar = Sidecar::start(work.path(), &config);
        let headers: Vec<(&str, &str)> = delivery["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
            .collect();
        let (status, answer) = deliver(
            &sidecar,
            &format!("/v1/sources/acme/{platform}"),
            &headers,
            delivery["body"].as_str().unwrap().as_bytes(),
        );
        assert_eq!(status, 202, "{}: {answer}", dir.display());
        assert_eq!(
            answer["events"][0]["id"],
            input["id"],
            "{}: the endpoint's event id",
            dir.display()
        );
        let wanted: Vec<&Value> = expected["events"]
            .as_array()
            .map(|e| e.iter().collect())
            .unwrap_or_default();
        wait_for("the fixture's output delivered", Duration::from_secs(20), || {
            sink.count() >= wanted.len()
        });
        let got: Vec<(String, Value)> = sink
            .received()
            .iter()
            .map(|r| (r.header("x-sluice-event-id").unwrap().to_string(), r.json()))
            .collect();
        let wanted: Vec<(String, Value)> = wanted
            .iter()
            .map(|event| {
                (
                    event["id"].as_str().unwrap().to_string(),
                    event["payload"].clone(),
                )
            })
            .collect();
        let sorted = |mut list: Vec<(String, Value)>| {
            list.sort_by(|a, b| a.0.cmp(&b.0));
            list
        };
        assert_eq!(sorted(got), sorted(wanted), "{}", dir.display());
        drop(sidecar);
    }
}

/// A transform sees the delivery's topic and the headers the source keeps
/// (the shop's domain): a signed Shopify webhook, as Shopify's "Deliver
/// webhooks through HTTPS" describes its headers, reaches a contract 0.2
/// step, which reports them. Huge or control-character values are left out.
#[test]
fn the_topic_and_the_shop_domain_reach_the_transform() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.secret"), "shpss_app_secret").unwrap();
    let sink = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| Reply::status(200)),
    )
    .unwrap();
    let config = format!(
        "[limits]\ntimeout-ms = 10000\n[[tenant]]\nname = \"acme\"\ntoken-sha256 = [\"{}\"]\n\
         [[destination]]\nname = \"out\"\nurl = \"http://{}/out\"\nentity-key = \"$.topic\"\n\
         [[source]]\nname = \"shop\"\ntenant = \"acme\"\nkind = \"shopify\"\nsecret-file = \"shop.secret\"\n\
         [[channel]]\nname = \"echo\"\ntenant = \"acme\"\ndestination = \"out\"\n\
         [[channel.step]]\nmodule = \"{}\"\n",
        token_hash(ACME),
        sink.addr,
        crate::support::guest("stateful").display(),
    );
    let sidecar = Sidecar::start(dir.path(), &config);
    let body = br#"{"attack": "context", "id": 632910392}"#;
    let signature = sign(b"shpss_app_secret", &[body]);
    let long = "x".repeat(600);
    let headers = [
        ("X-Shopify-Hmac-Sha256", signature.as_str()),
        ("X-Shopify-Topic", "products/update"),
        ("X-Shopify-Event-Id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
        ("X-Shopify-Webhook-Id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
        ("X-Shopify-Shop-Domain", "acme.myshopify.com"),
        ("X-Shopify-API-Version", "2025-10"),
        ("X-Shopify-Triggered-At", long.as_str()),
        ("X-Not-Kept", "secret-ish"),
        ("Content-Type", "application/json"),
    ];
    let (status, answer) = deliver(&sidecar, "/v1/sources/acme/shop", &headers, body);
    assert_eq!(status, 202, "{answer}");
    wait_for("the transform's report", Duration::from_secs(20), || {
        sink.count() == 1
    });
    let report = sink.received()[0].json();
    assert_eq!(report["topic"], "products/update");
    assert_eq!(report["shop"], "acme.myshopify.com");
    assert_eq!(
        report["headers"],
        json!([
            ["x-shopify-api-version", "2025-10"],
            ["x-shopify-event-id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"],
            ["x-shopify-shop-domain", "acme.myshopify.com"],
            ["x-shopify-topic", "products/update"],
            ["x-shopify-webhook-id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"],
        ]),
        "the 600-byte value and headers no source keeps are left out"
    );
}

/// The one channel `test` of `transform` with this step config, as TOML.
fn channel_toml(transform: &str, config: &Value) -> String {
    let channel = json!({"channel": [{
        "name": "test",
        "tenant": "acme",
        "destination": "out",
        "step": [{"module": transform, "config": config}],
    }]});
    toml::to_string(&channel).unwrap()
}
