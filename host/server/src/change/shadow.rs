//! Trying a candidate pipeline on a live channel before it goes live.
//!
//! A [`Shadow`] runs every event of its channel through the candidate as
//! well, and a [`Comparison`] counts how the candidate's outcomes differ
//! from the current ones, per JSON path with a few samples. With a canary
//! share, the candidate's outcomes are used for that share of entities,
//! chosen by a stable hash of the entity key, so a SKU sees one version.
//! A backfill reuses the comparison over stored events.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;
use sluice_engine::event::{EventJson, OutcomeJson};
use sluice_engine::{Pipeline, PipelineSpec};

use crate::state::entity_key::EntityKey;

/// Samples kept per JSON path and for the candidate's own failures.
const SAMPLES: usize = 5;
/// Distinct JSON paths counted; differences at further paths are counted
/// under [`OTHER_PATHS`], so a candidate that invents keys cannot grow the report.
const MAX_PATHS: usize = 200;
/// Where differences at paths beyond [`MAX_PATHS`] are counted.
pub const OTHER_PATHS: &str = "(other paths)";
/// A sampled value is kept whole up to this many bytes of JSON; a longer
/// one is cut and kept as a string.
const SAMPLE_BYTES: usize = 1024;

/// A candidate pipeline running beside a channel's current one.
pub struct Shadow {
    /// The candidate as activated: every step's full version.
    pub spec: PipelineSpec,
    /// The candidate, loaded.
    pub pipeline: Pipeline,
    /// Per cent of entities delivered from the candidate (0: shadow only).
    pub canary_percent: u8,
    /// When the shadow started (ms since the epoch).
    pub started_ms: i64,
    /// How the candidate compares so far.
    pub comparison: Mutex<Comparison>,
}

/// Where a canary's outcomes came from, for one batch.
pub struct CanaryPick {
    /// Per event: true when the candidate's outcome is used.
    pub from_candidate: Vec<bool>,
    /// The candidate's module versions, as recorded with its deliveries.
    pub versions: Vec<String>,
}

impl Shadow {
    /// Compares the candidate's outcomes with the current ones and, for a
    /// canary, puts the candidate's outcome in place for its share of
    /// entities. `key` is the destination's entity key (none: by event id).
    pub fn apply(
        &self,
        events: &[EventJson],
        current: &mut [OutcomeJson],
        candidate: Vec<OutcomeJson>,
        key: Option<&EntityKey>,
    ) -> Option<CanaryPick> {
        Comparison::add_to(&self.comparison, events, current, &candidate);
        if self.canary_percent == 0 {
            return None;
        }
        let mut from_candidate = Vec::with_capacity(events.len());
        for ((event, now), next) in events.iter().zip(current.iter_mut()).zip(candidate) {
            let chosen = in_canary(&entity_of(event, now, &next, key), self.canary_percent);
            if chosen {
                *now = next;
            }
            from_candidate.push(chosen);
        }
        let delivered = from_candidate.iter().filter(|c| **c).count() as u64;
        self.comparison
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .from_candidate += delivered;
        Some(CanaryPick {
            from_candidate,
            versions: crate::state::versions(&self.pipeline),
        })
    }

    /// The report `GET /v1/channels/{c}/shadow` answers.
    pub fn report(&self) -> Value {
        let comparison = self.comparison.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = serde_json::to_value(&*comparison).unwrap_or(Value::Null);
        report["candidate"] = serde_json::to_value(&self.spec).unwrap_or(Value::Null);
        report["canary-percent"] = self.canary_percent.into();
        report["started-ms"] = self.started_ms.into();
        report
    }
}

/// The entity an event's outcome is about: the entity key of the first
/// event the current version emits, else the candidate's, else the event id.
fn entity_of(
    event: &EventJson,
    current: &OutcomeJson,
    candidate: &OutcomeJson,
    key: Option<&EntityKey>,
) -> String {
    let first = |outcome: &OutcomeJson| match outcome {
        OutcomeJson::Emit { events } => events.first().cloned(),
        _ => None,
    };
    match (key, first(current).or_else(|| first(candidate))) {
        (Some(key), Some(emitted)) => key.of(&emitted.payload, &event.id),
        _ => event.id.clone(),
    }
}

/// Whether an entity falls in a canary of `percent` per cent: a stable
/// hash (FNV-1a) of its key, so it stays on one side for the whole run.
pub fn in_canary(entity: &str, percent: u8) -> bool {
    let hash = entity.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    hash % 100 < u64::from(percent)
}

