//! Conveniences on the contract's [`Event`] type.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::path::JsonPath;
use crate::{DeliveryHint, Event, EventKind, Method, Violation};

impl Event {
    /// Parses the payload into `T`. On failure the violation names the JSON
    /// path of the field that did not fit, so the source data can be fixed.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, Violation> {
        // Tracking the path costs an allocation per key: only a payload that
        // failed is parsed again to say where.
        if let Ok(parsed) = serde_json::from_str(&self.payload) {
            return Ok(parsed);
        }
        let mut de = serde_json::Deserializer::from_str(&self.payload);
        serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = JsonPath::from_serde(err.path());
            Violation {
                path: path.to_string(),
                code: "invalid-payload".into(),
                message: without_position(&err.into_inner().to_string()),
            }
        })
    }

    /// A new event with this event's identity (id, kind, tenant, channel,
    /// source, correlation id, topic, headers, delivery hint) and `payload`
    /// as its body.
    pub fn with_payload<T: Serialize + ?Sized>(&self, payload: &T) -> Event {
        Event {
            id: self.id.clone(),
            kind: self.kind.clone(),
            tenant: self.tenant.clone(),
            channel: self.channel.clone(),
            source: self.source.clone(),
            correlation_id: self.correlation_id.clone(),
            payload: serde_json::to_string(payload)
                .unwrap_or_else(|err| format!("{{\"serialize-error\":{:?}}}", err.to_string())),
            topic: self.topic.clone(),
            headers: self.headers.clone(),
            delivery: self.delivery.clone(),
        }
    }

    /// The value of a header the source kept (`x-shopify-shop-domain`);
    /// the name is matched without regard to case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// This event, delivered with `method` instead of the destination's
    /// (a discontinued product becomes a `Method::Delete`).
    pub fn deliver_as(mut self, method: Method) -> Event {
        self.delivery.get_or_insert_with(empty_hint).method = Some(method);
        self
    }

    /// This event, with `value` for the destination URL's `{param:NAME}`
    /// placeholder (percent-encoded by the host).
    pub fn with_param(mut self, name: &str, value: impl Into<String>) -> Event {
        let hint = self.delivery.get_or_insert_with(empty_hint);
        hint.params.retain(|(key, _)| key != name);
        hint.params.push((name.to_string(), value.into()));
        self
    }
}

fn empty_hint() -> DeliveryHint {
    DeliveryHint {
        method: None,
        params: Vec::new(),
    }
}

/// serde_json's message without its " at line 1 column 101" suffix: the
/// path already says where, and positions in a payload text mean little.
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

impl EventKind {
    /// The kind's name as it appears in JSON (`product`, `inventory`, …).
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::Product => "product",
            EventKind::Inventory => "inventory",
            EventKind::Price => "price",
            EventKind::Other(name) => name,
        }
    }
}
