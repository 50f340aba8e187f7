//! The JSON forms of events and outcomes, as they appear in fixtures, in
//! JSONL files and on the HTTP API.
//!
//! Payloads are kept as raw JSON text end to end: the host never parses or
//! re-serializes them, so numbers (64-bit ids, prices) arrive exactly as
//! the source wrote them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Fault;
use crate::bindings::{self, EventKind, Method};

/// An event as JSON. `tenant`, `channel`, `source` and `correlation_id`
/// may be left out; the correlation id then defaults to the event id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventJson {
    /// Unique, stable id (for example a webhook id).
    pub id: String,
    /// `product`, `inventory`, `price` or any other name.
    pub kind: String,
    /// Owning tenant.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// Channel the event is shaped for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
    /// Originating system.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Correlates log lines and outbound calls; defaults to `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The body, any JSON value, kept verbatim.
    pub payload: Box<RawValue>,
    /// The source's topic (`products/update`); empty when it had none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub topic: String,
    /// Request headers a webhook source kept for transforms, names in lower case.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// How to deliver the event, as a contract 0.2 step chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryJson>,
}

/// A delivery hint: the method and the URL's `{param:NAME}` values for one event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryJson {
    /// `post`, `put`, `patch` or `delete`; the destination's own method when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<MethodJson>,
    /// Values for the URL's `{param:NAME}` placeholders.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

/// The methods a delivery hint may choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodJson {
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
}

impl MethodJson {
    /// The HTTP method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodJson::Post => "POST",
            MethodJson::Put => "PUT",
            MethodJson::Patch => "PATCH",
            MethodJson::Delete => "DELETE",
        }
    }
}

impl DeliveryJson {
    fn to_wit(&self) -> bindings::DeliveryHint {
        bindings::DeliveryHint {
            method: self.method.map(|method| match method {
                MethodJson::Post => Method::Post,
                MethodJson::Put => Method::Put,
                MethodJson::Patch => Method::Patch,
                MethodJson::Delete => Method::Delete,
            }),
            params: self.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    fn from_wit(hint: bindings::DeliveryHint) -> Self {
        Self {
            method: hint.method.map(|method| match method {
                Method::Post => MethodJson::Post,
                Method::Put => MethodJson::Put,
                Method::Patch => MethodJson::Patch,
                Method::Delete => MethodJson::Delete,
            }),
            // A name given twice: the last value wins.
            params: hint.params.into_iter().collect(),
        }
    }
}

impl EventJson {
    /// The event in the contract's form, ready to pass to a component.
    pub fn to_wit(&self) -> bindings::Event {
        bindings::Event {
            id: self.id.clone(),
            kind: kind_from_name(&self.kind),
            tenant: self.tenant.clone(),
            channel: self.channel.clone(),
            source: self.source.clone(),
            correlation_id: self.correlation_id.clone().unwrap_or_else(|| self.id.clone()),
            payload: self.payload.get().to_string(),
            topic: self.topic.clone(),
            headers: self.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            delivery: self.delivery.as_ref().map(DeliveryJson::to_wit),
        }
    }

    /// Converts an event a component emitted. Fails when its payload is not
    /// valid JSON, with serde's description of where.
    pub fn from_wit(event: bindings::Event) -> Result<Self, serde_json::Error> {
        let payload = RawValue::from_string(event.payload)?;
        let correlation_id = (event.correlation_id != event.id).then_some(event.correlation_id);
        Ok(Self {
            id: event.id,
            kind: kind_name(&event.kind).to_string(),
            tenant: event.tenant,
            channel: event.channel,
            source: event.source,
            correlation_id,
            payload,
            topic: event.topic,
            headers: event.headers.into_iter().collect(),
            delivery: event.delivery.map(DeliveryJson::from_wit),
        })
    }
}

/// The contract's kind for a JSON kind name.
pub fn kind_from_name(name: &str) -> EventKind {
    match name {
        "product" => EventKind::Product,
        "inventory" => EventKind::Inventory,
        "price" => EventKind::Price,
        other => EventKind::Other(other.to_string()),
    }
}

/// The JSON name of a contract kind.
pub fn kind_name(kind: &EventKind) -> &str {
    match kind {
        EventKind::Product => "product",
        EventKind::Inventory => "inventory",
        EventKind::Price => "price",
        EventKind::Other(name) => name,
    }
}

/// One business-rule failure, with the RFC 9535 path of the bad field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViolationJson {
    /// Normalized JSON path into the payload the step received.
    pub path: String,
    /// Stable machine-readable code.
    pub code: String,
    /// Human explanation.
    pub message: String,
    /// The fan-out child the path points into, when it is not the input event itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

impl ViolationJson {
    /// A violation found in the step's event `event_id`, for input event `input_id`.
    pub fn new(v: bindings::Violation, event_id: &str, input_id: &str) -> Self {
        Self {
            path: v.path,
            code: v.code,
            message: v.message,
            event: (event_id != input_id).then(|| event_id.to_string()),
        }
    }
}

/// What became of one input event after a step or a whole pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OutcomeJson {
    /// Deliver these events.
    Emit {
        /// The events to deliver, in order.
        events: Vec<EventJson>,
    },
    /// Nothing to deliver, on purpose.
    Drop {
        /// Why, in words.
        reason: String,
    },
    /// The event breaks the destination's rules.
    Reject {
        /// Every rule broken, with paths.
        violations: Vec<ViolationJson>,
    },
    /// Deliver these events, and dead-letter the rest of the input with
    /// these violations (contract 0.2).
    Partial {
        /// The events to deliver, in order.
        events: Vec<EventJson>,
        /// What was left out, with paths.
        violations: Vec<ViolationJson>,
    },
    /// A technical fault: the module trapped, hit a limit or broke the contract.
    Error {
        /// Which module, on which event, and what happened.
        error: Fault,
    },
}

impl OutcomeJson {
    /// The outcome's tag, as in JSON (`emit`, `drop`, `reject`, `error`).
    pub fn tag(&self) -> &'static str {
        match self {
            OutcomeJson::Emit { .. } => "emit",
            OutcomeJson::Drop { .. } => "drop",
            OutcomeJson::Reject { .. } => "reject",
            OutcomeJson::Partial { .. } => "partial",
            OutcomeJson::Error { .. } => "error",
        }
    }

