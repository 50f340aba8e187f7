//! Declarative mapping: a JSON document of rules turns one JSON shape into
//! another, so a new destination is a new mapping file, not new code.
//!
//! Each rule sets one `target` field (dotted, `attributes.brand`) from a
//! `source` RFC 9535 JSONPath, through a chain of conversions, optionally
//! only `when` a filter holds, and may be `required`. Paths are compiled
//! once, when the mapping is built, and run on every event.
//!
//! ```
//! use sluice_guest::mapping::Mapping;
//! let mapping = Mapping::from_json(r#"{
//!   "rules": [
//!     {"target": "sku", "source": "$.sku", "required": true},
//!     {"target": "title", "source": "$.name", "convert": [{"op": "truncate", "max": 10}]},
//!     {"target": "weight_kg", "source": "$.weight", "convert": [{"op": "unit", "from": "lb", "to": "kg"}, {"op": "round", "places": 2}]}
//!   ]
//! }"#).unwrap();
//! let out = mapping.apply(&serde_json::json!({"sku": "A1", "name": "A very long name", "weight": 2})).unwrap();
//! assert_eq!(out, serde_json::json!({"sku": "A1", "title": "A very lo…", "weight_kg": 0.91}));
//! ```

use std::collections::BTreeMap;
use std::fmt;

use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::path::JsonPath;
use crate::{Violation, text, units};

/// A mapping as written by a tenant (the transform's config).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MappingSpec {
    /// Lookup tables by name, for the `lookup` conversion.
    #[serde(default)]
    pub tables: BTreeMap<String, Map<String, Value>>,
    /// Conditions under which an event is dropped instead of mapped.
    #[serde(default)]
    pub drop: Vec<DropSpec>,
    /// The rules, applied in order.
    pub rules: Vec<RuleSpec>,
}

/// Drop the event when `when` holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DropSpec {
    /// An RFC 9535 filter expression on the input (`@.status != 'publish'`).
    pub when: String,
    /// Why, for the operator.
    pub reason: String,
}

/// One rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RuleSpec {
    /// The output field, dotted for nesting (`attributes.brand`).
    pub target: String,
    /// RFC 9535 JSONPath of the input value; one match gives that value,
    /// several give an array. Leave out with `const`.
    #[serde(default)]
    pub source: Option<String>,
    /// Conversions, applied in order.
    #[serde(default)]
    pub convert: Vec<Conversion>,
    /// Reject the event when the result is missing or null.
    #[serde(default)]
    pub required: bool,
    /// An RFC 9535 filter expression on the input (`@.status == 1`); the rule
    /// is skipped when it does not hold.
    #[serde(default)]
    pub when: Option<String>,
}

/// One conversion step, written as `{"op": "<name>", …}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Conversion {
    /// Round a number to `places` decimals (half away from zero).
    Round {
        /// Decimal places to keep.
        places: u32,
    },
    /// Keep a number within `min` and `max`.
    Clamp {
        /// Lower bound.
        #[serde(default)]
        min: Option<Decimal>,
        /// Upper bound.
        #[serde(default)]
        max: Option<Decimal>,
    },
    /// Convert a number between units (see [`crate::units`]).
    Unit {
        /// The input's unit.
        from: String,
        /// The wanted unit.
        to: String,
    },
    /// Cut text to `max` characters, ending in "…".
    Truncate {
        /// Longest result, in characters.
        max: usize,
    },
    /// HTML to plain text.
    StripHtml,
    /// Change letter case.
    Case {
        /// `upper`, `lower` or `title`.
        to: LetterCase,
    },
    /// Use `value` when the input is missing or null.
    Default {
        /// The fallback.
        value: Value,
    },
    /// Always `value`, whatever the input.
    Const {
        /// The value.
        value: Value,
    },
    /// Replace the input by its entry in a table of the config.
    Lookup {
        /// The table's name under `tables`.
        table: String,
        /// Used when the input is not in the table; without it, a missing
        /// entry is a violation.
        #[serde(default)]
        fallback: Option<Value>,
    },
}

/// Letter cases for the `case` conversion.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LetterCase {
    /// ALL CAPITALS.
    Upper,
    /// all small.
    Lower,
    /// First Letter Of Each Word.
    Title,
}

/// A mapping that cannot be used, naming the rule and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingError(pub String);

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MappingError {}

/// A compiled RFC 9535 query, parsed once and run many times.
#[derive(Debug, Clone)]
pub struct CompiledPath {
    text: String,
    query: JpQuery,
}

