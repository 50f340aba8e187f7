//! Structural comparison of JSON values, reporting each difference with
//! its RFC 9535 normalized path, as `sluice test` shows them.
//!
//! The values compared are a tenant's (fixtures, a module's output, a
//! candidate's output), so the comparison is bounded whatever they hold:
//! it walks both values once with one path kept in place, keeps at most
//! [`DiffLimits::max_differences`] differences, cuts each path and each
//! shown value to a byte budget, and counts the differences it does not
//! keep, so a report says how much was cut.

use std::fmt::{self, Write as _};

use serde_json::Value;
use sluice_guest::path::write_escaped;

/// One place where two JSON values disagree.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// Where, as a normalized path (`$[0]['events'][0]['payload']['title']`),
    /// cut to [`DiffLimits::max_path_bytes`] with a trailing `…`.
    pub path: String,
    /// The expected value there; `None` when only the actual has it. A
    /// value over [`DiffLimits::max_value_bytes`] shows as a string that
    /// says its size.
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

/// How much of a comparison is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffLimits {
    /// Differences kept; the rest are only counted.
    pub max_differences: usize,
    /// Bytes of one difference's path.
    pub max_path_bytes: usize,
    /// Bytes of one shown value, as compact JSON.
    pub max_value_bytes: usize,
}

impl Default for DiffLimits {
    fn default() -> Self {
        Self {
            max_differences: 100,
            max_path_bytes: 1024,
            max_value_bytes: 4096,
        }
    }
}

/// The differences between two values: the first ones found, and how many
/// there are in all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Differences {
    /// At most [`DiffLimits::max_differences`], in document order.
    pub shown: Vec<Difference>,
    /// All differences, counted past the cap.
    pub total: u64,
}

impl Differences {
    /// Whether the two values are equal.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Whether some differences were counted but not kept.
    pub fn cut(&self) -> bool {
        self.total > self.shown.len() as u64
    }

    /// The kept differences.
    pub fn iter(&self) -> std::slice::Iter<'_, Difference> {
        self.shown.iter()
    }

    /// `3 difference(s)`, or `250000 difference(s), the first 100 shown`.
    pub fn summary(&self) -> String {
        self.counted("difference(s)")
    }

    /// The count of differences, as `summary` words it, with another noun.
    pub fn counted(&self, noun: &str) -> String {
        if self.cut() {
            format!("{} {noun}, the first {} shown", self.total, self.shown.len())
        } else {
            format!("{} {noun}", self.total)
        }
    }

    /// The kept differences as JSON, as the API shows them.
    pub fn to_json(&self) -> Vec<Value> {
        self.shown.iter().map(Difference::to_json).collect()
    }
}

impl<'a> IntoIterator for &'a Differences {
    type Item = &'a Difference;
    type IntoIter = std::slice::Iter<'a, Difference>;
    fn into_iter(self) -> Self::IntoIter {
        self.shown.iter()
    }
}

/// The differences between `expected` and `actual` within the default
/// [`DiffLimits`]. Object key order and number spelling (`1.0` vs `1`) do
/// not matter; array order does.
pub fn diff(expected: &Value, actual: &Value) -> Differences {
    diff_within(expected, actual, DiffLimits::default())
}

/// [`diff`] within `limits`.
pub fn diff_within(expected: &Value, actual: &Value, limits: DiffLimits) -> Differences {
    let mut walk = Walk {
        path: Vec::new(),
        limits,
        found: Differences::default(),
    };
    walk.compare(expected, actual);
    walk.found
}

/// One step of the path being walked, borrowed from the values.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

struct Walk<'a> {
    path: Vec<Step<'a>>,
    limits: DiffLimits,
    found: Differences,
}

impl<'a> Walk<'a> {
    fn compare(&mut self, expected: &'a Value, actual: &'a Value) {
        match (expected, actual) {
            (Value::Object(e), Value::Object(a)) => {
                for (key, e_value) in e {
                    self.path.push(Step::Key(key));
                    match a.get(key) {
                        Some(a_value) => self.compare(e_value, a_value),
                        None => self.differ(Some(e_value), None),
                    }
                    self.path.pop();
                }
                for (key, a_value) in a.iter().filter(|(key, _)| !e.contains_key(*key)) {
                    self.path.push(Step::Key(key));
                    self.differ(None, Some(a_value));
                    self.path.pop();
                }
            }
            (Value::Array(e), Value::Array(a)) => {
                let common = e.len().min(a.len());
                for (i, (e_value, a_value)) in e.iter().zip(a).enumerate() {
                    self.path.push(Step::Index(i));
                    self.compare(e_value, a_value);
                    self.path.pop();
                }
                // Past the shorter one, each element differs; once the cap
                // is reached the rest are only counted, in one step.
                let longer = if e.len() > a.len() { e } else { a };
                for (i, value) in longer.iter().enumerate().skip(common) {
                    if self.full() {
                        self.found.total += (longer.len() - i) as u64;
                        break;
                    }
                    self.path.push(Step::Index(i));
                    let (e_value, a_value) = if e.len() > a.len() {
                        (Some(value), None)
                    } else {
                        (None, Some(value))
                    };
                    self.differ(e_value, a_value);
                    self.path.pop();
                }
            }
            (Value::Number(e), Value::Number(a)) if numbers_equal(e, a) => {}
            (e, a) if e == a => {}
            (e, a) => self.differ(Some(e), Some(a)),
        }
    }

    fn full(&self) -> bool {
        self.found.shown.len() >= self.limits.max_differences
    }