    /// About how many bytes the outcome takes as JSON, without writing it:
    /// for a host that decides whether writing it is small enough to do on
    /// an async thread. A fault counts as its largest (message and log).
    pub fn approx_bytes(&self) -> usize {
        let events = |events: &[EventJson]| -> usize {
            events
                .iter()
                .map(|e| {
                    e.payload.get().len() + e.id.len() + e.kind.len() + e.source.len() + e.topic.len() + 64
                })
                .sum()
        };
        let violations = |found: &[ViolationJson]| -> usize {
            found
                .iter()
                .map(|v| v.path.len() + v.code.len() + v.message.len() + 48)
                .sum()
        };
        match self {
            OutcomeJson::Emit { events: emitted } => events(emitted),
            OutcomeJson::Drop { reason } => reason.len() + 32,
            OutcomeJson::Reject { violations: found } => violations(found),
            OutcomeJson::Partial {
                events: emitted,
                violations: found,
            } => events(emitted) + violations(found),
            OutcomeJson::Error { .. } => 32 << 10,
        }
    }
}

/// Parses a JSON or JSONL text into events. A JSON array, a single object,
/// or one object per line are all accepted; errors name the line and the
/// JSON path of the bad field.
pub fn parse_events(text: &str) -> Result<Vec<EventJson>, EventParseError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return parse_one::<Vec<EventJson>>(text, None);
    }
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<&RawValue>();
    let mut events = Vec::new();
    // Lines are counted as the stream moves on, never from the start again:
    // parsing stays linear in the size of the text.
    let mut line = 1;
    let mut counted_to = 0;
    loop {
        let before = stream.byte_offset();
        match stream.next() {
            None => return Ok(events),
            Some(Err(err)) => {
                return Err(EventParseError {
                    line: Some(err.line()),
                    path: "$".into(),
                    message: err.to_string(),
                });
            }
            Some(Ok(raw)) => {
                let skipped = text[before..].len() - text[before..].trim_start().len();
                let start = before + skipped;
                line += bytecount_newlines(&text.as_bytes()[counted_to..start]);
                counted_to = start;
                events.push(parse_one::<EventJson>(raw.get(), Some(line))?);
            }
        }
    }
}

fn bytecount_newlines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

fn parse_one<T: serde::de::DeserializeOwned>(text: &str, line: Option<usize>) -> Result<T, EventParseError> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|err| EventParseError {
        line,
        path: crate::diff::path_from_serde(err.path()),
        message: err.into_inner().to_string(),
    })
}

/// An input that is not a valid event, with where the problem is.
#[derive(Debug, thiserror::Error)]
#[error("{}at {path}: {message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct EventParseError {
    /// 1-based line of the event in a JSONL text.
    pub line: Option<usize>,
    /// Normalized JSON path of the bad field.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn event_line(n: usize) -> String {
        format!("{{\"id\":\"e-{n}\",\"kind\":\"product\",\"payload\":{{\"n\":{n}}}}}")
    }

    proptest! {
        /// Whatever the text, parsing answers (events or an error) and never panics.
        #[test]
        fn prop_parse_events_never_panics(text in "\\PC{0,400}") {
            let _ = parse_events(&text);
        }

        /// Near-valid input: valid events with one line broken somewhere,
        /// as JSON (`}` first) or as an event (a mistyped field). The error
        /// names exactly that line.
        #[test]
        fn prop_a_bad_jsonl_line_is_named(count in 1usize..60, bad in 0usize..60, blank in 0usize..3, syntax in any::<bool>()) {
            let bad = bad % count;
            let mut lines: Vec<String> = (0..count).map(event_line).collect();
            lines[bad] = if syntax {
                "}{\"id\": 1}".into()
            } else {
                "{\"id\": \"x\", \"kind\": 5, \"payload\": {}}".into()
            };
            let text = lines.join(&"\n".repeat(blank + 1));
            let err = parse_events(&text).unwrap_err();
            prop_assert_eq!(err.line, Some(bad * (blank + 1) + 1), "{}", err);
        }

        /// Valid JSONL, array or single object: every event comes back, in order.
        #[test]
        fn prop_valid_events_round_trip(count in 1usize..80, form in 0u8..3) {
            let events: Vec<String> = (0..count).map(event_line).collect();
            let text = match form {
                0 => events.join("\n"),
                1 => format!("[{}]", events.join(",")),
                _ => format!("  \n{}\n\n", events.join("\r\n")),
            };
            let parsed = parse_events(&text).unwrap();
            prop_assert_eq!(parsed.len(), count);
            for (n, event) in parsed.iter().enumerate() {
                prop_assert_eq!(&event.id, &format!("e-{n}"));
            }
        }
    }

    #[test]
    fn deep_nesting_neither_crashes_nor_changes_the_payload() {
        let payload = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep = format!("{{\"id\":\"e\",\"kind\":\"p\",\"payload\":{payload}}}");
        let events = parse_events(&deep).unwrap();
        assert_eq!(events[0].payload.get(), payload, "kept verbatim, never walked");
    }
}
