//! Lookup tables from files (contract 0.2): a step's `lookups` name a JSON
//! or CSV file per table, relative to the pipeline file or `sluice.toml`,
//! loaded with the pipeline and versioned with it.
//!
//! - JSON: one object, key to any JSON value. A key given twice is an
//!   error that names it.
//! - CSV (`.csv`): a header row, then one row per key; the first column is
//!   the key. With two columns the value is the second as a string; with
//!   more, an object of the other columns by header. A BOM, CRLF and
//!   quoted newlines are read as CSV has them; a ragged row, an empty or
//!   repeated key is an error that names its line.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::state::LookupTable;

/// Largest lookup file read, in bytes: a table lives in memory with its
/// pipeline.
pub const MAX_TABLE_BYTES: u64 = 64 << 20;

/// Most bytes a table may take in memory, counted as keys, values and a
/// fixed cost per entry: a CSV with many columns repeats the header names
/// in every row's value, and tiny rows cost more than their bytes.
pub const MAX_DECODED_BYTES: usize = 256 << 20;

/// What one entry costs beyond its key and value (two boxed strings and a
/// hash-table slot), roughly.
const ENTRY_OVERHEAD: usize = 64;

/// Why a lookup file cannot be a table. Names the file by its name as the
/// step gave it, never a server path.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// It cannot be read.
    #[error("lookup table `{table}` (`{file}`): cannot read it: {kind}")]
    Read {
        /// The table's name.
        table: String,
        /// The file as the step names it.
        file: String,
        /// Why.
        kind: std::io::ErrorKind,
    },
    /// It is larger than [`MAX_TABLE_BYTES`].
    #[error("lookup table `{table}` (`{file}`) is over the {MAX_TABLE_BYTES}-byte limit")]
    TooLarge {
        /// The table's name.
        table: String,
        /// The file as the step names it.
        file: String,
    },
    /// It is not a table.
    #[error("lookup table `{table}` (`{file}`): {detail}")]
    Invalid {
        /// The table's name.
        table: String,
        /// The file as the step names it.
        file: String,
        /// What is wrong, and where.
        detail: String,
    },
}

/// Loads table `table` from `file`, relative to `base`.
pub fn load_table(table: &str, file: &str, base: &Path) -> Result<LookupTable, LookupError> {
    let read_err = |err: std::io::Error| LookupError::Read {
        table: table.into(),
        file: file.into(),
        kind: err.kind(),
    };
    let relative = Path::new(file);
    if relative.is_absolute()
        || relative
            .components()
            .any(|part| !matches!(part, std::path::Component::Normal(_)))
    {
        return Err(LookupError::Invalid {
            table: table.into(),
            file: file.into(),
            detail: "the file must be named by a relative path inside the folder, without `..`".into(),
        });
    }
    let opened = std::fs::File::open(base.join(relative)).map_err(read_err)?;
    let mut bytes = Vec::new();
    opened
        .take(MAX_TABLE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_TABLE_BYTES {
        return Err(LookupError::TooLarge {
            table: table.into(),
            file: file.into(),
        });
    }
    let invalid = |detail: String| LookupError::Invalid {
        table: table.into(),
        file: file.into(),
        detail,
    };
    let format = if file.to_ascii_lowercase().ends_with(".csv") {
        TableFormat::Csv
    } else {
        TableFormat::Json
    };
    parse_table(&bytes, format).map_err(invalid)
}

/// How a table's bytes are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    /// One JSON object, key to value.
    Json,
    /// A header row, then one row per key.
    Csv,
}

/// Reads a table from its bytes (a file's, or an upload's); the error
/// says what is wrong and where, and names no file.
pub fn parse_table(bytes: &[u8], format: TableFormat) -> Result<LookupTable, String> {
    parse_within(bytes, format, MAX_DECODED_BYTES)
}

/// [`parse_table`] with at most `max_decoded` bytes in memory.
fn parse_within(bytes: &[u8], format: TableFormat, max_decoded: usize) -> Result<LookupTable, String> {
    match format {
        TableFormat::Csv => from_csv(bytes, max_decoded),
        TableFormat::Json => from_json(bytes, max_decoded),
    }
}

/// A JSON object of key to value; a repeated key is an error.
fn from_json(bytes: &[u8], max_decoded: usize) -> Result<LookupTable, String> {
    struct Table(usize);
    impl<'de> Visitor<'de> for Table {
        type Value = LookupTable;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object of key to value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LookupTable, A::Error> {
            let mut table = HashMap::new();
            let mut decoded = 0usize;
            while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
                decoded += key.len() + value.get().len() + ENTRY_OVERHEAD;
                if decoded > self.0 {
                    return Err(serde::de::Error::custom(format!(
                        "the table would take over {} bytes in memory (at `{}`)",
                        self.0,
                        shown(&key)
                    )));
                }
                if key.is_empty() {
                    return Err(serde::de::Error::custom("a key is empty"));
                }
                if table.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!(
                        "the key `{}` is given twice",
                        shown(&key)
                    )));
                }
                table.insert(key, value.get().into());
            }
            Ok(table)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let table = de
        .deserialize_map(Table(max_decoded))
        .map_err(|err| err.to_string())?;
    de.end().map_err(|err| err.to_string())?;
    Ok(table)
}

/// A key as an error shows it: at most 64 characters of it.
fn shown(key: &str) -> String {
    match key.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &key[..end]),
        None => key.to_string(),
    }
}

