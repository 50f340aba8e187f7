//! The real `sluice` binary: `test`, `run` and `check` on real components.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{guest, target_dir, workspace};
use serde_json::Value;

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_CACHE_DIR", target_dir().join("sluice-test-cache"))
        // Generous: these tests are about the CLI, not limits, and must not
        // flake on a loaded CI machine.
        .env("SLUICE_TIMEOUT_MS", "10000")
        .current_dir(workspace())
        .output()
        .expect("sluice runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn portal_fixtures() -> PathBuf {
    workspace().join("transforms/b2b-portal/fixtures")
}

/// Copies the b2b-portal fixtures to a scratch folder tests may edit.
fn scratch_fixtures() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for case in std::fs::read_dir(portal_fixtures()).unwrap() {
        let case = case.unwrap().path();
        let to = dir.path().join(case.file_name().unwrap());
        std::fs::create_dir(&to).unwrap();
        for file in std::fs::read_dir(&case).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, to.join(file.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// `sluice test --module <b2b-portal> <dir> <extra…>`.
fn test_fixtures(dir: &Path, extra: &[&str]) -> Output {
    let module = guest("b2b-portal");
    let mut args = vec![
        "test",
        "--module",
        module.to_str().unwrap(),
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    sluice(&args)
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

#[test]
fn sluice_test_passes_the_b2b_portal_fixtures_and_writes_junit() {
    let junit = tempfile::NamedTempFile::new().unwrap();
    let output = sluice(&[
        "test",
        "transforms/b2b-portal",
        "--junit",
        junit.path().to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
    let cases = std::fs::read_dir(portal_fixtures()).unwrap().count();
    assert!(cases >= 6);
    assert!(
        stdout(&output).contains(&format!("fixture result: ok. {cases} passed; 0 failed")),
        "{}",
        stdout(&output)
    );
    let xml = std::fs::read_to_string(junit.path()).unwrap();
    assert!(xml.contains(&format!("tests=\"{cases}\"")), "{xml}");
    assert!(xml.contains("failures=\"0\""), "{xml}");
    assert!(
        xml.contains("<testcase name=\"missing-sku-and-weight-are-rejected\""),
        "{xml}"
    );
}

#[test]
fn sluice_test_fails_with_the_json_path_when_an_expected_value_is_edited() {
    let dir = scratch_fixtures();
    let expected = dir.path().join("magento-simple-child-canonical/expected.json");
    edit_json(&expected, |v| {
        v["events"][0]["payload"]["title"] = "Champ Tee Large".into()
    });
    let junit = dir.path().join("junit.xml");
    let output = test_fixtures(dir.path(), &["--junit", junit.to_str().unwrap()]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains("case b2b-portal/magento-simple-child-canonical ... FAILED"),
        "{out}"
    );
    assert!(out.contains("$['events'][0]['payload']['title']"), "{out}");
    assert!(out.contains("expected: \"Champ Tee Large\""), "{out}");
    assert!(out.contains("actual:   \"Champ Tee Small\""), "{out}");
    assert!(out.contains("1 failed"), "{out}");
    let xml = std::fs::read_to_string(junit).unwrap();
    assert!(xml.contains("failures=\"1\""), "{xml}");
    assert!(
        xml.contains("$[&apos;events&apos;][0]") || xml.contains("$['events'][0]"),
        "{xml}"
    );

    // Blessing rewrites the expected file, and then the suite passes.
    let blessed = test_fixtures(dir.path(), &["--bless"]);
    assert!(blessed.status.success(), "{}", stdout(&blessed));
    let rewritten: Value = serde_json::from_str(&std::fs::read_to_string(&expected).unwrap()).unwrap();
    assert_eq!(rewritten["events"][0]["payload"]["title"], "Champ Tee Small");
    let again = test_fixtures(dir.path(), &[]);
    assert!(again.status.success(), "{}", stdout(&again));
}

#[test]
fn sluice_test_reports_a_case_without_expected_output() {
    let dir = scratch_fixtures();
    std::fs::remove_file(dir.path().join("inactive-product-is-dropped/expected.json")).unwrap();
    let output = test_fixtures(dir.path(), &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains("no `expected.json`"),
        "{}",
        stdout(&output)
    );
    assert!(stdout(&output).contains("--bless"), "{}", stdout(&output));
}

#[test]
fn sluice_test_reports_resources_and_fails_a_case_over_its_fuel_budget() {
    let dir = scratch_fixtures();
    let case = dir.path().join("kilograms-and-yen");
    std::fs::write(case.join("budget.json"), r#"{"fuel": 1000}"#).unwrap();
    let report = dir.path().join("report.json");
    let junit = dir.path().join("junit.xml");
    let output = test_fixtures(
        dir.path(),
        &[
            "--report",
            "--report-json",
            report.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains("case b2b-portal/kilograms-and-yen ... FAILED"),
        "{out}"
    );
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let figures = |name: &str| {
        cases["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["case"] == name)
            .unwrap()
            .clone()
    };
    let over = figures("kilograms-and-yen");
    let fuel = over["usage"]["fuel"].as_u64().unwrap();
    assert!(fuel > 1000, "{over}");
    assert_eq!(over["status"], "failed");
    assert_eq!(over["over-budget"][0]["figure"], "fuel");
    assert!(
        out.contains(&format!("fuel {fuel} is over its budget of 1000")),
        "the message names the figure, the budget and the value: {out}"
    );
    // Every case is measured: instructions, peak memory, output, wall time.
    let other = figures("inactive-product-is-dropped");
    assert_eq!(other["status"], "passed");
    assert!(
        other["usage"]["memory-bytes"].as_u64().unwrap() >= 65536,
        "{other}"
    );
    assert!(other["usage"]["output-bytes"].as_u64().unwrap() > 0, "{other}");
    assert!(out.contains(&format!("    fuel {fuel}  memory ")), "{out}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains(&format!("<property name=\"fuel\" value=\"{fuel}\"/>")),
        "{xml}"
    );
    assert!(xml.contains("<property name=\"memory-bytes\""), "{xml}");

    // Fuel is deterministic: a second run measures the same.
    let again = test_fixtures(dir.path(), &["--report-json", report.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let fuel_again = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["case"] == "kilograms-and-yen")
        .unwrap()["usage"]["fuel"]
        .clone();
    assert_eq!(fuel_again, fuel);

    // `--bless` leaves budgets alone; `--bless-budgets` writes them.
    let blessed = test_fixtures(dir.path(), &["--bless"]);
    assert_eq!(blessed.status.code(), Some(1), "{}", stdout(&blessed));
    assert_eq!(
        std::fs::read_to_string(case.join("budget.json")).unwrap(),
        r#"{"fuel": 1000}"#
    );
    let rebudgeted = test_fixtures(dir.path(), &["--bless-budgets", "20%"]);
    assert!(rebudgeted.status.success(), "{}", stdout(&rebudgeted));
    let budget: Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("budget.json")).unwrap()).unwrap();
    assert_eq!(budget["fuel"], (fuel as f64 * 1.2).ceil() as u64);
    let passes = test_fixtures(dir.path(), &[]);
    assert!(passes.status.success(), "{}", stdout(&passes));

    // A suite-wide budget applies to every case a case budget does not override.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path().join("budget.json");
        let _ = std::fs::remove_file(path);
    }
    std::fs::write(dir.path().join("budget.json"), r#"{"output-bytes": 10}"#).unwrap();
    let suite_wide = test_fixtures(dir.path(), &[]);
    let out = stdout(&suite_wide);
    assert_eq!(suite_wide.status.code(), Some(1), "{out}");
    assert!(
        out.contains("output-bytes") && out.contains("is over its budget of 10"),
        "{out}"
    );
}

/// A channel folder in `dir` whose pipeline is the Magento → B2B portal
/// pipeline with `max-title`, and (if `fixtures`) its fixtures.
fn portal_channel(dir: &Path, max_title: u32, fixtures: bool) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let pipeline = serde_json::json!({"steps": [
        {"module": guest("magento-source"), "config": {"weight-unit": "lbs", "currency": "USD"}},
        {"module": guest("b2b-portal"), "config": {"max-title": max_title}},
    ]});
    std::fs::write(dir.join("pipeline.json"), pipeline.to_string()).unwrap();
    if fixtures {
        let from = workspace().join("transforms/channels/b2b-portal-from-magento/fixtures");
        for case in std::fs::read_dir(from).unwrap() {
            let case = case.unwrap().path();
            let to = dir.join("fixtures").join(case.file_name().unwrap());
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(case.join("input.json"), to.join("input.json")).unwrap();
        }
    }
    dir.join("pipeline.json")
}

#[test]
fn sluice_test_against_a_baseline_catches_a_changed_mapping_and_resource_growth() {
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("new");
    portal_channel(&new, 80, true);
    let old = portal_channel(&dir.path().join("old"), 12, false);
    let baseline = |extra: &[&str]| {
        let mut args = vec!["test", new.to_str().unwrap(), "--baseline", old.to_str().unwrap()];
        args.extend_from_slice(extra);
        sluice(&args)
    };

    // No expected.json is needed: the old version is the reference.
    let output = baseline(&[]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("case new/simple-product ... FAILED"), "{out}");
    assert!(out.contains("output changed at"), "{out}");
    assert!(out.contains("$['events'][0]['payload']['title']"), "{out}");
    assert!(out.contains("baseline: \"Champ"), "{out}");
    assert!(out.contains("vs baseline: fuel "), "{out}");
    // An unchanged case passes.
    assert!(
        out.contains("case new/configurable-parent-is-dropped ... ok"),
        "{out}"
    );

    // Allowed output changes pass, unless a resource grows past the limit.
    let allowed = baseline(&["--allow-output-changes", "--max-regression", "50%"]);
    assert!(allowed.status.success(), "{}", stdout(&allowed));
    assert!(stdout(&allowed).contains("(allowed)"), "{}", stdout(&allowed));
    let regressed = baseline(&["--allow-output-changes", "--max-regression", "0%"]);
    let out = stdout(&regressed);
    assert_eq!(regressed.status.code(), Some(1), "{out}");
    assert!(out.contains("output-bytes +"), "{out}");
    assert!(out.contains("over the allowed regression"), "{out}");

    // The same version as its own baseline: no change at all.
    let same = sluice(&[
        "test",
        new.to_str().unwrap(),
        "--baseline",
        new.join("pipeline.json").to_str().unwrap(),
    ]);
    assert!(same.status.success(), "{}", stdout(&same));
    assert!(stdout(&same).contains("fuel ±0%"), "{}", stdout(&same));
    assert!(!stdout(&same).contains("output changed"), "{}", stdout(&same));

    // A component as the baseline of a transform crate's fixtures.
    let module = guest("b2b-portal");
    let component = sluice(&[
        "test",
        "transforms/b2b-portal",
        "--baseline",
        module.to_str().unwrap(),
    ]);
    assert!(component.status.success(), "{}", stdout(&component));
}

#[test]
fn sluice_test_names_the_file_line_and_field_of_a_bad_input() {
    let dir = scratch_fixtures();
    edit_json(
        &dir.path().join("magento-simple-child-canonical/input.json"),
        |v| {
            v.as_object_mut().unwrap().remove("kind");
        },
    );
    let output = test_fixtures(dir.path(), &[]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains("magento-simple-child-canonical/input.json: line 1: at $: missing field `kind`"),
        "{out}"
    );
}

#[test]
fn sluice_run_turns_jsonl_into_one_outcome_per_line() {
    let input = tempfile::NamedTempFile::new().unwrap();
    let product = crate::support::magento_product();
    let mut missing_sku = product.clone();
    missing_sku.as_object_mut().unwrap().remove("sku");
    let lines = [
        serde_json::json!({"id": "e1", "kind": "product", "payload": product}).to_string(),
        "{\"id\": \"e2\", \"kind\": 7, \"payload\": {}}".to_string(),
        serde_json::json!({"id": "e3", "kind": "product", "payload": missing_sku}).to_string(),
    ];
    std::fs::write(input.path(), lines.join("\n") + "\n").unwrap();
    let module = guest("b2b-portal");
    let output = sluice(&[
        "run",
        "--module",
        module.to_str().unwrap(),
        input.path().to_str().unwrap(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a bad line makes the run fail: {}",
        stderr(&output)
    );
    let outcomes: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(outcomes.len(), 3);
    assert_eq!(outcomes[0]["outcome"], "emit");
    assert_eq!(outcomes[0]["events"][0]["payload"]["weight_kg"], "0.227");
    assert_eq!(outcomes[1]["outcome"], "invalid-input");
    assert_eq!(outcomes[1]["line"], 2);
    assert!(
        outcomes[1]["error"].as_str().unwrap().contains("at $['kind']"),
        "{}",
        outcomes[1]
    );
    assert_eq!(outcomes[2]["outcome"], "reject");
    assert_eq!(outcomes[2]["violations"][0]["path"], "$['sku']");
    assert!(stderr(&output).contains("input line 2"), "{}", stderr(&output));
}

#[test]
fn sluice_run_reads_stdin_and_applies_a_config_file() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), r#"{"max-title": 5, "currency": "EUR"}"#).unwrap();
    let event =
        serde_json::json!({"id": "e1", "kind": "product", "payload": crate::support::magento_product()});
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "run",
            "--module",
            guest("b2b-portal").to_str().unwrap(),
            "--config",
            config.path().to_str().unwrap(),
        ])
        .env("SLUICE_CACHE_DIR", target_dir().join("sluice-test-cache"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{event}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let outcome: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    // Five characters in all, the ellipsis included.
    assert_eq!(outcome["events"][0]["payload"]["title"], "Cham…");
    // The price carries its own currency, which wins over the config default.
    assert_eq!(outcome["events"][0]["payload"]["currency"], "USD");
}

#[test]
fn sluice_check_accepts_a_transform_and_lists_its_imports() {
    let output = sluice(&["check", guest("b2b-portal").to_str().unwrap()]);
    let out = stdout(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("ok, implements sluice:transform@0.2.0\n"), "{out}");
    assert!(out.contains("- wasi:cli/stderr@"), "{out}");
    assert!(out.contains("- sluice:transform/step@0.2.0"), "{out}");
    let old = stdout(&sluice(&["check", guest("contract-0-1").to_str().unwrap()]));
    assert!(old.contains("ok, implements sluice:transform@0.1.0\n"), "{old}");
    assert!(old.contains("- apply"), "{old}");
    let stateful = stdout(&sluice(&["check", guest("changed-fields").to_str().unwrap()]));
    assert!(
        stateful.contains("ok, implements sluice:transform@0.2.0, keeps state"),
        "{stateful}"
    );
}

#[test]
fn sluice_check_explains_what_is_wrong() {
    let output = sluice(&["check", guest("other-world").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains(
            "it exports neither `init` and `apply` (0.1.0) nor `sluice:transform/step@0.2.0`; it exports [greet]"
        ),
        "{}",
        stdout(&output)
    );

    // An import the host neither provides nor denies is still refused at load.
    let unknown = tempfile::NamedTempFile::new().unwrap();
    let component =
        wat::parse_str(r#"(component (import "acme:spy/exfiltrate" (instance (export "send" (func)))))"#)
            .unwrap();
    std::fs::write(unknown.path(), component).unwrap();
    let output = sluice(&["check", unknown.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("imports `acme:spy/exfiltrate`, which Sluice does not provide"),
        "{}",
        stdout(&output)
    );

    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), b"not wasm at all").unwrap();
    let output = sluice(&["check", junk.path().to_str().unwrap(), "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["ok"], false);
    assert!(
        report["error"].as_str().unwrap().contains("is not WebAssembly"),
        "{report}"
    );
}

#[test]
fn a_scaffolded_transform_builds_and_passes_its_fixture_unchanged() {
    // Outside any checkout and without --sdk-path: the SDK the binary carries.
    let dir = tempfile::tempdir().unwrap();
    let created = sluice(&["new", "acme-marketplace", "--dir", dir.path().to_str().unwrap()]);
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(
        stderr(&created).contains("using the Rust SDK this sluice carries"),
        "{}",
        stderr(&created)
    );
    let crate_dir = dir.path().join("acme-marketplace");
    // The workspace's lock file keeps dependency versions equal to the
    // workspace's, so the build reuses what is already downloaded.
    std::fs::copy(workspace().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let scaffold_target = target_dir().join("scaffold");
    let build = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["build", crate_dir.to_str().unwrap()])
        .env("CARGO_TARGET_DIR", &scaffold_target)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", stderr(&build));
    assert!(stdout(&build).contains("with cargo"), "{}", stdout(&build));
    let tested = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["test", crate_dir.to_str().unwrap()])
        .env("CARGO_TARGET_DIR", &scaffold_target)
        .env("SLUICE_CACHE_DIR", target_dir().join("sluice-test-cache"))
        .output()
        .unwrap();
    assert!(tested.status.success(), "{}{}", stdout(&tested), stderr(&tested));
    assert!(
        stdout(&tested).contains("case acme-marketplace/example ... ok"),
        "{}",
        stdout(&tested)
    );

    // Names are checked, and nothing is overwritten.
    let again = sluice(&["new", "acme-marketplace", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("already exists"), "{}", stderr(&again));
    let bad = sluice(&["new", "Acme_Market", "--dir", dir.path().to_str().unwrap()]);
    assert!(
        stderr(&bad).contains("is not a valid transform name"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn sluice_run_sends_real_magento_products_through_a_channel_pipeline() {
    let channel = workspace().join("transforms/channels/b2b-portal-from-magento");
    let output = sluice(&[
        "run",
        "--pipeline",
        channel.join("pipeline.json").to_str().unwrap(),
        channel.join("examples/magento-products.jsonl").to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let outcomes: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tags: Vec<&str> = outcomes.iter().map(|o| o["outcome"].as_str().unwrap()).collect();
    assert_eq!(tags, ["emit", "drop", "emit"]);
    assert_eq!(outcomes[0]["events"][0]["payload"]["sku"], "MS-Champ-S");
    assert_eq!(outcomes[2]["events"][0]["payload"]["sku"], "Desktop-Computer");

    let missing = sluice(&["run", "--pipeline", "no/such/pipeline.json"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("no/such/pipeline.json"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn sleeping_guests_neither_hang_sluice_run_nor_sluice_test() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("sleepers.jsonl");
    std::fs::write(
        &input,
        r#"{"id":"s-1","kind":"product","payload":{"attack":"sleep-hour"}}
{"id":"s-2","kind":"product","payload":{"attack":"sleep-forever"}}
{"id":"s-3","kind":"product","payload":{"attack":"poll-never"}}
"#,
    )
    .unwrap();
    let hostile = guest("hostile");
    let started = std::time::Instant::now();
    let output = sluice(&[
        "run",
        "--module",
        hostile.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["outcome"] == "emit"), "{lines:?}");
    assert_eq!(lines[0]["events"][0]["payload"]["slept_secs"], 3600);

    // The same through `sluice test`: a fixture whose module sleeps an hour passes at once.
    let case = dir.path().join("fixtures/sleeps");
    std::fs::create_dir_all(&case).unwrap();
    std::fs::write(
        case.join("input.json"),
        r#"{"id":"s-1","kind":"product","payload":{"attack":"sleep-hour"}}"#,
    )
    .unwrap();
    std::fs::write(
        case.join("expected.json"),
        r#"{"outcome":"emit","events":[{"id":"s-1","kind":"product","payload":{"slept_secs":3600}}]}"#,
    )
    .unwrap();
    let output = sluice(&[
        "test",
        "--module",
        hostile.to_str().unwrap(),
        dir.path().join("fixtures").to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

/// `examples/embed.rs` of the engine crate, built by `scripts/dev test`.
#[test]
fn the_embedding_example_runs_a_real_component() {
    let example = target_dir().join("debug/examples/embed");
    assert!(
        example.is_file(),
        "{} is missing: `scripts/dev test` builds it",
        example.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let input = workspace().join("transforms/b2b-portal/fixtures/magento-simple-child-canonical");
    let output = Command::new(&example)
        .arg(guest("b2b-portal"))
        .arg(input.join("input.json"))
        .arg(input.join("config.json"))
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(
        out.starts_with("emit ") && out.contains("\"sku\":\"MS-Champ-S\""),
        "{out}"
    );
    // A bad component is an error with a reason, not a panic.
    let output = Command::new(&example)
        .arg(input.join("input.json"))
        .arg(input.join("input.json"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("is not WebAssembly"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn sluice_run_on_every_core_keeps_output_line_n_for_input_line_n() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let mut text = String::new();
    for n in 1..=300 {
        if n == 150 {
            text.push_str("{not an event\n");
        } else {
            text.push_str(&format!(
                "{{\"id\":\"e-{n}\",\"kind\":\"product\",\"payload\":{{\"n\":{n}}}}}\n"
            ));
        }
    }
    std::fs::write(&input, text).unwrap();
    let hostile = guest("hostile");
    for jobs in ["1", "4"] {
        let output = sluice(&[
            "run",
            "--jobs",
            jobs,
            "--batch",
            "7",
            "--module",
            hostile.to_str().unwrap(),
            input.to_str().unwrap(),
        ]);
        assert_eq!(
            output.status.code(),
            Some(1),
            "one line is invalid: {}",
            stderr(&output)
        );
        let lines: Vec<Value> = stdout(&output)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 300, "jobs {jobs}");
        for (index, line) in lines.iter().enumerate() {
            let n = index + 1;
            if n == 150 {
                assert_eq!(line["outcome"], "invalid-input", "jobs {jobs}: {line}");
                assert_eq!(line["line"], 150);
            } else {
                assert_eq!(line["events"][0]["id"], format!("e-{n}"), "jobs {jobs}: line {n}");
            }
        }
    }
}

/// The CLI reads and writes only what it was pointed at: a link inside
/// the fixtures is refused rather than uploaded, `sluice build` does not
/// write its helper library through a link, and `sluice new` refuses a
/// folder whose path could break out of the sources it generates.
#[test]
fn the_cli_follows_no_links_and_refuses_paths_that_break_generated_sources() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("credentials");
    std::fs::write(&secret, "aws_secret_access_key = hunter2").unwrap();
    let case = dir.path().join("fixtures/leak");
    std::fs::create_dir_all(&case).unwrap();
    std::os::unix::fs::symlink(&secret, case.join("input.json")).unwrap();
    std::os::unix::fs::symlink("/", case.join("root")).unwrap();
    let module = dir.path().join("module.wasm");
    std::fs::write(&module, b"\0asm").unwrap();
    let fixtures = dir.path().join("fixtures");
    let pushed = sluice(&[
        "modules",
        "push",
        module.to_str().unwrap(),
        "--fixtures",
        fixtures.to_str().unwrap(),
        "--server",
        "http://127.0.0.1:9",
    ]);
    assert!(!pushed.status.success());
    assert!(
        stderr(&pushed).contains("is a symbolic link"),
        "{}",
        stderr(&pushed)
    );

    let python = dir.path().join("py");
    std::fs::create_dir_all(&python).unwrap();
    std::fs::write(python.join("app.py"), "").unwrap();
    let target = dir.path().join("elsewhere.txt");
    std::fs::write(&target, "mine").unwrap();
    std::os::unix::fs::symlink(&target, python.join("sluice.py")).unwrap();
    let built = sluice(&["build", python.to_str().unwrap()]);
    assert!(!built.status.success());
    assert!(
        stderr(&built).contains("is a symbolic link"),
        "{}",
        stderr(&built)
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "mine");

    for bad in ["x\"\"\"y", "x\ny", "x\\y"] {
        let parent = dir.path().join(bad);
        let created = sluice(&[
            "new",
            "acme",
            "--lang",
            "python",
            "--dir",
            parent.to_str().unwrap(),
        ]);
        assert!(!created.status.success(), "{bad:?}");
        assert!(
            stderr(&created).contains("generated sources cannot carry safely"),
            "{}",
            stderr(&created)
        );
        assert!(!parent.exists());
    }
}
