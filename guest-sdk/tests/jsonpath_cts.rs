//! The official JSONPath compliance test suite (RFC 9535, `jsonpath-cts/cts.json`,
//! BSD-2, copied unchanged) run through the mapping's path evaluation.
//!
//! Every case must pass, except those listed with a reason in
//! `jsonpath-cts/known-failures.txt`. The list must be exact: a new failure
//! or a newly passing case fails this test, so the count in docs/how-to/map-without-code.md stays true.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;
use sluice_guest::mapping::CompiledPath;

fn suite_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/jsonpath-cts")
}

/// Whether one case passes: invalid selectors must fail to compile; valid
/// ones must select exactly the expected nodes (any of the allowed orders).
fn passes(case: &Value) -> bool {
    let selector = case["selector"].as_str().expect("selector");
    let compiled = std::panic::catch_unwind(|| CompiledPath::compile(selector));
    let Ok(compiled) = compiled else { return false };
    if case.get("invalid_selector").and_then(Value::as_bool) == Some(true) {
        return compiled.is_err();
    }
    let Ok(path) = compiled else { return false };
    let document = &case["document"];
    let Ok(selected) = std::panic::catch_unwind(|| {
        path.select(document)
            .into_iter()
            .map(|(v, _)| v.clone())
            .collect::<Vec<_>>()
    }) else {
        return false;
    };
    let actual = Value::Array(selected);
    match (case.get("result"), case.get("results")) {
        (Some(expected), _) => &actual == expected,
        (None, Some(Value::Array(any_of))) => any_of.iter().any(|expected| &actual == expected),
        _ => false,
    }
}

#[test]
fn jsonpath_compliance_suite() {
    let suite: Value =
        serde_json::from_str(&std::fs::read_to_string(suite_dir().join("cts.json")).unwrap()).unwrap();
    let cases = suite["tests"].as_array().unwrap();
    let failing: BTreeSet<String> = cases
        .iter()
        .filter(|case| !passes(case))
        .map(|case| case["name"].as_str().unwrap().to_string())
        .collect();
    let known: BTreeSet<String> = std::fs::read_to_string(suite_dir().join("known-failures.txt"))
        .unwrap()
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| line.split(" -- ").next().unwrap().trim().to_string())
        .collect();
    let passed = cases.len() - failing.len();
    println!("JSONPath compliance: {passed} of {} cases pass", cases.len());
    let new_failures: Vec<_> = failing.difference(&known).collect();
    let fixed: Vec<_> = known.difference(&failing).collect();
    assert!(
        new_failures.is_empty(),
        "cases failing that are not in known-failures.txt: {new_failures:#?}"
    );
    assert!(
        fixed.is_empty(),
        "cases in known-failures.txt that now pass (remove them): {fixed:#?}"
    );
}
