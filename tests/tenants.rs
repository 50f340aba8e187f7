//! Tenants on one sidecar: authentication and isolation, module uploads
//! (checked before they are stored), activation with hot swap and
//! rollback, per-tenant limits and the circuit breaker. The real `sluice
//! serve`, real components, a real HTTP destination.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::support::guest;
use crate::support::sidecar::{ADMIN_TOKEN, Sidecar, raw_request, token_hash, wait_for};
use serde_json::{Value, json};
use sluice_server::sink::{Reply, Responder, Sink};

const PATIENCE: Duration = Duration::from_secs(60);
const ACME: &str = "acme-token";
const GLOBEX: &str = "globex-token";
const METRICS: &str = "metrics-token";

/// Two tenants, each with a json-mapping channel delivering to the sink;
/// globex's destination rejects everything (so it has dead letters).
fn config(sink: &Sink, acme_extra: &str) -> String {
    format!(
        r#"
metrics-token-sha256 = ["{metrics}"]

[limits]
timeout-ms = 10000

[[tenant]]
name = "acme"
token-sha256 = ["{acme}"]
max-module-bytes = 4194304
max-modules = 3
{acme_extra}

[[tenant]]
name = "globex"
token-sha256 = ["{globex}"]

[[destination]]
name = "acme-portal"
url = "http://{addr}/acme"
concurrency = 4

[[destination]]
name = "globex-portal"
url = "http://{addr}/globex"

[[channel]]
name = "acme-stock"
tenant = "acme"
destination = "acme-portal"
[[channel.step]]
module = "json-mapping"
config = {{ rules = [ {{ target = "sku", source = "$.sku" }}, {{ target = "qty", source = "$.qty" }} ] }}

[[channel]]
name = "globex-stock"
tenant = "globex"
destination = "globex-portal"
[[channel.step]]
module = "json-mapping"
config = {{ rules = [ {{ target = "sku", source = "$.sku" }} ] }}
"#,
        metrics = token_hash(METRICS),
        acme = token_hash(ACME),
        globex = token_hash(GLOBEX),
        addr = sink.addr,
    )
}

/// The sink: `/globex` answers 400, everything else 200.
fn sink() -> Sink {
    let respond: Arc<Responder> =
        Arc::new(|request, _| Reply::status(if request.path == "/globex" { 400 } else { 200 }));
    Sink::start("127.0.0.1:0".parse().unwrap(), respond).unwrap()
}

fn event(id: &str, tenant: &str, payload: Value) -> String {
    json!({"id": id, "kind": "inventory", "tenant": tenant, "payload": payload}).to_string()
}

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).unwrap()
}

/// A tar with `module.wasm` and `fixtures/<case>/<file>` entries.
fn tar_upload(module: &[u8], files: &[(&str, String)]) -> Vec<u8> {
    let mut archive = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append_data(&mut header, path, bytes).unwrap();
    };
    add("module.wasm", module);
    for (path, text) in files {
        add(&format!("fixtures/{path}"), text.as_bytes());
    }
    archive.into_inner().unwrap()
}

fn upload(sidecar: &Sidecar, token: &str, name: &str, bytes: &[u8]) -> (u16, Value) {
    sidecar.send(
        "PUT",
        &format!("/v1/modules/{name}"),
        Some(token),
        bytes,
        "application/wasm",
    )
}

/// A JSON body's `code`.
fn code(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["code"].as_str().unwrap_or(""))
}

