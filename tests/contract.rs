//! Contract 0.2 (`wit/v0.2/`) beside 0.1, with real compiled components:
//! a 0.1 component runs unchanged in a pipeline with 0.2 steps, topic,
//! headers and delivery hints travel, state is kept only with the outcome
//! of the event that wrote it, and every cap on state holds.

use std::sync::Arc;

use crate::support::{engine, event, step};
use serde_json::{Value, json};
use sluice_engine::event::{EventJson, MethodJson, OutcomeJson};
use sluice_engine::pipeline::Pipeline;
use sluice_engine::state::{MemoryState, RunContext, StateQuota, StateUsage};
use sluice_engine::{FaultKind, Limits};

fn counted(key: &str, attack: &str, id: &str) -> EventJson {
    event(id, "product", json!({"key": key, "attack": attack}))
}

fn payload(outcome: &OutcomeJson) -> Value {
    match outcome {
        OutcomeJson::Emit { events } => serde_json::from_str(events[0].payload.get()).unwrap(),
        other => panic!("expected an emit, got {other:?}"),
    }
}

/// Runs `events` with `state` as the stored state, then applies what the
/// run kept, as a sidecar commits it.
fn run_with(pipeline: &Pipeline, state: &mut MemoryState, events: &[EventJson]) -> Vec<OutcomeJson> {
    let context = RunContext {
        store: Some(Arc::new(state.clone())),
        usage: state.usage(),
        ..RunContext::empty()
    };
    let run = pipeline.run_in(events, &context);
    for change in &run.writes {
        state.apply(&change.writes);
    }
    run.outcomes
}

