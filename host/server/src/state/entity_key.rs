//! The entity whose delivery order is kept: a destination's `entity-key`
//! JSONPath applied to each emitted payload.
//!
//! Most keys are a plain chain of member names (`$.sku`, the default). For
//! those only the objects on the way are taken apart: their other values
//! are scanned but not built, and only the value found is parsed. Building
//! every payload as a `serde_json::Value` cost about 5 % of the sidecar's
//! CPU on the durable path. Any other JSONPath is evaluated in full.

use std::collections::HashMap;

use serde_json::Value;
use serde_json::value::RawValue;
use sluice_guest::mapping::CompiledPath;

/// A compiled `entity-key`.
pub struct EntityKey {
    path: CompiledPath,
    /// The member names, when the path is nothing but `.name` steps.
    members: Option<Vec<String>>,
}

impl EntityKey {
    /// Compiles a JSONPath; the error says why it is not one.
    pub fn compile(text: &str) -> Result<Self, String> {
        Ok(Self {
            path: CompiledPath::compile(text)?,
            members: member_chain(text),
        })
    }

    /// The key of `payload`: the first value the path selects, as text
    /// (a string as itself, a number as `serde_json` prints it: `1.5e3`
    /// becomes `1500.0`); `fallback` (the emitted event's id) when it
    /// selects nothing else.
    pub fn of(&self, payload: &RawValue, fallback: &str) -> String {
        let found = match &self.members {
            Some(members) => select_member(payload, members),
            None => serde_json::from_str::<Value>(payload.get())
                .ok()
                .and_then(|document| self.path.select(&document).first().map(|(v, _)| (*v).clone())),
        };
        match found {
            Some(Value::String(text)) => text,
            Some(Value::Number(number)) => number.to_string(),
            _ => fallback.to_string(),
        }
    }
}

/// `$.a.b_c` → `["a", "b_c"]`; `None` for anything else.
fn member_chain(text: &str) -> Option<Vec<String>> {
    let rest = text.strip_prefix('$')?;
    let members: Vec<String> = rest
        .split('.')
        .skip(1)
        .map(|name| {
            let plain = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            plain.then(|| name.to_string())
        })
        .collect::<Option<_>>()?;
    (rest.starts_with('.') && !members.is_empty()).then_some(members)
}

/// Follows `members` down through objects, parsing only the value found.
fn select_member(payload: &RawValue, members: &[String]) -> Option<Value> {
    let mut current = payload;
    for member in members {
        let object: HashMap<String, &RawValue> = serde_json::from_str(current.get()).ok()?;
        current = object.get(member.as_str())?;
    }
    serde_json::from_str(current.get()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).unwrap()
    }

    #[test]
    fn only_plain_member_chains_take_the_short_way() {
        assert_eq!(member_chain("$.sku"), Some(vec!["sku".to_string()]));
        assert_eq!(member_chain("$.a.b_2"), Some(vec!["a".into(), "b_2".into()]));
        for other in [
            "$",
            "$..sku",
            "$['sku']",
            "$.items[0]",
            "$.*",
            "$.a-b",
            "$.1a",
            "sku",
        ] {
            assert_eq!(member_chain(other), None, "{other}");
        }
    }

    #[test]
    fn the_short_way_agrees_with_the_full_jsonpath() {
        let payloads = [
            r#"{"sku":"MS-1","nested":{"deep":[1,2]}}"#,
            r#"{"sku":42}"#,
            r#"{"sku":1.5e3}"#,
            r#"{"sku":null}"#,
            r#"{"sku":{"id":"x"}}"#,
            r#"{"other":"x"}"#,
            r#"{"s\u006bu":"escaped-key","x":"\"quoted\""}"#,
            r#"{"sku":"first","sku":"last"}"#,
            r#"["sku"]"#,
            r#""sku""#,
            r#"{"a":{"b":"inner"},"b":"outer"}"#,
            r#"{"a":"not an object"}"#,
        ];
        for path in ["$.sku", "$.a.b"] {
            let short = EntityKey::compile(path).unwrap();
            assert!(short.members.is_some());
            let full = EntityKey {
                members: None,
                ..EntityKey::compile(path).unwrap()
            };
            for payload in payloads {
                assert_eq!(
                    short.of(&raw(payload), "evt-1"),
                    full.of(&raw(payload), "evt-1"),
                    "{path} on {payload}"
                );
            }
        }
        let key = EntityKey::compile("$.sku").unwrap();
        assert_eq!(key.of(&raw(r#"{"sku":"MS-1"}"#), "evt-1"), "MS-1");
        assert_eq!(key.of(&raw(r#"{"sku":42}"#), "evt-1"), "42");
        assert_eq!(key.of(&raw(r#"{"other":1}"#), "evt-1"), "evt-1");
    }
}
