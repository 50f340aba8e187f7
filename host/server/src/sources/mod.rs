//! Webhook sources: a platform's signed delivery to
//! `POST /v1/sources/{tenant}/{source}` becomes an event with no proxy in
//! front. The signature is the credential (no Bearer token); the event's id
//! is the platform's own delivery identity, so a platform retry is a
//! duplicate; its kind comes from the topic; its payload is the raw body,
//! verbatim.

pub(crate) mod catalog;
pub(crate) mod poll;
pub(crate) mod verify;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::HeaderMap;

use crate::config::{InlineSecrets, SourceConfig, SourceKind};
use crate::outbound::guard::NetworkPolicy;
pub use catalog::Catalog;
use verify::{Encoding, Refusal, Scheme, Verifier};

/// Longest topic header read, in bytes.
const MAX_TOPIC_BYTES: usize = 256;
/// Longest header value kept for transforms, in bytes.
const MAX_HEADER_BYTES: usize = 512;

/// A source, its secrets loaded.
pub struct Source {
    /// As configured.
    pub config: SourceConfig,
    /// Its secrets, when a tenant sent them through the API (`None`: from `sluice.toml`).
    pub inline: Option<InlineSecrets>,
    how: How,
}

/// How a source's events arrive.
enum How {
    /// Signed webhooks, checked by this verifier.
    Webhook(Verifier),
    /// Pages read from an API.
    Poll(Arc<poll::Poller>),
}

/// What a verified delivery is.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// An event: the envelope to ingest, as JSON text.
    Event(String),
    /// WooCommerce's unsigned ping when a webhook is created: answered 200, no event.
    Ping,
}

/// Why a delivery is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    /// The signature does not hold (the reason is counted, never answered).
    #[error("the delivery is not signed for this source")]
    Unsigned(Refusal),
    /// The body is not JSON.
    #[error("the body of a `{kind}` delivery is not JSON")]
    NotJson {
        /// The source's kind.
        kind: &'static str,
    },
    /// A topic over 256 bytes or with control characters.
    #[error("the delivery's topic is over 256 bytes or holds control characters")]
    BadTopic,
    /// The delivery does not say which delivery it is.
    #[error("the delivery has no id: `{field}` is missing or empty")]
    NoId {
        /// Where the id should be.
        field: &'static str,
    },
}

/// The secrets a source entry may carry inline through the API.
pub const INLINE_SECRETS: &[&str] = &[
    "secret",
    "previous-secret",
    "auth.bearer",
    "auth.password",
    "auth.client-secret",
    "auth.refresh-token",
];

impl Source {
    /// The source of `config`: an operator's (`inline` `None`: secrets from
    /// the environment or files under `base`, any address reachable) or a
    /// tenant's (secrets inline, addresses under `policy`).
    pub fn load(
        config: &SourceConfig,
        inline: Option<InlineSecrets>,
        base: &Path,
        policy: &Arc<NetworkPolicy>,
    ) -> Result<Self, String> {
        config.check(inline.is_some())?;
        let secrets = inline.clone().unwrap_or_default();
        let how = if config.kind == SourceKind::Poll {
            let policy = inline.is_some().then(|| policy.clone());
            How::Poll(Arc::new(poll::Poller::new(config, &secrets, base, policy)?))
        } else {
            How::Webhook(verifier(config, &secrets, base)?)
        };
        Ok(Self {
            config: config.clone(),
            inline,
            how,
        })
    }

    /// The poller, for a poll source.
    pub fn poller(&self) -> Option<&Arc<poll::Poller>> {
        match &self.how {
            How::Poll(poller) => Some(poller),
            How::Webhook(_) => None,
        }
    }

    fn verifier(&self) -> Result<&Verifier, SourceError> {
        match &self.how {
            How::Webhook(verifier) => Ok(verifier),
            // A poll source takes no webhooks: refused like an unknown one.
            How::Poll(_) => Err(SourceError::Unsigned(Refusal::Missing)),
        }
    }

    /// What can be refused from the headers alone (see [`Verifier::precheck`]).
    pub fn precheck(&self, headers: &HeaderMap) -> Result<(), SourceError> {
        if self.config.kind == SourceKind::Woocommerce && !headers.contains_key("x-wc-webhook-signature") {
            // Perhaps the creation ping, which is unsigned: decided on its body.
            return Ok(());
        }
        self.verifier()?
            .precheck(headers, std::time::SystemTime::now())
            .map_err(SourceError::Unsigned)
    }

