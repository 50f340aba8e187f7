//! RFC 9535 normalized JSON paths, for pointing at the field a violation is about.
//!
//! ```
//! use sluice_guest::JsonPath;
//! let path = JsonPath::root().key("custom_attributes").index(3).key("value");
//! assert_eq!(path.to_string(), "$['custom_attributes'][3]['value']");
//! ```

use std::fmt;

/// One step of a path: an object member or an array element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// An object member, by name.
    Key(String),
    /// An array element, by zero-based index.
    Index(usize),
}

/// A location inside a JSON document. Displays as an RFC 9535 normalized
/// path (`$['a'][0]`), the form every violation carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonPath {
    segments: Vec<Segment>,
}

impl JsonPath {
    /// The document root, `$`.
    pub fn root() -> Self {
        Self::default()
    }

    /// This path extended by the object member `name`.
    pub fn key(&self, name: impl Into<String>) -> Self {
        let mut next = self.clone();
        next.segments.push(Segment::Key(name.into()));
        next
    }

    /// This path extended by the array element `index`.
    pub fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.segments.push(Segment::Index(index));
        next
    }

    /// The segments from the root down.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The path serde reached when it failed to deserialize a value.
    pub fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment as S;
        let segments = path
            .iter()
            .filter_map(|segment| match segment {
                S::Seq { index } => Some(Segment::Index(*index)),
                S::Map { key } => Some(Segment::Key(key.clone())),
                S::Enum { variant } => Some(Segment::Key(variant.clone())),
                S::Unknown => None,
            })
            .collect();
        Self { segments }
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        for segment in &self.segments {
            match segment {
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Key(name) => {
                    f.write_str("['")?;
                    write_escaped(f, name)?;
                    f.write_str("']")?;
                }
            }
        }
        Ok(())
    }
}

/// Writes a member name escaped as RFC 9535 §2.7 requires for normalized
/// paths, so a caller that builds a path piece by piece (the host's
/// bounded diff) writes what [`JsonPath`]'s `Display` would.
pub fn write_escaped(f: &mut impl fmt::Write, name: &str) -> fmt::Result {
    for c in name.chars() {
        match c {
            '\'' => f.write_str("\\'")?,
            '\\' => f.write_str("\\\\")?,
            '\u{8}' => f.write_str("\\b")?,
            '\u{c}' => f.write_str("\\f")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_dollar() {
        assert_eq!(JsonPath::root().to_string(), "$");
    }

    #[test]
    fn keys_and_indices_nest() {
        let path = JsonPath::root().key("a").index(0).key("b");
        assert_eq!(path.to_string(), "$['a'][0]['b']");
    }

    #[test]
    fn names_are_escaped_as_rfc9535_requires() {
        let path = JsonPath::root().key("it's\\\n\u{1}");
        assert_eq!(path.to_string(), "$['it\\'s\\\\\\n\\u0001']");
    }

    #[test]
    fn serde_error_paths_convert() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Doc {
            items: Vec<Item>,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Item {
            qty: u32,
        }
        let json = r#"{"items":[{"qty":1},{"qty":"x"}]}"#;
        let mut de = serde_json::Deserializer::from_str(json);
        let err = serde_path_to_error::deserialize::<_, Doc>(&mut de).unwrap_err();
        assert_eq!(
            JsonPath::from_serde(err.path()).to_string(),
            "$['items'][1]['qty']"
        );
    }
}
