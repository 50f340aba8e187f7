//! The operations page in a real headless Chromium (WebDriver), against a
//! real sidecar with real components, a real SQLite file and a real sink.
//! Screenshots land in `target/ui-test/`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_server::sink::{Reply, Responder, Sink};

use crate::support::browser::Browser;
use crate::support::sidecar::{Sidecar, token_hash, wait_for};
use crate::support::{guest, target_dir};

const ACME: &str = "acme-ui-token";
const GLOBEX: &str = "globex-ui-token";
const PATIENCE: Duration = Duration::from_secs(60);

/// Two tenants; acme's `stock` channel rounds `qty`, so a `qty` that is no
/// number is rejected with the path `$['qty']`.
fn config(sink: &Sink) -> String {
    format!(
        r#"
[limits]
timeout-ms = 10000

[[tenant]]
name = "acme"
token-sha256 = ["{acme}"]

[[tenant]]
name = "globex"
token-sha256 = ["{globex}"]

[[destination]]
name = "portal"
url = "http://{addr}/stock"

[[channel]]
name = "stock"
tenant = "acme"
destination = "portal"
[[channel.step]]
module = "json-mapping"
config = {{ rules = [ {{ target = "sku", source = "$.sku" }}, {{ target = "qty", source = "$.qty", convert = [ {{ op = "round", places = 0 }} ] }} ] }}

[[channel]]
name = "globex-stock"
tenant = "globex"
destination = "portal"
[[channel.step]]
module = "json-mapping"
config = {{ rules = [ {{ target = "sku", source = "$.sku" }} ] }}
"#,
        acme = token_hash(ACME),
        globex = token_hash(GLOBEX),
        addr = sink.addr,
    )
}

fn event(id: &str, tenant: &str, payload: Value) -> String {
    json!({"id": id, "kind": "inventory", "tenant": tenant, "payload": payload}).to_string()
}

fn api(sidecar: &Sidecar, token: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    sidecar.send(method, path, Some(token), body.as_bytes(), "application/json")
}

