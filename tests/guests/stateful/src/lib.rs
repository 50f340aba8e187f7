//! A contract 0.2 transform that keeps a counter per payload `key` in its
//! state, or abuses the state, or reports the event's topic and headers,
//! as the payload's `attack` says.

use sluice_guest::prelude::*;

/// What to do, from the event payload.
#[derive(Deserialize)]
struct Order {
    #[serde(default)]
    attack: String,
    #[serde(default)]
    key: String,
}

/// The transform; it holds nothing itself.
pub struct Stateful;

impl Transform for Stateful {
    type Config = serde_json::Value;

    fn init(_config: Self::Config) -> Result<Self, InitError> {
        Ok(Stateful)
    }

    fn event(&mut self, event: Event) -> Outcome {
        let order: Order = match event.payload_as() {
            Ok(order) => order,
            Err(violation) => return Outcome::Reject(vec![violation]),
        };
        let counter = format!("n:{}", order.key);
        match order.attack.as_str() {
            // A counter that lasts across batches.
            "" | "count" => {
                let n = state::get_json::<u64>(&counter).unwrap_or(0) + 1;
                let written = state::set_json(&counter, &n);
                Outcome::emit(
                    &event,
                    &serde_json::json!({"key": order.key, "n": n, "written": written.is_ok()}),
                )
            }
            // Counts, then is rejected: the write must not be kept.
            "count-then-reject" => {
                let n = state::get_json::<u64>(&counter).unwrap_or(0) + 1;
                let _ = state::set_json(&counter, &n);
                Outcome::reject_one(&JsonPath::root(), "rejected", "rejected after writing state")
            }
            // Counts, then traps: the write must not be kept.
            "count-then-panic" => {
                let _ = state::set_json(&counter, &1_000_000u64);
                panic!("the stateful guest panics after writing state for `{}`", event.id)
            }
            "forget" => {
                state::delete(&counter);
                Outcome::skip("forgotten")
            }
            // Writes new keys without end: the host ends the call at its cap.
            "write-loop" => {
                let mut n = 0u64;
                loop {
                    let _ = state::set(&format!("k{n}"), "1");
                    n += 1;
                }
            }
            // Keys and values over the caps, and a value that is not JSON.
            "huge" => {
                let key = state::set(&"k".repeat(10_000), "1");
                let value = state::set("v", &format!("\"{}\"", "x".repeat(1 << 20)));
                let not_json = state::set("j", "not json");
                Outcome::emit(
                    &event,
                    &serde_json::json!({
                        "key": format!("{key:?}"),
                        "value": format!("{value:?}"),
                        "not-json": format!("{not_json:?}"),
                    }),
                )
            }
            // Writes as many keys as it may (its quota decides).
            "fill" => {
                let mut refused = None;
                for n in 0..1000 {
                    if let Err(err) = state::set(&format!("{}:{n}", order.key), "1") {
                        refused = Some(format!("{err:?}"));
                        break;
                    }
                }
                Outcome::emit(&event, &serde_json::json!({"refused": refused}))
            }
            // What the source told the transform about the delivery.
            "context" => Outcome::emit(
                &event,
                &serde_json::json!({
                    "topic": event.topic,
                    "shop": event.header("X-Shopify-Shop-Domain"),
                    "headers": event.headers,
                }),
            ),
            other => Outcome::skip(format!("unknown attack `{other}`")),
        }
    }
}

export_transform!(Stateful);