#[test]
fn tokens_are_required_and_tenants_see_only_their_own() {
    let destination = sink();
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path(), &config(&destination, ""));

    // Globex gets a dead letter (its portal answers 400) and acme a module.
    let (status, _) = sidecar.send(
        "POST",
        "/v1/events",
        Some(GLOBEX),
        event("g-1", "globex", json!({"sku": "G"})).as_bytes(),
        "",
    );
    assert_eq!(status, 202);
    wait_for("globex's dead letter", PATIENCE, || {
        sidecar
            .send("GET", "/v1/dead-letters", Some(GLOBEX), b"", "")
            .1
            .as_array()
            .is_some_and(|l| l.len() == 1)
    });
    let (_, letters) = sidecar.send("GET", "/v1/dead-letters", Some(GLOBEX), b"", "");
    let letter = letters[0]["id"].to_string();
    let (status, module) = upload(&sidecar, ACME, "mapper", &wasm("json-mapping"));
    assert_eq!(status, 201, "{module}");

    // No token, or a wrong one: 401 everywhere under /v1.
    for path in [
        "/v1/channels",
        "/v1/modules",
        "/v1/dead-letters",
        "/v1/channels/acme-stock",
    ] {
        assert_eq!(
            code(&sidecar.send("GET", path, None, b"", "")),
            (401, "unauthorized"),
            "{path}"
        );
        assert_eq!(
            code(&sidecar.send("GET", path, Some("guess"), b"", "")),
            (401, "unauthorized"),
            "{path}"
        );
    }
    let ingest = event("x", "acme", json!({"sku": "A"}));
    assert_eq!(
        code(&sidecar.send("POST", "/v1/events", None, ingest.as_bytes(), "")),
        (401, "unauthorized")
    );
    assert_eq!(
        code(&sidecar.send(
            "POST",
            "/v1/channels/acme-stock/transform",
            Some("guess"),
            ingest.as_bytes(),
            ""
        ))
        .0,
        401
    );
    assert_eq!(upload(&sidecar, "guess", "mapper", b"\0asm").0, 401);

    // Acme sees only its own channel; globex's answer 404 as if they did not exist.
    let (_, channels) = sidecar.send("GET", "/v1/channels", Some(ACME), b"", "");
    let names: Vec<&str> = channels
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme-stock"]);
    for (method, path) in [
        ("GET", "/v1/channels/globex-stock"),
        ("POST", "/v1/channels/globex-stock/transform"),
        ("POST", "/v1/channels/globex-stock/disable"),
        ("POST", "/v1/channels/globex-stock/enable"),
        ("POST", "/v1/channels/globex-stock/activate"),
        ("POST", "/v1/channels/globex-stock/rollback"),
    ] {
        let body = event("x", "globex", json!({}));
        let answer = sidecar.send(method, path, Some(ACME), body.as_bytes(), "application/json");
        assert_eq!(
            code(&answer),
            (404, "unknown-channel"),
            "{method} {path}: {}",
            answer.1
        );
        let missing = sidecar.send(
            method,
            &path.replace("globex-stock", "no-such"),
            Some(ACME),
            body.as_bytes(),
            "",
        );
        assert_eq!(
            missing,
            answer_for_missing(&answer, "globex-stock", "no-such"),
            "indistinguishable from a missing one"
        );
    }
    // Ingesting as globex: answered like a tenant that does not exist.
    let as_globex = sidecar.send(
        "POST",
        "/v1/events",
        Some(ACME),
        event("x", "globex", json!({})).as_bytes(),
        "",
    );
    assert_eq!(code(&as_globex), (400, "unknown-tenant"));
    let as_nobody = sidecar.send(
        "POST",
        "/v1/events",
        Some(ACME),
        event("x", "nobody", json!({})).as_bytes(),
        "",
    );
    assert_eq!(
        as_nobody.1["message"]
            .as_str()
            .unwrap()
            .replace("nobody", "globex"),
        as_globex.1["message"]
    );
    // Globex's dead letter: invisible to acme, in every verb.
    let (_, listed) = sidecar.send("GET", "/v1/dead-letters", Some(ACME), b"", "");
    assert_eq!(listed, json!([]));
    for (method, path) in [
        ("GET", format!("/v1/dead-letters/{letter}")),
        ("POST", format!("/v1/dead-letters/{letter}/replay")),
        (
            "POST",
            format!("/v1/dead-letters/{letter}/replay?retransform=true"),
        ),
        ("DELETE", format!("/v1/dead-letters/{letter}")),
    ] {
        assert_eq!(
            code(&sidecar.send(method, &path, Some(ACME), b"", "")),
            (404, "unknown-dead-letter"),
            "{method} {path}"
        );
    }
    assert_eq!(
        sidecar.send("DELETE", "/v1/dead-letters", Some(ACME), b"", "").1["purged"],
        0
    );
    // Acme's module: invisible to globex, and not activatable on globex's channel.
    assert_eq!(
        code(&sidecar.send("GET", "/v1/modules/mapper", Some(GLOBEX), b"", "")),
        (404, "unknown-module")
    );
    assert_eq!(
        sidecar.send("GET", "/v1/modules", Some(GLOBEX), b"", "").1,
        json!([])
    );
    let steal =
        json!({"steps": [{"module": "mapper", "version": module["version"], "config": {}}]}).to_string();
    let answer = sidecar.send(
        "POST",
        "/v1/channels/globex-stock/activate",
        Some(GLOBEX),
        steal.as_bytes(),
        "",
    );
    assert_eq!(code(&answer), (409, "unknown-module"), "{}", answer.1);
    // Admin routes are the admin's.
    assert_eq!(
        code(&sidecar.send("PUT", "/v1/tenants/evil", Some(ACME), b"", "")),
        (403, "admin-only")
    );
    assert_eq!(
        code(&sidecar.send("POST", "/v1/tenants/globex/tokens", Some(ACME), b"", "")),
        (403, "admin-only")
    );
    // Metrics need their token; that token opens nothing else.
    assert_eq!(sidecar.send("GET", "/metrics", None, b"", "").0, 401);
    assert_eq!(sidecar.send("GET", "/metrics", Some(ACME), b"", "").0, 401);
    assert_eq!(sidecar.send("GET", "/metrics", Some(METRICS), b"", "").0, 200);
    assert_eq!(sidecar.send("GET", "/v1/channels", Some(METRICS), b"", "").0, 401);

    // Every route of the route table, probed as another tenant and with no
    // token: nothing of globex's is reachable, and its answer is the one a
    // missing resource gets.
    let (status, theirs) = upload(&sidecar, GLOBEX, "globex-mapper", &wasm("json-mapping"));
    assert_eq!(status, 201, "{theirs}");
    let probed = probe_every_route(&sidecar, &letter);
    let scoped = sluice_server::api::routes::ROUTES
        .iter()
        .filter(|r| r.tenant_scoped)
        .count();
    assert_eq!(probed, scoped, "every /v1 route was probed");

    // Nothing stored was changed by any of it.
    let (_, still) = sidecar.send("GET", "/v1/dead-letters", Some(GLOBEX), b"", "");
    assert_eq!(still, letters);
    let (_, mine) = sidecar.send("GET", "/v1/modules", Some(ACME), b"", "");
    assert_eq!(mine.as_array().unwrap().len(), 1);
    let (_, globex_modules) = sidecar.send("GET", "/v1/modules", Some(GLOBEX), b"", "");
    assert_eq!(globex_modules.as_array().unwrap().len(), 1);
    let (_, theirs) = sidecar.send("GET", "/v1/channels/globex-stock", Some(GLOBEX), b"", "");
    assert_eq!(theirs["enabled"], true);

    // The admin creates a tenant and issues it a token; the token works at once.
    assert_eq!(
        sidecar
            .send("PUT", "/v1/tenants/initech", Some(ADMIN_TOKEN), b"", "")
            .0,
        201
    );
    let (status, issued) = sidecar.send("POST", "/v1/tenants/initech/tokens", Some(ADMIN_TOKEN), b"", "");
    assert_eq!(status, 201, "{issued}");
    let token = issued["token"].as_str().unwrap();
    assert_eq!(
        sidecar.send("GET", "/v1/channels", Some(token), b"", "").1,
        json!([])
    );
    assert_eq!(upload(&sidecar, token, "mapper", &wasm("json-mapping")).0, 201);

    // Tokens never reach the logs.
    let logs = std::fs::read_to_string(dir.path().join("serve-0.log")).unwrap();
    for secret in [ACME, GLOBEX, METRICS, ADMIN_TOKEN, token] {
        assert!(!logs.contains(secret), "a token is in the log");
    }
}

