//! A component of a contract version that does not exist yet: what a
//! newer Sluice's SDK would build. This Sluice must refuse it by name.

#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({
    inline: "
        package sluice:transform@0.3.0;
        interface step {
            init: func(config: string) -> result<_, string>;
            apply: func(batch: list<string>) -> list<string>;
        }
        world transform {
            export step;
        }
    ",
});

#[allow(dead_code)]
struct Future;

impl exports::sluice::transform::step::Guest for Future {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn apply(batch: Vec<String>) -> Vec<String> {
        batch
    }
}

// Natively the export's symbol names (`sluice:transform/step@0.3.0#apply`)
// do not link; only the component needs them.
#[cfg(target_arch = "wasm32")]
export!(Future);
