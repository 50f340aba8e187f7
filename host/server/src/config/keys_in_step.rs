//! Keeps three lists of `sluice.toml` keys in step: the keys the parser
//! accepts (read off the serde types themselves), the configuration
//! reference, and the example config, which says it shows every key.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::*;
use sluice_engine::Limits;

/// A deserializer that only records the field names a struct asks for.
struct FieldProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("fields recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

fn fields_of<T: for<'de> Deserialize<'de>>() -> BTreeSet<String> {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldProbe(&mut fields));
    assert!(
        !fields.is_empty(),
        "{} is not a struct",
        std::any::type_name::<T>()
    );
    fields.iter().map(|field| field.to_string()).collect()
}

/// Every table of `sluice.toml` (`""` is the top level) and the keys the
/// parser accepts in it. A key that names a table is listed as that table.
fn accepted() -> BTreeMap<&'static str, BTreeSet<String>> {
    BTreeMap::from([
        ("", fields_of::<ServerConfig>()),
        ("limits", fields_of::<Limits>()),
        ("retry", fields_of::<RetryPolicy>()),
        ("state-quota", fields_of::<sluice_engine::state::StateQuota>()),
        ("stories", fields_of::<crate::observe::story::StoriesConfig>()),
        ("telemetry", fields_of::<crate::observe::trace::TelemetryConfig>()),
        ("tenant", fields_of::<TenantConfig>()),
        ("tenant.limits", fields_of::<Limits>()),
        ("destination", fields_of::<DestinationConfig>()),
        ("destination.retry", fields_of::<RetryPolicy>()),
        ("destination.auth", fields_of::<AuthConfig>()),
        ("destination.sign", fields_of::<SignConfig>()),
        ("channel", fields_of::<ChannelConfig>()),
        ("channel.step", fields_of::<StepSpec>()),
        ("channel.limits", fields_of::<Limits>()),
        ("source", fields_of::<SourceConfig>()),
        ("source.next", fields_of::<NextPageConfig>()),
        ("source.auth", fields_of::<AuthConfig>()),
    ])
}

/// Tables whose keys are another table's (`[tenant.limits]` overrides
/// `[limits]`): they are documented and shown once, as that table.
fn same_keys_as(table: &str) -> Option<&'static str> {
    match table.rsplit_once('.') {
        Some((_, "limits")) => Some("limits"),
        Some((_, "retry")) => Some("retry"),
        Some(("destination", "auth")) => Some("source.auth"),
        _ => None,
    }
}

fn is_table(accepted: &BTreeMap<&str, BTreeSet<String>>, table: &str, key: &str) -> bool {
    let path = if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    };
    accepted.contains_key(path.as_str())
}

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Words in backticks that look like keys (`max-attempts`, `[limits]`),
/// not values (`"60/min"`, `$.sku`, `Authorization`).
fn backticked_keys(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(|word| word.trim_matches(|c| c == '[' || c == ']'))
        .filter(|word| looks_like_key(word))
        .map(str::to_string)
        .collect()
}

fn looks_like_key(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_lowercase())
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
}

/// The reference's key table, per table: a row whose first cell names a
/// table (`[[destination]]`) lists that table's keys and subtables; any
/// other row names top-level keys in its first cell.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(root().join("docs/reference/configuration.md")).unwrap();
    let mut tables: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in text.lines().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').collect();
        let first = cells[1].trim();
        if first.starts_with("`[") {
            let table = first.trim_matches(|c| "`[]".contains(c)).to_string();
            // A subtable's own row (`[source.next]`) is a key of its parent.
            let parent = table
                .rsplit_once('.')
                .map_or("", |(parent, _)| parent)
                .to_string();
            tables.entry(parent).or_default().insert(table.clone());
            tables
                .entry(table)
                .or_default()
                .extend(backticked_keys(&cells[2..].join("|")));
        } else {
            tables
                .entry(String::new())
                .or_default()
                .extend(backticked_keys(first));
        }
    }
    tables
}

/// The example config with its commented-out examples (`# ca-file = …`,
/// `# [[channel.step]]`) taken in, as a table of its keys per table.
fn example() -> BTreeMap<String, BTreeSet<String>> {
    let shown = example_with_comments_taken_in();
    let value: toml::Table = toml::from_str(&shown).expect("the example with its commented examples is TOML");
    let mut tables = BTreeMap::new();
    collect_keys(&mut tables, "", &value);
    tables
}

