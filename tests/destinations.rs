//! Destinations that speak real marketplace APIs, end to end: a URL and a
//! method per event, OAuth2 tokens, signed requests and a rate that
//! follows the destination, against real HTTP servers on loopback.
//!
//! The platform side follows each platform's public documentation:
//! - Amazon SP-API, Listings Items API 2021-08-01 (`PUT
//!   /listings/2021-08-01/items/{sellerId}/{sku}?marketplaceIds=…`), its
//!   "Connecting to the Selling Partner API" guide (the access token in
//!   `x-amz-access-token`; an expired one answered 403 `Unauthorized`,
//!   "The access token you provided has expired.") and its usage plans
//!   (`x-amzn-RateLimit-Limit`, requests per second);
//! - Login with Amazon's token endpoint (`POST /auth/o2/token`,
//!   `grant_type=refresh_token` with `refresh_token`, `client_id` and
//!   `client_secret` in the form; answer `access_token`, `token_type`,
//!   `expires_in`), as the SP-API guide uses it;
//! - RFC 6749 §4.4 for client credentials (HTTP Basic client authentication);
//! - the Standard Webhooks specification v1 for signatures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use sluice_server::sink::{Received, Reply, Sink};

use crate::support::sidecar::{Sidecar, token_hash, wait_for};

const ACME: &str = "acme-destinations-token";
const GLOBEX: &str = "globex-destinations-token";
const PATIENCE: Duration = Duration::from_secs(30);

fn form(received: &Received) -> std::collections::BTreeMap<String, String> {
    form_urlencoded::parse(&received.body).into_owned().collect()
}

/// A sidecar whose one channel maps `sku`, `title` and `qty` to `destination`.
fn start(dir: &std::path::Path, destination: &str, env: &[(&str, &str)]) -> Sidecar {
    let env: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(dir.join("sluice.env"), env).unwrap();
    let config = format!(
        "[limits]\ntimeout-ms = 10000\n[retry]\ninitial-backoff-ms = 100\nmax-backoff-ms = 1000\n\
         [[tenant]]\nname = \"acme\"\ntoken-sha256 = [\"{}\"]\n{destination}\n\
         [[channel]]\nname = \"listings\"\ntenant = \"acme\"\ndestination = \"marketplace\"\n\
         [[channel.step]]\nmodule = \"json-mapping\"\n\
         config = {{ rules = [ {{ target = \"sku\", source = \"$.sku\" }}, {{ target = \"qty\", source = \"$.qty\" }} ] }}\n",
        token_hash(ACME)
    );
    Sidecar::start(dir, &config)
}

fn ingest(sidecar: &Sidecar, events: &[(&str, Value)]) {
    let body: String = events
        .iter()
        .map(|(id, payload)| format!("{}\n", json!({"id": id, "kind": "product", "payload": payload})))
        .collect();
    let (status, answer) = sidecar.send("POST", "/v1/events", Some(ACME), body.as_bytes(), "");
    assert_eq!(status, 202, "{answer}");
}

