//! Redaction of recorded events: each value a JSONPath selects is replaced
//! by a stable placeholder, the same for the same value under the same key,
//! so lookups and joins on it still behave in the recorded fixtures.
//!
//! Paths apply to each event as a fixture holds it (`$.payload.email`):
//! the input, and every event of the expected output. A string becomes
//! `redacted-<hash>` (an email `redacted-<hash>@example.invalid`, still an
//! email), a number a number of the same sign; objects and arrays have
//! every such value inside replaced. The hash is HMAC-SHA-256 of the value
//! under the recording's key, so a known value cannot be confirmed from a
//! fixture without the key.

use std::collections::{HashMap, HashSet};

use jsonpath_rust::parser::model::{Segment, Selector};
use serde_json::Value;
use sha2::Sha256;

/// Most redaction paths one recording may have.
pub const MAX_PATHS: usize = 32;
/// Most segments one redaction path may have.
pub const MAX_SEGMENTS: usize = 32;
/// Longest redaction path, in bytes, and most selectors in one segment
/// (`['a','b',…]`): each child is matched against every selector.
pub const MAX_PATH_BYTES: usize = 1024;
/// See [`MAX_PATH_BYTES`].
pub const MAX_SELECTORS: usize = 16;
/// Longest redaction key, in bytes: a longer HMAC key is hashed again on
/// every use.
pub const MAX_KEY_BYTES: usize = 64;

/// Why redaction cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    /// A path is not JSONPath.
    #[error("`{path}` is not a JSONPath: {detail}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why.
        detail: String,
    },
    /// A path uses a filter (`[?…]`), which redaction does not evaluate.
    #[error(
        "`{path}`: redaction paths select by name, index, slice, wildcard and `..`; filters (`[?…]`) are not supported"
    )]
    Filter {
        /// The path as given.
        path: String,
    },
    /// More paths, or a longer path, than redaction takes.
    #[error(
        "redaction takes at most {MAX_PATHS} paths of at most {MAX_PATH_BYTES} bytes, {MAX_SEGMENTS} segments and {MAX_SELECTORS} selectors per segment"
    )]
    TooMany,
    /// A key longer than [`MAX_KEY_BYTES`].
    #[error("a redaction key is at most {MAX_KEY_BYTES} bytes")]
    KeyTooLong,
}

/// Replaces what its paths select; remembers each value's placeholder.
///
/// The paths are evaluated here rather than by a JSONPath library that
/// lists every match as a path: `$..*..*..*` over a deep payload has a
/// match for every combination of levels, which took a sidecar past 1 GB.
/// Here each node is visited once per path with the set of segments that
/// may match at it, so one event costs at most nodes × segments.
pub struct Redactor {
    paths: Vec<Vec<Segment>>,
    key: Vec<u8>,
    /// Placeholders handed out, by original value.
    given: HashMap<String, Value>,
    /// Every placeholder handed out: already redacted, left alone.
    placeholders: HashSet<String>,
}

impl Redactor {
    /// A redactor of these JSONPaths under `key` (any bytes; the same key
    /// gives the same placeholders).
    pub fn new(paths: &[String], key: &[u8]) -> Result<Self, RedactError> {
        if paths.len() > MAX_PATHS || paths.iter().any(|path| path.len() > MAX_PATH_BYTES) {
            return Err(RedactError::TooMany);
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(RedactError::KeyTooLong);
        }
        let paths = paths.iter().map(|path| compile(path)).collect::<Result<_, _>>()?;
        Ok(Self {
            paths,
            key: key.to_vec(),
            given: HashMap::new(),
            placeholders: HashSet::new(),
        })
    }

    /// Redacts what the paths select in one event.
    pub fn event(&mut self, event: &mut Value) {
        for index in 0..self.paths.len() {
            let path = std::mem::take(&mut self.paths[index]);
            self.select(&path, event, 1);
            self.paths[index] = path;
        }
    }

    /// Walks `node`, which the segments in `states` (a bit per segment
    /// index, bit `len` for "selected") may match; redacts what is selected.
    fn select(&mut self, path: &[Segment], node: &mut Value, states: u64) {
        if states & (1 << path.len()) != 0 {
            // Everything inside is redacted: no deeper match can add to it.
            self.value(node);
            return;
        }
        match node {
            Value::Object(members) => {
                for (key, child) in members.iter_mut() {
                    let next = advance(path, states, &Child::Key(key));
                    if next != 0 {
                        self.select(path, child, next);
                    }
                }
            }
            Value::Array(items) => {
                let len = items.len();
                for (index, child) in items.iter_mut().enumerate() {
                    let next = advance(path, states, &Child::Index(index, len));
                    if next != 0 {
                        self.select(path, child, next);
                    }
                }
            }
            _ => {}
        }
    }

