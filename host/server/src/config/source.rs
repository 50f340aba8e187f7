//! `[[source]]`: where a tenant's events come from without Sluice's own
//! envelope: a platform's signed webhooks, or an API that is polled.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::AuthConfig;

/// How a source's events reach Sluice: which platform signs its webhooks,
/// or `poll` for an API that Sluice reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// `X-Shopify-Hmac-Sha256` over the body.
    Shopify,
    /// `X-WC-Webhook-Signature` over the body; its creation ping is answered.
    Woocommerce,
    /// `x-square-hmacsha256-signature` over the notification URL and the body.
    Square,
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature` (Standard Webhooks v1).
    StandardWebhooks,
    /// An HMAC-SHA256 in a header of the tenant's choosing.
    Hmac,
    /// A static secret in a header.
    SharedSecret,
    /// An API with no webhooks, read page by page every `every`.
    Poll,
}

impl SourceKind {
    /// Its name in `sluice.toml`.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Shopify => "shopify",
            SourceKind::Woocommerce => "woocommerce",
            SourceKind::Square => "square",
            SourceKind::StandardWebhooks => "standard-webhooks",
            SourceKind::Hmac => "hmac",
            SourceKind::SharedSecret => "shared-secret",
            SourceKind::Poll => "poll",
        }
    }
}

/// One source of a tenant.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique per tenant; also the `source` of its events.
    pub name: String,
    /// Whose events it makes.
    pub tenant: String,
    /// How its events arrive.
    pub kind: SourceKind,
    /// The environment variable holding the secret (secrets are never inline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// Or a file holding it, relative to this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// During a rotation: the environment variable of the previous secret,
    /// also accepted until it is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_env: Option<String>,
    /// Or a file holding the previous secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_file: Option<PathBuf>,
    /// `square`: the notification URL exactly as configured at Square (it is signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_url: Option<String>,
    /// `standard-webhooks`: how far `webhook-timestamp` may be from now.
    #[serde(default = "default_tolerance")]
    pub tolerance_secs: u64,
    /// `hmac` and `shared-secret`: the header that carries the signature or secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// `hmac`: text before the signature in its header (`sha256=`).
    #[serde(default)]
    pub prefix: String,
    /// `hmac`: `hex` or `base64`.
    #[serde(default = "default_encoding")]
    pub encoding: String,
    /// `hmac` and `shared-secret`: the header with the delivery's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_header: Option<String>,
    /// `hmac` and `shared-secret`: the header with the delivery's topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_header: Option<String>,
    /// Event kinds by topic, before the defaults (`products/update` → `product`).
    #[serde(default)]
    pub kinds: BTreeMap<String, String>,
    /// `poll`: the first page's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `poll`: time from the start of one sweep to the start of the next (`60s`, `5m`).
    #[serde(default = "default_every", with = "humantime_serde")]
    pub every: Duration,
    /// `poll`: JSONPath to a page's records.
    #[serde(default = "default_records")]
    pub records: String,
    /// `poll`: JSONPath to a record's id, within the record.
    #[serde(default = "default_id")]
    pub id: String,
    /// `poll`: JSONPath to a record's version (`$.updated_at`): a changed
    /// record is a new event, an unchanged one a duplicate. Without it the
    /// record's content is its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `poll`: how to find the next page; none: the API has one page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<NextPageConfig>,
    /// `poll`: how to authenticate to the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// `poll`: the kind of the events its records make.
    #[serde(default = "default_event_kind")]
    pub event_kind: String,
    /// `poll`: most pages in one sweep; a sweep that needs more is an error.
    #[serde(default = "default_max_pages")]
    pub max_pages: u32,
    /// `poll`: largest page read, in bytes; a larger one is an error.
    #[serde(default = "default_max_page_bytes")]
    pub max_page_bytes: usize,
    /// `poll`: time for one page's whole request and answer.
    #[serde(default = "default_page_timeout")]
    pub timeout_ms: u64,
}

/// How a polled API says where its next page is. Exactly one of
/// `cursor` (with `param`), `link` or `page` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NextPageConfig {
    /// JSONPath in a page to the next page's cursor (`$.next`); none or null: the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// With `cursor`: the query parameter that carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// The `Link` header relation of the next page (RFC 8288), usually `next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// A page-number query parameter, counting from 1; a page with no records is the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
}

