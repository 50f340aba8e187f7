//! Sends only what changed: the first record of a key goes out whole; each
//! later one only with the top-level fields whose values differ from the
//! last one sent (and the key). A record equal to the last one is dropped.
//! A record marked discontinued (`active: false`) is delivered as a
//! `DELETE` and its key forgotten.
//!
//! It keeps the last record sent per key in the step's state (contract
//! 0.2), which the host commits with the outcome: a batch that traps, or
//! an event that ends rejected, leaves the state as it was. With a
//! `lookup`, a field is added from a lookup table (SKU to ASIN), and the
//! destination URL's `{param:id}` takes the looked-up value.

use serde_json::{Map, Value};
use sluice_guest::prelude::*;
use sluice_guest::{LogLevel, log};

/// The channel step's configuration.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// The top-level field that names the record (default `sku`).
    #[serde(default = "default_key")]
    pub key: String,
    /// Adds a field from a lookup table.
    #[serde(default)]
    pub lookup: Option<LookupField>,
}

/// A field taken from a lookup table by the record's key.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LookupField {
    /// The table's name in the step's lookups.
    pub table: String,
    /// The field it fills (and the URL parameter it sets).
    pub field: String,
}

fn default_key() -> String {
    "sku".into()
}

/// The transform.
pub struct ChangedFields {
    cfg: Config,
}

impl Transform for ChangedFields {
    type Config = Config;

    fn init(cfg: Config) -> Result<Self, InitError> {
        if cfg.key.is_empty() {
            return Err("config `key` must not be empty".into());
        }
        Ok(Self { cfg })
    }

    fn event(&mut self, event: Event) -> Outcome {
        let root = JsonPath::root();
        let Ok(Value::Object(mut record)) = serde_json::from_str::<Value>(&event.payload) else {
            return Outcome::reject_one(&root, "not-an-object", "the payload must be a JSON object");
        };
        let key = match record.get(&self.cfg.key) {
            Some(Value::String(key)) if !key.is_empty() => key.clone(),
            _ => {
                return Outcome::reject_one(
                    &root.key(self.cfg.key.as_str()),
                    "required",
                    format!("`{}` must be a non-empty string", self.cfg.key),
                );
            }
        };
        let mut looked_up = None;
        if let Some(lookup) = &self.cfg.lookup {
            match lookup::get::<Value>(&lookup.table, &key) {
                Some(value) => {
                    looked_up = value.as_str().map(str::to_string);
                    record.insert(lookup.field.clone(), value);
                }
                None => {
                    return Outcome::reject_one(
                        &root.key(self.cfg.key.as_str()),
                        "unknown-key",
                        format!("`{key}` is not in lookup table `{}`", lookup.table),
                    );
                }
            }
        }
        let state_key = format!("last:{key}");
        if record.get("active") == Some(&Value::Bool(false)) {
            state::delete(&state_key);
            let gone = Map::from_iter([(self.cfg.key.clone(), Value::String(key))]);
            return Outcome::Emit(vec![
                self.hinted(event.with_payload(&gone), looked_up)
                    .deliver_as(Method::Delete),
            ]);
        }
        let last: Option<Map<String, Value>> = state::get_json(&state_key);
        let changed = match &last {
            None => record.clone(),
            Some(last) => {
                let mut changed: Map<String, Value> = record
                    .iter()
                    .filter(|(field, value)| last.get(*field) != Some(*value))
                    .map(|(field, value)| (field.clone(), value.clone()))
                    .collect();
                if changed.is_empty() {
                    return Outcome::skip("nothing changed since the last record sent");
                }
                changed.insert(self.cfg.key.clone(), Value::String(key.clone()));
                changed
            }
        };
        if let Err(err) = state::set_json(&state_key, &record) {
            log(LogLevel::Warn, &format!("cannot remember `{key}`: {err:?}"));
        }
        Outcome::Emit(vec![self.hinted(event.with_payload(&changed), looked_up)])
    }
}

impl ChangedFields {
    /// With a looked-up value, the URL's `{param:FIELD}` is set to it.
    fn hinted(&self, event: Event, looked_up: Option<String>) -> Event {
        match (&self.cfg.lookup, looked_up) {
            (Some(lookup), Some(value)) => event.with_param(&lookup.field, value),
            _ => event,
        }
    }
}

export_transform!(ChangedFields);