/// A CSV with a header row; the first column is the key.
fn from_csv(bytes: &[u8], max_decoded: usize) -> Result<LookupTable, String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(bytes);
    let headers = reader.headers().map_err(|err| err.to_string())?.clone();
    if headers.len() < 2 {
        return Err("the header row needs a key column and at least one value column".into());
    }
    let mut table = HashMap::new();
    let mut decoded = 0usize;
    for record in reader.records() {
        let record = record.map_err(|err| err.to_string())?;
        let line = record.position().map_or(0, |p| p.line());
        let key = record.get(0).unwrap_or_default();
        if key.is_empty() {
            return Err(format!("line {line}: the key is empty"));
        }
        let value = if headers.len() == 2 {
            serde_json::Value::String(record.get(1).unwrap_or_default().to_string())
        } else {
            headers
                .iter()
                .zip(record.iter())
                .skip(1)
                .map(|(name, value)| (name.to_string(), serde_json::Value::String(value.to_string())))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let value = value.to_string();
        decoded += key.len() + value.len() + ENTRY_OVERHEAD;
        if decoded > max_decoded {
            return Err(format!(
                "line {line}: the table would take over {max_decoded} bytes in memory (each row repeats the header names)"
            ));
        }
        if table.insert(key.to_string(), value.into_boxed_str()).is_some() {
            return Err(format!("line {line}: the key `{}` is given twice", shown(key)));
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &[u8]) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn json_and_csv_tables_load_and_every_bad_form_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        write(
            base,
            "asin.json",
            br#"{"TEE-1": "B00TEE", "CAP-1": {"asin": "B00CAP", "n": 1}}"#,
        );
        let table = load_table("asin", "asin.json", base).unwrap();
        assert_eq!(&*table["TEE-1"], r#""B00TEE""#);
        assert_eq!(&*table["CAP-1"], r#"{"asin": "B00CAP", "n": 1}"#);

        let err = parse_table(br#"{"": 1}"#, TableFormat::Json).unwrap_err();
        assert!(err.contains("a key is empty"), "{err}");
        let long = format!(r#"{{"{k}": 1, "{k}": 2}}"#, k = "K".repeat(10_000));
        let err = parse_table(long.as_bytes(), TableFormat::Json).unwrap_err();
        assert!(
            err.len() < 200,
            "a huge key is not echoed whole: {} bytes",
            err.len()
        );
        write(base, "dup.json", br#"{"A": 1, "A": 2}"#);
        let err = load_table("t", "dup.json", base).unwrap_err().to_string();
        assert!(err.contains("the key `A` is given twice"), "{err}");

        // A BOM, CRLF line ends and a quoted newline.
        write(
            base,
            "asin.csv",
            b"\xEF\xBB\xBFsku,asin\r\nTEE-1,B00TEE\r\n\"CAP\n1\",B00CAP\r\n",
        );
        let table = load_table("asin", "asin.csv", base).unwrap();
        assert_eq!(&*table["TEE-1"], r#""B00TEE""#);
        assert_eq!(&*table["CAP\n1"], r#""B00CAP""#);

        write(base, "members.csv", b"email,number,tier\na@x.example,1001,gold\n");
        let table = load_table("members", "members.csv", base).unwrap();
        assert_eq!(&*table["a@x.example"], r#"{"number":"1001","tier":"gold"}"#);

        for (name, text, wanted) in [
            (
                "ragged.csv",
                &b"sku,asin\nA,1\nB,2,3\n"[..],
                "found record with 3 fields",
            ),
            (
                "dup.csv",
                b"sku,asin\nA,1\nA,2\n",
                "line 3: the key `A` is given twice",
            ),
            ("empty-key.csv", b"sku,asin\n,1\n", "line 2: the key is empty"),
            (
                "one-column.csv",
                b"sku\nA\n",
                "needs a key column and at least one value column",
            ),
        ] {
            write(base, name, text);
            let err = load_table("t", name, base).unwrap_err().to_string();
            assert!(err.contains(wanted), "{name}: {err}");
            assert!(err.starts_with(&format!("lookup table `t` (`{name}`)")), "{err}");
        }

        for outside in ["/etc/passwd", "../asin.json", "./asin.json"] {
            let err = load_table("t", outside, base).unwrap_err().to_string();
            assert!(
                err.contains("relative path inside the folder"),
                "{outside}: {err}"
            );
        }
        // 2000 columns of 47-byte names and 3000 empty rows: 6 MB on disk,
        // but each row's value would repeat every name.
        let header: Vec<String> = (0..2000).map(|c| format!("column-{c:0>40}")).collect();
        let mut wide = format!("key,{}\n", header.join(","));
        for row in 0..3000 {
            wide.push_str(&format!("k{row}{}\n", ",".repeat(2000)));
        }
        write(base, "wide.csv", wide.as_bytes());
        let err = load_table("t", "wide.csv", base).unwrap_err().to_string();
        assert!(err.contains("would take over"), "{err}");
        // Tiny JSON entries cost more in memory than their bytes: 5,000 of
        // them are 40 kB of JSON and over 350 kB as a table.
        let mut tiny = String::from("{");
        for entry in 0..5_000 {
            tiny.push_str(&format!("\"{entry:x}\":0,"));
        }
        tiny.push_str("\"end\":0}");
        assert!(tiny.len() < 64_000);
        assert!(parse_within(tiny.as_bytes(), TableFormat::Json, 1 << 20).is_ok());
        let err = parse_within(tiny.as_bytes(), TableFormat::Json, 256 << 10).unwrap_err();
        assert!(err.contains("would take over"), "{err}");
        let missing = load_table("t", "nowhere.json", base).unwrap_err().to_string();
        assert!(
            !missing.contains(&base.display().to_string()),
            "no server path: {missing}"
        );
    }

    #[test]
    fn a_table_over_the_limit_is_refused_without_reading_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("huge.json")).unwrap();
        file.set_len(MAX_TABLE_BYTES + 1000).unwrap();
        assert!(matches!(
            load_table("t", "huge.json", dir.path()),
            Err(LookupError::TooLarge { .. })
        ));
    }
}
