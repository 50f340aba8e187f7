//! A destination's URL per event: `{$.…}` placeholders take a value from
//! the emitted payload (a URL per SKU, as SP-API's Listings Items and
//! Magento's `PUT /V1/products/{sku}` want), `{param:…}` placeholders
//! take a value the transform chose for the event (a contract 0.2
//! delivery hint), and `{env:…}` placeholders come from the environment
//! when the config is loaded.

use std::collections::BTreeMap;

use hyper::Uri;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::Value;
use sluice_guest::mapping::CompiledPath;

/// Bytes escaped in a path segment: everything but RFC 3986's unreserved
/// characters, so a value can never add a segment, a query or a fragment.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|')
    .add(b'[')
    .add(b']')
    .add(b'@')
    .add(b':')
    .add(b';')
    .add(b'=')
    .add(b'&')
    .add(b'+')
    .add(b',')
    .add(b'$')
    .add(b'!')
    .add(b'\'')
    .add(b'(')
    .add(b')')
    .add(b'*');

/// Longest value placed in a URL, in bytes.
const MAX_VALUE_BYTES: usize = 1024;

/// One piece of a template.
#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Value { path: CompiledPath, text: String },
    Param { name: String },
}

/// A compiled URL template.
#[derive(Debug, Clone)]
pub struct UrlTemplate {
    parts: Vec<Part>,
    /// The `{env:…}` values, as they stand in the URL: masked where a
    /// URL is shown (a webhook URL's token is a secret of the operator).
    secrets: Vec<String>,
}

/// Why an event has no URL.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// A placeholder's JSONPath selects nothing usable (nothing, null, an object or an array).
    #[error("the URL's `{{{path}}}` has no value in the payload (a string, number or boolean at {path})")]
    Missing {
        /// The placeholder's JSONPath.
        path: String,
    },
    /// The value is longer than a URL may carry.
    #[error("the URL's `{{{path}}}` is over {MAX_VALUE_BYTES} bytes")]
    TooLong {
        /// The placeholder's JSONPath.
        path: String,
    },
    /// The value is `.` or `..`, which would move the request up the path.
    #[error("the URL's `{{{path}}}` is `.` or `..`, which would change the path")]
    DotSegment {
        /// The placeholder's JSONPath.
        path: String,
    },
    /// The payload is not JSON.
    #[error("the payload is not JSON, so the URL's placeholders have no values")]
    NotJson,
    /// The transform gave no value for a `{param:…}` placeholder.
    #[error("the URL's `{{param:{name}}}` has no value: the transform's delivery hint does not set `{name}`")]
    MissingParam {
        /// The placeholder's name.
        name: String,
    },
}