impl CompiledPath {
    /// Parses a JSONPath query.
    pub fn compile(text: &str) -> Result<Self, String> {
        let query = parse_json_path(text).map_err(|err| err.to_string())?;
        Ok(Self {
            text: text.to_string(),
            query,
        })
    }

    /// The query as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Every node the query selects, with its normalized path, in document order.
    pub fn select<'a>(&self, document: &'a Value) -> Vec<(&'a Value, String)> {
        match js_path_process(&self.query, document) {
            Ok(found) => found.into_iter().map(|r| (r.val, r.path)).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    target: Vec<String>,
    source: Option<CompiledPath>,
    convert: Vec<Conversion>,
    required: bool,
    when: Option<CompiledPath>,
}

/// A compiled mapping, ready to run on many documents.
#[derive(Debug, Clone)]
pub struct Mapping {
    tables: BTreeMap<String, Map<String, Value>>,
    drops: Vec<(CompiledPath, String)>,
    rules: Vec<Rule>,
}

impl Mapping {
    /// Parses and compiles a mapping from its JSON text.
    pub fn from_json(text: &str) -> Result<Self, MappingError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let spec: MappingSpec = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            MappingError(format!(
                "invalid mapping at {}: {}",
                JsonPath::from_serde(err.path()),
                err.into_inner()
            ))
        })?;
        Self::compile(spec)
    }

    /// Compiles every rule's paths, checking tables and targets.
    pub fn compile(spec: MappingSpec) -> Result<Self, MappingError> {
        let mut rules = Vec::with_capacity(spec.rules.len());
        for (index, rule) in spec.rules.into_iter().enumerate() {
            let at = |field: &str, why: String| {
                MappingError(format!(
                    "rule {index} (target `{}`), field `{field}`: {why}",
                    rule.target
                ))
            };
            let target: Vec<String> = rule.target.split('.').map(str::to_string).collect();
            if target.iter().any(String::is_empty) {
                return Err(at(
                    "target",
                    "must be dotted names, like `attributes.brand`".into(),
                ));
            }
            let source = match &rule.source {
                Some(text) => Some(CompiledPath::compile(text).map_err(|e| at("source", e))?),
                None if rule
                    .convert
                    .iter()
                    .any(|c| matches!(c, Conversion::Const { .. } | Conversion::Default { .. })) =>
                {
                    None
                }
                None => {
                    return Err(at(
                        "source",
                        "is required unless a `const` or `default` conversion gives the value".into(),
                    ));
                }
            };
            let when = match &rule.when {
                Some(expr) => Some(CompiledPath::compile(&format!("$[?{expr}]")).map_err(|e| at("when", e))?),
                None => None,
            };
            for conversion in &rule.convert {
                match conversion {
                    Conversion::Lookup { table, .. } if !spec.tables.contains_key(table) => {
                        return Err(at(
                            "convert",
                            format!("lookup table `{table}` is not defined under `tables`"),
                        ));
                    }
                    Conversion::Unit { from, to } => {
                        units::convert(Decimal::ONE, from, to).map_err(|e| at("convert", e.to_string()))?;
                    }
                    _ => {}
                }
            }
            rules.push(Rule {
                target,
                source,
                convert: rule.convert,
                required: rule.required,
                when,
            });
        }
        let mut drops = Vec::with_capacity(spec.drop.len());
        for (index, drop) in spec.drop.into_iter().enumerate() {
            let filter = CompiledPath::compile(&format!("$[?{}]", drop.when))
                .map_err(|e| MappingError(format!("drop {index}, field `when`: {e}")))?;
            drops.push((filter, drop.reason));
        }
        Ok(Self {
            tables: spec.tables,
            drops,
            rules,
        })
    }

    /// The reason to drop `document`, when a `drop` condition holds.
    pub fn drop_reason(&self, document: &Value) -> Option<&str> {
        if self.drops.is_empty() {
            return None;
        }
        let wrapper = Value::Array(vec![document.clone()]);
        self.drops
            .iter()
            .find(|(filter, _)| !filter.select(&wrapper).is_empty())
            .map(|(_, reason)| reason.as_str())
    }

    /// Maps `document`. Returns the new document, or every violation found
    /// (missing required fields, values a conversion cannot take).
    pub fn apply(&self, document: &Value) -> Result<Value, Vec<Violation>> {
        let mut out = Map::new();
        let mut violations = Vec::new();
        let mut wrapped: Option<Value> = None;
        for rule in &self.rules {
            if let Some(when) = &rule.when {
                let wrapper = wrapped.get_or_insert_with(|| Value::Array(vec![document.clone()]));
                if when.select(wrapper).is_empty() {
                    continue;
                }
            }
            let (mut value, path) = match &rule.source {
                Some(source) => {
                    let found = source.select(document);
                    match found.len() {
                        0 => (None, singular_path(source.as_str())),
                        1 => (Some(found[0].0.clone()), found[0].1.clone()),
                        _ => (
                            Some(Value::Array(found.iter().map(|(v, _)| (*v).clone()).collect())),
                            source.as_str().to_string(),
                        ),
                    }
                }
                None => (None, "$".to_string()),
            };
            let mut failed = false;
            for conversion in &rule.convert {
                match self.convert(conversion, value.take()) {
                    Ok(next) => value = next,
                    Err(message) => {
                        violations.push(Violation {
                            path: path.clone(),
                            code: "invalid-value".into(),
                            message: format!("{}: {message}", rule.target.join(".")),
                        });
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                continue;
            }
            match value {
                Some(Value::Null) | None if rule.required => violations.push(Violation {
                    path,
                    code: "required".into(),
                    message: format!("`{}` is required", rule.target.join(".")),
                }),
                None => {}
                Some(value) => insert(&mut out, &rule.target, value),
            }
        }
        if violations.is_empty() {
            Ok(Value::Object(out))
        } else {
            Err(violations)
        }
    }

    fn convert(&self, conversion: &Conversion, value: Option<Value>) -> Result<Option<Value>, String> {
        let value = match (conversion, value) {
            (Conversion::Const { value }, _) => return Ok(Some(value.clone())),
            (Conversion::Default { value }, None | Some(Value::Null)) => return Ok(Some(value.clone())),
            (_, None) => return Ok(None),
            (_, Some(value)) => value,
        };
        Ok(Some(match conversion {
            Conversion::Const { .. } | Conversion::Default { .. } => value,
            Conversion::Round { places } => {
                crate::money::json_number(crate::money::round_to(decimal(&value)?, *places))
            }
            Conversion::Clamp { min, max } => {
                let mut n = decimal(&value)?;
                if let Some(min) = min {
                    n = n.max(*min);
                }
                if let Some(max) = max {
                    n = n.min(*max);
                }
                crate::money::json_number(n)
            }
            Conversion::Unit { from, to } => crate::money::json_number(
                units::convert(decimal(&value)?, from, to).map_err(|e| e.to_string())?,
            ),
            Conversion::Truncate { max } => Value::String(text::truncate(string(&value)?, *max)),
            Conversion::StripHtml => Value::String(text::strip_html(string(&value)?)),
            Conversion::Case { to } => {
                let s = string(&value)?;
                Value::String(match to {
                    LetterCase::Upper => s.to_uppercase(),
                    LetterCase::Lower => s.to_lowercase(),
                    LetterCase::Title => title_case(s),
                })
            }
            Conversion::Lookup { table, fallback } => {
                let key = match &value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                match (self.tables.get(table).and_then(|t| t.get(&key)), fallback) {
                    (Some(found), _) => found.clone(),
                    (None, Some(fallback)) => fallback.clone(),
                    (None, None) => return Err(format!("`{key}` is not in lookup table `{table}`")),
                }
            }
        }))
    }
}

/// A number or numeric string as an exact decimal.
fn decimal(value: &Value) -> Result<Decimal, String> {
    crate::money::decimal_from_json(value).ok_or_else(|| format!("expected a number, found {value}"))
}

fn string(value: &Value) -> Result<&str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("expected text, found {value}"))
}