/// Probes every `/v1` route of the route table: without a token and with
/// the metrics token it answers 401; as acme against globex's channel,
/// dead letter `letter`, module or tenant it answers 403 or 404, exactly as
/// for a resource that does not exist. Returns how many routes it probed.
fn probe_every_route(sidecar: &Sidecar, letter: &str) -> usize {
    let mut probed = 0;
    for route in sluice_server::api::routes::ROUTES
        .iter()
        .filter(|r| r.tenant_scoped)
    {
        let (method, pattern) = (route.method, route.path);
        let theirs = if pattern.starts_with("/v1/channels/") {
            "globex-stock"
        } else if pattern.starts_with("/v1/dead-letters/") {
            letter
        } else if pattern.starts_with("/v1/modules/") {
            "globex-mapper"
        } else {
            "globex"
        };
        let path = pattern.replace("{name}", theirs);
        let body = if pattern == "/v1/events" {
            event("probe", "globex", json!({"sku": "P"}))
        } else {
            json!({"steps": [{"module": "globex-mapper", "config": {}}]}).to_string()
        };
        for token in [None, Some("guess"), Some(METRICS)] {
            assert_eq!(
                code(&sidecar.send(method, &path, token, body.as_bytes(), "")),
                (401, "unauthorized"),
                "{method} {pattern} with {token:?}"
            );
        }
        probed += 1;
        if !pattern.contains("{name}") {
            // A listing or ingest: narrowed to the caller (checked above).
            continue;
        }
        if method == "PUT" && pattern == "/v1/modules/{name}" {
            // Module names are the caller's own: an upload cannot reach another tenant's.
            continue;
        }
        let answer = sidecar.send(method, &path, Some(ACME), body.as_bytes(), "");
        assert!(
            matches!(answer.0, 403 | 404),
            "{method} {pattern} as another tenant: {} {}",
            answer.0,
            answer.1
        );
        if answer.0 == 404 {
            let missing_name = if theirs == letter { "999999" } else { "no-such" };
            let missing = sidecar.send(
                method,
                &pattern.replace("{name}", missing_name),
                Some(ACME),
                body.as_bytes(),
                "",
            );
            if theirs == letter {
                // A letter id is a number: compare the codes, not the texts.
                assert_eq!(code(&missing), code(&answer), "{method} {pattern}");
            } else {
                assert_eq!(
                    missing,
                    answer_for_missing(&answer, theirs, missing_name),
                    "{method} {pattern}: another tenant's is indistinguishable from a missing one"
                );
            }
        }
    }
    probed
}