    /// Redacts every event of an outcome (`{"events": [...]}`), as
    /// `expected.json` holds it.
    pub fn outcome(&mut self, outcome: &mut Value) {
        if let Some(events) = outcome.get_mut("events").and_then(Value::as_array_mut) {
            for event in events {
                self.event(event);
            }
        }
    }

    fn value(&mut self, value: &mut Value) {
        match value {
            Value::Object(members) => members.values_mut().for_each(|v| self.value(v)),
            Value::Array(items) => items.iter_mut().for_each(|v| self.value(v)),
            Value::String(_) | Value::Number(_) => {
                let text = value.to_string();
                if self.placeholders.contains(&text) {
                    return;
                }
                let placeholder = match self.given.get(&text) {
                    Some(placeholder) => placeholder.clone(),
                    None => {
                        let placeholder = self.placeholder(value);
                        self.given.insert(text, placeholder.clone());
                        self.placeholders.insert(placeholder.to_string());
                        placeholder
                    }
                };
                *value = placeholder;
            }
            Value::Bool(_) | Value::Null => {}
        }
    }

    fn placeholder(&self, value: &Value) -> Value {
        let digest = hmac_sha256(&self.key, value.to_string().as_bytes());
        match value {
            Value::Number(number) => {
                let magnitude = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % 1_000_000_000;
                let negative = number.as_f64().is_some_and(|n| n < 0.0);
                Value::from(if negative {
                    -(magnitude as i64)
                } else {
                    magnitude as i64
                })
            }
            Value::String(text) => {
                let tag = hex::encode(&digest[..8]);
                if text.contains('@') {
                    Value::String(format!("redacted-{tag}@example.invalid"))
                } else {
                    Value::String(format!("redacted-{tag}"))
                }
            }
            other => other.clone(),
        }
    }
}

/// Parses `path` and checks that redaction can evaluate it.
fn compile(path: &str) -> Result<Vec<Segment>, RedactError> {
    let query = jsonpath_rust::parser::parse_json_path(path).map_err(|err| RedactError::InvalidPath {
        path: path.to_string(),
        detail: err.to_string(),
    })?;
    let too_wide = |segment: &Segment| match segment {
        Segment::Selectors(list) => list.len() > MAX_SELECTORS,
        Segment::Descendant(inner) => {
            matches!(&**inner, Segment::Selectors(list) if list.len() > MAX_SELECTORS)
        }
        Segment::Selector(_) => false,
    };
    if query.segments.len() > MAX_SEGMENTS || query.segments.iter().any(too_wide) {
        return Err(RedactError::TooMany);
    }
    let filter = |selector: &Selector| matches!(selector, Selector::Filter(_));
    let uses_filter = |segment: &Segment| {
        fn selectors(segment: &Segment) -> Vec<&Selector> {
            match segment {
                Segment::Descendant(inner) => selectors(inner),
                Segment::Selector(selector) => vec![selector],
                Segment::Selectors(list) => list.iter().collect(),
            }
        }
        selectors(segment).into_iter().any(filter)
    };
    if query.segments.iter().any(uses_filter) {
        return Err(RedactError::Filter {
            path: path.to_string(),
        });
    }
    Ok(query.segments)
}

/// Where a child sits in its parent.
enum Child<'a> {
    Key(&'a str),
    /// Its index, and the array's length (for negative indexes and slices).
    Index(usize, usize),
}

/// The states of a child, given its parent's: segment `i` matching the
/// child moves on to `i + 1`, and a descendant segment also stays at `i`.
fn advance(path: &[Segment], states: u64, child: &Child<'_>) -> u64 {
    let mut next = 0;
    for (i, segment) in path.iter().enumerate() {
        if states & (1 << i) == 0 {
            continue;
        }
        let inner = match segment {
            Segment::Descendant(inner) => {
                next |= 1 << i;
                inner
            }
            other => other,
        };
        if matches_segment(inner, child) {
            next |= 1 << (i + 1);
        }
    }
    next
}

fn matches_segment(segment: &Segment, child: &Child<'_>) -> bool {
    match segment {
        Segment::Descendant(inner) => matches_segment(inner, child),
        Segment::Selector(selector) => matches_selector(selector, child),
        Segment::Selectors(list) => list.iter().any(|selector| matches_selector(selector, child)),
    }
}