#[test]
fn a_put_per_sku_with_a_login_with_amazon_token_renewed_when_sp_api_says_it_expired() {
    let dir = tempfile::tempdir().unwrap();
    let issued = Arc::new(AtomicU32::new(0));
    let counter = issued.clone();
    let lwa = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(move |request, _| {
            let form = form(request);
            let expected = [
                ("grant_type", "refresh_token"),
                ("refresh_token", "Atzr|demo-refresh"),
                ("client_id", "amzn1.application-oa2-client.demo"),
                ("client_secret", "lwa-client-secret"),
            ];
            if request.path != "/auth/o2/token" || expected.iter().any(|(k, v)| form.get(*k).map(String::as_str) != Some(*v)) {
                return Reply { status: 400, headers: vec![], body: r#"{"error":"invalid_grant"}"#.into() };
            }
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            Reply {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: json!({"access_token": format!("Atza|token-{n}"), "token_type": "bearer", "expires_in": 3600}).to_string(),
            }
        }),
    )
    .unwrap();
    let sp_api = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|request, _| match request.header("x-amz-access-token") {
            // SP-API's answer to an expired access token.
            Some("Atza|token-1") => Reply {
                status: 403,
                headers: vec![("content-type".into(), "application/json".into())],
                body: json!({"errors": [{"code": "Unauthorized", "message": "Access to requested resource is denied.", "details": "The access token you provided has expired."}]}).to_string(),
            },
            Some(_) => Reply {
                status: 200,
                headers: vec![("x-amzn-RateLimit-Limit".into(), "5.0".into())],
                body: json!({"sku": "x", "status": "ACCEPTED", "submissionId": "f1dc2914", "issues": []}).to_string(),
            },
            None => Reply::status(400),
        }),
    )
    .unwrap();
    let destination = format!(
        "[[destination]]\nname = \"marketplace\"\n\
         url = \"http://{}/listings/2021-08-01/items/{{env:SELLER_ID}}/{{$.sku}}?marketplaceIds=ATVPDKIKX0DER\"\n\
         method = \"PUT\"\nrate-limit = \"10/s\"\nrate-limit-header = \"x-amzn-RateLimit-Limit\"\n\
         [destination.auth]\nkind = \"oauth2\"\ngrant = \"refresh-token\"\ntoken-url = \"http://{}/auth/o2/token\"\n\
         client-id = \"amzn1.application-oa2-client.demo\"\nclient-secret-env = \"LWA_SECRET\"\nrefresh-token-env = \"LWA_REFRESH\"\n\
         header = \"x-amz-access-token\"\n",
        sp_api.addr, lwa.addr
    );
    let sidecar = start(
        dir.path(),
        &destination,
        &[
            ("SELLER_ID", "A2SELLER"),
            ("LWA_SECRET", "lwa-client-secret"),
            ("LWA_REFRESH", "Atzr|demo-refresh"),
        ],
    );
    ingest(
        &sidecar,
        &[
            ("e-1", json!({"sku": "TEE/RED 1", "qty": 3})),
            ("e-2", json!({"qty": 9})),
        ],
    );
    wait_for("the listing accepted", PATIENCE, || {
        sp_api.count_where(|r| r.header("x-amz-access-token") == Some("Atza|token-2")) == 1
    });
    let accepted = sp_api
        .received()
        .into_iter()
        .find(|r| r.header("x-amz-access-token") == Some("Atza|token-2"))
        .unwrap();
    // One URL per SKU, the SKU one percent-encoded path segment.
    assert_eq!(accepted.path, "/listings/2021-08-01/items/A2SELLER/TEE%2FRED%201");
    assert_eq!(accepted.query, "marketplaceIds=ATVPDKIKX0DER");
    assert_eq!(accepted.json(), json!({"sku": "TEE/RED 1", "qty": 3}));
    // Fetched once, shared, and fetched once more after SP-API said it expired.
    assert_eq!(issued.load(Ordering::SeqCst), 2);
    let first = &sp_api.received()[0];
    assert_eq!(
        first.header("idempotency-key"),
        accepted.header("idempotency-key")
    );

    // The event with no SKU has no URL: a dead letter that names the path.
    wait_for("the dead letter", PATIENCE, || {
        sidecar
            .send("GET", "/v1/dead-letters", Some(ACME), b"", "")
            .1
            .as_array()
            .is_some_and(|l| l.len() == 1)
    });
    let (_, letters) = sidecar.send("GET", "/v1/dead-letters", Some(ACME), b"", "");
    let (_, letter) = sidecar.send(
        "GET",
        &format!("/v1/dead-letters/{}", letters[0]["id"]),
        Some(ACME),
        b"",
        "",
    );
    let detail = letter["attempts"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("$.sku"), "{letter}");
    // No secret shows anywhere an operator or tenant looks.
    let everywhere = format!(
        "{letter}{}{}",
        sidecar.metrics(),
        sidecar.logs().iter().map(Value::to_string).collect::<String>()
    );
    for secret in ["lwa-client-secret", "Atzr|demo-refresh", "Atza|token"] {
        assert!(!everywhere.contains(secret), "{secret} leaked");
    }
}