fn example_with_comments_taken_in() -> String {
    let text = std::fs::read_to_string(root().join("transforms/channels/sluice.toml")).unwrap();
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(key, _)| looks_like_key(key)) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn collect_keys(into: &mut BTreeMap<String, BTreeSet<String>>, table: &str, value: &toml::Table) {
    for (key, child) in value {
        into.entry(table.to_string()).or_default().insert(key.clone());
        let path = if table.is_empty() {
            key.clone()
        } else {
            format!("{table}.{key}")
        };
        let children: Vec<&toml::Table> = match child {
            toml::Value::Table(child) => vec![child],
            toml::Value::Array(items) => items.iter().filter_map(toml::Value::as_table).collect(),
            _ => vec![],
        };
        for child in children {
            collect_keys(into, &path, child);
        }
    }
}

#[test]
fn every_accepted_key_is_documented_and_every_documented_key_is_accepted() {
    let accepted = accepted();
    let documented = documented();
    for (table, keys) in &accepted {
        let doc_table = same_keys_as(table).map(str::to_string).unwrap_or_else(|| {
            if documented.contains_key(*table) {
                table.to_string()
            } else {
                table
                    .rsplit_once('.')
                    .map_or("", |(parent, _)| parent)
                    .to_string()
            }
        });
        let docs = &documented[&doc_table];
        for key in keys {
            let named = if is_table(&accepted, table, key) && !table.is_empty() {
                format!("{table}.{key}")
            } else {
                key.clone()
            };
            assert!(
                docs.contains(&named),
                "`{named}` of [{table}] is missing from docs/reference/configuration.md"
            );
        }
    }
    for (table, keys) in &documented {
        let mut known: BTreeSet<String> = BTreeSet::new();
        for (name, fields) in &accepted {
            let inside = name == table
                || name
                    .strip_prefix(&format!("{table}."))
                    .is_some_and(|rest| !rest.contains('.'));
            if inside {
                known.extend(fields.iter().cloned());
                known.insert(name.to_string());
            }
        }
        // Values the reference names in backticks beside their keys.
        let values = [
            "hold",
            "skip",
            "shopify",
            "woocommerce",
            "square",
            "standard-webhooks",
            "hmac",
            "shared-secret",
            "hex",
            "base64",
            "poll",
            "product",
            "inventory",
            "price",
            "bearer",
            "basic",
            "oauth2",
            "client-credentials",
            "refresh-token",
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "x-signature",
        ];
        for key in keys {
            assert!(
                known.contains(key) || values.contains(&key.as_str()),
                "docs/reference/configuration.md names `{key}` under [{table}], which the parser does not accept"
            );
        }
    }
}

#[test]
fn every_accepted_key_is_in_the_example_config_and_the_example_parses() {
    let accepted = accepted();
    let example = example();
    for (table, keys) in &accepted {
        if same_keys_as(table).is_some() {
            let (parent, name) = table.rsplit_once('.').unwrap();
            assert!(
                example[parent].contains(name),
                "the example config has no [{table}]"
            );
            continue;
        }
        let shown = example.get(*table).cloned().unwrap_or_default();
        // Written by the API when it activates an uploaded module, never by hand.
        let by_api_only = |key: &str| *table == "channel.step" && key == "version";
        for key in keys.iter().filter(|key| !by_api_only(key)) {
            assert!(
                shown.contains(key),
                "the example config lacks `{key}` in [{table}]"
            );
        }
    }
    for (table, keys) in &example {
        let table = same_keys_as(table).unwrap_or(table);
        // A table that is a value (`headers`, a step's `config`) has keys of the tenant's choosing.
        let Some(known) = accepted.get(table) else {
            continue;
        };
        for key in keys {
            assert!(
                known.contains(key),
                "the example config has `{key}` in [{table}], which the parser does not accept"
            );
        }
    }
    let text = std::fs::read_to_string(root().join("transforms/channels/sluice.toml")).unwrap();
    ServerConfig::parse(&text).expect("the example config parses");
    // Its commented-out examples are keys the parser takes, with values it takes.
    let with_comments = example_with_comments_taken_in();
    let de = toml::Deserializer::parse(&with_comments).unwrap();
    serde_path_to_error::deserialize::<_, ServerConfig>(de).expect("the commented examples parse");
}
