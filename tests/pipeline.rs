//! Pipelines: the output of one step feeds the next, and emit, drop,
//! reject and faults compose as documented in `host/engine/src/pipeline.rs`.

use crate::support::{event, magento_product, step};
use serde_json::{Value, json};
use sluice_engine::FaultKind;
use sluice_engine::event::OutcomeJson;
use sluice_engine::pipeline::Pipeline;

fn attack(id: &str, attack: &str) -> sluice_engine::event::EventJson {
    event(id, "product", json!({ "attack": attack }))
}

#[test]
fn the_output_of_one_step_feeds_the_next() {
    let pipeline = Pipeline::new(vec![
        step("hostile", "{}"),
        step("b2b-portal", r#"{"max-title": 10}"#),
    ]);
    let outcomes = pipeline.run(&[event("evt-1", "product", magento_product())]);
    let OutcomeJson::Emit { events } = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    let listing: Value = serde_json::from_str(events[0].payload.get()).unwrap();
    assert_eq!(listing["title"], "Champ Tee…");
    assert_eq!(events[0].id, "evt-1");
    assert_eq!(events[0].tenant, "acme");
}

#[test]
fn a_fan_out_multiplies_events_through_later_steps() {
    let pipeline = Pipeline::new(vec![step("hostile", "{}"), step("hostile", "{}")]);
    let outcomes = pipeline.run(&[attack("evt-fan", "fan-out"), attack("evt-plain", "none")]);
    let OutcomeJson::Emit { events } = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["evt-fan#0", "evt-fan#1", "evt-fan#2"]);
    assert!(matches!(&outcomes[1], OutcomeJson::Emit { events } if events.len() == 1));
}

#[test]
fn a_fault_on_one_child_fails_the_input_event_and_names_the_child() {
    let pipeline = Pipeline::new(vec![step("hostile", "{}"), step("hostile", "{}")]);
    let outcomes = pipeline.run(&[attack("evt-fan", "fan-out-panic"), attack("evt-ok", "none")]);
    let OutcomeJson::Error { error } = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert_eq!(error.event, "evt-fan#1");
    assert!(matches!(&error.kind, FaultKind::Trap { detail } if detail.contains("panics on purpose")));
    assert_eq!(outcomes[1].tag(), "emit");
}

#[test]
fn drops_and_rejections_stop_the_pipeline() {
    let pipeline = Pipeline::new(vec![step("hostile", "{}"), step("b2b-portal", "{}")]);
    let outcomes = pipeline.run(&[attack("evt-drop", "drop"), attack("evt-reject", "reject")]);
    assert!(
        matches!(&outcomes[0], OutcomeJson::Drop { reason } if reason == "dropped on request"),
        "{outcomes:?}"
    );
    let OutcomeJson::Reject { violations } = &outcomes[1] else {
        panic!("{outcomes:?}");
    };
    assert_eq!(violations[0].path, "$['attack']");
    assert_eq!(violations[0].code, "rejected");
}

#[test]
fn a_rejection_in_a_later_step_carries_that_steps_path() {
    let mut product = magento_product();
    product.as_object_mut().unwrap().remove("weight");
    let pipeline = Pipeline::new(vec![step("hostile", "{}"), step("b2b-portal", "{}")]);
    let outcomes = pipeline.run(&[event("evt-noweight", "product", product)]);
    let OutcomeJson::Reject { violations } = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert_eq!(violations[0].path, "$['weight']");
    assert_eq!(violations[0].code, "required");
}

#[test]
fn a_payload_that_is_not_json_faults_its_own_step_in_the_middle_or_at_the_end() {
    // Payloads are checked once: a middle step's before the next step reads
    // them, the last step's as they become JSON values. In the second
    // pipeline the first step passes on valid JSON and only the last step
    // emits text that is not JSON.
    let hostile = step("hostile", "{}");
    for (steps, attack_name, at) in [
        (
            vec![hostile.clone(), step("b2b-portal", "{}")],
            "not-json",
            "middle",
        ),
        (vec![hostile.clone(), hostile.clone()], "then-not-json", "end"),
    ] {
        let outcomes = Pipeline::new(steps).run(&[attack("evt-bad", attack_name), attack("evt-ok", "none")]);
        let OutcomeJson::Error { error } = &outcomes[0] else {
            panic!("{at}: {outcomes:?}");
        };
        assert_eq!(
            (error.module.as_str(), error.event.as_str()),
            ("hostile", "evt-bad"),
            "{at}"
        );
        assert_eq!(error.version, hostile.module.version(), "{at}");
        assert!(
            matches!(&error.kind, FaultKind::InvalidPayload { detail } if detail.starts_with("event `evt-bad`: ")),
            "{at}: {error}"
        );
        // The next event is not hurt (b2b-portal rejects the bare attack payload).
        assert!(
            !matches!(&outcomes[1], OutcomeJson::Error { .. }),
            "{at}: {:?}",
            outcomes[1]
        );
    }
}

/// `amazon-listing` emits what SP-API's `putListingsItem` takes: every
/// fixture's input, run through the real component with its config, and
/// each emitted body checked against the `ListingsItemPutRequest` model of
/// the official Listings Items 2021-08-01 API model (copied, with its
/// source, into `transforms/amazon-listing/models/`).
#[test]
fn amazon_listing_emits_valid_listings_items_put_bodies() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../transforms/amazon-listing");
    let model: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("models/ListingsItemPutRequest.json")).unwrap(),
    )
    .unwrap();
    let schema = &model["schema"];
    let mut checked = 0;
    for fixture in std::fs::read_dir(root.join("fixtures")).unwrap() {
        let dir = fixture.unwrap().path();
        let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let input: sluice_engine::event::EventJson =
            serde_json::from_str(&std::fs::read_to_string(dir.join("input.json")).unwrap()).unwrap();
        let pipeline = Pipeline::new(vec![step("amazon-listing", &config)]);
        if let OutcomeJson::Emit { events } = &pipeline.run(&[input])[0] {
            for emitted in events {
                let body: Value = serde_json::from_str(emitted.payload.get()).unwrap();
                if let Err(err) = conforms(&body, schema, "$") {
                    panic!("{}: {err}\n{body}", dir.display());
                }
                assert!(body["sku"].is_string(), "the URL's {{$.sku}} needs it");
                checked += 1;
            }
        }
    }
    assert!(checked >= 2, "only {checked} listings checked");
    // And the checker itself refuses what the model refuses.
    for bad in [
        json!({"attributes": {}}),
        json!({"productType": "SHIRT", "attributes": []}),
        json!({"productType": "SHIRT", "requirements": "EVERYTHING", "attributes": {}}),
    ] {
        assert!(conforms(&bad, schema, "$").is_err(), "{bad}");
    }
}

/// Whether `value` conforms to a Swagger 2.0 schema of the kinds the model
/// uses: `type`, `required`, `properties`, `enum`.
fn conforms(value: &Value, schema: &Value, path: &str) -> Result<(), String> {
    let kind_ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("string") => value.is_string(),
        Some("array") => value.is_array(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !kind_ok {
        return Err(format!("{path} is not of type {}", schema["type"]));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{path} = {value} is not one of {}", schema["enum"]));
    }
    for name in schema["required"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap();
        if value.get(name).is_none() {
            return Err(format!("{path}.{name} is required"));
        }
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (name, property) in properties {
            if let Some(member) = value.get(name) {
                conforms(member, property, &format!("{path}.{name}"))?;
            }
        }
    }
    Ok(())
}
