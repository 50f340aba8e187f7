//! `GET /ui`: the operations page. Its HTML, JS and CSS are compiled into
//! the binary and load nothing from another host; they are served without
//! a token (every data call the page makes needs one) and with a strict
//! Content-Security-Policy: scripts and styles only from this origin, no
//! inline code, no frames, no forms posting elsewhere.

use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use crate::api::http::Body;

/// The policy sent with every page asset.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The asset at `path` (`/ui`, `/ui/`, `/ui/app.js`, `/ui/app.css`), if there is one.
pub fn asset(path: &str) -> Option<Response<Body>> {
    let (body, content_type) = match path {
        "/ui" | "/ui/" => (include_str!("../../ui/index.html"), "text/html; charset=utf-8"),
        "/ui/app.js" => (include_str!("../../ui/app.js"), "text/javascript; charset=utf-8"),
        "/ui/app.css" => (include_str!("../../ui/app.css"), "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_the_policy_and_nothing_else_is() {
        for path in ["/ui", "/ui/", "/ui/app.js", "/ui/app.css"] {
            let response = asset(path).unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.headers()["content-security-policy"],
                CONTENT_SECURITY_POLICY
            );
        }
        assert!(asset("/ui/../sluice.toml").is_none());
        assert!(asset("/ui/other.js").is_none());
    }

    #[test]
    fn the_page_loads_nothing_from_another_host_and_has_no_inline_code() {
        let html = include_str!("../../ui/index.html");
        let all = [
            html,
            include_str!("../../ui/app.js"),
            include_str!("../../ui/app.css"),
        ]
        .concat();
        // The SVG namespace is a name, not a request.
        assert_eq!(
            all.matches("http://").count(),
            all.matches("http://www.w3.org/2000/svg").count()
        );
        for outside in ["https://", "url(", "@import", "@font-face"] {
            assert!(!all.contains(outside), "{outside}");
        }
        assert!(!html.contains("<script>") && !html.contains(" style=") && !html.contains("onclick="));
        assert!(
            !include_str!("../../ui/app.js").contains("innerHTML"),
            "tenant data is only set as text"
        );
    }
}