impl SourceConfig {
    /// What is wrong with a source's settings, if anything; `inline` is
    /// whether its secrets come with it (a tenant's, through the API)
    /// rather than from the operator's environment or files.
    pub fn check(&self, inline: bool) -> Result<(), String> {
        let safe = |text: &str| {
            !text.is_empty()
                && text.len() <= 64
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !safe(&self.name) || !safe(&self.tenant) {
            return Err("names are 1 to 64 of a-z, A-Z, 0-9, `-` and `_`".into());
        }
        if self.kind != SourceKind::Poll {
            return Ok(());
        }
        let url = self.url.as_deref().ok_or("a poll source needs `url`")?;
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(format!("`url` must be http:// or https://, not `{url}`"));
        }
        url.parse::<hyper::Uri>()
            .map_err(|err| format!("`url` is not a URL: {err}"))?;
        if self.max_pages == 0 || self.max_page_bytes == 0 || self.timeout_ms == 0 {
            return Err("`max-pages`, `max-page-bytes` and `timeout-ms` must be at least 1".into());
        }
        // A tenant's source shares the sidecar: its caps are the defaults at most.
        let (most_every, least_every, most_pages, most_bytes, most_timeout) = if inline {
            (7 * 86_400, 10, 100_000, default_max_page_bytes(), 120_000)
        } else {
            (30 * 86_400, 1, 10_000_000, 1 << 30, 600_000)
        };
        if self.every > Duration::from_secs(most_every) || self.every < Duration::from_secs(least_every) {
            return Err(format!("`every` is from {least_every}s to {most_every}s"));
        }
        if self.max_pages > most_pages || self.max_page_bytes > most_bytes || self.timeout_ms > most_timeout {
            return Err(format!(
                "`max-pages` is at most {most_pages}, `max-page-bytes` {most_bytes} and `timeout-ms` {most_timeout}"
            ));
        }
        let kind = &self.event_kind;
        if kind.is_empty() || kind.len() > 64 || kind.chars().any(char::is_control) {
            return Err("`event-kind` is 1 to 64 bytes, with no control characters".into());
        }
        for (key, path) in [("records", Some(&self.records)), ("id", Some(&self.id))]
            .into_iter()
            .chain([("version", self.version.as_ref())])
        {
            if let Some(path) = path {
                sluice_guest::mapping::CompiledPath::compile(path)
                    .map_err(|err| format!("`{key}` is not a JSONPath: {err}"))?;
            }
        }
        if let Some(next) = &self.next {
            next.check()?;
        }
        if let Some(auth) = &self.auth {
            auth.check(inline).map_err(|err| format!("auth: {err}"))?;
        }
        Ok(())
    }
}

impl NextPageConfig {
    fn check(&self) -> Result<(), String> {
        match (&self.cursor, &self.param, &self.link, &self.page) {
            (Some(cursor), Some(_), None, None) => sluice_guest::mapping::CompiledPath::compile(cursor)
                .map(drop)
                .map_err(|err| format!("next: `cursor` is not a JSONPath: {err}")),
            (Some(_), None, None, None) => {
                Err("next: `cursor` needs `param`, the query parameter that carries it".into())
            }
            (None, None, Some(_), None) | (None, None, None, Some(_)) => Ok(()),
            _ => Err("next: set one of `cursor` (with `param`), `link` or `page`".into()),
        }
    }
}

fn default_tolerance() -> u64 {
    300
}

fn default_encoding() -> String {
    "hex".into()
}

fn default_every() -> Duration {
    Duration::from_secs(60)
}

fn default_records() -> String {
    "$[*]".into()
}

fn default_id() -> String {
    "$.id".into()
}

fn default_event_kind() -> String {
    "product".into()
}

fn default_max_pages() -> u32 {
    10_000
}

fn default_max_page_bytes() -> usize {
    16 << 20
}

fn default_page_timeout() -> u64 {
    30_000
}
