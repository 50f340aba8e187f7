//! What a page's records become: each one's event and its id, and the
//! helpers that find and build the next page's URL.

use std::collections::HashMap;

use hyper::Uri;
use serde_json::Value;
use sluice_guest::mapping::CompiledPath;

use super::PageError;
use super::fetch::MAX_REMEMBERED_RECORDS;

/// Longest next-page URL (with its cursor) followed.
pub(super) const MAX_NEXT_URL_BYTES: usize = 4096;
/// Longest id or version kept as it is; longer ones are hashed.
pub(super) const MAX_PART_BYTES: usize = 200;
/// How a record's event id is made: its id, and its version or content.
pub(super) struct RecordIdentity<'a> {
    pub(super) id: &'a CompiledPath,
    pub(super) version: Option<&'a CompiledPath>,
    /// Without a version: each id's last content digest, and the sweep since
    /// which the record has had it.
    pub(super) contents: &'a mut HashMap<String, (String, i64)>,
    /// When the sweep under way started.
    pub(super) sweep_ms: i64,
}

/// A next-page URL is kept in the cursor and, as a digest, for the whole
/// sweep: one over [`MAX_NEXT_URL_BYTES`] is an error.
pub(super) fn bounded(next: Option<String>) -> Result<Option<String>, PageError> {
    match next {
        Some(next) if next.len() > MAX_NEXT_URL_BYTES => Err(PageError::Pagination(format!(
            "the next page's URL is over {MAX_NEXT_URL_BYTES} bytes"
        ))),
        next => Ok(next),
    }
}

/// The event of one record, as JSON text; `None` if it has no usable id.
///
/// With `version`, the id is `{source}:{id}@{version}`. Without it, it is
/// `{source}:{id}@{content digest}.{sweep}`, where the sweep is the one
/// since which the record has had that content without a break: an
/// unchanged record is a duplicate, and one that changes back (stock 5,
/// 4, then 5 again) is a new event. This sidecar remembers the contents
/// of up to a million records; after a restart each record is one new
/// event again (its state sent once more, never lost).
pub(super) fn record_event(
    record: &Value,
    identity: RecordIdentity<'_>,
    source: &str,
    tenant: &str,
    kind: &str,
) -> Option<String> {
    let text_of = |value: &Value| match value {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    };
    let record_id = identity.id.select(record).first().and_then(|(v, _)| text_of(v))?;
    let version = match identity.version {
        Some(path) => path.select(record).first().and_then(|(v, _)| text_of(v))?,
        None => {
            let content = digest(&record.to_string());
            let since = match identity.contents.get(&record_id) {
                Some((known, since)) if *known == content => *since,
                _ => identity.sweep_ms,
            };
            if identity.contents.len() < MAX_REMEMBERED_RECORDS || identity.contents.contains_key(&record_id)
            {
                identity
                    .contents
                    .insert(record_id.clone(), (content.clone(), since));
            }
            format!("{content}.{since}")
        }
    };
    let part = |text: String| {
        if text.len() <= MAX_PART_BYTES && !text.chars().any(char::is_control) {
            text
        } else {
            digest(&text)
        }
    };
    let event_id = format!("{source}:{}@{}", part(record_id), part(version));
    Some(
        serde_json::json!({
            "id": event_id,
            "kind": kind,
            "tenant": tenant,
            "source": source,
            "payload": record,
        })
        .to_string(),
    )
}

pub(super) fn digest(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(text.as_bytes())[..12])
}

pub(super) fn clip(text: &str) -> String {
    text.chars().take(100).collect()
}

/// `base` with query parameter `name` set to `value` (replacing any).
pub(super) fn with_query(base: &Uri, name: &str, value: &str) -> String {
    let kept: Vec<(String, String)> = form_urlencoded::parse(base.query().unwrap_or_default().as_bytes())
        .into_owned()
        .filter(|(key, _)| key != name)
        .collect();
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (key, kept_value) in &kept {
        query.append_pair(key, kept_value);
    }
    query.append_pair(name, value);
    format!(
        "{}://{}{}?{}",
        base.scheme_str().unwrap_or("https"),
        base.authority().map(|a| a.as_str()).unwrap_or_default(),
        base.path(),
        query.finish()
    )
}

