//! A pass-through transform that declares a 1 GiB memory (see `build.rs`):
//! it cannot start under a smaller memory cap.

use sluice_guest::prelude::*;

/// The transform.
pub struct HugeMemory;

impl Transform for HugeMemory {
    type Config = serde_json::Value;

    fn init(_: Self::Config) -> Result<Self, InitError> {
        Ok(HugeMemory)
    }

    fn event(&mut self, event: Event) -> Outcome {
        Outcome::pass(&event)
    }
}

sluice_guest::export_transform!(HugeMemory);
