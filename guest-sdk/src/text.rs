//! Text helpers destinations ask for: HTML to plain text, and truncation
//! that never splits a character.

use unicode_segmentation::UnicodeSegmentation;

/// Tags after which a line break belongs in the plain text.
const BLOCK_TAGS: &[&str] = &[
    "address",
    "article",
    "blockquote",
    "br",
    "dd",
    "div",
    "dl",
    "dt",
    "figcaption",
    "footer",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "li",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "td",
    "th",
    "tr",
    "ul",
];

/// Tags whose content is not text at all.
const HIDDEN_TAGS: &[&str] = &["script", "style", "head", "template"];

/// Turns an HTML fragment into plain text: tags removed (block tags become
/// line breaks, `<script>`/`<style>` content is dropped), entities decoded,
/// runs of spaces collapsed and blank lines squeezed.
///
/// ```
/// use sluice_guest::text::strip_html;
/// assert_eq!(strip_html("<p>Fish &amp; chips</p><p>Hot&nbsp;&#x1F525;</p>"), "Fish & chips\nHot 🔥");
/// ```
pub fn strip_html(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut rest = html;
    let mut hidden_until: Option<&str> = None;
    while let Some(start) = rest.find('<') {
        if hidden_until.is_none() {
            text.push_str(&rest[..start]);
        }
        let after = &rest[start + 1..];
        let Some(end) = tag_end(after) else {
            // A lone '<' is text, not a tag.
            if hidden_until.is_none() {
                text.push('<');
            }
            rest = after;
            continue;
        };
        let tag = &after[..end];
        rest = &after[end + 1..];
        let name = tag_name(tag);
        if let Some(closing) = hidden_until {
            if tag.starts_with('/') && name.eq_ignore_ascii_case(closing) {
                hidden_until = None;
            }
            continue;
        }
        let known = |tags: &[&'static str]| tags.iter().copied().find(|t| name.eq_ignore_ascii_case(t));
        if let Some(hidden) = known(HIDDEN_TAGS).filter(|_| !tag.starts_with('/') && !tag.ends_with('/')) {
            hidden_until = Some(hidden);
        } else if known(BLOCK_TAGS).is_some() {
            text.push('\n');
        }
    }
    if hidden_until.is_none() {
        text.push_str(rest);
    }
    let decoded = html_escape::decode_html_entities(&text);
    // A no-break space is a space like any other (`split_whitespace` in
    // `collapse_whitespace` already treats it as one).
    collapse_whitespace(&decoded)
}

/// Where the tag that starts right after a `<` ends (the index of its `>`),
/// or `None` when the `<` does not open a tag.
fn tag_end(after_lt: &str) -> Option<usize> {
    let first = after_lt.chars().next()?;
    if !(first.is_ascii_alphabetic() || first == '/' || first == '!' || first == '?') {
        return None;
    }
    let mut quote: Option<char> = None;
    for (i, c) in after_lt.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// The element name of a tag's inside, as written (`/P class=x` → `P`).
fn tag_name(tag: &str) -> &str {
    let name = tag.trim_start_matches('/');
    let end = name
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(name.len());
    &name[..end]
}

/// Collapses runs of spaces and tabs to one space, trims every line, and
/// removes empty lines.
pub fn collapse_whitespace(text: &str) -> String {
    let mut collapsed = String::with_capacity(text.len());
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if !collapsed.is_empty() {
            collapsed.push('\n');
        }
        collapsed.push_str(first);
        for word in words {
            collapsed.push(' ');
            collapsed.push_str(word);
        }
    }
    collapsed
}

/// Cuts `text` to at most `max` user-perceived characters (grapheme
/// clusters), ending in "…" when anything was cut. An emoji or an accented
/// letter built from several code points is never split.
///
/// ```
/// use sluice_guest::text::truncate;
/// assert_eq!(truncate("Crème brûlée set", 8), "Crème b…");
/// assert_eq!(truncate("short", 80), "short");
/// ```
pub fn truncate(text: &str, max: usize) -> String {
    // No more bytes than `max` means no more clusters either.
    if text.len() <= max {
        return text.to_string();
    }
    if max == 0 {
        return String::new();
    }
    // Where the last kept cluster (the `max`-th, counting the "…") starts.
    let mut keep = 0;
    for (count, (start, _)) in text.grapheme_indices(true).enumerate() {
        if count + 1 == max {
            keep = start;
        } else if count == max {
            let mut cut = text[..keep].trim_end().to_string();
            cut.push('…');
            return cut;
        }
    }
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_tags_and_decodes_entities() {
        let html =
            "<div class=\"x\"><h2>Title</h2><p>A &lt;b&gt; &quot;quoted&quot; &#39;x&#39;<br/>line</p></div>";
        assert_eq!(strip_html(html), "Title\nA <b> \"quoted\" 'x'\nline");
    }

    #[test]
    fn drops_script_and_style_content() {
        assert_eq!(
            strip_html("a<script>alert('<p>')</script>b<style>p{}</style>c"),
            "abc"
        );
    }

    #[test]
    fn keeps_a_lone_less_than_sign() {
        assert_eq!(strip_html("1 < 2 and 3<4"), "1 < 2 and 3<4");
    }

    #[test]
    fn attribute_with_gt_inside_quotes_is_one_tag() {
        assert_eq!(strip_html("<a title=\"a>b\">link</a>"), "link");
    }

    #[test]
    fn truncation_counts_graphemes_not_bytes() {
        let flag = "🇩🇪";
        let text = format!("{flag}{flag}{flag}");
        assert_eq!(truncate(&text, 2), format!("{flag}…"));
        assert_eq!(
            truncate("e\u{301}e\u{301}e\u{301}", 3),
            "e\u{301}e\u{301}e\u{301}"
        );
        assert_eq!(truncate("e\u{301}e\u{301}e\u{301}", 2), "e\u{301}…");
    }

    #[test]
    fn truncation_result_never_exceeds_the_limit() {
        let title = "Ultra Comfort Ergonomic Office Chair with Lumbar Support and Adjustable Armrests, Black";
        let cut = truncate(title, 80);
        assert_eq!(cut.graphemes(true).count(), 80);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate(title, 0), "");
    }
}