fn matches_selector(selector: &Selector, child: &Child<'_>) -> bool {
    match (selector, child) {
        (Selector::Wildcard, _) => true,
        (Selector::Name(name), Child::Key(key)) => name == key,
        (Selector::Index(wanted), Child::Index(index, len)) => {
            let wanted = if *wanted < 0 {
                *len as i64 + wanted
            } else {
                *wanted
            };
            wanted == *index as i64
        }
        (Selector::Slice(start, end, step), Child::Index(index, len)) => {
            in_slice(*index as i64, *len as i64, *start, *end, step.unwrap_or(1))
        }
        _ => false,
    }
}

/// Whether `index` is in the slice `[start:end:step]` of an array of `len`, as RFC 9535 §2.3.4 defines it.
fn in_slice(index: i64, len: i64, start: Option<i64>, end: Option<i64>, step: i64) -> bool {
    let normalize = |i: i64| if i >= 0 { i } else { len + i };
    if step > 0 {
        let lower = normalize(start.unwrap_or(0)).clamp(0, len);
        let upper = normalize(end.unwrap_or(len)).clamp(0, len);
        lower <= index && index < upper && (index - lower) % step == 0
    } else if step < 0 {
        let upper = normalize(start.unwrap_or(len - 1)).clamp(-1, len - 1);
        let lower = normalize(end.unwrap_or(-len - 1)).clamp(-1, len - 1);
        lower < index && index <= upper && (upper - index) % -step == 0
    } else {
        false
    }
}

/// HMAC-SHA-256 of `message` under `key`.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_same_value_gets_the_same_placeholder_in_input_and_output() {
        let mut redactor = Redactor::new(
            &["$.payload.customer.email".into(), "$.payload.phones".into()],
            b"k",
        )
        .unwrap();
        let mut input = json!({"id": "1", "payload": {"customer": {"email": "ann@shop.test"}, "phones": ["+1 555", 42], "sku": "A"}});
        redactor.event(&mut input);
        let email = input["payload"]["customer"]["email"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            email.starts_with("redacted-") && email.ends_with("@example.invalid"),
            "{email}"
        );
        assert_eq!(input["payload"]["sku"], "A");
        assert!(
            input["payload"]["phones"][0]
                .as_str()
                .unwrap()
                .starts_with("redacted-")
        );
        assert!(input["payload"]["phones"][1].is_number());
        assert_ne!(input["payload"]["phones"][1], 42);

        // The output holds the placeholder already (it was made from the
        // redacted input): left alone. An original is replaced the same way.
        let mut output = json!({"events": [
            {"payload": {"customer": {"email": email}}},
            {"payload": {"customer": {"email": "ann@shop.test"}}},
        ]});
        redactor.outcome(&mut output);
        assert_eq!(
            output["events"][0]["payload"]["customer"]["email"],
            email.as_str()
        );
        assert_eq!(
            output["events"][1]["payload"]["customer"]["email"],
            email.as_str()
        );

        // The same key gives the same placeholder in a new recording; another key another.
        let again = |key: &[u8]| {
            let mut redactor = Redactor::new(&["$.e".into()], key).unwrap();
            let mut event = json!({"e": "ann@shop.test"});
            redactor.event(&mut event);
            event["e"].clone()
        };
        assert_eq!(again(b"k"), email.as_str());
        assert_ne!(again(b"other"), email.as_str());
    }

    #[test]
    fn a_bad_path_is_named() {
        let err = Redactor::new(&["$.[".into()], b"k").err().unwrap();
        assert!(err.to_string().starts_with("`$.[` is not a JSONPath"), "{err}");
    }

    #[test]
    fn a_filter_or_too_many_paths_are_refused_by_name() {
        let err = Redactor::new(&["$.payload[?@.secret]".into()], b"k")
            .err()
            .unwrap();
        assert!(matches!(err, RedactError::Filter { ref path } if path == "$.payload[?@.secret]"));
        let many = vec!["$.a".to_string(); MAX_PATHS + 1];
        assert!(matches!(
            Redactor::new(&many, b"k").err().unwrap(),
            RedactError::TooMany
        ));
        let long = format!("$.{}", "a".repeat(MAX_PATH_BYTES));
        assert!(matches!(
            Redactor::new(&[long], b"k").err().unwrap(),
            RedactError::TooMany
        ));
        let names: Vec<String> = (0..=MAX_SELECTORS).map(|n| format!("'n{n}'")).collect();
        let wide = format!("$[{}]", names.join(","));
        assert!(matches!(
            Redactor::new(&[wide], b"k").err().unwrap(),
            RedactError::TooMany
        ));
        let key = vec![7u8; MAX_KEY_BYTES + 1];
        assert!(matches!(
            Redactor::new(&["$.a".into()], &key).err().unwrap(),
            RedactError::KeyTooLong
        ));
    }

    #[test]
    fn names_indexes_slices_wildcards_and_descendants_select_as_rfc_9535_says() {
        let mut redactor = Redactor::new(
            &[
                "$.a[-1]".into(),
                "$.b[1:4:2]".into(),
                "$..email".into(),
                "$.c.*".into(),
                "$.d['x','y']".into(),
            ],
            b"k",
        )
        .unwrap();
        let mut event = json!({
            "a": [1, 2, 3],
            "b": [0, 1, 2, 3, 4],
            "deep": {"list": [{"email": "a@b.c"}], "email": "d@e.f"},
            "c": {"p": "q", "r": [7]},
            "d": {"x": "1", "y": "2", "z": "3"},
        });
        redactor.event(&mut event);
        let redacted = |v: &Value| v.as_str().is_some_and(|s| s.starts_with("redacted-")) || (v.is_number());
        assert_eq!(event["a"][0], 1);
        assert_ne!(event["a"][2], 3);
        assert_eq!(event["b"][0], 0);
        assert_ne!(event["b"][1], 1);
        assert_eq!(event["b"][2], 2);
        assert_ne!(event["b"][3], 3);
        assert_eq!(event["b"][4], 4);
        assert!(redacted(&event["deep"]["list"][0]["email"]));
        assert!(redacted(&event["deep"]["email"]));
        assert!(redacted(&event["c"]["p"]));
        assert_ne!(event["c"]["r"][0], 7);
        assert!(redacted(&event["d"]["x"]) && redacted(&event["d"]["y"]));
        assert_eq!(event["d"]["z"], "3");
    }

    /// The hardening issue's measured case: `$..*` six times over a
    /// 60-level payload took a sidecar past 1 GB. Here it stays small.
    #[test]
    fn nested_descendants_over_a_deep_payload_stay_within_memory() {
        let mut payload = json!({"leaf": "x"});
        for level in 0..60 {
            payload = json!({"a": payload, "b": [level, {"c": "y"}], "d": "z"});
        }
        let mut event = json!({"id": "1", "payload": payload});
        let mut redactor = Redactor::new(&["$..*..*..*..*..*..*".into()], b"k").unwrap();
        redactor.event(&mut event);
        assert_eq!(event["id"], "1");
        let peak = peak_rss_bytes();
        assert!(peak < 256 << 20, "peak memory {peak} bytes");
    }

    /// This process's peak resident memory (nextest runs each test in its own process).
    fn peak_rss_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

