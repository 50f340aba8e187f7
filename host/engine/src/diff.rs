//! Structural comparison of JSON values, reporting each difference with
//! its RFC 9535 normalized path, as `sluice test` shows them.

use std::fmt;

use serde_json::Value;
use sluice_guest::JsonPath;

/// One place where two JSON values disagree.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// Where, as a normalized path (`$[0]['events'][0]['payload']['title']`).
    pub path: String,
    /// The expected value there; `None` when only the actual has it.
    pub expected: Option<Value>,
    /// The actual value there; `None` when it is missing.
    pub actual: Option<Value>,
}

impl Difference {
    /// `{"path", "expected", "actual"}`, as the API and `--report-json` show it.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"path": self.path, "expected": self.expected, "actual": self.actual})
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |value: &Option<Value>| match value {
            Some(value) => value.to_string(),
            None => "(missing)".to_string(),
        };
        writeln!(f, "  {}", self.path)?;
        writeln!(f, "    expected: {}", show(&self.expected))?;
        write!(f, "    actual:   {}", show(&self.actual))
    }
}

/// Every difference between `expected` and `actual`. Object key order and
/// number spelling (`1.0` vs `1`) do not matter; array order does.
pub fn diff(expected: &Value, actual: &Value) -> Vec<Difference> {
    let mut out = Vec::new();
    walk(&JsonPath::root(), expected, actual, &mut out);
    out
}

fn walk(path: &JsonPath, expected: &Value, actual: &Value, out: &mut Vec<Difference>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, e_value) in e {
                match a.get(key) {
                    Some(a_value) => walk(&path.key(key), e_value, a_value, out),
                    None => out.push(difference(&path.key(key), Some(e_value), None)),
                }
            }
            for (key, a_value) in a.iter().filter(|(key, _)| !e.contains_key(*key)) {
                out.push(difference(&path.key(key), None, Some(a_value)));
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            for i in 0..e.len().max(a.len()) {
                match (e.get(i), a.get(i)) {
                    (Some(e_value), Some(a_value)) => walk(&path.index(i), e_value, a_value, out),
                    (e_value, a_value) => out.push(difference(&path.index(i), e_value, a_value)),
                }
            }
        }
        (Value::Number(e), Value::Number(a)) if numbers_equal(e, a) => {}
        (e, a) if e == a => {}
        (e, a) => out.push(difference(path, Some(e), Some(a))),
    }
}

fn numbers_equal(e: &serde_json::Number, a: &serde_json::Number) -> bool {
    if let (Some(e), Some(a)) = (e.as_i64(), a.as_i64()) {
        return e == a;
    }
    if let (Some(e), Some(a)) = (e.as_u64(), a.as_u64()) {
        return e == a;
    }
    e.as_f64() == a.as_f64()
}

fn difference(path: &JsonPath, expected: Option<&Value>, actual: Option<&Value>) -> Difference {
    Difference {
        path: path.to_string(),
        expected: expected.cloned(),
        actual: actual.cloned(),
    }
}

/// The normalized path serde reached when deserializing failed.
pub fn path_from_serde(path: &serde_path_to_error::Path) -> String {
    JsonPath::from_serde(path).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equal_values_have_no_differences() {
        let value = json!({"a": [1, {"b": "x"}], "c": null});
        assert!(diff(&value, &value).is_empty());
    }

    #[test]
    fn key_order_and_number_spelling_do_not_matter() {
        let e: Value = serde_json::from_str(r#"{"a":1.0,"b":2}"#).unwrap();
        let a: Value = serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap();
        assert!(diff(&e, &a).is_empty());
    }

    #[test]
    fn changed_missing_and_extra_fields_are_reported_with_paths() {
        let e = json!([{"events": [{"payload": {"title": "A", "gone": 1}}]}]);
        let a = json!([{"events": [{"payload": {"title": "B", "new": true}}]}]);
        let found = diff(&e, &a);
        let paths: Vec<_> = found.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "$[0]['events'][0]['payload']['gone']",
                "$[0]['events'][0]['payload']['title']",
                "$[0]['events'][0]['payload']['new']",
            ]
        );
        assert_eq!(found[0].actual, None);
        assert_eq!(found[2].expected, None);
    }

    #[test]
    fn array_length_differences_show_each_extra_element() {
        let found = diff(&json!([1]), &json!([1, 2]));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, "$[1]");
        assert_eq!(found[0].actual, Some(json!(2)));
    }
}

#[cfg(test)]
mod prop_tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z'\\]\\[]{1,4}", inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// A value never differs from itself; two values differ exactly when they are unequal,
        /// and every difference's path starts at the root.
        #[test]
        fn prop_diff_is_empty_exactly_for_equal_values(a in json(), b in json()) {
            prop_assert!(diff(&a, &a).is_empty());
            let differences = diff(&a, &b);
            prop_assert_eq!(differences.is_empty(), a == b, "{:?}", differences);
            for difference in &differences {
                prop_assert!(difference.path.starts_with('$'));
            }
        }
    }
}