impl UrlTemplate {
    /// The `{env:…}` values in the URL, as they stand in it.
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// Compiles `template`; `env` reads the environment. The error names
    /// the placeholder or variable that is wrong.
    pub fn parse(template: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut secrets = Vec::new();
        let mut so_far = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let (text, after) = rest.split_at(open);
            so_far.push_str(text);
            let close = after
                .find('}')
                .ok_or_else(|| format!("`{after}`: a `{{` without its `}}`"))?;
            let inner = &after[1..close];
            if let Some(name) = inner.strip_prefix("env:") {
                let value =
                    env(name).ok_or_else(|| format!("the environment variable `{name}` is not set"))?;
                let value = encode(&value);
                so_far.push_str(&value);
                if !value.is_empty() {
                    secrets.push(value.clone());
                }
                parts.push(Part::Text(text.to_string() + &value));
            } else if let Some(name) = inner.strip_prefix("param:") {
                let in_path = so_far
                    .split_once("://")
                    .is_some_and(|(_, after_scheme)| after_scheme.contains('/'));
                if !in_path {
                    return Err(format!("`{{{inner}}}` cannot stand in the scheme or host"));
                }
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(format!(
                        "`{{{inner}}}`: a parameter's name is letters, digits, `-` and `_`"
                    ));
                }
                so_far.push('x');
                parts.push(Part::Text(text.to_string()));
                parts.push(Part::Param {
                    name: name.to_string(),
                });
            } else if inner.starts_with('$') {
                // A payload's value may fill a path segment or a query value, never the host.
                let in_path = so_far
                    .split_once("://")
                    .is_some_and(|(_, after_scheme)| after_scheme.contains('/'));
                if !in_path {
                    return Err(format!("`{{{inner}}}` cannot stand in the scheme or host"));
                }
                let path = CompiledPath::compile(inner)
                    .map_err(|err| format!("`{{{inner}}}` is not a JSONPath: {err}"))?;
                so_far.push('x');
                parts.push(Part::Text(text.to_string()));
                parts.push(Part::Value {
                    path,
                    text: inner.to_string(),
                });
            } else {
                return Err(format!(
                    "`{{{inner}}}` is neither a JSONPath (`{{$.sku}}`), a parameter (`{{param:NAME}}`) nor a variable (`{{env:NAME}}`)"
                ));
            }
            rest = &after[close + 1..];
        }
        so_far.push_str(rest);
        parts.push(Part::Text(rest.to_string()));
        let uri: Uri = so_far
            .parse()
            .map_err(|err| format!("`{template}` is not a URL: {err}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!("`{template}` must be an http:// or https:// URL"));
        }
        Ok(Self { parts, secrets })
    }

    /// The host it names (no payload value can stand there).
    pub fn host(&self) -> Option<String> {
        let Some(Part::Text(first)) = self.parts.first() else {
            return None;
        };
        let (_, rest) = first.split_once("://")?;
        let authority = rest.split(['/', '?', '#']).next()?;
        let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        let host = if authority.starts_with('[') {
            authority.split_once(']').map(|(host, _)| format!("{host}]"))?
        } else {
            authority.split(':').next()?.to_string()
        };
        (!host.is_empty()).then_some(host)
    }

    /// The URL when it has no payload placeholders.
    pub fn fixed(&self) -> Option<Uri> {
        match self.parts.as_slice() {
            [Part::Text(text)] => text.parse().ok(),
            _ => None,
        }
    }

    /// The URL of one payload (its JSON text), with the transform's
    /// `{param:…}` values.
    pub fn render(&self, payload: &[u8], params: &BTreeMap<String, String>) -> Result<Uri, RenderError> {
        if let Some(uri) = self.fixed() {
            return Ok(uri);
        }
        let needs_payload = self.parts.iter().any(|part| matches!(part, Part::Value { .. }));
        let document: Value = if needs_payload {
            serde_json::from_slice(payload).map_err(|_| RenderError::NotJson)?
        } else {
            Value::Null
        };
        let mut url = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => url.push_str(text),
                Part::Param { name } => {
                    let found = params
                        .get(name)
                        .filter(|value| !value.is_empty())
                        .ok_or_else(|| RenderError::MissingParam { name: name.clone() })?;
                    if found.len() > MAX_VALUE_BYTES {
                        return Err(RenderError::TooLong {
                            path: format!("param:{name}"),
                        });
                    }
                    if found == "." || found == ".." {
                        return Err(RenderError::DotSegment {
                            path: format!("param:{name}"),
                        });
                    }
                    url.push_str(&encode(found));
                }
                Part::Value { path, text } => {
                    let found = path
                        .select(&document)
                        .first()
                        .and_then(|(value, _)| match value {
                            Value::String(text) if !text.is_empty() => Some(text.clone()),
                            Value::Number(number) => Some(number.to_string()),
                            Value::Bool(flag) => Some(flag.to_string()),
                            _ => None,
                        })
                        .ok_or_else(|| RenderError::Missing { path: text.clone() })?;
                    if found.len() > MAX_VALUE_BYTES {
                        return Err(RenderError::TooLong { path: text.clone() });
                    }
                    // `.` and `..` are unreserved, so encoding leaves them as
                    // they are, and a server takes them for the path's own.
                    if found == "." || found == ".." {
                        return Err(RenderError::DotSegment { path: text.clone() });
                    }
                    url.push_str(&encode(&found));
                }
            }
        }
        // Every value is encoded: the URL parses as the template did. Two
        // values side by side (`{param:a}{param:b}`) may still make `..`.
        let uri: Uri = url.parse().map_err(|_| RenderError::NotJson)?;
        if uri
            .path()
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        {
            return Err(RenderError::DotSegment {
                path: "the rendered path".into(),
            });
        }
        Ok(uri)
    }
}

