//! Poll sources end to end: a real sidecar reads a paged catalog API (a
//! real HTTP server on loopback), ingests each record once, survives
//! `kill -9` in the middle of a sweep, and sees a record changed upstream
//! on its next sweep. Tenants keep their own sources through the API.
//!
//! The catalog API is paged the way POS and ERP APIs document it: a
//! cursor in the body (`next`) sent back as a query parameter, as in
//! Square's Catalog API (`cursor`) and Smaregi's; a Bearer token in
//! `Authorization` (RFC 6750 §2.1); `429` with `Retry-After` (RFC 9110 §10.2.3).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_server::sink::{Received, Reply, Sink};

use crate::support::sidecar::{Sidecar, token_hash, wait_for};

const ACME: &str = "acme-polling-token";
const GLOBEX: &str = "globex-polling-token";

/// Numbers each signed delivery, so that none is a duplicate of another.
static DELIVERIES: AtomicU32 = AtomicU32::new(0);

fn json_reply(body: Value) -> Reply {
    Reply {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string(),
    }
}

fn query(received: &Received, name: &str) -> Option<String> {
    form_urlencoded::parse(received.query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// A destination that records the payloads it accepts, and a channel
/// that maps each record's `sku` and `qty` to it.
fn config(destination: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[limits]\ntimeout-ms = 10000\n[retry]\ninitial-backoff-ms = 100\nmax-backoff-ms = 1000\n\
         [[tenant]]\nname = \"acme\"\ntoken-sha256 = [\"{}\"]\n\
         [[tenant]]\nname = \"globex\"\ntoken-sha256 = [\"{}\"]\n\
         [[destination]]\nname = \"portal\"\nurl = \"http://{destination}/stock\"\n\
         [[channel]]\nname = \"stock\"\ntenant = \"acme\"\ndestination = \"portal\"\n\
         [[channel.step]]\nmodule = \"json-mapping\"\n\
         config = {{ rules = [ {{ target = \"sku\", source = \"$.sku\" }}, {{ target = \"qty\", source = \"$.qty\" }} ] }}\n{extra}",
        token_hash(ACME),
        token_hash(GLOBEX),
    )
}

/// Deliveries per SKU and quantity.
fn delivered(sink: &Sink) -> BTreeMap<(String, i64), usize> {
    let mut counts = BTreeMap::new();
    for received in sink.received() {
        let body = received.json();
        let key = (
            body["sku"].as_str().unwrap_or_default().to_string(),
            body["qty"].as_i64().unwrap_or(-1),
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
}

#[test]
fn a_poll_source_reads_each_page_once_resumes_after_kill_9_and_sees_a_changed_record() {
    let dir = tempfile::tempdir().unwrap();
    let destination = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| Reply::status(200)),
    )
    .unwrap();
    // Three pages of two, two and one records; page 3 is held back with a
    // 429 until the test lets it through, and record 3 changes on demand.
    let hold_page_3 = Arc::new(AtomicBool::new(true));
    let changed = Arc::new(AtomicBool::new(false));
    let (hold, change) = (hold_page_3.clone(), changed.clone());
    let catalog = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(move |request, _| {
            let record = |id: u32| {
                let qty = if id == 3 && change.load(Ordering::SeqCst) {
                    30
                } else {
                    i64::from(id)
                };
                let updated = if id == 3 && change.load(Ordering::SeqCst) {
                    "2026-12-03"
                } else {
                    "2026-12-01"
                };
                json!({"id": id, "sku": format!("SKU-{id}"), "qty": qty, "updated_at": updated})
            };
            match query(request, "cursor").as_deref() {
                None => json_reply(json!({"items": [record(1), record(2)], "next": "c2"})),
                Some("c2") => json_reply(json!({"items": [record(3), record(4)], "next": "c3"})),
                Some("c3") if hold.load(Ordering::SeqCst) => Reply {
                    status: 429,
                    headers: vec![("retry-after".into(), "1".into())],
                    body: String::new(),
                },
                Some("c3") => json_reply(json!({"items": [record(5)], "next": null})),
                Some(_) => Reply::status(400),
            }
        }),
    )
    .unwrap();
    let source = format!(
        "[[source]]\nname = \"pos\"\ntenant = \"acme\"\nkind = \"poll\"\nurl = \"http://{}/products?limit=2\"\n\
         every = \"2s\"\nrecords = \"$.items[*]\"\nid = \"$.id\"\nversion = \"$.updated_at\"\n\
         next = {{ cursor = \"$.next\", param = \"cursor\" }}\n",
        catalog.addr
    );
    let mut sidecar = Sidecar::start(dir.path(), &config(destination.addr, &source));

    // Pages 1 and 2 arrive; page 3 waits out its 429s.
    wait_for("records 1 to 4 delivered", Duration::from_secs(30), || {
        delivered(&destination).len() == 4
    });
    wait_for("page 3 asked for", Duration::from_secs(10), || {
        catalog.count_where(|r| query(r, "cursor").as_deref() == Some("c3")) >= 1
    });
    let first_pages = catalog.count_where(|r| query(r, "cursor").is_none());
    assert_eq!(first_pages, 1, "page 1 is read once in the sweep");
    let (status, shown) = sidecar.send("GET", "/v1/sources/pos", Some(ACME), b"", "");
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["origin"], "config");
    assert_eq!(shown["cursor"]["pages"], 2, "{shown}");
    assert!(
        shown["cursor"]["next"].as_str().unwrap().contains("cursor=c3"),
        "{shown}"
    );
    assert!(
        sidecar
            .metrics()
            .contains(r#"sluice_source_poll_failures_total{source="acme/pos",reason="retry-after"}"#)
    );

    // Killed in the middle of the sweep: it resumes at page 3, reading
    // neither page 1 nor page 2 again.
    sidecar.kill9();
    hold_page_3.store(false, Ordering::SeqCst);
    sidecar.restart();
    wait_for("record 5 delivered", Duration::from_secs(30), || {
        delivered(&destination).len() == 5
    });
    assert_eq!(catalog.count_where(|r| query(r, "cursor").is_none()), first_pages);
    assert_eq!(
        catalog.count_where(|r| query(r, "cursor").as_deref() == Some("c2")),
        1
    );

    // The next sweep reads everything again: unchanged records are
    // duplicates, and record 3, changed upstream, is a new event.
    changed.store(true, Ordering::SeqCst);
    wait_for("the changed record 3 delivered", Duration::from_secs(30), || {
        delivered(&destination).contains_key(&("SKU-3".to_string(), 30))
    });
    // Let one more sweep pass: still nothing twice.
    let sweeps = catalog.count_where(|r| query(r, "cursor").is_none());
    wait_for("another sweep", Duration::from_secs(30), || {
        catalog.count_where(|r| query(r, "cursor").is_none()) > sweeps
            && catalog.count_where(|r| query(r, "cursor").as_deref() == Some("c3")) > 2
    });
    std::thread::sleep(Duration::from_millis(500));
    let counts = delivered(&destination);
    assert_eq!(counts.len(), 6, "{counts:?}");
    assert!(
        counts.values().all(|&n| n == 1),
        "nothing delivered twice: {counts:?}"
    );
}