    /// Verifies a delivery and makes its event, or says why not.
    pub fn delivery(&self, headers: &HeaderMap, body: &[u8]) -> Result<Delivery, SourceError> {
        if self.config.kind == SourceKind::Woocommerce
            && !headers.contains_key("x-wc-webhook-signature")
            && is_woocommerce_ping(body)
        {
            return Ok(Delivery::Ping);
        }
        self.verifier()?
            .verify(headers, body, std::time::SystemTime::now())
            .map_err(SourceError::Unsigned)?;
        let payload: serde_json::Value = serde_json::from_slice(body).map_err(|_| SourceError::NotJson {
            kind: self.config.kind.name(),
        })?;
        let (id, topic) = self.identity(headers, &payload)?;
        if topic.len() > MAX_TOPIC_BYTES || topic.chars().any(char::is_control) {
            return Err(SourceError::BadTopic);
        }
        // Scoped to the source: two sources (two shops) may number alike.
        let id = format!("{}:{id}", self.config.name);
        let kind = self.kind_of(&topic);
        let text = std::str::from_utf8(body).expect("JSON is UTF-8");
        let envelope = format!(
            r#"{{"id":{},"kind":{},"tenant":{},"source":{},"topic":{},"headers":{},"payload":{}}}"#,
            serde_json::Value::from(id),
            serde_json::Value::from(kind),
            serde_json::Value::from(self.config.tenant.as_str()),
            serde_json::Value::from(self.config.name.as_str()),
            serde_json::Value::from(topic),
            serde_json::Value::Object(self.kept_headers(headers)),
            text
        );
        Ok(Delivery::Event(envelope))
    }

    /// The request headers a transform may read (contract 0.2): the
    /// platform's context (the shop, the API version, the topic) and the
    /// source's own id and topic headers. A value over 512 bytes or with a
    /// control character is left out, never an error.
    fn kept_headers(&self, headers: &HeaderMap) -> serde_json::Map<String, serde_json::Value> {
        let platform: &[&str] = match self.config.kind {
            SourceKind::Shopify => &[
                "x-shopify-shop-domain",
                "x-shopify-topic",
                "x-shopify-api-version",
                "x-shopify-webhook-id",
                "x-shopify-event-id",
                "x-shopify-triggered-at",
            ],
            SourceKind::Woocommerce => &[
                "x-wc-webhook-source",
                "x-wc-webhook-topic",
                "x-wc-webhook-resource",
                "x-wc-webhook-event",
                "x-wc-webhook-id",
                "x-wc-webhook-delivery-id",
            ],
            SourceKind::Square => &["square-initial-delivery-timestamp"],
            SourceKind::StandardWebhooks => &["webhook-id", "webhook-timestamp"],
            SourceKind::Hmac | SourceKind::SharedSecret | SourceKind::Poll => &[],
        };
        let own = [
            self.config.id_header.as_deref(),
            self.config.topic_header.as_deref(),
        ];
        let names = platform
            .iter()
            .map(|name| name.to_string())
            .chain(own.into_iter().flatten().map(str::to_ascii_lowercase));
        let mut kept = serde_json::Map::new();
        for name in names {
            let Some(value) = headers.get(name.as_str()).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            if value.len() <= MAX_HEADER_BYTES && !value.chars().any(char::is_control) {
                kept.insert(name, value.into());
            }
        }
        kept
    }

    /// The delivery's id (the platform's own, so a retry is a duplicate) and its topic.
    fn identity(
        &self,
        headers: &HeaderMap,
        payload: &serde_json::Value,
    ) -> Result<(String, String), SourceError> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= 512)
                .map(str::to_string)
        };
        let field = |name: &str| payload.get(name).and_then(|v| v.as_str()).map(str::to_string);
        let topic = |value: Option<String>| value.unwrap_or_default();
        match self.config.kind {
            SourceKind::Shopify => Ok((
                header("x-shopify-event-id")
                    .or_else(|| header("x-shopify-webhook-id"))
                    .ok_or(SourceError::NoId {
                        field: "X-Shopify-Event-Id",
                    })?,
                topic(header("x-shopify-topic")),
            )),
            SourceKind::Woocommerce => Ok((
                header("x-wc-webhook-delivery-id").ok_or(SourceError::NoId {
                    field: "X-WC-Webhook-Delivery-ID",
                })?,
                topic(header("x-wc-webhook-topic")),
            )),
            SourceKind::Square => Ok((
                field("event_id")
                    .filter(|id| !id.is_empty() && id.len() <= 512)
                    .ok_or(SourceError::NoId {
                        field: "$['event_id']",
                    })?,
                topic(field("type")),
            )),
            SourceKind::StandardWebhooks => Ok((
                header("webhook-id").ok_or(SourceError::NoId { field: "webhook-id" })?,
                topic(field("type")),
            )),
            SourceKind::Poll => Err(SourceError::NoId { field: "webhook" }),
            SourceKind::Hmac | SourceKind::SharedSecret => {
                let name = self
                    .config
                    .id_header
                    .as_deref()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                let id = header(&name).ok_or(SourceError::NoId { field: "id-header" })?;
                let topic_value = self
                    .config
                    .topic_header
                    .as_ref()
                    .and_then(|name| header(&name.to_ascii_lowercase()));
                Ok((id, topic(topic_value)))
            }
        }
    }

    /// The event kind of a topic: the source's own table, else by its words.
    fn kind_of(&self, topic: &str) -> String {
        if let Some(kind) = self.config.kinds.get(topic) {
            return kind.clone();
        }
        default_kind(topic)
    }
}