fn title_case(s: &str) -> String {
    s.split(' ')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first
                    .to_uppercase()
                    .chain(chars.flat_map(char::to_lowercase))
                    .collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets `out[a][b]…` = value, creating objects on the way.
fn insert(out: &mut Map<String, Value>, target: &[String], value: Value) {
    let (last, parents) = target.split_last().expect("targets are never empty");
    let mut node = out;
    for key in parents {
        let entry = node
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        node = entry.as_object_mut().expect("just made an object");
    }
    node.insert(last.clone(), value);
}

/// The normalized path of a simple query (`$.a.b[0]`, `$['a']`), for
/// pointing at a missing field; other queries are shown as written.
fn singular_path(query: &str) -> String {
    let mut path = JsonPath::root();
    let Some(mut rest) = query.strip_prefix('$') else {
        return query.to_string();
    };
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let name = &after[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-') {
                return query.to_string();
            }
            path = path.key(name);
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix("['") {
            let Some(end) = after.find("']") else {
                return query.to_string();
            };
            path = path.key(&after[..end]);
            rest = &after[end + 2..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let Some(end) = after.find(']') else {
                return query.to_string();
            };
            let Ok(index) = after[..end].parse::<usize>() else {
                return query.to_string();
            };
            path = path.index(index);
            rest = &after[end + 1..];
        } else {
            return query.to_string();
        }
    }
    path.to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn mapping(rules: Value) -> Mapping {
        Mapping::from_json(&rules.to_string()).unwrap()
    }

    #[test]
    fn missing_required_fields_are_violations_with_normalized_paths() {
        let m = mapping(json!({"rules": [
            {"target": "sku", "source": "$.sku", "required": true},
            {"target": "brand", "source": "$.attrs['brand name']", "required": true}
        ]}));
        let violations = m.apply(&json!({})).unwrap_err();
        let paths: Vec<_> = violations.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(paths, ["$['sku']", "$['attrs']['brand name']"]);
        assert_eq!(violations[0].message, "`sku` is required");
    }

    #[test]
    fn conversions_chain_and_lookups_use_tables() {
        let m = mapping(json!({
            "tables": {"colors": {"52": "Red", "53": "Blue"}},
            "rules": [
                {"target": "attributes.color", "source": "$.color", "convert": [{"op": "lookup", "table": "colors"}, {"op": "case", "to": "upper"}]},
                {"target": "qty", "source": "$.qty", "convert": [{"op": "clamp", "min": 0}]},
                {"target": "length_cm", "source": "$.len", "convert": [{"op": "unit", "from": "in", "to": "cm"}]},
                {"target": "desc", "source": "$.html", "convert": [{"op": "strip-html"}]},
                {"target": "channel", "convert": [{"op": "const", "value": "b2b"}]},
                {"target": "brand", "source": "$.brand", "convert": [{"op": "default", "value": "Generic"}]}
            ]
        }));
        let out = m
            .apply(&json!({"color": "52", "qty": -4, "len": "10", "html": "<p>a &amp; b</p>"}))
            .unwrap();
        assert_eq!(
            out,
            json!({
                "attributes": {"color": "RED"}, "qty": 0, "length_cm": 25.4, "desc": "a & b", "channel": "b2b", "brand": "Generic"
            })
        );
    }

    #[test]
    fn bad_values_are_violations_at_the_node_path() {
        let m = mapping(
            json!({"rules": [{"target": "w", "source": "$.items[1].w", "convert": [{"op": "round", "places": 1}]}]}),
        );
        let violations = m
            .apply(&json!({"items": [{"w": 1}, {"w": "heavy"}]}))
            .unwrap_err();
        assert_eq!(violations[0].path, "$['items'][1]['w']");
        assert_eq!(violations[0].code, "invalid-value");
    }

    #[test]
    fn when_conditions_select_rules() {
        let m = mapping(json!({"rules": [
            {"target": "kind", "convert": [{"op": "const", "value": "simple"}], "when": "@.type_id == 'simple'"},
            {"target": "kind", "convert": [{"op": "const", "value": "parent"}], "when": "@.type_id == 'configurable'"}
        ]}));
        assert_eq!(
            m.apply(&json!({"type_id": "configurable"})).unwrap(),
            json!({"kind": "parent"})
        );
    }

    #[test]
    fn config_errors_name_the_rule_and_the_field() {
        let err = Mapping::from_json(
            r#"{"rules": [{"target": "a", "source": "$.a"}, {"target": "b", "source": "$[?"}]}"#,
        )
        .unwrap_err();
        assert!(err.0.starts_with("rule 1 (target `b`), field `source`:"), "{err}");
        let err = Mapping::from_json(r#"{"rules": [{"target": "a", "source": "$.a", "convert": [{"op": "lookup", "table": "nope"}]}]}"#).unwrap_err();
        assert_eq!(
            err.0,
            "rule 0 (target `a`), field `convert`: lookup table `nope` is not defined under `tables`"
        );
        let err = Mapping::from_json(r#"{"rules": [{"target": "a", "source": "$.a", "convert": [{"op": "unit", "from": "lb", "to": "parsec"}]}]}"#).unwrap_err();
        assert_eq!(
            err.0,
            "rule 0 (target `a`), field `convert`: unknown unit `parsec`"
        );
        let err = Mapping::from_json(r#"{"rules": [{"target": "a", "sorce": "$.a"}]}"#).unwrap_err();
        assert!(
            err.0
                .starts_with("invalid mapping at $['rules'][0]['sorce']: unknown field `sorce`"),
            "{err}"
        );
    }
}