#[test]
fn hostile_polled_apis_get_named_errors_and_bounded_retries() {
    let dir = tempfile::tempdir().unwrap();
    let destination = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| Reply::status(200)),
    )
    .unwrap();
    let broken_calls = Arc::new(AtomicU32::new(0));
    let broken = broken_calls.clone();
    let api = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(move |request, _| match request.path.as_str() {
            // Repeats its cursor forever.
            "/loop" => json_reply(json!({"items": [{"id": 1, "sku": "L-1", "qty": 1}], "next": "same"})),
            // A page far larger than max-page-bytes.
            "/huge" => json_reply(json!({"items": [{"id": 1, "sku": "H-1", "blob": "x".repeat(64 << 10)}]})),
            // Fails forever.
            "/broken" => {
                broken.fetch_add(1, Ordering::SeqCst);
                Reply::status(500)
            }
            // Two records without ids, one with.
            "/noid" => json_reply(
                json!([{"sku": "N-0"}, {"id": null, "sku": "N-0"}, {"id": "n1", "sku": "N-1", "qty": 7}]),
            ),
            // Not JSON.
            "/html" => Reply {
                status: 200,
                headers: vec![],
                body: "<html>maintenance</html>".into(),
            },
            _ => Reply::status(404),
        }),
    )
    .unwrap();
    // Accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let poll = |name: &str, url: String, extra: &str| {
        format!(
            "[[source]]\nname = \"{name}\"\ntenant = \"acme\"\nkind = \"poll\"\nurl = \"{url}\"\nevery = \"60s\"\n{extra}\n"
        )
    };
    let base = format!("http://{}", api.addr);
    let sources = [
        poll(
            "loop",
            format!("{base}/loop"),
            "records = \"$.items[*]\"\nnext = { cursor = \"$.next\", param = \"cursor\" }",
        ),
        poll(
            "huge",
            format!("{base}/huge"),
            "records = \"$.items[*]\"\nmax-page-bytes = 4096",
        ),
        poll("broken", format!("{base}/broken"), ""),
        poll("noid", format!("{base}/noid"), ""),
        poll("html", format!("{base}/html"), ""),
        poll("silent", format!("http://{silent_addr}/"), "timeout-ms = 300"),
    ]
    .concat();
    let sidecar = Sidecar::start(dir.path(), &config(destination.addr, &sources));
    let failure = |source: &str, reason: &str| {
        format!(r#"sluice_source_poll_failures_total{{source="acme/{source}",reason="{reason}"}}"#)
    };
    wait_for(
        "every hostile API refused by name",
        Duration::from_secs(30),
        || {
            let metrics = sidecar.metrics();
            [
                failure("loop", "pagination"),
                failure("huge", "too-large"),
                failure("broken", "status"),
                failure("html", "not-json"),
                failure("silent", "timeout"),
            ]
            .iter()
            .all(|line| metrics.contains(line.as_str()))
        },
    );
    let metrics = sidecar.metrics();
    assert!(
        metrics.contains(r#"sluice_source_polled_records_total{source="acme/noid",reason="no-id"} 2"#),
        "{metrics}"
    );
    wait_for("the record with an id delivered", Duration::from_secs(20), || {
        delivered(&destination).contains_key(&("N-1".to_string(), 7))
    });
    // The loop's pages are read until the repeat, then the sweep ends.
    let (_, shown) = sidecar.send("GET", "/v1/sources/loop", Some(ACME), b"", "");
    assert!(
        shown["cursor"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("repeats an earlier page"),
        "{shown}"
    );
    assert!(
        api.count_where(|r| r.path == "/loop") <= 3,
        "the loop stops at the repeat"
    );
    // A failing API is retried with a growing wait, not hammered.
    std::thread::sleep(Duration::from_secs(3));
    let calls = broken_calls.load(Ordering::SeqCst);
    assert!(
        (2..=6).contains(&calls),
        "500 forever: {calls} calls in about 5 s"
    );
    // Every page failure named its source, and no answer showed a server path.
    let (_, huge) = sidecar.send("GET", "/v1/sources/huge", Some(ACME), b"", "");
    assert!(
        huge["cursor"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("larger than 4096 bytes"),
        "{huge}"
    );
}

#[test]
fn tenants_keep_their_own_sources_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let destination = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| Reply::status(200)),
    )
    .unwrap();
    let catalog = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|request, _| {
            if request.header("authorization") != Some("Bearer pos-token-1") {
                return Reply::status(401);
            }
            json_reply(json!({"items": [{"id": "p1", "sku": "API-1", "qty": 4}]}))
        }),
    )
    .unwrap();
    let operator_source =
        "[[source]]\nname = \"shop\"\ntenant = \"acme\"\nkind = \"shopify\"\nsecret-file = \"shop.secret\"\n";
    std::fs::write(dir.path().join("shop.secret"), "operator-secret-0001").unwrap();
    let opened = "allow-networks = [\"127.0.0.0/8\"]\n";
    let mut sidecar = Sidecar::start(
        dir.path(),
        &format!("{opened}{}", config(destination.addr, operator_source)),
    );
    let send = |sidecar: &Sidecar, method: &str, path: &str, token: &str, body: Value| {
        sidecar.send(
            method,
            path,
            Some(token),
            body.to_string().as_bytes(),
            "application/json",
        )
    };

    // A webhook source with its secret inline: the secret is never read back.
    let (status, made) = send(
        &sidecar,
        "PUT",
        "/v1/sources/store2",
        ACME,
        json!({"kind": "shopify", "secret": "tenant-secret-0001"}),
    );
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["secret"], "set");
    assert_eq!(made["origin"], "api");
    assert_eq!(made["receives-at"], "/v1/sources/acme/store2");
    assert!(!made.to_string().contains("tenant-secret-0001"));
    // The CLI says the same.
    let (ok, shown) = sidecar.cli_as(ACME, &["sources", "show", "store2"]);
    assert!(ok, "{shown}");
    assert_eq!(
        (&shown["secret"], &shown["origin"]),
        (&json!("set"), &json!("api"))
    );
    let file = dir.path().join("webhook.json");
    std::fs::write(
        &file,
        r#"{"kind": "standard-webhooks", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#,
    )
    .unwrap();
    let (ok, made_by_cli) = sidecar.cli_as(ACME, &["sources", "put", "svix", file.to_str().unwrap()]);
    assert!(ok, "{made_by_cli}");
    let (ok, _) = sidecar.cli_as(ACME, &["sources", "delete", "svix"]);
    assert!(ok);
    let (ok, missing) = sidecar.cli_as(ACME, &["sources", "show", "svix"]);
    assert!(!ok && missing["code"] == "unknown-source", "{missing}");
    let body = br#"{"sku": "W-1", "qty": 2}"#;
    let signature = {
        use base64::Engine as _;
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"tenant-secret-0001").unwrap();
        mac.update(body);
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    };
    let deliver = |sidecar: &Sidecar| {
        let answer = ureq::post(&format!("{}/v1/sources/acme/store2", sidecar.base))
            .set("x-shopify-hmac-sha256", &signature)
            .set("x-shopify-topic", "products/update")
            .set(
                "x-shopify-event-id",
                &format!("e-{}", DELIVERIES.fetch_add(1, Ordering::SeqCst)),
            )
            .send_bytes(body);
        match answer {
            Ok(answer) => answer.status(),
            Err(ureq::Error::Status(status, _)) => status,
            Err(err) => panic!("{err}"),
        }
    };
    assert_eq!(deliver(&sidecar), 202);
    // Changed without its secret: the stored one is kept.
    let (status, changed) = send(
        &sidecar,
        "PUT",
        "/v1/sources/store2",
        ACME,
        json!({"kind": "shopify", "kinds": {"products/update": "product"}}),
    );
    assert_eq!(status, 200, "{changed}");
    assert_eq!(deliver(&sidecar), 202);

    // The tenant may not read the server's environment or files.
    let (status, refused) = send(
        &sidecar,
        "PUT",
        "/v1/sources/sneaky",
        ACME,
        json!({"kind": "shopify", "secret-file": "/etc/passwd"}),
    );
    assert_eq!(
        (status, refused["code"].as_str()),
        (400, Some("invalid-source")),
        "{refused}"
    );
    let (status, refused) = send(
        &sidecar,
        "PUT",
        "/v1/sources/sneaky",
        ACME,
        json!({"kind": "poll", "url": "http://example.com/", "auth": {"bearer-env": "HOME"}}),
    );
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("bearer-env"),
        "{refused}"
    );
    // A bad field is named.
    let (status, refused) = send(
        &sidecar,
        "PUT",
        "/v1/sources/bad",
        ACME,
        json!({"kind": "shopify", "secret": "s", "tolerance-secs": "soon"}),
    );
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["path"], "$.tolerance-secs", "{refused}");

    // The operator's source is read-only; another tenant sees nothing.
    let (status, _) = send(
        &sidecar,
        "PUT",
        "/v1/sources/shop",
        ACME,
        json!({"kind": "shopify", "secret": "x"}),
    );
    assert_eq!(status, 409);
    let (status, _) = sidecar.send("DELETE", "/v1/sources/shop", Some(ACME), b"", "");
    assert_eq!(status, 409);
    let (status, _) = sidecar.send("GET", "/v1/sources/store2", Some(GLOBEX), b"", "");
    assert_eq!(status, 404);
    let (_, listed) = sidecar.send("GET", "/v1/sources", Some(GLOBEX), b"", "");
    assert_eq!(listed["sources"], json!([]));

    // A poll source with a bearer token, polling at once.
    let (status, made) = send(
        &sidecar,
        "PUT",
        "/v1/sources/pos",
        ACME,
        json!({"kind": "poll", "url": format!("http://{}/items", catalog.addr), "every": "1h",
               "records": "$.items[*]", "auth": {"bearer": "pos-token-1"}}),
    );
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["auth"]["bearer"], "set");
    wait_for("the polled record delivered", Duration::from_secs(20), || {
        delivered(&destination).contains_key(&("API-1".to_string(), 4))
    });

    // Durable: after a restart both are there, and the poll resumes from its cursor.
    sidecar.kill9();
    sidecar.restart();
    let (_, listed) = sidecar.send("GET", "/v1/sources", Some(ACME), b"", "");
    let names: Vec<&str> = listed["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pos", "shop", "store2"], "{listed}");
    assert_eq!(deliver(&sidecar), 202);
    let polls = catalog.count();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        catalog.count(),
        polls,
        "a completed sweep waits `every` after a restart too"
    );

    // Deleted: its webhooks are refused as an unknown source's.
    let (status, _) = sidecar.send("DELETE", "/v1/sources/store2", Some(ACME), b"", "");
    assert_eq!(status, 200);
    assert_eq!(deliver(&sidecar), 401);
    let (status, _) = sidecar.send("GET", "/v1/sources/store2", Some(ACME), b"", "");
    assert_eq!(status, 404);
}

