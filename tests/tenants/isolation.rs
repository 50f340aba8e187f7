//! Tokens and isolation: another tenant's resources are unreachable on
//! every route, and one tenant's ingest rate does not slow another.

use super::*;

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
    // And globex keeps a source of its own.
    let (status, made) = sidecar.send(
        "PUT",
        "/v1/sources/globex-shop",
        Some(GLOBEX),
        br#"{"kind": "shopify", "secret": "globex-secret-0000001"}"#,
        "application/json",
    );
    assert_eq!(status, 201, "{made}");
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
    let (status, table) = sidecar.send(
        "PUT",
        "/v1/lookups/globex-asin",
        Some(GLOBEX),
        b"sku,asin\nTEE-1,B00TEE\n",
        "text/csv",
    );
    assert_eq!(status, 201, "{table}");
    let (probed, listed) = probe_every_route(&sidecar, &letter);
    // Every `/v1` route with a `{name}` but the upload (names are the caller's own).
    let named = sluice_server::api::routes::ROUTES
        .iter()
        .filter(|r| {
            r.tenant_scoped && r.path.contains("{name}") && r.method != "PUT"
                || r.path.starts_with("/v1/tenants/")
        })
        .count();
    assert_eq!(
        probed, named,
        "every /v1 route with a name was probed as another tenant"
    );
    let listings = sluice_server::api::routes::ROUTES
        .iter()
        .filter(|r| {
            r.tenant_scoped
                && r.method == "GET"
                && !r.path.contains('{')
                && !r.path.starts_with("/v1/tenants")
        })
        .count();
    assert_eq!(
        listed, listings,
        "every listing was checked for another tenant's names"
    );

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
/// dead letter `letter` or module it answers 404, and on a tenant 403
/// `admin-only`, exactly as for a resource that does not exist; a listing
/// shows acme none of globex's. Returns how many named routes it probed and
/// how many listings it checked.
fn probe_every_route(sidecar: &Sidecar, letter: &str) -> (usize, usize) {
    let (mut probed, mut listed) = (0, 0);
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
        } else if pattern.starts_with("/v1/events/") {
            "g-1"
        } else if pattern.starts_with("/v1/lookups/") {
            "globex-asin"
        } else if pattern.starts_with("/v1/sources/") {
            "globex-shop"
        } else {
            "globex"
        };
        let mut path = pattern.replace("{name}", theirs);
        if (method, pattern) == ("GET", "/v1/events") {
            // Stories are found by an entity key: globex's `G`.
            path.push_str("?entity=G");
        }
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
        let admin_only = pattern.starts_with("/v1/tenants");
        if !pattern.contains("{name}") {
            if method == "GET" && !admin_only {
                // A listing: narrowed to the caller, so globex's names show
                // in its own and never in acme's.
                let mine = sidecar.send(method, &path, Some(ACME), b"", "");
                let theirs = sidecar.send(method, &path, Some(GLOBEX), b"", "");
                assert_eq!((mine.0, theirs.0), (200, 200), "{method} {pattern}");
                assert!(
                    !mine.1.to_string().contains("globex"),
                    "{method} {pattern} as acme: {}",
                    mine.1
                );
                assert!(
                    theirs.1.to_string().contains("globex"),
                    "{method} {pattern} as globex: {}",
                    theirs.1
                );
                listed += 1;
            }
            continue;
        }
        if method == "PUT"
            && matches!(
                pattern,
                "/v1/modules/{name}"
                    | "/v1/lookups/{name}"
                    | "/v1/sources/{name}"
                    | "/v1/destinations/{name}"
                    | "/v1/channels/{name}"
            )
        {
            // A PUT makes the caller's own: it cannot reach another tenant's
            // (a channel or destination name taken by anyone answers 409).
            continue;
        }
        let answer = sidecar.send(method, &path, Some(ACME), body.as_bytes(), "");
        probed += 1;
        let missing_name = if theirs == letter { "999999" } else { "no-such" };
        let missing = sidecar.send(
            method,
            &pattern.replace("{name}", missing_name),
            Some(ACME),
            body.as_bytes(),
            "",
        );
        if admin_only {
            // Tenants are the admin's: any tenant's name, even one that
            // exists, answers as a missing one does.
            assert_eq!(
                code(&answer),
                (403, "admin-only"),
                "{method} {pattern} as a tenant"
            );
            assert_eq!(code(&missing), code(&answer), "{method} {pattern}");
            continue;
        }
        assert_eq!(
            answer.0, 404,
            "{method} {pattern} as another tenant: {}",
            answer.1
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
    (probed, listed)
}

/// The answer expected for a missing channel, given the one for another tenant's.
fn answer_for_missing(answer: &(u16, Value), from: &str, to: &str) -> (u16, Value) {
    let text = answer.1.to_string().replace(from, to);
    (answer.0, serde_json::from_str(&text).unwrap())
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
