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

use jsonpath_rust::JsonPath;
use jsonpath_rust::query::queryable::Queryable;
use serde_json::Value;
use sha2::Sha256;

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
}

/// Replaces what its paths select; remembers each value's placeholder.
pub struct Redactor {
    paths: Vec<String>,
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
        for path in paths {
            jsonpath_rust::parser::parse_json_path(path).map_err(|err| RedactError::InvalidPath {
                path: path.clone(),
                detail: err.to_string(),
            })?;
        }
        Ok(Self {
            paths: paths.to_vec(),
            key: key.to_vec(),
            given: HashMap::new(),
            placeholders: HashSet::new(),
        })
    }

    /// Redacts what the paths select in one event.
    pub fn event(&mut self, event: &mut Value) {
        for path in self.paths.clone() {
            let Ok(found) = event.query_only_path(&path) else {
                continue;
            };
            for at in found {
                if let Some(value) = event.reference_mut(at) {
                    self.value(value);
                }
            }
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
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
