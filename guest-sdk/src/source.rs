//! Building blocks for source adapters: take the fields a platform's
//! payload has, one by one, and keep whatever is left in `extra`, so the
//! canonical event loses nothing the source sent.
//!
//! ```
//! use serde_json::json;
//! use sluice_guest::JsonPath;
//! use sluice_guest::source::Fields;
//!
//! let mut fields = Fields::new(json!({"id": 788032119674292922u64, "title": "Tee", "vendor": "Acme"}), JsonPath::root()).unwrap();
//! assert_eq!(fields.take_id("id").unwrap().as_deref(), Some("788032119674292922"));
//! assert_eq!(fields.take_str("title").unwrap().as_deref(), Some("Tee"));
//! assert_eq!(fields.into_extra()["vendor"], "Acme");
//! ```

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::money::decimal_from_json;
use crate::path::JsonPath;
use crate::{Event, EventKind, InitError, InventoryEvent, Outcome, Product, Transform, Violation};

/// What a source adapter made of one payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Adapted<T> {
    /// One canonical record; the event keeps its id.
    One(T),
    /// Several records (variants, source items), each with a stable id
    /// suffix: the events get ids `<input id>#<suffix>`.
    Many(Vec<(String, T)>),
    /// Nothing to send, for this reason.
    Skip(String),
}

/// A platform adapter: turns the platform's own payloads into the canonical
/// model. Wrap it in [`Source`] to make it a transform; the wrapper parses
/// payloads, routes by event kind and turns errors into rejections.
pub trait SourceAdapter: Sized + 'static {
    /// Builds the adapter from the validated store settings.
    fn new(cfg: SourceConfig) -> Self;

    /// Maps a `product` event's payload.
    fn products(&self, payload: Value) -> Result<Adapted<Product>, Violation>;

    /// Maps an `inventory` event's payload; by default such events are
    /// dropped, for platforms whose adapter has no inventory support.
    fn inventory(&self, payload: Value) -> Result<Adapted<InventoryEvent>, Violation> {
        let _ = payload;
        Ok(Adapted::Skip(
            "this source adapter does not map inventory events".into(),
        ))
    }
}

/// The transform made from a [`SourceAdapter`]: `export_transform!(Source<MyAdapter>)`.
pub struct Source<A>(A);

impl<A: SourceAdapter> Transform for Source<A> {
    type Config = SourceConfig;

    fn init(cfg: SourceConfig) -> Result<Self, InitError> {
        cfg.validate()?;
        Ok(Source(A::new(cfg)))
    }

    fn event(&mut self, event: Event) -> Outcome {
        let payload = match event.payload_as::<Value>() {
            Ok(payload) => payload,
            Err(violation) => return Outcome::Reject(vec![violation]),
        };
        let result = match event.kind {
            EventKind::Product => self
                .0
                .products(payload)
                .map(|adapted| adapted.into_outcome(&event, EventKind::Product)),
            EventKind::Inventory => self
                .0
                .inventory(payload)
                .map(|adapted| adapted.into_outcome(&event, EventKind::Inventory)),
            _ => Ok(Outcome::pass(&event)),
        };
        result.unwrap_or_else(|violation| Outcome::Reject(vec![violation]))
    }
}

impl<T: Serialize> Adapted<T> {
    fn into_outcome(self, event: &Event, kind: EventKind) -> Outcome {
        match self {
            Adapted::One(record) => Outcome::emit(event, &record),
            Adapted::Many(records) => Outcome::emit_each(event, kind, records),
            Adapted::Skip(reason) => Outcome::skip(reason),
        }
    }
}

/// Store settings every source adapter accepts: what the platform's bare
/// numbers mean.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SourceConfig {
    /// The store's currency (ISO 4217), for platforms whose prices carry none.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// The store's weight unit, for platforms whose weights carry none.
    #[serde(default)]
    pub weight_unit: Option<String>,
    /// The store's dimension unit, for platforms whose dimensions carry none.
    #[serde(default)]
    pub dimension_unit: Option<String>,
}

fn default_currency() -> String {
    "USD".into()
}

impl SourceConfig {
    /// Checks the units, naming the bad field.
    pub fn validate(&self) -> Result<(), crate::InitError> {
        for (field, unit) in [
            ("weight-unit", &self.weight_unit),
            ("dimension-unit", &self.dimension_unit),
        ] {
            if let Some(unit) = unit {
                crate::units::Unit::parse(unit).map_err(|err| format!("config `{field}`: {err}"))?;
            }
        }
        Ok(())
    }

