//! Secrets out of what a story keeps: credential headers, query keys,
//! URL user info, and secret-named fields of JSON and form bodies become
//! `***` before anything is stored. Applied to requests as sent and to
//! answers as received, so an OAuth token endpoint's answer or a
//! destination echoing a signature keeps nothing usable.

use serde_json::Value;

/// What a masked value reads as.
pub const MASK: &str = "***";

/// Whether a header, query parameter or field name holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if matches!(
        name.as_str(),
        "idempotency-key" | "x-idempotency-key" | "key" | "sku"
    ) {
        return false;
    }
    const WORDS: [&str; 11] = [
        "authorization",
        "cookie",
        "token",
        "secret",
        "password",
        "passwd",
        "signature",
        "api-key",
        "api_key",
        "apikey",
        "credential",
    ];
    WORDS.iter().any(|word| name.contains(word))
        || name.ends_with("-key")
        || name.ends_with("_key")
        || matches!(name.as_str(), "sig" | "client_id")
}

/// A header's value as a story keeps it.
pub fn header_value(name: &str, value: &str) -> String {
    if is_secret_name(name) {
        MASK.into()
    } else {
        value.into()
    }
}

/// A URL with its user info and secret query values masked.
pub fn url(text: &str) -> String {
    let (before_query, query) = match text.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (text, None),
    };
    let mut out = match before_query.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, path)) => format!("{scheme}://{}/{path}", authority_of(authority)),
            None => format!("{scheme}://{}", authority_of(rest)),
        },
        None => before_query.to_string(),
    };
    if let Some(query) = query {
        out.push('?');
        out.push_str(&form(query));
    }
    out
}

fn authority_of(authority: &str) -> String {
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{MASK}@{host}"),
        None => authority.to_string(),
    }
}

/// `a=1&token=x` with secret values masked.
fn form(text: &str) -> String {
    text.split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_name(&percent_decoded(name)) => format!("{name}={MASK}"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_decoded(name: &str) -> String {
    percent_encoding::percent_decode_str(name)
        .decode_utf8_lossy()
        .into_owned()
}

/// A body with its secrets masked: a JSON document's secret-named fields
/// at any depth, or a form's secret values. A body that names none of the
/// words is returned as it is, unparsed.
pub fn body(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let suspicious = [
        "token",
        "secret",
        "password",
        "passwd",
        "key",
        "signature",
        "authorization",
        "cookie",
        "credential",
        "sig",
        "client_id",
    ]
    .iter()
    .any(|word| lower.contains(word));
    if !suspicious {
        return text.to_string();
    }
    match serde_json::from_str::<Value>(text) {
        Ok(mut value) => {
            mask_json(&mut value, 0);
            value.to_string()
        }
        Err(_) if !text.contains(char::is_whitespace) && text.contains('=') => form(text),
        Err(_) => text.to_string(),
    }
}

/// Deepest nesting masked; a document deeper than serde_json parses
/// (128) never gets here.
const MAX_DEPTH: usize = 128;

fn mask_json(value: &mut Value, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match value {
        Value::Object(map) => {
            for (name, field) in map.iter_mut() {
                if is_secret_name(name) {
                    *field = Value::String(MASK.into());
                } else {
                    mask_json(field, depth + 1);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| mask_json(item, depth + 1)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_signatures_and_query_keys_are_masked_and_the_rest_kept() {
        for name in [
            "Authorization",
            "x-amz-access-token",
            "X-Shopify-Hmac-Sha256-Signature",
            "x-sluice-signature",
            "x-api-key",
            "Cookie",
            "set-cookie",
            "X-Square-HmacSha256-Signature",
        ] {
            assert_eq!(header_value(name, "s3cr3t"), MASK, "{name}");
        }
        for name in [
            "idempotency-key",
            "x-correlation-id",
            "content-type",
            "x-sluice-event-id",
        ] {
            assert_eq!(header_value(name, "kept"), "kept", "{name}");
        }
        assert_eq!(
            url("https://user:pw@api.example/items/A?sku=A&access_token=abc&api_key=k&page=2"),
            "https://***@api.example/items/A?sku=A&access_token=***&api_key=***&page=2"
        );
        assert_eq!(url("http://h/x"), "http://h/x");
        let masked = body(
            r#"{"sku":"A","auth":{"client_secret":"x","refresh_token":"y"},"items":[{"password":"p"}]}"#,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&masked).unwrap(),
            serde_json::json!({"sku": "A", "auth": {"client_secret": "***", "refresh_token": "***"}, "items": [{"password": "***"}]})
        );
        assert_eq!(
            body("grant_type=refresh_token&refresh_token=Atzr|abc&client_id=amzn1"),
            "grant_type=refresh_token&refresh_token=***&client_id=***"
        );
        let plain = r#"{"sku": "A",  "qty": 4}"#;
        assert_eq!(body(plain), plain, "nothing secret: kept byte for byte");
    }
}