#[cfg(test)]
mod prop_tests {
    use jsonpath_rust::JsonPath;
    use jsonpath_rust::query::queryable::Queryable;
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i32>().prop_map(Value::from),
            "[a-z@]{0,5}".prop_map(Value::from),
            Just(Value::Null)
        ];
        leaf.prop_recursive(8, 96, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[abc]", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn path() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            "[abc]".prop_map(|k| format!(".{k}")),
            "[abc]".prop_map(|k| format!("..{k}")),
            Just(".*".to_string()),
            Just("..*".to_string()),
            (-3i32..3).prop_map(|i| format!("[{i}]")),
            (0i32..3, 0i32..4).prop_map(|(a, b)| format!("[{a}:{b}]")),
            Just("[::-1]".to_string()),
            Just("['a','c']".to_string()),
        ];
        prop::collection::vec(segment, 1..5).prop_map(|segments| format!("${}", segments.concat()))
    }

    proptest! {
        /// On inputs small enough for it, redaction selects exactly what
        /// jsonpath-rust's own evaluation selects, and its output stays
        /// within a fixed size per leaf of the input.
        #[test]
        fn prop_redaction_matches_the_library_and_is_bounded(event in json(), path in path()) {
            let mut ours = event.clone();
            let mut redactor = Redactor::new(std::slice::from_ref(&path), b"k").unwrap();
            redactor.event(&mut ours);

            let mut theirs = event.clone();
            let mut reference = Redactor::new(&[], b"k").unwrap();
            for at in event.query_only_path(&path).unwrap() {
                if let Some(value) = theirs.reference_mut(at) {
                    reference.value(value);
                }
            }
            prop_assert_eq!(&ours, &theirs, "{}", path);

            fn leaves(v: &Value) -> usize {
                match v {
                    Value::Array(items) => items.iter().map(leaves).sum(),
                    Value::Object(members) => members.values().map(leaves).sum(),
                    _ => 1,
                }
            }
            prop_assert!(ours.to_string().len() <= event.to_string().len() + 48 * leaves(&event));
        }
    }
}