#[test]
fn an_operator_signs_in_switches_a_channel_and_repairs_a_dead_letter_in_a_real_browser() {
    let respond: Arc<Responder> = Arc::new(|_, _| Reply::status(200));
    let destination = Sink::start("127.0.0.1:0".parse().unwrap(), respond).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path(), &config(&destination));
    let shots = target_dir().join("ui-test");

    for n in 0..5 {
        let ok = event(&format!("ok-{n}"), "acme", json!({"sku": "A", "qty": n}));
        assert_eq!(api(&sidecar, ACME, "POST", "/v1/events", &ok).0, 202);
    }
    let bad = event("bad-qty", "acme", json!({"sku": "B", "qty": "many"}));
    assert_eq!(api(&sidecar, ACME, "POST", "/v1/events", &bad).0, 202);
    assert_eq!(
        api(
            &sidecar,
            GLOBEX,
            "POST",
            "/v1/events",
            &event("g-1", "globex", json!({"sku": "G"}))
        )
        .0,
        202
    );
    wait_for("deliveries and the dead letter", PATIENCE, || {
        destination.count() >= 6
            && api(&sidecar, ACME, "GET", "/v1/dead-letters", "")
                .1
                .as_array()
                .is_some_and(|l| l.len() == 1)
    });

    // Signed in through the URL fragment, which leaves the address bar at once.
    let browser = Browser::start();
    browser.open(&format!("{}/ui#token={ACME}", sidecar.base));
    browser.find("body[data-ready='true']");
    assert!(!browser.url().contains("token"), "{}", browser.url());
    assert_eq!(browser.run("return sessionStorage.getItem('sluice-token')"), ACME);
    let first_paint = browser.run("return document.body.dataset.firstPaintMs");
    println!("first paint with data: {first_paint} ms");
    browser.screenshot(&shots.join("1-signed-in.png"));

    // The channels and their queue depths are the API's.
    let (_, channels) = api(&sidecar, ACME, "GET", "/v1/channels", "");
    let rows = browser.all("#channels tbody tr");
    assert_eq!(rows.len(), channels.as_array().unwrap().len());
    for channel in channels.as_array().unwrap() {
        let name = channel["name"].as_str().unwrap();
        for field in ["transform", "delivery"] {
            let cell = format!("tr[data-channel='{name}'] td[data-field='{field}']");
            let expected = channel["queued"][field].to_string();
            assert_eq!(browser.text_of(&cell), Some(expected), "{name} {field}");
        }
    }
    assert!(browser.all("tr[data-channel='globex-stock']").is_empty());
    // The destination's last hour, drawn by the page from the server's history.
    assert_eq!(browser.all("#destinations tbody tr svg.spark").len(), 1);
    let portal = &api(&sidecar, ACME, "GET", "/v1/destinations", "").1[0];
    let delivered = portal["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["delivered"].as_u64().unwrap())
        .sum::<u64>();
    // Acme's five, not globex's one on the same destination.
    assert_eq!(delivered, 5, "acme's deliveries in the history");
    // The destination is shared with globex: its worker's state is not shown to a tenant.
    assert_eq!(portal["shared-with-other-tenants"], true, "{portal}");
    assert!(
        portal["last-error"].is_null() && portal["retry-backlog"].is_null(),
        "{portal}"
    );

    // Switched off on the page: the API says it is off.
    const SWITCH: &str = "button[data-channel='stock'][data-action='switch']";
    assert_eq!(browser.text_of(SWITCH).as_deref(), Some("ON"));
    browser.click_on(SWITCH);
    wait_for("the API to say off", PATIENCE, || {
        api(&sidecar, ACME, "GET", "/v1/channels/stock", "").1["enabled"] == false
    });
    browser.wait("the switch to show OFF", || {
        (browser.text_of(SWITCH)? == "OFF").then_some(())
    });
    browser.screenshot(&shots.join("2-switched-off.png"));

    // The rejected event's dead letter, its violation highlighted in place.
    browser.click_on("#dead-letters tr[data-event='bad-qty']");
    browser.find("#dl-original .violation");
    let marked = "#dl-original .violation";
    assert_eq!(
        browser.attribute_of(marked, "data-path").as_deref(),
        Some("$['qty']")
    );
    assert_eq!(browser.text_of(marked).as_deref(), Some("\"many\""));
    browser.screenshot(&shots.join("3-dead-letter.png"));

    // The fix: a mapping without the rounding, activated; then the channel
    // back on and the letter replayed with re-transform, all on the page.
    let module = std::fs::read(guest("json-mapping")).unwrap();
    let (status, uploaded) = sidecar.send(
        "PUT",
        "/v1/modules/mapper",
        Some(ACME),
        &module,
        "application/wasm",
    );
    assert_eq!(status, 201, "{uploaded}");
    let fixed = json!({"steps": [{"module": "mapper", "version": uploaded["version"],
        "config": {"rules": [{"target": "sku", "source": "$.sku"}, {"target": "qty", "source": "$.qty"}]}}]});
    assert_eq!(
        api(
            &sidecar,
            ACME,
            "POST",
            "/v1/channels/stock/activate",
            &fixed.to_string()
        )
        .0,
        200
    );
    browser.click_on(SWITCH);
    wait_for("the API to say on", PATIENCE, || {
        api(&sidecar, ACME, "GET", "/v1/channels/stock", "").1["enabled"] == true
    });
    browser.click_on("#dl-retransform");
    wait_for("the repaired event at the sink", PATIENCE, || {
        destination.count_where(|r| r.json() == json!({"sku": "B", "qty": "many"})) == 1
    });
    browser.wait("the dead letter gone from the page", || {
        browser
            .all("#dead-letters tr[data-event='bad-qty']")
            .is_empty()
            .then_some(())
    });
    browser.screenshot(&shots.join("4-replayed.png"));

    // Another tenant, through the sign-in form, sees none of acme's channels.
    browser.click_on("#sign-out");
    let input = browser.find("#token");
    browser.type_into(&input, GLOBEX);
    browser.click_on("#sign-in-form button");
    browser.find("tr[data-channel='globex-stock']");
    assert!(browser.all("tr[data-channel='stock']").is_empty());
    assert!(browser.all("#dead-letters tbody tr").is_empty());
    browser.screenshot(&shots.join("5-other-tenant.png"));
}