/// How a candidate's outcomes compare with the current ones.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Comparison {
    /// Events run through both.
    pub compared: u64,
    /// Events whose outcomes were the same.
    pub equal: u64,
    /// Events whose outcomes differed.
    pub different: u64,
    /// Per JSON path of the outcome: how many outcomes differ there, with samples.
    pub paths: BTreeMap<String, PathDifferences>,
    /// Events the candidate rejected (the current version may not have).
    pub candidate_rejected: u64,
    /// Events the candidate failed with a fault.
    pub candidate_faulted: u64,
    /// Up to five of the candidate's rejections and faults.
    pub candidate_failures: Vec<CandidateFailure>,
    /// Events whose candidate outcome a canary delivered.
    pub from_candidate: u64,
}

/// The differences found at one JSON path.
#[derive(Debug, Default, Serialize)]
pub struct PathDifferences {
    /// Outcomes that differ here.
    pub count: u64,
    /// Up to five of them.
    pub samples: Vec<Sample>,
}

/// One event's value at a path, before (current) and after (candidate);
/// `null` where a side has no value.
#[derive(Debug, Serialize)]
pub struct Sample {
    /// The input event's id.
    pub event: String,
    /// The current version's value.
    pub before: Value,
    /// The candidate's value.
    pub after: Value,
}

/// A rejection or fault of the candidate.
#[derive(Debug, Serialize)]
pub struct CandidateFailure {
    /// The input event's id.
    pub event: String,
    /// `reject` or `error`.
    pub outcome: &'static str,
    /// The violations or the fault.
    pub detail: Value,
}

impl Comparison {
    /// Compares one batch outside `shared`'s lock, then merges it in: the
    /// lock is held only for the merge, which is bounded by the report's
    /// caps, so a reader of the report (on an async thread) never waits
    /// for a comparison of large outputs.
    pub fn add_to(
        shared: &Mutex<Comparison>,
        events: &[EventJson],
        current: &[OutcomeJson],
        candidate: &[OutcomeJson],
    ) {
        let mut batch = Comparison::default();
        batch.add(events, current, candidate);
        shared.lock().unwrap_or_else(|e| e.into_inner()).merge(batch);
    }

    /// Adds another comparison's counts, paths and samples, within the caps.
    pub fn merge(&mut self, other: Comparison) {
        self.compared += other.compared;
        self.equal += other.equal;
        self.different += other.different;
        self.candidate_rejected += other.candidate_rejected;
        self.candidate_faulted += other.candidate_faulted;
        self.from_candidate += other.from_candidate;
        let room = SAMPLES.saturating_sub(self.candidate_failures.len());
        self.candidate_failures
            .extend(other.candidate_failures.into_iter().take(room));
        for (path, found) in other.paths {
            let path = if self.paths.len() < MAX_PATHS || self.paths.contains_key(&path) {
                path
            } else {
                OTHER_PATHS.to_string()
            };
            let at = self.paths.entry(path).or_default();
            at.count += found.count;
            let room = SAMPLES.saturating_sub(at.samples.len());
            at.samples.extend(found.samples.into_iter().take(room));
        }
    }

    /// Adds one batch: `current[i]` and `candidate[i]` are `events[i]`'s outcomes.
    pub fn add(&mut self, events: &[EventJson], current: &[OutcomeJson], candidate: &[OutcomeJson]) {
        for ((event, now), next) in events.iter().zip(current).zip(candidate) {
            self.compared += 1;
            let detail = match next {
                OutcomeJson::Reject { violations } => {
                    self.candidate_rejected += 1;
                    Some(serde_json::to_value(violations))
                }
                OutcomeJson::Error { error } => {
                    self.candidate_faulted += 1;
                    Some(serde_json::to_value(error))
                }
                _ => None,
            };
            if let Some(detail) = detail
                && self.candidate_failures.len() < SAMPLES
            {
                self.candidate_failures.push(CandidateFailure {
                    event: event.id.clone(),
                    outcome: next.tag(),
                    detail: sample(detail.ok()),
                });
            }
            let differences = sluice_engine::diff::diff(&comparable(now), &comparable(next));
            if differences.is_empty() {
                self.equal += 1;
                continue;
            }
            self.different += 1;
            // Differences past the diff's own cap are counted with the other paths.
            let uncounted = differences.total - differences.shown.len() as u64;
            if uncounted > 0 {
                self.paths.entry(OTHER_PATHS.to_string()).or_default().count += uncounted;
            }
            for difference in differences.shown {
                // A candidate's member names can be megabytes long: paths are cut too.
                let cut = cut_text(difference.path);
                let path = if self.paths.len() < MAX_PATHS || self.paths.contains_key(&cut) {
                    cut
                } else {
                    OTHER_PATHS.to_string()
                };
                let at = self.paths.entry(path).or_default();
                at.count += 1;
                if at.samples.len() < SAMPLES {
                    at.samples.push(Sample {
                        event: event.id.clone(),
                        before: sample(difference.expected),
                        after: sample(difference.actual),
                    });
                }
            }
        }
    }
}