#[test]
fn a_failing_token_endpoint_pauses_delivery_and_spends_no_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let failures = Arc::new(AtomicU32::new(0));
    let counter = failures.clone();
    let token = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(move |request, _| {
            // RFC 6749 §2.3.1: client credentials in HTTP Basic.
            let basic = format!("Basic {}", BASE64.encode("pos-client:pos-secret-value"));
            if request.header("authorization") != Some(basic.as_str()) {
                return Reply::status(401);
            }
            if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                return Reply::status(503);
            }
            Reply {
                status: 200,
                headers: vec![],
                body: json!({"access_token": "pos-token", "token_type": "Bearer", "expires_in": 600})
                    .to_string(),
            }
        }),
    )
    .unwrap();
    let pos = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|request, _| {
            if request.header("authorization") == Some("Bearer pos-token") {
                Reply::status(200)
            } else {
                Reply::status(401)
            }
        }),
    )
    .unwrap();
    let destination = format!(
        "[[destination]]\nname = \"marketplace\"\nurl = \"http://{}/products/{{$.sku}}\"\nmethod = \"PATCH\"\n\
         [destination.auth]\ngrant = \"client-credentials\"\ntoken-url = \"http://{}/token\"\n\
         client-id = \"pos-client\"\nclient-secret-env = \"POS_SECRET\"\nscope = \"products.write\"\n",
        pos.addr, token.addr
    );
    let sidecar = start(dir.path(), &destination, &[("POS_SECRET", "pos-secret-value")]);
    ingest(
        &sidecar,
        &[
            ("p-1", json!({"sku": "A", "qty": 1})),
            ("p-2", json!({"sku": "B", "qty": 2})),
        ],
    );
    wait_for("both delivered once the token came", PATIENCE, || {
        pos.count() == 2
    });
    assert!(failures.load(Ordering::SeqCst) >= 3);
    // Nothing was sent without a token, so nothing spent an attempt.
    for received in pos.received() {
        assert_eq!(received.header("x-sluice-attempt"), Some("1"));
    }
    let (_, letters) = sidecar.send("GET", "/v1/dead-letters", Some(ACME), b"", "");
    assert_eq!(letters, json!([]));
    assert_eq!(
        form(&token.received()[0]).get("scope").map(String::as_str),
        Some("products.write")
    );
}

#[test]
fn deliveries_are_signed_as_standard_webhooks_with_both_secrets_during_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let new_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let old_secret = format!("whsec_{}", BASE64.encode("an-older-signing-secret"));
    std::fs::write(dir.path().join("new.secret"), new_secret).unwrap();
    std::fs::write(dir.path().join("old.secret"), &old_secret).unwrap();
    let receiver = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| Reply::status(204)),
    )
    .unwrap();
    let destination = format!(
        "[[destination]]\nname = \"marketplace\"\nurl = \"http://{}/hooks\"\n\
         sign = {{ kind = \"standard-webhooks\", secret-file = \"new.secret\", previous-secret-file = \"old.secret\" }}\n",
        receiver.addr
    );
    let sidecar = start(dir.path(), &destination, &[]);
    ingest(&sidecar, &[("s-1", json!({"sku": "S", "qty": 1}))]);
    wait_for("the signed delivery", PATIENCE, || receiver.count() == 1);
    let received = &receiver.received()[0];
    // The receiver's side of the specification: sign `{id}.{timestamp}.{body}`.
    let id = received.header("webhook-id").unwrap();
    assert_eq!(Some(id), received.header("idempotency-key"));
    let timestamp = received.header("webhook-timestamp").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(timestamp.parse().unwrap()) < 300);
    let expected: Vec<String> = [new_secret, old_secret.as_str()]
        .iter()
        .map(|secret| {
            let key = BASE64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(&received.body);
            format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
        })
        .collect();
    assert_eq!(received.header("webhook-signature").unwrap(), expected.join(" "));
    drop(sidecar);
}

#[test]
fn the_rate_follows_what_the_destination_announces() {
    let dir = tempfile::tempdir().unwrap();
    let portal = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| Reply {
            status: 200,
            headers: vec![("x-amzn-RateLimit-Limit".into(), "4.0".into())],
            body: String::new(),
        }),
    )
    .unwrap();
    let destination = format!(
        "[[destination]]\nname = \"marketplace\"\nurl = \"http://{}/items/{{$.sku}}\"\nmethod = \"PUT\"\n\
         rate-limit = \"100/s\"\nburst = 1\nrate-limit-header = \"x-amzn-RateLimit-Limit\"\n",
        portal.addr
    );
    let sidecar = start(dir.path(), &destination, &[]);
    ingest(&sidecar, &[("r-0", json!({"sku": "R0", "qty": 1}))]);
    wait_for("the first answer, which announces 4/s", PATIENCE, || {
        portal.count() == 1
    });
    let started = Instant::now();
    let events: Vec<(String, Value)> = (1..=12)
        .map(|n| (format!("r-{n}"), json!({"sku": format!("R{n}"), "qty": n})))
        .collect();
    let refs: Vec<(&str, Value)> = events.iter().map(|(id, p)| (id.as_str(), p.clone())).collect();
    ingest(&sidecar, &refs);
    wait_for("all delivered", PATIENCE, || portal.count() == 13);
    // 12 sends at 4/s with a burst of 1 take at least 2.75 s; at the
    // configured 100/s they would take 0.12 s.
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    let paths: Vec<String> = portal.received().iter().map(|r| r.path.clone()).collect();
    assert!(paths.contains(&"/items/R12".to_string()), "{paths:?}");
}