fn verifier(config: &SourceConfig, inline: &InlineSecrets, base: &Path) -> Result<Verifier, String> {
    let mut secrets = vec![
        inline
            .resolve(
                "secret",
                config.secret_env.as_deref(),
                config.secret_file.as_deref(),
                base,
            )?
            .ok_or(
                "a source needs `secret-env` or `secret-file` (secrets are never inline in sluice.toml)",
            )?,
    ];
    if let Some(previous) = inline.resolve(
        "previous-secret",
        config.previous_secret_env.as_deref(),
        config.previous_secret_file.as_deref(),
        base,
    )? {
        secrets.push(previous);
    }
    if matches!(config.kind, SourceKind::Hmac | SourceKind::SharedSecret) && config.id_header.is_none() {
        // A body's hash is no delivery id: the same body twice (stock
        // 5, 4, then 5 again) would be taken for a duplicate.
        return Err(format!(
            "a `{}` source needs `id-header`, the header with each delivery's id",
            config.kind.name()
        ));
    }
    let scheme = match config.kind {
        SourceKind::Poll => return Err("a poll source takes no webhooks".into()),
        SourceKind::Shopify => Scheme::Shopify,
        SourceKind::Woocommerce => Scheme::WooCommerce,
        SourceKind::Square => Scheme::Square {
            notification_url: config
                .notification_url
                .clone()
                .ok_or("a square source needs `notification-url`, exactly as configured at Square")?,
        },
        SourceKind::StandardWebhooks => Scheme::StandardWebhooks {
            tolerance: Duration::from_secs(config.tolerance_secs),
        },
        SourceKind::Hmac => Scheme::Hmac {
            header: config
                .header
                .clone()
                .ok_or("an hmac source needs `header`")?
                .to_ascii_lowercase(),
            prefix: config.prefix.clone(),
            encoding: match config.encoding.as_str() {
                "hex" => Encoding::Hex,
                "base64" => Encoding::Base64,
                other => return Err(format!("`encoding` is `hex` or `base64`, not `{other}`")),
            },
        },
        SourceKind::SharedSecret => Scheme::SharedSecret {
            header: config
                .header
                .clone()
                .ok_or("a shared-secret source needs `header`")?
                .to_ascii_lowercase(),
        },
    };
    Verifier::new(scheme, &secrets)
}

/// `inventory` for stock topics (`inventory_levels/update`,
/// `inventory.count.updated`), `price` for price topics, `product` for
/// product and catalog topics; any other topic is its own kind
/// (`orders/create`), so a transform never takes an order for a product.
pub fn default_kind(topic: &str) -> String {
    let lower = topic.to_ascii_lowercase();
    let kind = if lower.contains("inventory") || lower.contains("stock") {
        "inventory"
    } else if lower.contains("price") {
        "price"
    } else if ["product", "catalog", "item", "variant"]
        .iter()
        .any(|word| lower.contains(word))
    {
        "product"
    } else if topic.is_empty() {
        "webhook"
    } else {
        return topic.to_string();
    };
    kind.to_string()
}

/// WooCommerce's creation ping: a form body `webhook_id=N` and nothing else.
fn is_woocommerce_ping(body: &[u8]) -> bool {
    let pairs: BTreeMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    pairs.len() == 1
        && pairs
            .get("webhook_id")
            .is_some_and(|id| id.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_map_to_kinds_and_the_woocommerce_ping_is_known() {
        assert_eq!(default_kind("products/update"), "product");
        assert_eq!(default_kind("orders/create"), "orders/create");
        assert_eq!(default_kind(""), "webhook");
        assert_eq!(default_kind("inventory_levels/update"), "inventory");
        assert_eq!(default_kind("inventory.count.updated"), "inventory");
        assert_eq!(default_kind("product.updated"), "product");
        assert!(is_woocommerce_ping(b"webhook_id=12"));
        assert!(!is_woocommerce_ping(b"webhook_id=12&x=1"));
        assert!(!is_woocommerce_ping(br#"{"id": 1}"#));
    }
}