/// An outcome as compared: its JSON, without module versions (which
/// differ between any two versions by definition).
fn comparable(outcome: &OutcomeJson) -> Value {
    // An outcome that cannot become a value (nested past serde_json's
    // depth limit) is kept as its text: two such outcomes still differ.
    let mut value = serde_json::to_value(outcome).unwrap_or_else(|_| {
        Value::String(serde_json::to_string(outcome).unwrap_or_else(|err| err.to_string()))
    });
    if let Some(error) = value.get_mut("error").and_then(Value::as_object_mut) {
        error.remove("version");
    }
    value
}

/// A sampled value, cut to [`SAMPLE_BYTES`] of JSON.
fn sample(value: Option<Value>) -> Value {
    let value = value.unwrap_or(Value::Null);
    let text = value.to_string();
    if text.len() <= SAMPLE_BYTES {
        return value;
    }
    Value::String(cut_text(text))
}

/// `text` cut to [`SAMPLE_BYTES`] (on a character boundary), saying how long it was.
fn cut_text(text: String) -> String {
    if text.len() <= SAMPLE_BYTES {
        return text;
    }
    let mut cut = SAMPLE_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..cut], text.len())
}

#[cfg(test)]
mod tests {
    use sluice_engine::event::parse_events;

    use super::*;

    fn emit(id: &str, payload: Value) -> OutcomeJson {
        let event = serde_json::json!({"id": id, "kind": "product", "payload": payload});
        OutcomeJson::Emit {
            events: parse_events(&event.to_string()).unwrap(),
        }
    }

    #[test]
    fn differences_are_counted_per_path_with_at_most_five_samples() {
        let mut comparison = Comparison::default();
        let events: Vec<EventJson> = (0..8)
            .map(|i| {
                parse_events(&format!(
                    r#"{{"id": "e{i}", "kind": "product", "payload": {{}}}}"#
                ))
                .unwrap()
                .remove(0)
            })
            .collect();
        let current: Vec<OutcomeJson> = (0..8)
            .map(|i| emit("o", serde_json::json!({"title": format!("t{i}"), "n": 1})))
            .collect();
        let candidate: Vec<OutcomeJson> = (0..8)
            .map(|i| match i {
                0 => emit("o", serde_json::json!({"title": "t0", "n": 1})),
                7 => OutcomeJson::Reject {
                    violations: Vec::new(),
                },
                _ => emit("o", serde_json::json!({"title": format!("T{i}"), "n": 1})),
            })
            .collect();
        comparison.add(&events, &current, &candidate);
        assert_eq!(
            (comparison.compared, comparison.equal, comparison.different),
            (8, 1, 7)
        );
        let title = &comparison.paths["$['events'][0]['payload']['title']"];
        assert_eq!(title.count, 6);
        assert_eq!(title.samples.len(), 5);
        assert_eq!(title.samples[0].event, "e1");
        assert_eq!(title.samples[0].before, "t1");
        assert_eq!(title.samples[0].after, "T1");
        assert_eq!(comparison.candidate_rejected, 1);
        assert_eq!(comparison.candidate_failures[0].event, "e7");
    }

    #[test]
    fn a_candidate_inventing_keys_cannot_grow_the_report_past_its_caps() {
        let mut comparison = Comparison::default();
        let events = parse_events(r#"{"id": "e", "kind": "product", "payload": {}}"#).unwrap();
        let huge = "x".repeat(100_000);
        for i in 0..(MAX_PATHS + 50) {
            let mut payload = serde_json::Map::new();
            // Long member names too: paths are cut like samples.
            payload.insert(format!("k{i}{}", &huge[..10_000]), huge.clone().into());
            comparison.add(
                &events,
                &[emit("o", serde_json::json!({}))],
                &[emit("o", Value::Object(payload))],
            );
        }
        assert_eq!(comparison.paths.len(), MAX_PATHS + 1);
        assert_eq!(comparison.paths[OTHER_PATHS].count, 50);
        let sampled = serde_json::to_string(&comparison).unwrap();
        assert!(
            sampled.len() < (MAX_PATHS + 1) * 5 * (SAMPLE_BYTES + 200),
            "{}",
            sampled.len()
        );
    }

    #[test]
    fn the_canary_share_is_stable_and_near_its_percentage() {
        let chosen = (0..10_000).filter(|i| in_canary(&format!("SKU-{i}"), 10)).count();
        assert!((800..1200).contains(&chosen), "{chosen}");
        assert!((0..100).all(|i| in_canary(&format!("S{i}"), 10) == in_canary(&format!("S{i}"), 10)));
        assert!(!(0..1000).any(|i| in_canary(&format!("S{i}"), 0)));
        assert!((0..1000).all(|i| in_canary(&format!("S{i}"), 100)));
    }
}