    /// The weight unit, or the platform's default.
    pub fn weight_unit_or(&self, default: &str) -> String {
        self.weight_unit.clone().unwrap_or_else(|| default.to_string())
    }

    /// The dimension unit, or the platform's default.
    pub fn dimension_unit_or(&self, default: &str) -> String {
        self.dimension_unit.clone().unwrap_or_else(|| default.to_string())
    }
}

/// An object from a source payload, consumed field by field.
#[derive(Debug, Clone)]
pub struct Fields {
    map: Map<String, Value>,
    path: JsonPath,
}

impl Fields {
    /// Wraps `value`, which must be an object; `path` is where it sits in the payload.
    pub fn new(value: Value, path: JsonPath) -> Result<Self, Violation> {
        match value {
            Value::Object(map) => Ok(Self { map, path }),
            other => Err(Violation::new(
                &path,
                "invalid-type",
                format!("expected an object, found {}", kind_of(&other)),
            )),
        }
    }

    /// Where field `key` sits in the payload.
    pub fn path(&self, key: &str) -> JsonPath {
        self.path.key(key)
    }

    /// Whether the field is present (even if null).
    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// A peek at a field without taking it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// Takes a field; `null` counts as missing.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    /// Takes a text field; `""` counts as missing.
    pub fn take_str(&mut self, key: &str) -> Result<Option<String>, Violation> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong(key, "text", &other)),
        }
    }

    /// Takes an id, a number or a text, as an exact string (64-bit ids are
    /// never rounded).
    pub fn take_id(&mut self, key: &str) -> Result<Option<String>, Violation> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(self.wrong(key, "an id", &other)),
        }
    }

    /// Takes a number or numeric text as an exact decimal; `""` counts as missing.
    pub fn take_decimal(&mut self, key: &str) -> Result<Option<Decimal>, Violation> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(value) => decimal_from_json(&value)
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a number", &value)),
        }
    }

    /// Takes a nested object.
    pub fn take_object(&mut self, key: &str) -> Result<Option<Fields>, Violation> {
        let path = self.path(key);
        self.take(key).map(|value| Fields::new(value, path)).transpose()
    }

    /// Takes an array (missing counts as empty), with each element's path.
    pub fn take_array(&mut self, key: &str) -> Result<Vec<(Value, JsonPath)>, Violation> {
        let path = self.path(key);
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (v, path.index(i)))
                .collect()),
            Some(other) => Err(self.wrong(key, "an array", &other)),
        }
    }

    /// The fields not taken so far, to put something back.
    pub fn rest_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.map
    }

    /// Everything not taken, for the canonical `extra` map.
    pub fn into_extra(self) -> Map<String, Value> {
        self.map
    }

    fn wrong(&self, key: &str, expected: &str, found: &Value) -> Violation {
        Violation::new(
            &self.path(key),
            "invalid-type",
            format!("`{key}` must be {expected}, found {}", kind_of(found)),
        )
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Outcome {
    /// Emits one event per child, all of `kind`, with ids `<input id>#<suffix>`:
    /// stable across retries, so a fan-out is idempotent downstream.
    pub fn emit_each<T: Serialize>(input: &Event, kind: EventKind, children: Vec<(String, T)>) -> Outcome {
        Outcome::Emit(
            children
                .into_iter()
                .map(|(suffix, payload)| {
                    let mut event = input.with_payload(&payload);
                    event.id = format!("{}#{suffix}", input.id);
                    event.kind = kind.clone();
                    event
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn wrong_types_are_violations_with_the_path() {
        let mut fields = Fields::new(json!({"variants": [{"price": true}]}), JsonPath::root()).unwrap();
        let (variant, path) = fields.take_array("variants").unwrap().remove(0);
        let mut variant = Fields::new(variant, path).unwrap();
        let violation = variant.take_decimal("price").unwrap_err();
        assert_eq!(violation.path, "$['variants'][0]['price']");
        assert_eq!(violation.message, "`price` must be a number, found a boolean");
    }

    #[test]
    fn empty_strings_and_nulls_count_as_missing_and_are_not_kept() {
        let mut fields = Fields::new(
            json!({"sku": "", "weight": null, "price": "21.99"}),
            JsonPath::root(),
        )
        .unwrap();
        assert_eq!(fields.take_str("sku").unwrap(), None);
        assert_eq!(fields.take_decimal("weight").unwrap(), None);
        assert_eq!(
            fields.take_decimal("price").unwrap().unwrap().to_string(),
            "21.99"
        );
        assert!(fields.into_extra().is_empty());
    }
}