    fn differ(&mut self, expected: Option<&Value>, actual: Option<&Value>) {
        self.found.total += 1;
        if self.full() {
            return;
        }
        let shown =
            |value: Option<&Value>| value.map(|value| bounded_value(value, self.limits.max_value_bytes));
        let difference = Difference {
            path: self.path_text(),
            expected: shown(expected),
            actual: shown(actual),
        };
        self.found.shown.push(difference);
    }

    /// The current path as a normalized path, cut to its byte budget.
    fn path_text(&self) -> String {
        let mut out = Bounded::new(self.limits.max_path_bytes);
        let written = (|| {
            out.write_str("$")?;
            for step in &self.path {
                match step {
                    Step::Index(index) => write!(out, "[{index}]")?,
                    Step::Key(name) => {
                        out.write_str("['")?;
                        write_escaped(&mut out, name)?;
                        out.write_str("']")?;
                    }
                }
            }
            Ok::<(), fmt::Error>(())
        })();
        let mut text = out.text;
        if written.is_err() {
            text.push('…');
        }
        text
    }
}

/// `value`, or a string that gives its size if its compact JSON is over `max` bytes.
fn bounded_value(value: &Value, max: usize) -> Value {
    let mut counter = Counter { bytes: 0, max };
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => value.clone(),
        Err(_) => Value::String(format!("(a value over {max} bytes, not shown)")),
    }
}

/// An `io::Write` that only counts, and fails past its budget.
struct Counter {
    bytes: usize,
    max: usize,
}

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes += buf.len();
        if self.bytes > self.max {
            return Err(std::io::ErrorKind::FileTooLarge.into());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `fmt::Write` into a string that fails once its budget is spent,
/// keeping what fitted (cut at a character boundary).
struct Bounded {
    text: String,
    max: usize,
}

impl Bounded {
    fn new(max: usize) -> Self {
        Self {
            text: String::new(),
            max,
        }
    }
}

impl fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.max.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
            return Ok(());
        }
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.text.push_str(&s[..end]);
        Err(fmt::Error)
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

/// The normalized path serde reached when deserializing failed.
pub fn path_from_serde(path: &serde_path_to_error::Path) -> String {
    sluice_guest::JsonPath::from_serde(path).to_string()
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
        assert_eq!(found.shown[0].actual, None);
        assert_eq!(found.shown[2].expected, None);
        assert!(!found.cut());
    }

    #[test]
    fn array_length_differences_show_each_extra_element() {
        let found = diff(&json!([1]), &json!([1, 2]));
        assert_eq!(found.total, 1);
        assert_eq!(found.shown[0].path, "$[1]");
        assert_eq!(found.shown[0].actual, Some(json!(2)));
    }

    /// The measured case of the hardening issue: an 8 KiB key whose
    /// expected value is 100,000 zeros against an empty array took 2 GB.
    #[test]
    fn a_long_key_over_a_long_array_keeps_the_cap_and_counts_the_rest() {
        let key = "k".repeat(8 << 10);
        let expected = json!({ key.clone(): vec![0; 100_000] });
        let actual = json!({ key: [] });
        let found = diff(&expected, &actual);
        assert_eq!(found.total, 100_000);
        assert_eq!(found.shown.len(), DiffLimits::default().max_differences);
        assert!(found.cut());
        assert!(
            found
                .summary()
                .contains("100000 difference(s), the first 100 shown")
        );
        for difference in &found {
            assert!(difference.path.len() <= DiffLimits::default().max_path_bytes + '…'.len_utf8());
            assert!(difference.path.ends_with('…'));
        }
    }

    #[test]
    fn a_big_value_shows_as_its_size() {
        let found = diff(&json!({"a": "x".repeat(10_000)}), &json!({"a": 1}));
        assert_eq!(
            found.shown[0].expected,
            Some(json!("(a value over 4096 bytes, not shown)"))
        );
        assert_eq!(found.shown[0].actual, Some(json!(1)));
    }

    #[test]
    fn a_cut_path_ends_on_a_character_boundary() {
        let limits = DiffLimits {
            max_path_bytes: 6,
            ..DiffLimits::default()
        };
        let found = diff_within(&json!({"ééé": 1}), &json!({"ééé": 2}), limits);
        assert_eq!(found.shown[0].path, "$['é…");
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

    /// Deep and wide values: long keys, nesting up to 40 levels, arrays up to 300 long.
    fn deep_and_wide() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::from),
            "[a-z]{0,40}".prop_map(Value::from)
        ];
        leaf.prop_recursive(40, 2000, 300, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..300).prop_map(Value::Array),
                prop::collection::btree_map("[a-zé']{1,200}", inner, 0..4)
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

        /// Whatever the values, the report stays within its limits, and the
        /// count is the same as with no cap.
        #[test]
        fn prop_diff_output_is_bounded(a in deep_and_wide(), b in deep_and_wide()) {
            let limits = DiffLimits { max_differences: 5, max_path_bytes: 64, max_value_bytes: 128 };
            let found = diff_within(&a, &b, limits);
            let all = diff_within(&a, &b, DiffLimits { max_differences: usize::MAX, ..limits });
            prop_assert!(found.shown.len() <= 5);
            prop_assert_eq!(found.total, all.total);
            prop_assert_eq!(&found.shown[..], &all.shown[..found.shown.len()]);
            for difference in &found {
                prop_assert!(difference.path.len() <= 64 + '…'.len_utf8());
                for value in [&difference.expected, &difference.actual].into_iter().flatten() {
                    prop_assert!(value.to_string().len() <= 128 + 64);
                }
            }
        }
    }
}
