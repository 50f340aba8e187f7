//! Recording a channel's live events as fixture cases: the next N events
//! it runs (a [`Recording`] on the channel), or the newest N of the ingest
//! log, each with today's outcome, redacted (see [`crate::change::redact`]).

use std::sync::Mutex;

use serde_json::Value;
use sluice_engine::Pipeline;
use sluice_engine::event::EventJson;

use crate::change::redact::Redactor;

/// Most events one recording takes.
pub const MAX_RECORDED: usize = 1000;

/// Most bytes of events one recording holds, every field counted: a
/// recording ends early, with what it has, rather than hold
/// `MAX_RECORDED` events of the largest size.
pub const MAX_RECORDED_BYTES: usize = 16 << 20;

/// What an event holds in memory, in bytes: every text field and the payload.
fn event_bytes(event: &EventJson) -> usize {
    let texts = [
        &event.id,
        &event.kind,
        &event.tenant,
        &event.channel,
        &event.source,
    ];
    texts.iter().map(|text| text.len()).sum::<usize>()
        + event.correlation_id.as_ref().map_or(0, String::len)
        + event.payload.get().len()
}

/// A channel's next events, captured as they run.
pub struct Recording {
    /// How many to take.
    pub wanted: usize,
    /// JSONPaths to redact.
    pub redact: Vec<String>,
    /// The redaction key.
    pub key: Vec<u8>,
    captured: Mutex<Captured>,
}

#[derive(Default)]
struct Captured {
    events: Vec<EventJson>,
    bytes: usize,
    /// The next event would not have fit in [`MAX_RECORDED_BYTES`].
    full: bool,
}

impl Recording {
    /// A recording of the next `wanted` events.
    pub fn new(wanted: usize, redact: Vec<String>, key: Vec<u8>) -> Self {
        Self {
            wanted,
            redact,
            key,
            captured: Mutex::default(),
        }
    }

    /// Takes events of a batch the channel ran, until it has enough.
    pub fn capture(&self, events: &[EventJson]) {
        let mut captured = self.lock();
        for event in events {
            if !self.take(&mut captured, event_bytes(event)) {
                return;
            }
            captured.events.push(event.clone());
        }
    }

    /// Takes `event` if there is room for it; false once there is not.
    pub fn offer(&self, event: EventJson) -> bool {
        let mut captured = self.lock();
        let room = self.take(&mut captured, event_bytes(&event));
        if room {
            captured.events.push(event);
        }
        room
    }

    /// Counts an event of `bytes` in, if it has room for it.
    fn take(&self, captured: &mut Captured, bytes: usize) -> bool {
        if captured.full || captured.events.len() >= self.wanted {
            return false;
        }
        let bytes = captured.bytes + bytes;
        if bytes > MAX_RECORDED_BYTES && !captured.events.is_empty() {
            captured.full = true;
            return false;
        }
        captured.bytes = bytes;
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Captured> {
        self.captured.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many it has.
    pub fn captured(&self) -> usize {
        self.lock().events.len()
    }

    /// Whether it has all it wanted, or all it may hold.
    pub fn done(&self) -> bool {
        let captured = self.lock();
        captured.full || captured.events.len() >= self.wanted
    }

    /// The captured events.
    pub fn events(&self) -> Vec<EventJson> {
        self.lock().events.clone()
    }
}

/// Fixture cases of `events`: each redacted, then run through `pipeline`
/// (blocking) for its expected outcome, which is redacted too:
/// `[{"name", "input", "expected"}]`, named after the event id.
pub fn cases(
    events: &[EventJson],
    redactor: &mut Redactor,
    pipeline: &Pipeline,
) -> Result<Vec<Value>, String> {
    let mut inputs = Vec::with_capacity(events.len());
    let mut texts = Vec::with_capacity(events.len());
    for event in events {
        let mut value = serde_json::to_value(event).map_err(|err| err.to_string())?;
        redactor.event(&mut value);
        let text = value.to_string();
        inputs.push(serde_json::from_str::<EventJson>(&text).map_err(|err| err.to_string())?);
        texts.push(value);
    }
    let outcomes = pipeline.run(&inputs);
    let mut used = std::collections::HashSet::new();
    let mut cases = Vec::with_capacity(inputs.len());
    for ((input, value), outcome) in inputs.iter().zip(texts).zip(outcomes) {
        let mut expected = serde_json::to_value(&outcome).map_err(|err| err.to_string())?;
        if let Some(error) = expected.get_mut("error").and_then(Value::as_object_mut) {
            error.remove("version");
        }
        redactor.outcome(&mut expected);
        let mut name = case_name(&input.id);
        let mut n = 2;
        while !used.insert(name.clone()) {
            name = format!("{}-{n}", case_name(&input.id));
            n += 1;
        }
        cases.push(serde_json::json!({"name": name, "input": value, "expected": expected}));
    }
    Ok(cases)
}

/// `recorded-<id>`, with every character that is not a letter, digit, `-`
/// or `_` as `_`, at most 80 characters: a safe folder name on any system.
fn case_name(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(71)
        .collect();
    format!("recorded-{safe}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_are_safe_folder_names() {
        assert_eq!(
            case_name("gid://shopify/Product/7"),
            "recorded-gid___shopify_Product_7"
        );
        assert_eq!(case_name("../../etc"), "recorded-______etc");
        assert_eq!(case_name(&"x".repeat(500)).len(), 80);
    }

    #[test]
    fn a_recording_takes_only_what_it_wants() {
        let recording = Recording::new(3, Vec::new(), Vec::new());
        let events = sluice_engine::event::parse_events(
            "{\"id\":\"1\",\"kind\":\"product\",\"payload\":{}}\n{\"id\":\"2\",\"kind\":\"product\",\"payload\":{}}",
        )
        .unwrap();
        recording.capture(&events);
        assert!(!recording.done());
        recording.capture(&events);
        assert!(recording.done());
        assert_eq!(
            recording
                .events()
                .iter()
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>(),
            ["1", "2", "1"]
        );
    }

    #[test]
    fn a_recording_ends_with_what_it_has_before_it_holds_too_many_bytes() {
        let recording = Recording::new(MAX_RECORDED, Vec::new(), Vec::new());
        let big = "x".repeat(MAX_RECORDED_BYTES / 3);
        let line = format!("{{\"id\":\"1\",\"kind\":\"product\",\"payload\":{{\"d\":\"{big}\"}}}}\n");
        let events = sluice_engine::event::parse_events(&line.repeat(2)).unwrap();
        recording.capture(&events);
        assert!(!recording.done());
        recording.capture(&events);
        assert!(recording.done(), "the third would pass the byte cap");
        assert_eq!(recording.captured(), 2);
    }

    /// The hardening issue's case: events whose `kind` is large and whose
    /// payload is empty were not counted. Every field counts now.
    #[test]
    fn every_field_of_an_event_counts_against_the_byte_cap() {
        let recording = Recording::new(MAX_RECORDED, Vec::new(), Vec::new());
        let big = "k".repeat(MAX_RECORDED_BYTES / 4 - 16);
        let line = format!("{{\"id\":\"1\",\"kind\":\"{big}\",\"payload\":{{}}}}\n");
        let events = sluice_engine::event::parse_events(&line.repeat(5)).unwrap();
        recording.capture(&events);
        assert!(recording.done());
        assert_eq!(recording.captured(), 4);
    }
}