#[test]
fn the_page_stays_usable_with_500_channels_and_10000_dead_letters() {
    let respond: Arc<Responder> = Arc::new(|_, _| Reply::status(200));
    let destination = Sink::start("127.0.0.1:0".parse().unwrap(), respond).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = format!(
        "[[tenant]]\nname = \"acme\"\ntoken-sha256 = [\"{}\"]\nmax-stored-events = 100000\n\
         [[destination]]\nname = \"portal\"\nurl = \"http://{}/stock\"\n",
        token_hash(ACME),
        destination.addr
    );
    // Every channel requires `sku`: events without one become dead letters.
    for n in 0..500 {
        config.push_str(&format!(
            "[[channel]]\nname = \"ch-{n:03}\"\ntenant = \"acme\"\ndestination = \"portal\"\nsources = [\"s{n}\"]\n\
             [[channel.step]]\nmodule = \"json-mapping\"\n\
             config = {{ rules = [ {{ target = \"sku\", source = \"$.sku\", required = true }} ] }}\n"
        ));
    }
    let sidecar = Sidecar::start(dir.path(), &config);
    for batch in 0..100 {
        let body: String = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                format!(
                    "{}\n",
                    json!({"id": format!("e-{n:05}"), "kind": "inventory", "tenant": "acme", "source": "s7", "payload": {"qty": n}})
                )
            })
            .collect();
        assert_eq!(api(&sidecar, ACME, "POST", "/v1/events", &body).0, 202);
    }
    wait_for("10,000 dead letters", Duration::from_secs(300), || {
        api(&sidecar, ACME, "GET", "/v1/channels/ch-007", "").1["dead-letters"] == 10_000
    });

    let browser = Browser::start();
    browser.open(&format!("{}/ui#token={ACME}", sidecar.base));
    browser.find("body[data-ready='true']");
    let first_paint = browser.run("return document.body.dataset.firstPaintMs");
    println!("first paint with 500 channels and 10,000 dead letters: {first_paint} ms");
    // Paged: 25 channels and 50 dead letters at a time.
    assert_eq!(browser.all("#channels tbody tr").len(), 25);
    assert!(
        browser
            .text_of("#channel-pager")
            .unwrap()
            .contains("page 1 of 20")
    );
    assert_eq!(browser.all("#dead-letters tbody tr").len(), 50);
    let newest = browser.attribute_of("#dead-letters tbody tr", "data-event");
    assert_eq!(newest.as_deref(), Some("e-09999"));
    browser.click_on("#dl-older");
    browser.wait("the next page of dead letters", || {
        let first = browser.attribute_of("#dead-letters tbody tr", "data-event")?;
        (first == "e-09949").then_some(())
    });
    browser.click_on("#channel-pager button:last-child");
    browser.find("tr[data-channel='ch-025']");
    browser.screenshot(&target_dir().join("ui-test/6-500-channels.png"));
}