/// The issue's SP-API run: three SKUs with three updates each, a token
/// endpoint whose tokens SP-API takes for expired after five uses, and a
/// usage plan that answers every fourth request 429 with
/// `x-amzn-RateLimit-Limit`. Every update is accepted as a PUT at its
/// SKU's URL with a token the endpoint issued, in order per SKU.
#[test]
fn sp_api_with_429s_and_tokens_expiring_mid_run_gets_every_update_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let issued = Arc::new(AtomicU32::new(0));
    let counter = issued.clone();
    let lwa = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(move |_, _| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            Reply {
                status: 200,
                headers: vec![],
                body:
                    json!({"access_token": format!("Atza|t{n}"), "token_type": "bearer", "expires_in": 3600})
                        .to_string(),
            }
        }),
    )
    .unwrap();
    let requests = Arc::new(AtomicU32::new(0));
    let seen = requests.clone();
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<(String, i64)>::new()));
    let record = accepted.clone();
    let sp_api = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(move |request, earlier| {
            let token = request.header("x-amz-access-token").unwrap_or_default().to_string();
            let uses = earlier.iter().filter(|r| r.header("x-amz-access-token") == Some(token.as_str())).count();
            if uses >= 5 {
                return Reply {
                    status: 403,
                    headers: vec![],
                    body: json!({"errors": [{"code": "Unauthorized", "message": "Access to requested resource is denied.", "details": "The access token you provided has expired."}]}).to_string(),
                };
            }
            let limit = vec![("x-amzn-RateLimit-Limit".to_string(), "20.0".to_string())];
            if seen.fetch_add(1, Ordering::SeqCst) % 4 == 3 {
                return Reply { status: 429, headers: limit, body: r#"{"errors":[{"code":"QuotaExceeded","message":"You exceeded your quota for the requested resource."}]}"#.into() };
            }
            record.lock().unwrap().push((request.path.clone(), request.json()["qty"].as_i64().unwrap_or(-1)));
            Reply { status: 200, headers: limit, body: r#"{"status":"ACCEPTED"}"#.into() }
        }),
    )
    .unwrap();
    let destination = format!(
        "[[destination]]\nname = \"marketplace\"\n\
         url = \"http://{}/listings/2021-08-01/items/SELLER1/{{$.sku}}?marketplaceIds=ATVPDKIKX0DER\"\n\
         method = \"PUT\"\nrate-limit = \"50/s\"\nrate-limit-header = \"x-amzn-RateLimit-Limit\"\n\
         [destination.auth]\ngrant = \"refresh-token\"\ntoken-url = \"http://{}/auth/o2/token\"\n\
         client-id = \"c\"\nclient-secret-env = \"LWA_SECRET\"\nrefresh-token-env = \"LWA_REFRESH\"\nheader = \"x-amz-access-token\"\n",
        sp_api.addr, lwa.addr
    );
    let sidecar = start(
        dir.path(),
        &destination,
        &[("LWA_SECRET", "s"), ("LWA_REFRESH", "r")],
    );
    let mut events = Vec::new();
    for round in 1..=3 {
        for sku in ["A-1", "B/2", "C 3"] {
            events.push((format!("{sku}-{round}"), json!({"sku": sku, "qty": round})));
        }
    }
    let refs: Vec<(&str, Value)> = events.iter().map(|(id, p)| (id.as_str(), p.clone())).collect();
    ingest(&sidecar, &refs);
    wait_for("nine updates accepted", Duration::from_secs(60), || {
        accepted.lock().unwrap().len() >= 9
    });
    let all = sp_api.received();
    assert!(issued.load(Ordering::SeqCst) >= 2, "the token was renewed");
    for request in &all {
        assert_eq!(request.method, "PUT");
        let token = request.header("x-amz-access-token").unwrap();
        let n: u32 = token.strip_prefix("Atza|t").unwrap().parse().unwrap();
        assert!(
            n >= 1 && n <= issued.load(Ordering::SeqCst),
            "a token the endpoint issued: {token}"
        );
    }
    // Requests that were not accepted (and not refused for an expired
    // token) were the usage plan's 429s: retried, never lost.
    assert!(requests.load(Ordering::SeqCst) > 9, "429s were answered");
    // Per SKU, each update accepted once, in order, at the SKU's own URL.
    let accepted = accepted.lock().unwrap().clone();
    for path in ["A-1", "B%2F2", "C%203"] {
        let qty: Vec<i64> = accepted
            .iter()
            .filter(|(p, _)| *p == format!("/listings/2021-08-01/items/SELLER1/{path}"))
            .map(|(_, qty)| *qty)
            .collect();
        assert_eq!(qty, [1, 2, 3], "{path}");
    }
    let (_, letters) = sidecar.send("GET", "/v1/dead-letters", Some(ACME), b"", "");
    assert_eq!(letters, json!([]));
}

