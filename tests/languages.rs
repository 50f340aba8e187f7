//! Tenants in Python and JavaScript, as a new user works: `sluice new`,
//! `sluice build` and `sluice test` in a folder outside the checkout, upload
//! and activation on a real sidecar, delivery to a real sink. Real
//! componentize-py and componentize-js (installed by `scripts/dev`, or by
//! `sluice build` on first use, under `target/tools`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use crate::support::sidecar::{Sidecar, token_hash, wait_for};
use crate::support::{target_dir, workspace};
use serde_json::{Value, json};
use sluice_server::sink::{Received, Reply, Sink};

const PATIENCE: Duration = Duration::from_secs(120);
const ACME: &str = "acme-token";

fn tools_dir() -> PathBuf {
    std::env::var_os("SLUICE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("tools"))
}

/// Runs the real `sluice` in `dir`, as a tenant would.
fn sluice(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(dir)
        .env("SLUICE_TOOLS_DIR", tools_dir())
        .env("SLUICE_CACHE_DIR", target_dir().join("sluice-test-cache"))
        .env("SLUICE_TIMEOUT_MS", "10000")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn ok(output: Output) -> String {
    assert!(output.status.success(), "{}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn config(sink: &Sink) -> String {
    let channel = |name: &str| {
        format!(
            r#"
[[destination]]
name = "{name}-portal"
url = "http://{addr}/{name}"

[[channel]]
name = "{name}"
tenant = "acme"
destination = "{name}-portal"
[[channel.step]]
module = "json-mapping"
config = {{ rules = [ {{ target = "sku", source = "$.sku" }} ] }}
"#,
            addr = sink.addr
        )
    };
    format!(
        "[limits]\ntimeout-ms = 10000\n\n[[tenant]]\nname = \"acme\"\ntoken-sha256 = [\"{}\"]\n{}{}",
        token_hash(ACME),
        channel("py"),
        channel("js")
    )
}

#[test]
fn python_and_javascript_transforms_go_from_scaffold_to_delivery() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    for (name, lang) in [("shop-py", "python"), ("shop-js", "js")] {
        ok(sluice(dir, &["new", name, "--lang", lang, "--dir", "."]));
    }
    let built = ok(sluice(dir, &["build", "shop-py", "shop-js"]));
    assert!(built.contains("/shop-py/build/shop_py.wasm"), "{built}");
    let tested = ok(sluice(dir, &["test", "shop-py", "shop-js"]));
    assert!(
        tested.contains("fixture result: ok. 2 passed; 0 failed"),
        "{tested}"
    );

    let sink = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| Reply::status(200)),
    )
    .unwrap();
    let server = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(server.path(), &config(&sink));
    for (channel, name) in [("py", "shop-py"), ("js", "shop-js")] {
        // Uploaded with its fixtures under the default module size limit.
        let component = format!("{name}/build/{}.wasm", name.replace('-', "_"));
        let pushed = sidecar
            .command_as(ACME)
            .args([
                "modules",
                "push",
                &component,
                "--name",
                name,
                "--fixtures",
                &format!("{name}/fixtures"),
            ])
            .current_dir(dir)
            .output()
            .unwrap();
        let answer: Value = serde_json::from_slice(&pushed.stdout).unwrap_or(Value::Null);
        assert!(pushed.status.success(), "{}", text(&pushed));
        assert_eq!(answer["fixtures"][0]["status"], "passed", "{answer}");
        let version = answer["version"].as_str().unwrap();
        let pipeline = json!({"steps": [{"module": name, "version": version, "config": {"max-title": 10}}]});
        let (status, activated) = sidecar.send(
            "POST",
            &format!("/v1/channels/{channel}/activate"),
            Some(ACME),
            pipeline.to_string().as_bytes(),
            "",
        );
        assert_eq!(status, 200, "{activated}");
    }

    // Shopify's 64-bit product id, and a long title, through both.
    let product = r#"{"id": 788032119674292922, "sku": "TEE-1", "title": "A tee shirt with a long title", "price": {"amount": "19.99", "currency": "USD"}}"#;
    let events = format!("{{\"id\": \"e-1\", \"kind\": \"product\", \"payload\": {product}}}\n");
    let (status, answer) = sidecar.send("POST", "/v1/events", Some(ACME), events.as_bytes(), "");
    assert_eq!(status, 202, "{answer}");
    wait_for("both deliveries", PATIENCE, || sink.received().len() >= 2);
    for path in ["/py", "/js"] {
        let received: Vec<Received> = sink.received().into_iter().filter(|r| r.path == path).collect();
        assert_eq!(received.len(), 1, "{path}");
        let body = String::from_utf8_lossy(&received[0].body).into_owned();
        assert!(
            body.contains("788032119674292922"),
            "{path}: the id is never rounded: {body}"
        );
        let json: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["title"], "A tee shi…", "{path}: {body}");
        assert_eq!(json["sku"], "TEE-1");
    }

    // A failing fixture is shown as `sluice test` shows it: case, path, expected, actual.
    let expected = dir.join("shop-js/fixtures/example/expected.json");
    let edited = std::fs::read_to_string(&expected)
        .unwrap()
        .replace("An example product…", "Something else");
    std::fs::write(&expected, edited).unwrap();
    let refused = sidecar
        .command_as(ACME)
        .args([
            "modules",
            "push",
            "shop-js/build/shop_js.wasm",
            "--name",
            "shop-js",
            "--fixtures",
            "shop-js/fixtures",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    let out = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{out}");
    assert!(out.contains("case shop-js/example ... FAILED"), "{out}");
    assert!(out.contains("$['events'][0]['payload']['title']"), "{out}");
    assert!(out.contains("expected: \"Something else\""), "{out}");
    assert!(out.contains("actual:   \"An example product…\""), "{out}");
    assert!(!out.contains("\\\""), "no JSON escaped in a string: {out}");
    assert!(
        !out.contains(server.path().to_str().unwrap()),
        "no server path: {out}"
    );
}

/// Copies the helper twins and their shared fixtures to `dir`.
fn helper_twins(dir: &Path) -> [PathBuf; 2] {
    let sdk = workspace().join("guest-sdk");
    ["python", "js"].map(|lang| {
        let to = dir.join(format!("helpers-{lang}"));
        let app = if lang == "js" { "app.js" } else { "app.py" };
        std::fs::create_dir_all(to.join("fixtures/every-helper")).unwrap();
        std::fs::copy(sdk.join(lang).join("tests/helpers").join(app), to.join(app)).unwrap();
        for file in ["config.json", "input.jsonl", "expected.json"] {
            let from = sdk.join("tests/helpers/fixtures/every-helper").join(file);
            std::fs::copy(from, to.join("fixtures/every-helper").join(file)).unwrap();
        }
        to
    })
}

#[test]
fn the_python_and_javascript_helpers_pass_the_same_fixtures_and_requests_are_denied() {
    let work = tempfile::tempdir().unwrap();
    let [python, js] = helper_twins(work.path());
    // `sluice test` builds them first (nothing is built yet).
    let tested = ok(sluice(work.path(), &["test", "helpers-python", "helpers-js"]));
    assert!(
        tested.contains("fixture result: ok. 2 passed; 0 failed"),
        "{tested}"
    );
    assert!(python.join("build/helpers_python.wasm").is_file());

    // A component with componentize-js's defaults imports wasi:http: it
    // loads, `check` says the import is denied, and a request fails its
    // own event while the others go on.
    let component = js.join("build/helpers_js.wasm");
    let checked = ok(sluice(work.path(), &["check", component.to_str().unwrap()]));
    assert!(checked.contains("ok, implements sluice:transform"), "{checked}");
    assert!(
        checked.contains("wasi:http/outgoing-handler") && checked.contains("(linked but denied"),
        "{checked}"
    );
    let events = work.path().join("events.jsonl");
    std::fs::write(
        &events,
        "{\"id\": \"f-1\", \"kind\": \"fetch\", \"payload\": {\"url\": \"http://127.0.0.1:9/\"}}\n\
         {\"id\": \"p-1\", \"kind\": \"product\", \"payload\": {\"sku\": \"A\", \"title\": \"ok\"}}\n",
    )
    .unwrap();
    let config = js.join("fixtures/every-helper/config.json");
    let ran = ok(sluice(
        work.path(),
        &[
            "run",
            "--module",
            component.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            events.to_str().unwrap(),
        ],
    ));
    let outcomes: Vec<Value> = ran
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(outcomes[0]["outcome"], "error", "{ran}");
    assert_eq!(outcomes[0]["error"]["code"], "denied", "{ran}");
    assert!(
        outcomes[0]["error"]["import"]
            .as_str()
            .unwrap()
            .starts_with("wasi:http/"),
        "{ran}"
    );
    assert_eq!(outcomes[1]["outcome"], "emit", "{ran}");

    // An edited source is rebuilt by `sluice test`; an edited expectation fails by path.
    let app = js.join("app.js");
    let source = std::fs::read_to_string(&app).unwrap();
    std::fs::write(
        &app,
        source.replace("'skipped by request'", "'skipped on request'"),
    )
    .unwrap();
    let failed = sluice(work.path(), &["test", "helpers-js"]);
    let out = text(&failed);
    assert_eq!(failed.status.code(), Some(1), "{out}");
    assert!(out.contains("building helpers-js"), "{out}");
    assert!(
        out.contains("$[2]['reason']") && out.contains("\"skipped on request\""),
        "{out}"
    );
}