/// The hardening issue's hostile letters, opened in a real browser: a
/// violation path of 3.6 MB (1.2 million steps) that the payload lacks,
/// which the page searched for step by step (quadratic), and a payload
/// nested 10,000 levels deep, which the recursive drawing could not take
/// (`RangeError`). Both open, show what they hold, and the page answers
/// after each.
#[test]
fn hostile_dead_letters_open_in_a_real_browser() {
    let respond: Arc<Responder> = Arc::new(|_, _| Reply::status(400));
    let destination = Sink::start("127.0.0.1:0".parse().unwrap(), respond).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[limits]\ntimeout-ms = 10000\n[[tenant]]\nname = \"acme\"\ntoken-sha256 = [\"{}\"]\n\
         [[destination]]\nname = \"portal\"\nurl = \"http://{}/in\"\nentity-key = \"$.id\"\n\
         [[channel]]\nname = \"hostile\"\ntenant = \"acme\"\ndestination = \"portal\"\n\
         [[channel.step]]\nmodule = \"{}\"\n",
        token_hash(ACME),
        destination.addr,
        guest("hostile").display()
    );
    let sidecar = Sidecar::start(dir.path(), &config);
    let huge_path =
        json!({"id": "huge-path", "kind": "product", "payload": {"attack": "huge-path"}}).to_string();
    assert_eq!(api(&sidecar, ACME, "POST", "/v1/events", &huge_path).0, 202);
    // A payload the module cannot read as an order: its fault is a dead letter holding it.
    let deep = format!(
        r#"{{"id": "deep-payload", "kind": "product", "payload": {}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let (status, answer) = api(&sidecar, ACME, "POST", "/v1/events", &deep);
    assert_eq!(status, 202, "{answer}");
    wait_for("both dead letters", PATIENCE, || {
        api(&sidecar, ACME, "GET", "/v1/dead-letters", "")
            .1
            .as_array()
            .is_some_and(|l| l.len() == 2)
    });

    let browser = Browser::start();
    browser.open(&format!("{}/ui#token={ACME}", sidecar.base));
    browser.find("body[data-ready='true']");

    browser.click_on("#dead-letters tr[data-event='huge-path']");
    browser.wait("the huge-path letter", || {
        browser.text_of("#dl-title").filter(|t| t.contains("huge-path"))
    });
    // The path the payload lacks marks the whole payload, and shows cut.
    let marked = browser.attribute_of("#dl-original .violation-missing", "data-path");
    assert_eq!(marked.as_deref(), Some("$"));
    let listed = browser.text_of("#dl-violations li").unwrap();
    assert!(
        listed.contains("(3600001 characters)"),
        "{}",
        &listed[..200.min(listed.len())]
    );
    assert_eq!(browser.run("return 1 + 1"), json!(2));

    browser.click_on("#dead-letters tr[data-event='deep-payload']");
    browser.wait("the deep-payload letter", || {
        browser
            .text_of("#dl-title")
            .filter(|t| t.contains("deep-payload"))
    });
    // The server answers a payload deeper than its JSON reader takes as
    // its text, which the page shows as a string.
    let original = browser.text_of("#dl-original").unwrap();
    assert!(
        original.contains("[[[[[[[["),
        "{}",
        &original[..80.min(original.len())]
    );
    assert_eq!(browser.run("return 1 + 1"), json!(2));

    // The page's own drawing, given such a value parsed (as a future
    // server may send it) and a flat one of a million members: a tree to
    // its bounds, the rest as cut text, and no `RangeError`.
    let drawn = browser.run(
        "const deep = JSON.parse('['.repeat(10000) + '1' + ']'.repeat(10000));
         const wide = Array.from({ length: 1000000 }, (_, i) => ({ n: i }));
         const counts = [deep, wide].map((value) => {
           const target = document.createElement('div');
           showJson(target, value, new Map([['$[0][0][0]', 'marked']]));
           return [target.querySelectorAll('.node').length, target.querySelectorAll('.cut').length,
                   target.querySelector('.violation') ? 1 : 0];
         });
         return counts;",
    );
    let [deep, wide] = [&drawn[0], &drawn[1]];
    assert_eq!(deep[0], json!(101), "{drawn}");
    assert!(deep[1].as_u64().unwrap() >= 1, "{drawn}");
    assert_eq!(deep[2], json!(1), "{drawn}");
    assert!(wide[0].as_u64().unwrap() <= 20_001, "{drawn}");
    assert!(wide[1].as_u64().unwrap() >= 1, "{drawn}");
}

