//! Declarative mapping: the step's config is a mapping document (JSONPath
//! rules with conversions, see `sluice_guest::mapping`), and every event's
//! payload is mapped through it. A new destination is a new mapping file.
//!
//! Config errors name the rule and the field; a missing required value or
//! a value a conversion cannot take rejects the event with its path.

use sluice_guest::mapping::{Mapping, MappingSpec};
use sluice_guest::prelude::*;

/// The transform: its compiled mapping is all its state.
pub struct JsonMapping {
    mapping: Mapping,
}

impl Transform for JsonMapping {
    type Config = MappingSpec;

    fn init(spec: MappingSpec) -> Result<Self, InitError> {
        Ok(Self {
            mapping: Mapping::compile(spec).map_err(|err| err.to_string())?,
        })
    }

    fn event(&mut self, event: Event) -> Outcome {
        let payload = match event.payload_as::<serde_json::Value>() {
            Ok(payload) => payload,
            Err(violation) => return Outcome::Reject(vec![violation]),
        };
        if let Some(reason) = self.mapping.drop_reason(&payload) {
            return Outcome::skip(reason);
        }
        match self.mapping.apply(&payload) {
            Ok(mapped) => Outcome::emit(&event, &mapped),
            Err(violations) => Outcome::Reject(violations),
        }
    }
}

export_transform!(JsonMapping);