#[test]
fn a_0_1_component_runs_unchanged_beside_0_2_steps_and_keeps_the_topic_headers_and_hint() {
    let old = step("contract-0-1", "{}");
    assert_eq!(old.module.contract(), "0.1.0");
    let new = step("changed-fields", "{}");
    assert_eq!(new.module.contract(), "0.2.0");
    assert!(new.module.stateful() && !old.module.stateful());

    // 0.2 then 0.1: the hint chosen by the 0.2 step survives the 0.1 step,
    // which cannot see it, and so do the topic and headers.
    let pipeline = Pipeline::new(vec![new, old]);
    let mut discontinued = event("e-1", "product", json!({"sku": "TEE-1", "active": false}));
    discontinued.topic = "products/delete".into();
    discontinued
        .headers
        .insert("x-shopify-shop-domain".into(), "acme.myshopify.com".into());
    let outcomes = pipeline.run(&[discontinued]);
    let OutcomeJson::Emit { events } = &outcomes[0] else {
        panic!("{outcomes:?}")
    };
    assert_eq!(events[0].payload.get(), r#"{"v0.1":{"sku":"TEE-1"}}"#);
    assert_eq!(events[0].topic, "products/delete");
    assert_eq!(events[0].headers["x-shopify-shop-domain"], "acme.myshopify.com");
    assert_eq!(
        events[0].delivery.as_ref().unwrap().method,
        Some(MethodJson::Delete)
    );

    // The 0.1 component's own outcomes, each in 0.2's form.
    let alone = Pipeline::new(vec![step("contract-0-1", "{}")]);
    let outcomes = alone.run(&[
        event("d", "product", json!("drop")),
        event("r", "product", json!("reject")),
        event("p", "product", json!("panic")),
        event("ok", "product", json!({"a": 1})),
    ]);
    assert!(matches!(&outcomes[0], OutcomeJson::Drop { reason } if reason == "dropped by the 0.1 guest"));
    assert!(matches!(&outcomes[1], OutcomeJson::Reject { violations } if violations[0].code == "rejected"));
    assert!(
        matches!(&outcomes[2], OutcomeJson::Error { error } if error.to_string().contains("the 0.1 guest panics on purpose")),
        "{:?}",
        outcomes[2]
    );
    assert_eq!(payload(&outcomes[3]), json!({"v0.1": {"a": 1}}));
}

#[test]
fn state_is_kept_only_with_an_outcome_that_is_delivered_or_dropped() {
    let pipeline = Pipeline::new(vec![step("stateful", "{}")]);
    let mut state = MemoryState::default();
    let outcomes = run_with(
        &pipeline,
        &mut state,
        &[
            counted("a", "count", "1"),
            counted("a", "count-then-reject", "2"),
            counted("a", "count-then-panic", "3"),
            counted("a", "count", "4"),
            counted("b", "count", "5"),
        ],
    );
    assert_eq!(payload(&outcomes[0])["n"], 1);
    assert_eq!(outcomes[1].tag(), "reject");
    assert_eq!(outcomes[2].tag(), "error");
    // The rejected event's write was seen by the next event of the run (it
    // is documented so), but the trapped call's write never was.
    assert_eq!(payload(&outcomes[3])["n"], 3);
    assert_eq!(payload(&outcomes[4])["n"], 1);
    let kept = state.values();
    assert_eq!(kept[&("stateful".to_string(), "n:a".to_string())], "3");
    assert_eq!(kept.len(), 2, "{kept:?}");

    // The next batch reads what the last one kept, and a delete forgets.
    let outcomes = run_with(
        &pipeline,
        &mut state,
        &[counted("a", "count", "6"), counted("b", "forget", "7")],
    );
    assert_eq!(payload(&outcomes[0])["n"], 4);
    assert_eq!(outcomes[1].tag(), "drop");
    assert!(
        !state
            .values()
            .contains_key(&("stateful".to_string(), "n:b".to_string()))
    );
    assert_eq!(state.usage(), StateUsage { keys: 1, bytes: 4 });
}

#[test]
fn a_run_without_a_store_starts_empty_and_keeps_nothing() {
    let pipeline = Pipeline::new(vec![step("stateful", "{}")]);
    for _ in 0..2 {
        let outcomes = pipeline.run(&[counted("a", "count", "1"), counted("a", "count", "2")]);
        assert_eq!(payload(&outcomes[0])["n"], 1);
        assert_eq!(payload(&outcomes[1])["n"], 2, "a run sees its own writes");
    }
}

#[test]
fn a_guest_writing_state_in_a_loop_fails_its_own_event_and_keeps_nothing() {
    let pipeline = Pipeline::new(vec![step("stateful", "{}")]);
    let mut state = MemoryState::default();
    let outcomes = run_with(
        &pipeline,
        &mut state,
        &[counted("a", "write-loop", "1"), counted("a", "count", "2")],
    );
    match &outcomes[0] {
        OutcomeJson::Error { error } => assert_eq!(
            error.kind,
            FaultKind::State {
                detail: "wrote or deleted more than 1000 state keys for one event".into()
            }
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(payload(&outcomes[1])["n"], 1);
    assert_eq!(
        state.values().len(),
        1,
        "only the counter: the loop's 1000 keys are gone"
    );
}

#[test]
fn huge_keys_huge_values_and_text_that_is_not_json_are_refused_to_the_guest() {
    let pipeline = Pipeline::new(vec![step("stateful", "{}")]);
    let mut state = MemoryState::default();
    let outcomes = run_with(&pipeline, &mut state, &[counted("a", "huge", "1")]);
    assert_eq!(
        payload(&outcomes[0]),
        json!({
            "key": "Err(StateError::KeyTooLarge(512))",
            "value": "Err(StateError::ValueTooLarge(65536))",
            "not-json": "Err(StateError::NotJson)",
        })
    );
    assert!(state.values().is_empty());
}

#[test]
fn the_tenants_quota_refuses_new_keys_past_it_and_counts_what_the_run_wrote() {
    let pipeline = Pipeline::new(vec![step("stateful", "{}")]);
    let quota = StateQuota {
        max_keys: 100,
        ..StateQuota::default()
    };
    // The tenant already holds 90 keys elsewhere: ten more fit.
    let context = RunContext {
        usage: StateUsage { keys: 90, bytes: 900 },
        quota,
        ..RunContext::empty()
    };
    let run = pipeline.run_in(&[counted("x", "fill", "1"), counted("y", "fill", "2")], &context);
    let refused = |outcome: &OutcomeJson| payload(outcome)["refused"].clone();
    assert_eq!(
        refused(&run.outcomes[0]),
        json!("StateError::Quota(\"the tenant's state holds 100 keys, its quota\")")
    );
    assert_eq!(run.writes[0].writes.len(), 10);
    assert_eq!(
        run.writes[1].writes.len(),
        0,
        "the first event's writes count against the second"
    );
    assert!(refused(&run.outcomes[1]).is_string());
}

#[test]
fn a_million_stored_keys_cost_a_read_nothing_more() {
    let pipeline = Pipeline::new(vec![step("stateful", "{}")]);
    let mut state = MemoryState::new(
        (0..1_000_000).map(|n| (("stateful".to_string(), format!("n:k{n}")), n.to_string())),
    );
    let events = [counted("k999999", "count", "1"), counted("new", "count", "2")];
    // The default quota is a million keys: the new one is refused, the
    // existing one is updated.
    let outcomes = run_with(&pipeline, &mut state, &events);
    assert_eq!(payload(&outcomes[0])["n"], 1_000_000);
    assert_eq!(payload(&outcomes[1])["written"], false);
    assert_eq!(state.usage().keys, 1_000_000);
    let context = RunContext {
        store: Some(Arc::new(state.clone())),
        usage: state.usage(),
        quota: StateQuota {
            max_keys: 2_000_000,
            ..StateQuota::default()
        },
        ..RunContext::empty()
    };
    let run = pipeline.run_in(&events, &context);
    assert_eq!(payload(&run.outcomes[0])["n"], 1_000_001);
    assert_eq!(payload(&run.outcomes[1])["written"], true);
    assert_eq!(run.writes[1].writes.len(), 1);
}

#[test]
fn a_partial_outcome_delivers_the_good_variants_and_names_the_bad_one() {
    let dir = crate::support::workspace().join("transforms/channels/amazon-from-shopify");
    let pipeline =
        sluice_engine::locate::load_pipeline(&dir.join("pipeline.json"), engine(), &Limits::default())
            .unwrap();
    let input =
        std::fs::read_to_string(dir.join("fixtures/one-variant-without-sku-is-left-out/input.json")).unwrap();
    let events = sluice_engine::event::parse_events(&input).unwrap();
    let outcomes = pipeline.run(&events);
    let OutcomeJson::Partial { events, violations } = &outcomes[0] else {
        panic!("{outcomes:?}")
    };
    assert_eq!(events.len(), 2);
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].path, "$['sku']");
    assert!(violations[0].event.as_deref().unwrap().starts_with("ch-amz-2#"));
}

mod sidecar {
    //! The same through a real sidecar on SQLite, with a real destination
    //! on loopback.

    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::{Value, json};
    use sluice_server::sink::{Reply, Responder, Sink};

    use crate::support::guest;
    use crate::support::sidecar::{Sidecar, wait_for};

    const PATIENCE: Duration = Duration::from_secs(60);

    fn sink() -> Sink {
        let respond: Arc<Responder> = Arc::new(|_, _| Reply::status(200));
        Sink::start("127.0.0.1:0".parse().unwrap(), respond).unwrap()
    }

    fn config(addr: std::net::SocketAddr, module: &str, extra: &str) -> String {
        format!(
            r#"
[limits]
timeout-ms = 10000

[retry]
initial-backoff-ms = 50
max-backoff-ms = 500

[[destination]]
name = "portal"
url = "http://{addr}/items/{{$.sku}}"
method = "PUT"
entity-key = "$.sku"
{extra}

[[channel]]
name = "catalog"
tenant = "acme"
destination = "portal"
[[channel.step]]
module = "{}"
"#,
            guest(module).display()
        )
    }

    fn post(sidecar: &Sidecar, events: &[Value]) {
        let body: String = events.iter().map(|e| format!("{e}\n")).collect();
        let (status, answer) = sidecar.post("/v1/events", &body);
        assert_eq!(status, 202, "{answer}");
    }

    fn product(id: &str, payload: Value) -> Value {
        json!({"id": id, "kind": "product", "tenant": "acme", "payload": payload})
    }

    #[test]
    fn a_stateful_channel_sends_only_what_changed_and_a_discontinued_product_as_a_delete() {
        let destination = sink();
        let dir = tempfile::tempdir().unwrap();
        let config = config(destination.addr, "changed-fields", "allow-methods = [\"DELETE\"]");
        let mut sidecar = Sidecar::start(dir.path(), &config);
        let tee = json!({"sku": "TEE-1", "title": "Tee", "price": "9.99", "quantity": 4});
        post(&sidecar, &[product("e-1", tee.clone())]);
        wait_for("the first record", PATIENCE, || destination.count() == 1);
        // Settled, so that the kill cannot make it go again (at least once).
        wait_for("the first delivery settled", PATIENCE, || {
            sidecar.get("/v1/channels/catalog").1["queued"]["delivery"] == 0
        });
        // A restart in between: the state is in the database, not the process.
        sidecar.kill9();
        sidecar.restart();
        let cheaper = json!({"sku": "TEE-1", "title": "Tee", "price": "8.99", "quantity": 4});
        post(
            &sidecar,
            &[product("e-2", cheaper.clone()), product("e-3", cheaper)],
        );
        post(
            &sidecar,
            &[product("e-4", json!({"sku": "TEE-1", "active": false}))],
        );
        wait_for("the change and the delete", PATIENCE, || destination.count() == 3);
        std::thread::sleep(Duration::from_millis(500));
        let received = destination.received();
        assert_eq!(received.len(), 3, "the unchanged record was not sent");
        assert_eq!(
            (received[0].method.as_str(), received[0].path.as_str()),
            ("PUT", "/items/TEE-1")
        );
        assert_eq!(received[0].json(), tee);
        assert_eq!(received[1].json(), json!({"sku": "TEE-1", "price": "8.99"}));
        assert_eq!(received[1].header("x-sluice-source-event-id"), Some("e-2"));
        assert_eq!(
            (received[2].method.as_str(), received[2].path.as_str()),
            ("DELETE", "/items/TEE-1")
        );
        assert!(received[2].body.is_empty());
        // The product is forgotten: sent again, it goes out whole.
        post(
            &sidecar,
            &[product("e-5", json!({"sku": "TEE-1", "price": "8.99"}))],
        );
        wait_for("the product again", PATIENCE, || destination.count() == 4);
        assert_eq!(
            destination.received()[3].json(),
            json!({"sku": "TEE-1", "price": "8.99"})
        );
    }

    #[test]
    fn lookup_tables_from_files_and_from_uploads_resolve_and_an_upload_is_pinned_by_version() {
        let destination = sink();
        let dir = tempfile::tempdir().unwrap();
        let folder = lookups_folder(dir.path());
        let mut nodes = vec![Sidecar::start(&folder, &lookups_config(&destination))];
        resolve_lookups(&destination, &mut nodes);
    }

    #[test]
    fn a_lookup_table_uploaded_to_one_node_of_jetstream_reaches_the_other() {
        let destination = sink();
        let dir = tempfile::tempdir().unwrap();
        let nats = crate::support::nats::Nats::start(dir.path());
        let config = format!("queue = \"{}\"\n{}", nats.url(), lookups_config(&destination));
        let mut nodes: Vec<Sidecar> = (0..2)
            .map(|node| Sidecar::start(&lookups_folder(&dir.path().join(format!("node{node}"))), &config))
            .collect();
        resolve_lookups(&destination, &mut nodes);
    }

    const LOOKUPS_TOKEN: &str = "acme-lookups-token";
    const OTHER_TOKEN: &str = "globex-lookups-token";

    /// A folder with `asin.csv`, the table the config's step names.
    fn lookups_folder(folder: &std::path::Path) -> std::path::PathBuf {
        std::fs::create_dir_all(folder).unwrap();
        std::fs::write(folder.join("asin.csv"), "sku,asin\r\nTEE-1,B00TEE0001\r\n").unwrap();
        folder.to_path_buf()
    }

    /// `changed-fields` with the `asin` table from `asin.csv`, putting to
    /// `/items/{param:asin}`; tenant acme has [`LOOKUPS_TOKEN`].
    fn lookups_config(destination: &Sink) -> String {
        format!(
            "[[tenant]]\nname = \"acme\"\ntoken-sha256 = [\"{}\"]\n[[tenant]]\nname = \"globex\"\ntoken-sha256 = [\"{}\"]\n{}lookups = {{ asin = \"asin.csv\" }}\nconfig = {{ lookup = {{ table = \"asin\", field = \"asin\" }} }}\n",
            crate::support::sidecar::token_hash(LOOKUPS_TOKEN),
            crate::support::sidecar::token_hash(OTHER_TOKEN),
            config(destination.addr, "changed-fields", "").replace("/items/{$.sku}", "/items/{param:asin}"),
        )
    }

    /// The path of the first request whose body has `price`, once it came.
    fn path_of_price(destination: &Sink, price: &str) -> String {
        let mut path = String::new();
        wait_for(&format!("the listing at {price}"), PATIENCE, || {
            let found = destination
                .received()
                .into_iter()
                .find(|r| r.json()["price"] == price);
            found.map(|r| path = r.path.clone()).is_some()
        });
        path
    }

    /// The file's table resolves; uploads are checked, stored and named by
    /// version on the first node; an activation pins one, on every node and
    /// across a `kill -9` of the last, until another names a new version.
    fn resolve_lookups(destination: &Sink, nodes: &mut [Sidecar]) {
        let token = LOOKUPS_TOKEN;
        post(
            &nodes[0],
            &[product("e-1", json!({"sku": "TEE-1", "price": "9.99"}))],
        );
        assert_eq!(path_of_price(destination, "9.99"), "/items/B00TEE0001");
        let listing = destination
            .received()
            .into_iter()
            .find(|r| r.json()["price"] == "9.99")
            .unwrap();
        assert_eq!(listing.method, "PUT");
        assert_eq!(listing.json()["asin"], "B00TEE0001");

        let first_node = &nodes[0];
        let put = |name: &str, body: &[u8], media: &str| {
            first_node.send("PUT", &format!("/v1/lookups/{name}"), Some(token), body, media)
        };
        // What is not a table is refused, named, and nothing is stored.
        let (status, answer) = put("sku-to-asin", b"sku,asin\nTEE-2,A\nTEE-2,B\n", "text/csv");
        assert_eq!(
            (status, answer["code"].as_str()),
            (422, Some("invalid-table")),
            "{answer}"
        );
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("line 3: the key `TEE-2` is given twice"),
            "{answer}"
        );
        let (status, answer) = put("sku-to-asin", br#"{"A": 1, "A": 2}"#, "application/json");
        assert_eq!(status, 422, "{answer}");
        let (status, answer) = put("sku-to-asin", b"sku,asin\n", "application/wasm");
        assert_eq!(
            (status, answer["code"].as_str()),
            (415, Some("unsupported-media-type")),
            "{answer}"
        );
        // 100 MB: refused from its Content-Length, before a byte of it is read.
        let answer = crate::support::sidecar::raw_request(
            &first_node.base,
            &format!(
                "PUT /v1/lookups/sku-to-asin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: text/csv\r\nContent-Length: 100000000\r\n\r\n"
            ),
        );
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert_eq!(
            first_node.send("GET", "/v1/lookups", Some(token), b"", "").1,
            json!([])
        );

        let (status, first) = put("sku-to-asin", b"sku,asin\nTEE-2,B00TEE0002\n", "text/csv");
        assert_eq!(status, 201, "{first}");
        assert_eq!(first["table"]["entries"], 1);
        let first_version = first["table"]["version"].as_str().unwrap().to_string();
        let (status, again) = put("sku-to-asin", b"sku,asin\nTEE-2,B00TEE0002\n", "text/csv");
        assert_eq!(
            (status, again["created"].as_bool()),
            (200, Some(false)),
            "{again}"
        );

        let module = std::fs::read(guest("changed-fields")).unwrap();
        let (status, uploaded) = first_node.send(
            "PUT",
            "/v1/modules/delta",
            Some(token),
            &module,
            "application/wasm",
        );
        assert_eq!(status, 201, "{uploaded}");
        let activate = |sidecar: &Sidecar, lookups: Value| {
            let pipeline = json!({"steps": [{
                "module": "delta",
                "version": uploaded["version"],
                "lookups": lookups,
                "config": {"lookup": {"table": "asin", "field": "asin"}},
            }]});
            sidecar.send(
                "POST",
                "/v1/channels/catalog/activate",
                Some(token),
                pipeline.to_string().as_bytes(),
                "",
            )
        };
        // A file on the server is not a table reference.
        let (status, answer) = activate(first_node, json!({"asin": "/etc/passwd"}));
        assert_eq!(
            (status, answer["code"].as_str()),
            (409, Some("unknown-lookup")),
            "{answer}"
        );
        assert!(!answer.to_string().contains("root:"), "{answer}");
        let (status, answer) = activate(first_node, json!({"asin": "sku-to-asin@0000000000"}));
        assert_eq!(
            (status, answer["code"].as_str()),
            (409, Some("unknown-lookup")),
            "{answer}"
        );
        // Another tenant's table is not the caller's to name, even by its full version.
        let (status, theirs) = first_node.send(
            "PUT",
            "/v1/lookups/globex-asin",
            Some(OTHER_TOKEN),
            b"sku,asin\nTEE-2,B00GLOBEX\n",
            "text/csv",
        );
        assert_eq!(status, 201, "{theirs}");
        let (status, answer) = activate(
            first_node,
            json!({"asin": format!("globex-asin@{}", theirs["table"]["version"].as_str().unwrap())}),
        );
        assert_eq!(
            (status, answer["code"].as_str()),
            (409, Some("unknown-lookup")),
            "{answer}"
        );
        let (status, answer) = activate(
            first_node,
            json!({"asin": format!("sku-to-asin@{}", &first_version[..8])}),
        );
        assert_eq!(status, 200, "{answer}");
        // Stored pinned in full, not as the prefix it was given.
        assert_eq!(answer["lookups"], json!([format!("sku-to-asin@{first_version}")]));
        every_node_runs(nodes, &answer);

        let last = nodes.len() - 1;
        post(
            &nodes[last],
            &[product("e-2", json!({"sku": "TEE-2", "price": "5.00"}))],
        );
        assert_eq!(path_of_price(destination, "5.00"), "/items/B00TEE0002");

        // A new version changes nothing until a pipeline names it; the
        // activated one is pinned in full, across a kill -9.
        let (status, second) = put("sku-to-asin", b"sku,asin\nTEE-2,B00NEW0002\n", "text/csv");
        assert_eq!(status, 201, "{second}");
        let listed = first_node
            .send("GET", "/v1/lookups/sku-to-asin", Some(token), b"", "")
            .1;
        assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
        nodes[last].kill9();
        nodes[last].restart();
        let pinned = nodes[0].get("/v1/channels/catalog").1;
        every_node_runs(nodes, &pinned);
        post(
            &nodes[last],
            &[product("e-3", json!({"sku": "TEE-2", "price": "4.00"}))],
        );
        assert_eq!(path_of_price(destination, "4.00"), "/items/B00TEE0002");
        let second_version = second["table"]["version"].as_str().unwrap();
        let (status, answer) = activate(
            &nodes[0],
            json!({"asin": format!("sku-to-asin@{second_version}")}),
        );
        assert_eq!(status, 200, "{answer}");
        every_node_runs(nodes, &answer);
        post(
            &nodes[last],
            &[product("e-4", json!({"sku": "TEE-2", "price": "3.00"}))],
        );
        assert_eq!(path_of_price(destination, "3.00"), "/items/B00NEW0002");
    }

    /// Waits until every node runs the pipeline `activated` answered with.
    fn every_node_runs(nodes: &[Sidecar], activated: &Value) {
        for node in nodes {
            wait_for("every node runs the activation", PATIENCE, || {
                let channel = node.get("/v1/channels/catalog").1;
                channel["lookups"] == activated["lookups"] && channel["modules"] == activated["modules"]
            });
        }
    }

    #[test]
    fn a_hinted_method_the_destination_does_not_allow_is_a_dead_letter_and_nothing_is_sent() {
        let destination = sink();
        let dir = tempfile::tempdir().unwrap();
        let sidecar = Sidecar::start(dir.path(), &config(destination.addr, "changed-fields", ""));
        post(
            &sidecar,
            &[product("gone", json!({"sku": "TEE-1", "active": false}))],
        );
        wait_for("the dead letter", PATIENCE, || {
            sidecar
                .get("/v1/dead-letters?tenant=acme")
                .1
                .as_array()
                .is_some_and(|l| !l.is_empty())
        });
        let (_, letters) = sidecar.get("/v1/dead-letters?tenant=acme");
        let (_, letter) = sidecar.get(&format!("/v1/dead-letters/{}", letters[0]["id"]));
        let said = letter.to_string();
        assert!(
            said.contains("the transform chose DELETE for this event"),
            "{said}"
        );
        assert!(said.contains("allow-methods"), "{said}");
        assert_eq!(destination.count(), 0);
    }

    #[test]
    fn a_partial_outcome_delivers_the_good_variants_and_dead_letters_the_rest() {
        let destination = sink();
        let dir = tempfile::tempdir().unwrap();
        let channel = crate::support::workspace().join("transforms/channels/amazon-from-shopify");
        let steps = json!(
            serde_json::from_str::<Value>(&std::fs::read_to_string(channel.join("pipeline.json")).unwrap())
                .unwrap()
        );
        let mut config = config(destination.addr, "shopify-source", "");
        config = config.replace(
            &format!("module = \"{}\"\n", guest("shopify-source").display()),
            &format!(
                "module = \"{}\"\nconfig = {}\n[[channel.step]]\nmodule = \"{}\"\nconfig = {}\n",
                guest("shopify-source").display(),
                toml_inline(&steps["steps"][0]["config"]),
                guest("amazon-listing").display(),
                toml_inline(&steps["steps"][1]["config"]),
            ),
        );
        let sidecar = Sidecar::start(dir.path(), &config);
        let input: Value = serde_json::from_str(
            &std::fs::read_to_string(channel.join("fixtures/one-variant-without-sku-is-left-out/input.json"))
                .unwrap(),
        )
        .unwrap();
        let mut event = input.clone();
        event["tenant"] = json!("acme");
        post(&sidecar, &[event]);
        wait_for("the two good variants", PATIENCE, || destination.count() == 2);
        let paths: BTreeSet<String> = destination.received().iter().map(|r| r.path.clone()).collect();
        assert_eq!(
            paths,
            BTreeSet::from(["/items/EX-TEE-M".to_string(), "/items/EX-TEE-S".to_string()])
        );
        let (status, letters) = sidecar.get("/v1/dead-letters?tenant=acme");
        assert_eq!(status, 200, "{letters}");
        let letters = letters.as_array().unwrap().clone();
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(letters[0]["reason"], "rejected");
        assert_eq!(letters[0]["event_id"], input["id"]);
        let (_, letter) = sidecar.get(&format!("/v1/dead-letters/{}", letters[0]["id"]));
        let violations = letter["detail"].as_array().unwrap();
        assert_eq!(violations.len(), 1, "{letter}");
        assert_eq!(violations[0]["path"], "$['sku']");
        assert_eq!(violations[0]["code"], "required");
    }

    /// A TOML inline table for a JSON object (strings, numbers, arrays, tables).
    fn toml_inline(value: &Value) -> String {
        match value {
            Value::Object(map) => format!(
                "{{ {} }}",
                map.iter()
                    .map(|(k, v)| format!("\"{k}\" = {}", toml_inline(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Value::Array(items) => format!(
                "[{}]",
                items.iter().map(toml_inline).collect::<Vec<_>>().join(", ")
            ),
            other => other.to_string(),
        }
    }

    #[test]
    fn state_commits_with_the_batch_across_kill_9_so_every_count_is_made_once() {
        let destination = sink();
        let dir = tempfile::tempdir().unwrap();
        let config = counting_config(&destination);
        let mut nodes = vec![Sidecar::start(dir.path(), &config)];
        count_through_kills(&destination, &mut nodes);
    }

    #[test]
    fn state_on_jetstream_commits_with_the_batch_across_kill_9_of_either_node() {
        let destination = sink();
        let dir = tempfile::tempdir().unwrap();
        let nats = crate::support::nats::Nats::start(dir.path());
        let config = format!("queue = \"{}\"\n{}", nats.url(), counting_config(&destination));
        let mut nodes: Vec<Sidecar> = (0..2)
            .map(|node| {
                let folder = dir.path().join(format!("node{node}"));
                std::fs::create_dir_all(&folder).unwrap();
                Sidecar::start(&folder, &config)
            })
            .collect();
        count_through_kills(&destination, &mut nodes);
    }

    /// The `stateful` guest counting events per key, to `/count`.
    fn counting_config(destination: &Sink) -> String {
        config(destination.addr, "stateful", "")
            .replace("/items/{$.sku}", "/count")
            .replace("entity-key = \"$.sku\"", "entity-key = \"$.key\"")
    }

    /// Sends 1,600 counted events over four keys to the nodes in turn,
    /// killing one node with `kill -9` after each round; then every event
    /// must have been counted exactly once, each key's counts running
    /// 1..=its events with no gap and none twice.
    fn count_through_kills(destination: &Sink, nodes: &mut [Sidecar]) {
        let keys = ["a", "b", "c", "d"];
        let mut accepted: BTreeMap<String, String> = BTreeMap::new();
        let mut next = 0;
        let mut killed_mid_way = 0;
        for round in 0..4usize {
            for _ in 0..4 {
                let events: Vec<Value> = (0..100)
                    .map(|_| {
                        next += 1;
                        let key = keys[next % keys.len()];
                        accepted.insert(format!("e-{next}"), key.to_string());
                        json!({"id": format!("e-{next}"), "kind": "product", "tenant": "acme", "payload": {"key": key}})
                    })
                    .collect();
                post(&nodes[round % nodes.len()], &events);
            }
            std::thread::sleep(Duration::from_millis(10 + 25 * round as u64));
            if destination.count() < accepted.len() {
                killed_mid_way += 1;
            }
            let node = &mut nodes[(round + 1) % nodes.len()];
            node.kill9();
            node.restart();
        }
        assert!(
            killed_mid_way > 0,
            "a kill should land before everything is delivered"
        );
        let delivered = || {
            destination
                .received()
                .iter()
                .map(|r| r.header("x-sluice-source-event-id").unwrap().to_string())
                .collect::<BTreeSet<_>>()
        };
        wait_for(
            "every event counted and delivered",
            Duration::from_secs(120),
            || delivered().len() == accepted.len(),
        );
        // Each event got one count (a redelivery repeats it), and each
        // key's counts run 1..=its events with no gap and none twice.
        let mut count_of: BTreeMap<String, u64> = BTreeMap::new();
        for request in destination.received() {
            let id = request.header("x-sluice-source-event-id").unwrap().to_string();
            let n = request.json()["n"].as_u64().unwrap();
            if let Some(before) = count_of.insert(id.clone(), n) {
                assert_eq!(before, n, "event {id} was counted twice");
            }
        }
        for key in keys {
            let mut counts: Vec<u64> = count_of
                .iter()
                .filter(|(id, _)| accepted[*id] == key)
                .map(|(_, n)| *n)
                .collect();
            counts.sort();
            let events = accepted.values().filter(|k| *k == key).count() as u64;
            assert_eq!(counts, (1..=events).collect::<Vec<_>>(), "key {key}");
        }
    }
}