#[test]
fn a_tenants_poll_source_cannot_reach_private_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let destination = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| Reply::status(200)),
    )
    .unwrap();
    let internal = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| json_reply(json!([{"id": 1}]))),
    )
    .unwrap();
    let sidecar = Sidecar::start(dir.path(), &config(destination.addr, ""));
    let put = |url: String| {
        sidecar.send(
            "PUT",
            "/v1/sources/internal",
            Some(ACME),
            json!({"kind": "poll", "url": url}).to_string().as_bytes(),
            "application/json",
        )
    };
    for (url, class) in [
        (format!("http://{}/", internal.addr), "loopback"),
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "link-local (cloud metadata)",
        ),
        ("http://[::1]:8080/".to_string(), "loopback"),
        ("http://localhost/".to_string(), "loopback"),
        ("http://10.1.2.3/".to_string(), "private"),
        ("http://[fd00:ec2::254]/".to_string(), "unique-local"),
        ("http://100.64.0.1/".to_string(), "CGNAT"),
    ] {
        let (status, refused) = put(url.clone());
        assert_eq!(status, 400, "{url}: {refused}");
        let message = refused["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("a {class} address")),
            "{url}: {message}"
        );
    }
    // A decimal or octal IP is a name to the URL parser and an address to
    // the resolver: refused where the connection is made.
    for (name, url) in [
        ("decimal", format!("http://2130706433:{}/", internal.addr.port())),
        ("octal", format!("http://0177.0.0.1:{}/", internal.addr.port())),
    ] {
        let (status, made) = sidecar.send(
            "PUT",
            &format!("/v1/sources/{name}"),
            Some(ACME),
            json!({"kind": "poll", "url": url}).to_string().as_bytes(),
            "application/json",
        );
        assert_eq!(status, 201, "{made}");
        wait_for("the connection refused", Duration::from_secs(20), || {
            sidecar.metrics().contains(&format!(
                r#"sluice_source_poll_failures_total{{source="acme/{name}",reason="refused-address"}}"#
            ))
        });
    }
    assert_eq!(internal.count(), 0, "the internal API was never reached");
}
