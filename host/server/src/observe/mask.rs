//! Secrets out of what a story keeps: credential headers, query keys,
//! URL user info, and secret-named fields of JSON and form bodies become
//! `***` before anything is stored. Applied to requests as sent and to
//! answers as received, so an OAuth token endpoint's answer or a
//! destination echoing a signature keeps nothing usable.

/// What a masked value reads as.
pub const MASK: &str = "***";

/// The words that make a name a secret's, in lower case.
const WORDS: [&str; 12] = [
    "authorization",
    "hmac",
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

/// Finds any of [`WORDS`] in any case in one pass (a profile of the
/// stories benchmark showed a word-by-word search as its top symbol).
static SECRET_WORDS: std::sync::LazyLock<aho_corasick::AhoCorasick> = std::sync::LazyLock::new(|| {
    aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(WORDS)
        .expect("the words make a searcher")
});

/// Whether `name` (or a whole body) holds one of [`WORDS`], in any case.
fn names_a_secret(name: &str) -> bool {
    SECRET_WORDS.is_match(name)
}

/// Whether a JSON field or form key holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    names_a_secret(name)
}

/// Whether a header holds a secret: a secret's name, or any `…-key` but
/// `Idempotency-Key` (`X-Vtex-Api-AppKey` is caught by its value being
/// marked sensitive, where Sluice set it).
pub fn is_secret_header(name: &str) -> bool {
    names_a_secret(name) || {
        let lower = name.to_ascii_lowercase();
        lower.ends_with("-key") && lower != "idempotency-key" && lower != "x-idempotency-key"
    }
}

/// Whether a URL query parameter holds a secret: a secret's name, or the
/// bare `key`, `code`, `auth` and `sig` that Google, Azure Functions and
/// Firebase put API keys in.
pub fn is_secret_query(name: &str) -> bool {
    names_a_secret(name)
        || matches!(
            name.to_ascii_lowercase().as_str(),
            "key" | "code" | "auth" | "sig"
        )
}

/// A header's value as a story keeps it.
pub fn header_value(name: &str, value: &str) -> String {
    if is_secret_header(name) {
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
            Some((name, _)) if is_secret_query(&percent_decoded(name)) => format!("{name}={MASK}"),
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

/// A body with its secrets masked: a form's secret values, or the string
/// value of every secret-named field of JSON, whole or cut short, at any
/// depth (found by scanning, not parsing). A body that names none of the
/// words is returned as it is.
pub fn body(text: &str) -> String {
    if !names_a_secret(text) {
        return text.to_string();
    }
    let form_like = text.trim_end();
    if !form_like.contains(char::is_whitespace)
        && form_like.contains('=')
        && !form_like.starts_with(['{', '['])
    {
        return form(form_like);
    }
    json_pairs(text)
}

/// `text` with the string value of every secret-named `"name": "value"`
/// pair masked, found by scanning strings (escapes included), not by
/// parsing, so a body cut short keeps none either.
fn json_pairs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..open + 1]);
        let after = &rest[open + 1..];
        let Some(close) = string_end(after) else {
            out.push_str(after);
            return out;
        };
        let name = &after[..close];
        out.push_str(name);
        out.push('"');
        rest = &after[close + 1..];
        if !is_secret_name(name) {
            continue;
        }
        let Some(colon) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        let Some(value) = colon.trim_start().strip_prefix('"') else {
            continue;
        };
        out.push_str(&format!(": \"{MASK}\""));
        rest = string_end(value).map_or("", |end| &value[end + 1..]);
    }
    out.push_str(rest);
    out
}

/// Where the JSON string that `text` starts inside ends: its first quote
/// not escaped by a backslash.
fn string_end(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (at, byte) in text.bytes().enumerate() {
        match byte {
            b'\\' if !escaped => escaped = true,
            b'"' if !escaped => return Some(at),
            _ => escaped = false,
        }
    }
    None
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
            serde_json::from_str::<serde_json::Value>(&masked).unwrap(),
            serde_json::json!({"sku": "A", "auth": {"client_secret": "***", "refresh_token": "***"}, "items": [{"password": "***"}]})
        );
        assert_eq!(
            body("grant_type=refresh_token&refresh_token=Atzr|abc&client_id=amzn1"),
            "grant_type=refresh_token&refresh_token=***&client_id=amzn1"
        );
        assert_eq!(
            url("https://maps.example/x?key=AIza123&code=fn-key&sku=A"),
            "https://maps.example/x?key=***&code=***&sku=A"
        );
        assert_eq!(header_value("X-Shopify-Hmac-Sha256", "abc="), MASK);
        // A body cut short is not JSON: its pairs are masked in place.
        let cut =
            body(r#"{"items": [{"sku": "A"}], "access_token": "Atza|se\"cret", "refresh_token": "Atzr|abc"#);
        assert!(
            !cut.contains("se\\\"cret") && !cut.contains("Atza") && !cut.contains("Atzr"),
            "{cut}"
        );
        assert!(cut.contains(r#""sku": "A""#), "{cut}");
        assert_eq!(
            body("grant_type=refresh_token&refresh_token=x\n"),
            "grant_type=refresh_token&refresh_token=***"
        );
        // Escaped quotes do not throw the scan off.
        let tricky = body(r#"{"title": "5\" nail \\", "token": "t0k\"en", "x": "\"token\": \"no\""}"#);
        assert!(!tricky.contains("t0k"), "{tricky}");
        assert!(tricky.contains(r#""title": "5\" nail \\""#), "{tricky}");
        let plain = r#"{"sku": "A",  "qty": 4}"#;
        assert_eq!(body(plain), plain, "nothing secret: kept byte for byte");
    }
}