/// The answer expected for a missing channel, given the one for another tenant's.
fn answer_for_missing(answer: &(u16, Value), from: &str, to: &str) -> (u16, Value) {
    let text = answer.1.to_string().replace(from, to);
    (answer.0, serde_json::from_str(&text).unwrap())
}

#[test]
fn bad_uploads_are_refused_with_a_reason_and_change_nothing() {
    let destination = sink();
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path(), &config(&destination, ""));
    let good = wasm("json-mapping");
    let (status, stored) = upload(&sidecar, ACME, "mapper", &good);
    assert_eq!(status, 201, "{stored}");
    // The same bytes again: a no-op with the same version.
    let (status, again) = upload(&sidecar, ACME, "mapper", &good);
    assert_eq!(
        (status, &again["version"], &again["created"]),
        (200, &stored["version"], &json!(false))
    );

    let mut core_module = b"\0asm\x01\0\0\0".to_vec();
    core_module.extend([0, 4, 3, b'a', b'b', b'c']);
    let failing_fixture = tar_upload(
        &wasm("json-mapping"),
        &[
            ("sku-only/input.json", event("f-1", "acme", json!({"sku": "A"}))),
            ("sku-only/config.json", json!({"rules": [{"target": "sku", "source": "$.sku"}]}).to_string()),
            (
                "sku-only/expected.json",
                json!({"outcome": "emit", "events": [{"id": "f-1", "kind": "inventory", "tenant": "acme", "payload": {"sku": "WRONG"}}]}).to_string(),
            ),
        ],
    );
    // (what, name, body, content type, expected status, expected code)
    let cases: Vec<Refusal> = vec![
        (
            "random bytes",
            "random",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
            "application/wasm",
            422,
            "not-wasm",
        ),
        (
            "a core module",
            "core",
            core_module,
            "application/wasm",
            422,
            "not-a-component",
        ),
        (
            "another world",
            "other",
            wasm("other-world"),
            "application/wasm",
            422,
            "wrong-world",
        ),
        (
            "a 1 GiB memory",
            "huge",
            wasm("huge-memory"),
            "application/wasm",
            422,
            "cannot-instantiate",
        ),
        (
            "failing fixtures",
            "fixtured",
            failing_fixture,
            "application/x-tar",
            422,
            "fixtures-failed",
        ),
        (
            "a traversal name",
            "..%2F..%2Fx",
            good.clone(),
            "application/wasm",
            400,
            "invalid-name",
        ),
        (
            "an upper-case name",
            "Mapper",
            good.clone(),
            "application/wasm",
            400,
            "invalid-name",
        ),
    ];
    for (what, name, bytes, content_type, status, expected) in &cases {
        let answer = sidecar.send(
            "PUT",
            &format!("/v1/modules/{name}"),
            Some(ACME),
            bytes,
            content_type,
        );
        assert_eq!(code(&answer), (*status, *expected), "{what}: {}", answer.1);
        assert!(!answer.1["message"].as_str().unwrap().is_empty());
    }
    // A raw `..` path never reaches a module name.
    let answer = raw_request(
        &sidecar.base,
        &format!(
            "PUT /v1/modules/../../x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACME}\r\nContent-Length: 4\r\n\r\n\0asm"
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    // 100 MB is refused from its Content-Length, before a byte of it is read.
    let answer = raw_request(
        &sidecar.base,
        &format!(
            "PUT /v1/modules/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACME}\r\nContent-Type: application/wasm\r\nContent-Length: 100000000\r\n\r\n"
        ),
    );
    assert!(
        answer.starts_with("HTTP/1.1 413") && answer.contains("module-too-large"),
        "{answer}"
    );
    // A fixture-checked upload that passes is stored with its results.
    let passing = tar_upload(
        &good,
        &[
            ("sku-only/input.json", event("f-1", "acme", json!({"sku": "A", "qty": 1}))),
            ("sku-only/config.json", json!({"rules": [{"target": "sku", "source": "$.sku"}]}).to_string()),
            (
                "sku-only/expected.json",
                json!({"outcome": "emit", "events": [{"id": "f-1", "kind": "inventory", "tenant": "acme", "payload": {"sku": "A"}}]}).to_string(),
            ),
        ],
    );
    let answer = sidecar.send(
        "PUT",
        "/v1/modules/checked",
        Some(ACME),
        &passing,
        "application/x-tar",
    );
    assert_eq!(answer.0, 201, "{}", answer.1);
    let fixtures = answer.1["fixtures"].as_array().unwrap();
    assert_eq!(fixtures.len(), 1, "{}", answer.1);
    assert_eq!(
        (&fixtures[0]["case"], &fixtures[0]["status"]),
        (&json!("sku-only"), &json!("passed"))
    );
    assert!(
        fixtures[0]["usage"]["memory-bytes"].as_u64().unwrap() > 0,
        "{}",
        answer.1
    );
    // The module quota (3 names): a fourth name is refused.
    assert_eq!(upload(&sidecar, ACME, "third", &good).0, 201);
    assert_eq!(
        code(&upload(&sidecar, ACME, "fourth", &good)),
        (409, "too-many-modules")
    );

    // Only the good uploads are stored; no refused bytes reached the module folder.
    let (_, modules) = sidecar.send("GET", "/v1/modules", Some(ACME), b"", "");
    let names: BTreeSet<&str> = modules
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["checked", "mapper", "third"]));
    let files = std::fs::read_dir(dir.path().join("data/modules"))
        .unwrap()
        .count();
    assert_eq!(
        files, 1,
        "every good upload had the same bytes: one content-addressed file"
    );
    assert!(!dir.path().join("x").exists() && !dir.path().join("data/x").exists());
}