/// A tenant makes, edits and deletes its own destination and channel on
/// the page (the destinations issue's self-service, item 5): what it saves
/// delivers at once, a header's value it cannot read back is kept when the
/// entry is edited, a bad field is named with its path, and the operator's
/// entries show no edit or delete.
#[test]
fn a_tenant_makes_edits_and_deletes_its_own_destination_and_channel_in_a_real_browser() {
    let respond: Arc<Responder> = Arc::new(|_, _| Reply::status(200));
    let own = Sink::start("127.0.0.1:0".parse().unwrap(), respond.clone()).unwrap();
    let destination = Sink::start("127.0.0.1:0".parse().unwrap(), respond).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A tenant's destinations may reach loopback only because the operator allows it.
    let config = format!("allow-networks = [\"127.0.0.0/8\"]\n{}", config(&destination));
    let sidecar = Sidecar::start(dir.path(), &config);
    let shots = target_dir().join("ui-test");
    let module = std::fs::read(guest("json-mapping")).unwrap();
    let (status, uploaded) = sidecar.send(
        "PUT",
        "/v1/modules/mapper",
        Some(ACME),
        &module,
        "application/wasm",
    );
    assert_eq!(status, 201, "{uploaded}");

    let browser = Browser::start();
    browser.open(&format!("{}/ui#token={ACME}", sidecar.base));
    browser.find("body[data-ready='true']");
    // The operator's entries are listed, with nothing to edit or delete.
    browser.find("tr[data-entry='destination:portal']");
    assert_eq!(
        browser
            .text_of("tr[data-entry='channel:stock'] td:nth-child(3)")
            .as_deref(),
        Some("config")
    );
    assert!(
        browser
            .all("tr[data-entry='destination:portal'] button")
            .is_empty()
    );

    // A destination, typed in and saved.
    let url = format!("http://{}/own/{{$.sku}}", own.addr);
    browser.fill("#entry-name", "shop");
    browser.fill(
        "#entry-body",
        &json!({"url": url, "method": "PUT", "headers": {"X-Api-Key": "k-123"}, "skip-unchanged": true})
            .to_string(),
    );
    browser.click_on("#entry-save");
    browser.find("tr[data-entry='destination:shop'] button[data-action='edit']");
    let (status, shown) = api(&sidecar, ACME, "GET", "/v1/destinations/shop", "");
    assert_eq!((status, &shown["method"]), (200, &json!("PUT")), "{shown}");

    // A channel onto it, with the uploaded module as its step.
    let steps = json!([{"module": "mapper", "version": uploaded["version"],
        "config": {"rules": [{"target": "sku", "source": "$.sku"}, {"target": "qty", "source": "$.qty"}]}}]);
    browser.click_on("#entry-new");
    browser.run("const k = document.getElementById('entry-kind'); k.value = 'channel'; k.dispatchEvent(new Event('change')); return null;");
    browser.fill("#entry-name", "shop-stock");
    browser.fill(
        "#entry-body",
        &json!({"destination": "shop", "steps": steps}).to_string(),
    );
    browser.click_on("#entry-save");
    browser.find("tr[data-entry='channel:shop-stock'] button[data-action='edit']");
    browser.screenshot(&shots.join("6-own-entries.png"));
    let first = event("own-1", "acme", json!({"sku": "A-1", "qty": 4}));
    assert_eq!(api(&sidecar, ACME, "POST", "/v1/events", &first).0, 202);
    wait_for("the PUT at the tenant's own destination", PATIENCE, || {
        own.count_where(|r| {
            r.method == "PUT" && r.path == "/own/A-1" && r.header("x-api-key") == Some("k-123")
        }) == 1
    });
    // The same state again is not sent, and the page says so.
    let again = event("own-1-again", "acme", json!({"sku": "A-1", "qty": 4}));
    assert_eq!(api(&sidecar, ACME, "POST", "/v1/events", &again).0, 202);
    browser.wait("the unchanged delivery on the page", || {
        let cells = browser.run(
            "return [...document.querySelectorAll('#destinations tbody tr')].filter(r => r.firstChild.textContent === 'shop').map(r => r.querySelector(\"td[data-field='not-sent']\").textContent)",
        );
        (cells == json!(["0 / 1"])).then_some(())
    });
    assert_eq!(
        own.count_where(|r| r.path == "/own/A-1"),
        1,
        "the unchanged state was sent"
    );

    // Edited: the header's value reads "set" and is kept; the method changes.
    browser.click_on("tr[data-entry='destination:shop'] button[data-action='edit']");
    browser.wait("the entry in the editor", || {
        (browser.run("return document.getElementById('entry-name').value") == "shop").then_some(())
    });
    let shown: Value = serde_json::from_str(
        browser
            .run("return document.getElementById('entry-body').value")
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(shown["headers"]["X-Api-Key"], "set", "{shown}");
    let mut edited = shown.clone();
    edited["method"] = "POST".into();
    browser.fill("#entry-body", &edited.to_string());
    browser.click_on("#entry-save");
    wait_for("the edit stored", PATIENCE, || {
        api(&sidecar, ACME, "GET", "/v1/destinations/shop", "").1["method"] == "POST"
    });
    let second = event("own-2", "acme", json!({"sku": "A-2", "qty": 5}));
    assert_eq!(api(&sidecar, ACME, "POST", "/v1/events", &second).0, 202);
    wait_for("the POST, with the header kept", PATIENCE, || {
        own.count_where(|r| {
            r.method == "POST" && r.path == "/own/A-2" && r.header("x-api-key") == Some("k-123")
        }) == 1
    });

    // A bad field is named, with its path.
    browser.fill("#entry-body", r#"{"url": 5}"#);
    browser.click_on("#entry-save");
    let error = browser.wait("the error under the editor", || {
        browser.text_of("#entry-error").filter(|t| !t.is_empty())
    });
    assert!(error.contains("(at $.url)"), "{error}");
    browser.screenshot(&shots.join("7-entry-error.png"));

    // Deleted, each after a confirmation: the channel, then its destination.
    for entry in ["channel:shop-stock", "destination:shop"] {
        browser.click_on(&format!("tr[data-entry='{entry}'] button[data-action='delete']"));
        browser.click_on(&format!(
            "tr[data-entry='{entry}'] button[data-action='confirm-delete']"
        ));
        browser.wait("the row gone", || {
            browser
                .all(&format!("tr[data-entry='{entry}']"))
                .is_empty()
                .then_some(())
        });
    }
    assert_eq!(api(&sidecar, ACME, "GET", "/v1/destinations/shop", "").0, 404);
    assert_eq!(api(&sidecar, ACME, "GET", "/v1/channels/shop-stock", "").0, 404);
}

#[test]
fn an_operator_finds_an_event_by_its_sku_and_reads_its_timeline_in_a_real_browser() {
    // The first request of each SKU is refused with 503, the next accepted.
    let respond: Arc<Responder> = Arc::new(|request, before| {
        let sku = request.json()["sku"].clone();
        if before.iter().any(|r| r.json()["sku"] == sku) {
            Reply {
                body: r#"{"status":"ACCEPTED"}"#.into(),
                ..Reply::status(200)
            }
        } else {
            Reply {
                body: r#"{"errors":[{"code":"InvalidInput","message":"Invalid Data"}]}"#.into(),
                ..Reply::status(503)
            }
        }
    });
    let destination = Sink::start("127.0.0.1:0".parse().unwrap(), respond).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(
        dir.path(),
        &config(&destination).replace(
            "/stock\"\n",
            "/stock\"\n[destination.retry]\ninitial-backoff-ms = 50\nmax-backoff-ms = 200\n",
        ),
    );
    let shots = target_dir().join("ui-test");
    let tee = event("tee-1", "acme", json!({"sku": "TEE-1", "qty": 4}));
    assert_eq!(api(&sidecar, ACME, "POST", "/v1/events", &tee).0, 202);
    wait_for("the story to say delivered", PATIENCE, || {
        api(&sidecar, ACME, "GET", "/v1/events/tee-1", "").1["now"]["stock"] == "delivered"
    });

    let browser = Browser::start();
    browser.open(&format!("{}/ui#token={ACME}", sidecar.base));
    browser.find("body[data-ready='true']");
    // Found by its SKU, then opened from the results.
    browser.fill("#find-query", "TEE-1");
    browser.click_on("#find-form button");
    browser.click_on("#find-results tr[data-event='tee-1']");
    browser.find("#story[data-event='tee-1']");
    let kinds =
        browser.run("return [...document.querySelectorAll('#timeline > li')].map((li) => li.dataset.kind)");
    assert_eq!(kinds, json!(["accepted", "transformed", "attempt", "attempt"]));
    let panes = browser.run(
        "return [...document.querySelectorAll(\"#timeline > li[data-kind='attempt'] .exchange pre\")].map((p) => p.textContent)",
    );
    let texts: Vec<&str> = panes
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 4, "a request and a response for each attempt");
    assert!(
        texts[0].starts_with(&format!("POST http://{}/stock", destination.addr)),
        "{}",
        texts[0]
    );
    assert!(
        texts[0].contains("\"sku\": \"TEE-1\""),
        "the body as sent: {}",
        texts[0]
    );
    assert!(
        texts[1].starts_with("503") && texts[1].contains("Invalid Data"),
        "{}",
        texts[1]
    );
    assert!(
        texts[3].starts_with("200") && texts[3].contains("ACCEPTED"),
        "{}",
        texts[3]
    );
    assert_eq!(
        browser.text_of("#story-now").as_deref(),
        Some("Now: stock: delivered")
    );
    browser.screenshot(&shots.join("6-event-timeline.png"));

    // By its id, straight to the timeline.
    browser.fill("#find-query", "tee-1");
    browser.click_on("#find-form button");
    browser.find("#story[data-event='tee-1']");

    // Another tenant finds nothing of it.
    browser.click_on("#sign-out");
    let input = browser.find("#token");
    browser.type_into(&input, GLOBEX);
    browser.click_on("#sign-in-form button");
    browser.find("body[data-ready='true']");
    browser.fill("#find-query", "tee-1");
    browser.click_on("#find-form button");
    browser.wait("the search to answer", || {
        browser
            .text_of("#find-error")
            .filter(|t| t.contains("no event tee-1"))
    });
    assert_eq!(
        browser.run("return document.getElementById('story').hidden"),
        true
    );
}
