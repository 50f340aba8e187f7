//! Shared helpers for the end-to-end tests: where the built guest
//! components are, and a shared engine.

#![allow(dead_code)]

pub mod browser;
pub mod nats;
pub mod raw;
pub mod sidecar;

use std::path::PathBuf;
use std::sync::OnceLock;

use sluice_engine::event::EventJson;
use sluice_engine::{Engine, EngineOptions};

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// The built component of a guest crate (`hostile`, `b2b-portal`, …).
/// Guests are built by `scripts/dev build-guests` before the tests run.
pub fn guest(name: &str) -> PathBuf {
    let path = target_dir()
        .join("wasm32-wasip2/guest")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing: build the guest components first with `scripts/dev build-guests`",
        path.display()
    );
    path
}

/// One engine per test binary, as in production (one per process).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let options = EngineOptions {
            cache_dir: Some(target_dir().join("sluice-test-cache")),
            ..EngineOptions::default()
        };
        Engine::new(&options).expect("engine")
    })
}

/// An event with this id, kind and JSON payload.
pub fn event(id: &str, kind: &str, payload: serde_json::Value) -> EventJson {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "kind": kind,
        "tenant": "acme",
        "channel": "test",
        "source": "test",
        "payload": payload,
    }))
    .expect("valid event")
}

/// A canonical product (the real Magento "Champ Tee" after magento-source).
pub fn magento_product() -> serde_json::Value {
    let path = workspace().join("transforms/b2b-portal/fixtures/magento-simple-child-canonical/input.json");
    let event: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    event["payload"].clone()
}

/// The guest `name` as a pipeline step with `config`, under a generous
/// deadline: tests of composition must not flake on a loaded machine.
pub fn step(name: &str, config: &str) -> sluice_engine::pipeline::Step {
    let limits = sluice_engine::Limits {
        timeout: std::time::Duration::from_secs(10),
        ..sluice_engine::Limits::default()
    };
    let module = std::sync::Arc::new(engine().load_file(&guest(name), limits).unwrap());
    sluice_engine::pipeline::Step {
        module,
        config: config.into(),
        lookups: Default::default(),
    }
}