/// An upload that must be refused: what it is, its name, body, content type, status and code.
type Refusal = (
    &'static str,
    &'static str,
    Vec<u8>,
    &'static str,
    u16,
    &'static str,
);

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

#[test]
fn a_tenant_over_its_ingest_rate_gets_429_and_others_do_not() {
    let destination = sink();
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path(), &config(&destination, "ingest-rate = \"5/min\""));
    let batch: String = (0..5)
        .map(|n| format!("{}\n", event(&format!("r-{n}"), "acme", json!({"sku": "A"}))))
        .collect();
    assert_eq!(
        sidecar
            .send("POST", "/v1/events", Some(ACME), batch.as_bytes(), "")
            .0,
        202
    );
    let over = sidecar.send(
        "POST",
        "/v1/events",
        Some(ACME),
        event("r-5", "acme", json!({})).as_bytes(),
        "",
    );
    assert_eq!(code(&over), (429, "rate-limited"), "{}", over.1);
    // Refused means not stored: only the first five were taken in.
    let metrics = sidecar.metrics();
    assert!(
        metrics.contains(r#"sluice_events_in_total{tenant="acme"} 5"#),
        "{metrics}"
    );
    // Globex has no ingest limit and is not slowed by acme's.
    let theirs = sidecar.send(
        "POST",
        "/v1/events",
        Some(GLOBEX),
        event("g-9", "globex", json!({})).as_bytes(),
        "",
    );
    assert_eq!(theirs.0, 202);
    assert!(
        sidecar
            .metrics()
            .contains(r#"sluice_ingest_rate_limited_total{tenant="acme"} 1"#)
    );
}

/// A tar whose one entry is `path` of `kind`, linking to `link` when it is a link.
fn tar_entry(module: &[u8], path: &str, kind: tar::EntryType, link: &str, size: u64) -> Vec<u8> {
    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(module.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    archive.append_data(&mut header, "module.wasm", module).unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(0o644);
    if !link.is_empty() {
        header.set_link_name(link).unwrap();
    }
    header.set_cksum();
    archive
        .append_data(&mut header, path, std::io::repeat(0).take(size))
        .unwrap();
    archive.into_inner().unwrap()
}

use std::io::Read as _;

#[test]
fn hostile_tar_uploads_are_refused_without_reading_links_or_showing_paths() {
    let destination = sink();
    let dir = tempfile::tempdir().unwrap();
    // Its own module cache: the test counts the artifacts in it.
    let sidecar =
        Sidecar::start_with_module_cache(dir.path(), &config(&destination, "max-module-versions = 2"), None);
    let good = wasm("json-mapping");
    let secret = dir.path().join("secret.json");
    std::fs::write(&secret, r#"{"secret": "do not show"}"#).unwrap();
    let link = secret.to_str().unwrap();
    let cases = [
        (
            "a symlinked expected.json",
            tar_entry(
                &good,
                "fixtures/c/expected.json",
                tar::EntryType::Symlink,
                link,
                0,
            ),
        ),
        (
            "a hard link",
            tar_entry(&good, "fixtures/c/input.json", tar::EntryType::Link, link, 0),
        ),
        (
            "a link to /proc",
            tar_entry(
                &good,
                "fixtures/c/input.json",
                tar::EntryType::Symlink,
                "/proc/self/mem",
                0,
            ),
        ),
        (
            "a GNU sparse module",
            tar_entry(&good, "module.wasm", tar::EntryType::GNUSparse, "", 0),
        ),
        (
            "a device",
            tar_entry(&good, "fixtures/c/input.json", tar::EntryType::Char, "", 0),
        ),
    ];
    for (what, tar) in cases {
        let answer = sidecar.send("PUT", "/v1/modules/linked", Some(ACME), &tar, "application/x-tar");
        assert_eq!(code(&answer), (400, "invalid-archive"), "{what}: {}", answer.1);
        let text = answer.1.to_string();
        assert!(
            !text.contains("do not show") && !text.contains("/tmp"),
            "{what}: {text}"
        );
    }
    // A fixture file whose header declares 1 TiB is refused from its header,
    // before anything is read or expanded.
    let mut huge = tar_upload(&good, &[]);
    huge.truncate(huge.len() - 1024);
    let mut header = tar::Header::new_gnu();
    header.set_path("fixtures/c/input.json").unwrap();
    header.set_size(1 << 40);
    header.set_mode(0o644);
    header.set_cksum();
    huge.extend_from_slice(header.as_bytes());
    huge.extend_from_slice(&[0; 1024]);
    let answer = sidecar.send("PUT", "/v1/modules/huge", Some(ACME), &huge, "application/x-tar");
    assert_eq!(code(&answer), (413, "fixtures-too-large"), "{}", answer.1);

    // A failing fixture names the case and the path, structured, and no server path.
    let failing = tar_upload(
        &good,
        &[
            ("sku-only/input.json", event("f-1", "acme", json!({"sku": "A"}))),
            ("sku-only/config.json", json!({"rules": [{"target": "sku", "source": "$.sku"}]}).to_string()),
            (
                "sku-only/expected.json",
                json!({"outcome": "emit", "events": [{"id": "f-1", "kind": "inventory", "tenant": "acme", "payload": {"sku": "WRONG"}}]}).to_string(),
            ),
            ("broken/input.json", "{not json".into()),
        ],
    );
    let answer = sidecar.send(
        "PUT",
        "/v1/modules/fixtured",
        Some(ACME),
        &failing,
        "application/x-tar",
    );
    assert_eq!(code(&answer), (422, "fixtures-failed"), "{}", answer.1);
    let cases = answer.1["cases"].as_array().unwrap();
    let differs = cases.iter().find(|c| c["case"] == "sku-only").unwrap();
    assert_eq!(
        differs["differences"][0]["path"], "$['events'][0]['payload']['sku']",
        "{differs}"
    );
    assert_eq!(differs["differences"][0]["expected"], "WRONG");
    assert_eq!(differs["differences"][0]["actual"], "A");
    let broken = cases.iter().find(|c| c["case"] == "broken").unwrap();
    assert!(
        broken["error"].as_str().unwrap().starts_with("broken/input.json"),
        "{broken}"
    );
    assert!(!answer.1.to_string().contains("/tmp"), "{}", answer.1);

    // Nothing refused left a compiled artifact behind; the accepted one did.
    let cache = dir.path().join("data/module-cache");
    let artifacts = || std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    let before = artifacts();
    let huge = upload(&sidecar, ACME, "huge", &wasm("huge-memory"));
    assert_eq!(code(&huge), (422, "cannot-instantiate"), "{}", huge.1);
    assert_eq!(artifacts(), before, "a refused module leaves no artifact");
    // (json-mapping is compiled already for the config's channels.)
    assert_eq!(upload(&sidecar, ACME, "guard", &wasm("inventory-guard")).0, 201);
    assert_eq!(artifacts(), before + 1, "an accepted module's artifact is cached");

    // Versions are counted across names, not names alone.
    assert_eq!(upload(&sidecar, ACME, "mapper", &good).0, 201);
    let third = upload(&sidecar, ACME, "portal", &wasm("b2b-portal"));
    assert_eq!(code(&third), (409, "too-many-module-versions"), "{}", third.1);
}

#[test]
fn a_damaged_module_file_degrades_its_channel_and_the_server_still_starts() {
    let destination = sink();
    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::start(dir.path(), &config(&destination, ""));
    let (status, stored) = upload(&sidecar, ACME, "mapper", &wasm("json-mapping"));
    assert_eq!(status, 201, "{stored}");
    let version = stored["version"].as_str().unwrap().to_string();
    let pipeline = json!({"steps": [{"module": "mapper", "version": version, "config": {"rules": [{"target": "sku", "source": "$.sku"}]}}]});
    let activate = |sidecar: &Sidecar| {
        let (status, body) = sidecar.send(
            "POST",
            "/v1/channels/acme-stock/activate",
            Some(ACME),
            pipeline.to_string().as_bytes(),
            "application/json",
        );
        assert_eq!(status, 200, "{body}");
    };
    activate(&sidecar);
    sidecar.kill9();
    // As after a power loss: the file is cut short.
    let file = dir.path().join(format!("data/modules/{version}.wasm"));
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    sidecar.restart();

    let (status, ready) = sidecar.get("/readyz");
    assert_eq!(status, 503, "{ready}");
    let why = ready["degraded_channels"]["acme-stock"].as_str().unwrap();
    assert!(why.contains("damaged") && !why.contains("/"), "{why}");
    // The other tenant's channel runs; acme's events wait, nothing is lost.
    let (status, _) = sidecar.send(
        "POST",
        "/v1/events",
        Some(ACME),
        event("held-1", "acme", json!({"sku": "A", "qty": 1})).as_bytes(),
        "application/json",
    );
    assert_eq!(status, 202);
    // Uploading the module again repairs the file; activating brings the channel back.
    assert_eq!(upload(&sidecar, ACME, "mapper", &wasm("json-mapping")).0, 200);
    activate(&sidecar);
    wait_for("the held event", PATIENCE, || {
        destination.count_where(|r| r.header("x-sluice-source-event-id") == Some("held-1")) == 1
    });
    let (status, ready) = sidecar.get("/readyz");
    assert_eq!(status, 200, "{ready}");
}

#[test]
fn a_module_importing_wasi_http_loads_and_each_request_fails_its_own_event_as_denied() {
    let destination = sink();
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path(), &config(&destination, ""));
    // Linked but denied: the upload is accepted, and `check` says so.
    let (status, uploaded) = upload(&sidecar, ACME, "http", &wasm("http-caller"));
    assert_eq!(status, 201, "{uploaded}");
    let checked = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", guest("http-caller").to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{out}");
    assert!(
        out.contains("wasi:http/outgoing-handler") && out.contains("(linked but denied"),
        "{out}"
    );

    let version = uploaded["version"].as_str().unwrap();
    let pipeline = json!({"steps": [{"module": "http", "version": version}]}).to_string();
    let (status, answer) = sidecar.send(
        "POST",
        "/v1/channels/acme-stock/activate",
        Some(ACME),
        pipeline.as_bytes(),
        "",
    );
    assert_eq!(status, 200, "{answer}");
    let events: String = (0..3)
        .map(|n| event(&format!("h-{n}"), "acme", json!({"sku": "A"})) + "\n")
        .collect();
    let (status, answer) = sidecar.send("POST", "/v1/events", Some(ACME), events.as_bytes(), "");
    assert_eq!(status, 202, "{answer}");
    wait_for("three dead letters", PATIENCE, || {
        sidecar
            .get("/v1/dead-letters?channel=acme-stock")
            .1
            .as_array()
            .is_some_and(|l| l.len() == 3)
    });
    let letters = sidecar.get("/v1/dead-letters?channel=acme-stock").1;
    for letter in letters.as_array().unwrap() {
        let (_, full) = sidecar.get(&format!("/v1/dead-letters/{}", letter["id"]));
        assert_eq!(full["reason"], "fault", "{full}");
        assert_eq!(full["detail"]["code"], "denied", "{full}");
        let import = full["detail"]["import"].as_str().unwrap();
        assert!(
            import.starts_with("wasi:http/types@") && import.ends_with("#[constructor]fields"),
            "{full}"
        );
    }
    // The sync path says the same, per event, and the host carries on.
    let probe = event("h-sync", "acme", json!({"sku": "B"}));
    let (status, outcome) = sidecar.send(
        "POST",
        "/v1/channels/acme-stock/transform",
        Some(ACME),
        probe.as_bytes(),
        "",
    );
    assert_eq!(
        (status, &outcome["error"]["code"]),
        (200, &json!("denied")),
        "{outcome}"
    );
    assert!(
        !outcome.to_string().contains(dir.path().to_str().unwrap()),
        "no server path: {outcome}"
    );
    // Nothing left: the destination saw none of these events.
    assert!(
        destination
            .received()
            .iter()
            .all(|r| !r.body.windows(2).any(|w| w == b"h-")),
        "nothing was delivered"
    );
}

/// Creates `dir` as a module cache must be: writable by its owner alone,
/// whatever the umask.
fn private_dir(dir: &std::path::Path) {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .unwrap();
}

/// The `.cwasm` files in `dir` with their inodes (a recompiled artifact is
/// written to a new file and renamed over the old one).
fn artifacts_in(dir: &std::path::Path) -> BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap())
                .map(|entry| {
                    (
                        entry.file_name().to_string_lossy().into_owned(),
                        entry.metadata().unwrap().ino(),
                    )
                })
                .filter(|(name, _)| name.ends_with(".cwasm"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sidecars_sharing_a_module_cache_compile_each_module_once_and_never_prune_it() {
    let destination = sink();
    let shared = tempfile::tempdir().unwrap();
    let cache = shared.path().join("modules");
    // An artifact this sidecar has no use for, as another sidecar's would be.
    let foreign = format!("{}-0000000000000000.cwasm", "0".repeat(64));
    private_dir(&cache);
    std::fs::write(cache.join(&foreign), b"another sidecar's").unwrap();

    let first = tempfile::tempdir().unwrap();
    let _first =
        Sidecar::start_with_module_cache(first.path(), &config(&destination, ""), Some(cache.clone()));
    let compiled = artifacts_in(&cache);
    assert_eq!(
        compiled.len(),
        2,
        "json-mapping's artifact beside the foreign one: {compiled:?}"
    );
    assert!(!first.path().join("data/module-cache").exists());

    // A second sidecar loads what the first compiled: no file is rewritten.
    let second = tempfile::tempdir().unwrap();
    let _second =
        Sidecar::start_with_module_cache(second.path(), &config(&destination, ""), Some(cache.clone()));
    assert_eq!(artifacts_in(&cache), compiled);

    // A sidecar's own cache is collected when it starts; a shared one never is.
    let own = tempfile::tempdir().unwrap();
    let own_cache = own.path().join("data/module-cache");
    private_dir(&own_cache);
    std::fs::write(own_cache.join(&foreign), b"stale").unwrap();
    let _own = Sidecar::start_with_module_cache(own.path(), &config(&destination, ""), None);
    wait_for("the own cache's collection", Duration::from_secs(10), || {
        !own_cache.join(&foreign).exists()
    });
    assert_eq!(
        artifacts_in(&cache),
        compiled,
        "the shared cache keeps every artifact"
    );
}