/// A tenant makes its own destination and channels through the API, with
/// its own uploaded module as the step: they deliver at once, with no
/// restart, and again after `kill -9`. A channel made with no steps holds
/// its events until its first activation; names are shared by every tenant.
#[test]
fn a_tenants_own_destination_and_channel_deliver_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let portal = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| Reply::status(200)),
    )
    .unwrap();
    let config = format!(
        "allow-networks = [\"127.0.0.0/8\"]\n[limits]\ntimeout-ms = 10000\n[retry]\ninitial-backoff-ms = 100\nmax-backoff-ms = 1000\n\
         [[tenant]]\nname = \"acme\"\ntoken-sha256 = [\"{}\"]\n[[tenant]]\nname = \"globex\"\ntoken-sha256 = [\"{}\"]\n",
        token_hash(ACME),
        token_hash(GLOBEX)
    );
    let mut sidecar = Sidecar::start(dir.path(), &config);
    let send = |sidecar: &Sidecar, method: &str, path: &str, token: &str, body: Value| {
        sidecar.send(
            method,
            path,
            Some(token),
            body.to_string().as_bytes(),
            "application/json",
        )
    };
    let module = crate::support::guest("json-mapping");
    let (ok, pushed) = sidecar.cli_as(
        ACME,
        &["modules", "push", module.to_str().unwrap(), "--name", "mapper"],
    );
    assert!(ok, "{pushed}");

    let (status, made) = send(
        &sidecar,
        "PUT",
        "/v1/destinations/portal",
        ACME,
        json!({"url": format!("http://{}/items/{{$.sku}}", portal.addr), "method": "PUT", "auth": {"bearer": "tenant-token-1"}}),
    );
    assert_eq!(status, 201, "{made}");
    assert_eq!(
        (&made["auth"]["bearer"], &made["origin"]),
        (&json!("set"), &json!("api"))
    );
    let version = pushed["version"]
        .as_str()
        .unwrap_or_else(|| panic!("{pushed}"))
        .to_string();
    let steps = json!([{"module": "mapper", "version": version, "config": {"rules": [{"target": "sku", "source": "$.sku"}, {"target": "qty", "source": "$.qty"}]}}]);
    let (status, made) = send(
        &sidecar,
        "PUT",
        "/v1/channels/mine",
        ACME,
        json!({"destination": "portal", "steps": steps}),
    );
    assert_eq!(status, 201, "{made}");
    // One with no steps holds what it gets until it is activated (made with the CLI).
    let file = dir.path().join("held.json");
    std::fs::write(&file, r#"{"destination": "portal"}"#).unwrap();
    let (ok, made) = sidecar.cli_as(ACME, &["channels", "create", "held", file.to_str().unwrap()]);
    assert!(ok, "{made}");
    let (ok, shown) = sidecar.cli_as(ACME, &["destinations", "show", "portal"]);
    assert!(ok && shown["auth"]["bearer"] == "set", "{shown}");
    assert!(!shown.to_string().contains("tenant-token-1"));

    ingest(&sidecar, &[("o-1", json!({"sku": "OWN-1", "qty": 1}))]);
    wait_for("delivered through the tenant's own channel", PATIENCE, || {
        portal.count() == 1
    });
    let first = &portal.received()[0];
    assert_eq!(
        (first.method.as_str(), first.path.as_str()),
        ("PUT", "/items/OWN-1")
    );
    assert_eq!(first.header("authorization"), Some("Bearer tenant-token-1"));
    assert_eq!(first.header("x-sluice-channel"), Some("mine"));
    let (status, refused) = sidecar.send("DELETE", "/v1/channels/held", Some(ACME), b"", "");
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("not-empty")),
        "{refused}"
    );
    let (status, _) = send(
        &sidecar,
        "POST",
        "/v1/channels/held/activate",
        ACME,
        json!({"steps": steps}),
    );
    assert_eq!(status, 200);
    wait_for("the held event delivered once activated", PATIENCE, || {
        portal.count() == 2
    });

    // Names are everyone's; another tenant sees none of it.
    let (status, taken) = send(
        &sidecar,
        "PUT",
        "/v1/channels/mine",
        GLOBEX,
        json!({"destination": "portal"}),
    );
    assert_eq!(
        (status, taken["code"].as_str()),
        (409, Some("name-taken")),
        "{taken}"
    );
    let (status, _) = sidecar.send("GET", "/v1/destinations/portal", Some(GLOBEX), b"", "");
    assert_eq!(status, 404);
    let (status, refused) = send(
        &sidecar,
        "PUT",
        "/v1/destinations/inside",
        ACME,
        json!({"url": "http://10.0.0.1/x"}),
    );
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("a private address"),
        "{refused}"
    );
    let (status, refused) = send(
        &sidecar,
        "PUT",
        "/v1/destinations/env",
        ACME,
        json!({"url": "https://x.example/{env:HOME}"}),
    );
    assert_eq!(status, 400, "{refused}");
    // A tenant's retry policy cannot spin, nor its headers frame the request.
    for (entry, says) in [
        (
            json!({"url": "https://x.example/", "retry": {"initial-backoff-ms": 0}}),
            "initial-backoff-ms",
        ),
        (
            json!({"url": "https://x.example/", "headers": {"Host": "internal"}}),
            "frames the request",
        ),
    ] {
        let (status, refused) = send(&sidecar, "PUT", "/v1/destinations/spin", ACME, entry);
        assert_eq!(status, 400, "{refused}");
        assert!(refused["message"].as_str().unwrap().contains(says), "{refused}");
    }
    let (status, in_use) = sidecar.send("DELETE", "/v1/destinations/portal", Some(ACME), b"", "");
    assert_eq!(
        (status, in_use["code"].as_str()),
        (409, Some("in-use")),
        "{in_use}"
    );

    // Durable: after kill -9 both channels are there and deliver.
    sidecar.kill9();
    sidecar.restart();
    ingest(&sidecar, &[("o-2", json!({"sku": "OWN-2", "qty": 2}))]);
    wait_for("both channels deliver after the restart", PATIENCE, || {
        portal.count() == 4
    });
    let (ok, deleted) = sidecar.cli_as(ACME, &["channels", "delete", "held"]);
    assert!(ok, "{deleted}");
    // Deleted while it holds events, with ?discard=true: each becomes a dead letter.
    let (status, _) = send(
        &sidecar,
        "PUT",
        "/v1/channels/doomed",
        ACME,
        json!({"destination": "portal"}),
    );
    assert_eq!(status, 201);
    ingest(&sidecar, &[("o-3", json!({"sku": "OWN-3", "qty": 3}))]);
    wait_for("the event held by `doomed`", PATIENCE, || {
        sidecar.send("GET", "/v1/channels/doomed", Some(ACME), b"", "").1["queued"]["transform"] == 1
    });
    let (status, _) = sidecar.send("DELETE", "/v1/channels/doomed", Some(ACME), b"", "");
    assert_eq!(status, 409);
    let (status, deleted) = sidecar.send("DELETE", "/v1/channels/doomed?discard=true", Some(ACME), b"", "");
    assert_eq!(status, 200, "{deleted}");
    let (_, letters) = sidecar.send("GET", "/v1/dead-letters?channel=doomed", Some(ACME), b"", "");
    assert_eq!(letters.as_array().map(Vec::len), Some(1), "{letters}");
    assert_eq!(
        (&letters[0]["reason"], &letters[0]["event_id"]),
        (&json!("discarded"), &json!("o-3"))
    );
    let (_, listed) = sidecar.send("GET", "/v1/channels", Some(ACME), b"", "");
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mine"]);
    // Made again under the name, it starts on: the discard's switch is gone.
    let (status, made) = send(
        &sidecar,
        "PUT",
        "/v1/channels/doomed",
        ACME,
        json!({"destination": "portal"}),
    );
    assert_eq!((status, &made["enabled"]), (201, &json!(true)), "{made}");
}