/// The target of the link with relation `rel` in one `Link` header (RFC
/// 8288): each link is `<target>` and its `;`-separated parameters, up to
/// the next `<` (a target may hold commas; a link without `rel` is skipped).
pub(super) fn link_target(header: &str, rel: &str) -> Option<String> {
    let mut rest = header;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let close = after.find('>')?;
        let target = &after[..close];
        let params_end = after[close..].find('<').map_or(after.len(), |at| close + at);
        let params = &after[close + 1..params_end];
        rest = &after[params_end..];
        let matches = params.split(';').any(|param| {
            let Some((key, value)) = param.split_once('=') else {
                return false;
            };
            key.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_end_matches(',')
                    .trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case(rel))
        });
        if matches {
            return Some(target.to_string());
        }
    }
    None
}

/// `target` resolved against the page's URL (absolute, or an absolute path).
pub(super) fn resolve(page: &str, target: &str) -> Option<Uri> {
    if target.starts_with("http://") || target.starts_with("https://") {
        return target.parse().ok();
    }
    let page: Uri = page.parse().ok()?;
    if !target.starts_with('/') {
        return None;
    }
    format!("{}://{}{target}", page.scheme_str()?, page.authority()?.as_str())
        .parse()
        .ok()
}

pub(super) fn origin(uri: &Uri) -> (Option<&str>, Option<&str>, Option<u16>) {
    (uri.scheme_str(), uri.host(), uri.port_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_queries_and_record_ids() {
        let header =
            r#"<https://api.example/p?page=2>; rel="next", <https://api.example/p?page=9>; rel="last""#;
        assert_eq!(
            link_target(header, "next").as_deref(),
            Some("https://api.example/p?page=2")
        );
        assert_eq!(link_target(header, "prev"), None);
        let base: Uri = "https://api.example/items?limit=2&cursor=old".parse().unwrap();
        assert_eq!(
            with_query(&base, "cursor", "a b"),
            "https://api.example/items?limit=2&cursor=a+b"
        );
        // Commas inside a target, and links without `rel`, are no trouble.
        let odd = r#"<https://api.example/p?fields=id,name>; title="x", <https://api.example/p?fields=id,name&page=2>; rel=next"#;
        assert_eq!(
            link_target(odd, "next").as_deref(),
            Some("https://api.example/p?fields=id,name&page=2")
        );
    }

    fn id_of(
        record: serde_json::Value,
        version: Option<&str>,
        contents: &mut HashMap<String, (String, i64)>,
        sweep_ms: i64,
    ) -> Option<String> {
        let id = CompiledPath::compile("$.id").unwrap();
        let version = version.map(|path| CompiledPath::compile(path).unwrap());
        let identity = RecordIdentity {
            id: &id,
            version: version.as_ref(),
            contents,
            sweep_ms,
        };
        let event: serde_json::Value =
            serde_json::from_str(&record_event(&record, identity, "pos", "acme", "product")?).unwrap();
        Some(event["id"].as_str().unwrap().to_string())
    }

    #[test]
    fn record_ids_follow_the_version_or_the_content_and_a_change_back_is_new() {
        let mut contents = HashMap::new();
        let record = |qty: u32| serde_json::json!({"id": 7, "qty": qty, "updated_at": "2026-12-01"});
        assert_eq!(
            id_of(record(5), Some("$.updated_at"), &mut contents, 1).as_deref(),
            Some("pos:7@2026-12-01")
        );
        assert_eq!(
            id_of(serde_json::json!({"name": "x"}), None, &mut contents, 1),
            None
        );
        // Without a version: unchanged is the same id, sweep after sweep;
        // 5, then 4, then 5 again is three events.
        let first = id_of(record(5), None, &mut contents, 100).unwrap();
        assert_eq!(id_of(record(5), None, &mut contents, 200).unwrap(), first);
        let changed = id_of(record(4), None, &mut contents, 300).unwrap();
        let back = id_of(record(5), None, &mut contents, 400).unwrap();
        assert_ne!(changed, first);
        assert_ne!(back, first, "a change back is a new event");
        assert_eq!(id_of(record(5), None, &mut contents, 500).unwrap(), back);
    }
}
