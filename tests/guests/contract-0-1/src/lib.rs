//! A transform of contract `sluice:transform@0.1.0` (`wit/world.wit`),
//! built with wit-bindgen alone, as a tenant's older component would be:
//! it wraps each payload as `{"v0.1": payload}`, drops a `"drop"` payload,
//! rejects a `"reject"` one and panics on a `"panic"` one.

#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({
    path: "../../../wit",
    world: "transform",
});

use sluice::transform::host::{LogLevel, log};
use sluice::transform::types::Violation;

struct Old;

impl Guest for Old {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn apply(batch: Vec<Event>) -> Vec<Outcome> {
        batch
            .into_iter()
            .map(|event| match event.payload.as_str() {
                "\"drop\"" => Outcome::Drop("dropped by the 0.1 guest".into()),
                "\"reject\"" => Outcome::Reject(vec![Violation {
                    path: "$".into(),
                    code: "rejected".into(),
                    message: "rejected by the 0.1 guest".into(),
                }]),
                "\"panic\"" => panic!("the 0.1 guest panics on purpose"),
                _ => {
                    log(LogLevel::Info, "wrapped by the 0.1 guest");
                    let payload = format!("{{\"v0.1\":{}}}", event.payload);
                    Outcome::Emit(vec![Event { payload, ..event }])
                }
            })
            .collect()
    }
}

export!(Old);