/// `value` percent-encoded as one path segment or one query value (the
/// same set serves both: neither may add `/`, `&`, `=`, `?` or `#`).
fn encode(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SELLER_ID").then(|| "A1 SELLER".to_string())
    }

    #[test]
    fn placeholders_take_payload_values_encoded_as_one_segment_or_query_value() {
        let template = UrlTemplate::parse(
            "https://sellingpartnerapi-na.amazon.com/listings/2021-08-01/items/{env:SELLER_ID}/{$.sku}?marketplaceIds={$.marketplace}",
            env,
        )
        .unwrap();
        let uri = template
            .render(
                br#"{"sku": "TEE/RED 1?x#y", "marketplace": "ATVPDKIKX0DER"}"#,
                &BTreeMap::new(),
            )
            .unwrap();
        assert_eq!(
            uri.to_string(),
            "https://sellingpartnerapi-na.amazon.com/listings/2021-08-01/items/A1%20SELLER/TEE%2FRED%201%3Fx%23y?marketplaceIds=ATVPDKIKX0DER"
        );
        assert_eq!(
            template.render(br#"{"marketplace": "X"}"#, &BTreeMap::new()),
            Err(RenderError::Missing { path: "$.sku".into() })
        );
        assert_eq!(
            template.render(br#"{"sku": null, "marketplace": "X"}"#, &BTreeMap::new()),
            Err(RenderError::Missing { path: "$.sku".into() })
        );
        assert_eq!(
            UrlTemplate::parse("https://m.example/rest/V1/products/{$.sku}", env)
                .unwrap()
                .render(br#"{"sku": 42}"#, &BTreeMap::new())
                .unwrap()
                .path(),
            "/rest/V1/products/42"
        );
        assert!(
            UrlTemplate::parse("https://x.example/a", env)
                .unwrap()
                .fixed()
                .is_some()
        );
    }

    #[test]
    fn the_host_is_known_before_any_payload() {
        let host = |t: &str| UrlTemplate::parse(t, env).unwrap().host();
        assert_eq!(
            host("https://a.example:8443/x/{$.sku}").as_deref(),
            Some("a.example")
        );
        assert_eq!(host("http://[::1]:9/{$.sku}").as_deref(), Some("[::1]"));
        assert_eq!(host("http://u@10.0.0.1/").as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn dot_segments_are_refused() {
        let items = UrlTemplate::parse("https://x.example/items/{$.sku}", env).unwrap();
        for dots in ["..", "."] {
            assert_eq!(
                items.render(format!(r#"{{"sku": "{dots}"}}"#).as_bytes(), &BTreeMap::new()),
                Err(RenderError::DotSegment { path: "$.sku".into() })
            );
        }
        assert_eq!(
            items
                .render(br#"{"sku": "..."}"#, &BTreeMap::new())
                .unwrap()
                .path(),
            "/items/..."
        );
        // CRLF cannot split the request line or add a header; a megabyte is refused.
        let crlf = items
            .render(br#"{"sku": "A\r\nHost: evil.example"}"#, &BTreeMap::new())
            .unwrap();
        assert_eq!(crlf.path(), "/items/A%0D%0AHost%3A%20evil.example");
        let huge = format!(r#"{{"sku": "{}"}}"#, "x".repeat(1 << 20));
        assert_eq!(
            items.render(huge.as_bytes(), &BTreeMap::new()),
            Err(RenderError::TooLong { path: "$.sku".into() })
        );
    }

    #[test]
    fn bad_templates_are_refused_at_load_by_name() {
        for (template, says) in [
            ("https://{$.host}/x", "scheme or host"),
            ("https://x.example/{env:NOPE}", "`NOPE` is not set"),
            ("https://x.example/{sku}", "neither a JSONPath"),
            ("https://x.example/{$.sku", "without its"),
            ("https://x.example/{$[?}", "not a JSONPath"),
            ("ftp://x.example/{$.sku}", "http:// or https://"),
        ] {
            let err = UrlTemplate::parse(template, env).unwrap_err();
            assert!(err.contains(says), "{template}: {err}");
        }
    }

    #[test]
    fn params_come_from_the_delivery_hint_encoded_as_one_segment() {
        let template = UrlTemplate::parse("https://x.example/v1/{param:id}/stock?sku={$.sku}", env).unwrap();
        let params = BTreeMap::from([("id".to_string(), "42/a?b".to_string())]);
        let uri = template.render(br#"{"sku": "A"}"#, &params).unwrap();
        assert_eq!(uri.to_string(), "https://x.example/v1/42%2Fa%3Fb/stock?sku=A");
        assert_eq!(
            template.render(br#"{"sku": "A"}"#, &BTreeMap::new()),
            Err(RenderError::MissingParam { name: "id".into() })
        );
        let only_param = UrlTemplate::parse("https://x.example/{param:id}", env).unwrap();
        let dots = BTreeMap::from([("id".to_string(), "..".to_string())]);
        assert!(matches!(
            only_param.render(b"not json", &dots),
            Err(RenderError::DotSegment { .. })
        ));
        let pair = UrlTemplate::parse("https://x.example/v1/{param:a}{param:b}/y", env).unwrap();
        let dots = BTreeMap::from([
            ("a".to_string(), ".".to_string()),
            ("b".to_string(), ".".to_string()),
        ]);
        assert!(matches!(
            pair.render(b"{}", &dots),
            Err(RenderError::DotSegment { .. })
        ));
        assert!(UrlTemplate::parse("https://{param:host}/x", env).is_err());
        assert!(UrlTemplate::parse("https://x.example/{param:a b}", env).is_err());
    }
}
