//! What contract 0.2 state costs: the `changed-fields` transform (send
//! only what changed since the last record of a key) on 1,000 records over
//! 100 SKUs, natively (the SDK's in-memory state) and as a component
//! through the host (state in memory behind the host's `state` interface,
//! one event per call, as every stateful module runs). Both do the same
//! work on the same records in one run; compare them as a ratio, since
//! these machines are shared and noisy. Run with
//! `cargo bench -p sluice-engine --features wasi --bench state`.

use std::path::PathBuf;
use std::sync::Arc;

use changed_fields::ChangedFields;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_engine::event::EventJson;
use sluice_engine::pipeline::Pipeline;
use sluice_engine::state::{MemoryState, RunContext};
use sluice_engine::{Engine, EngineOptions, Limits};
use sluice_guest::native::NativeRunner;

const EVENTS: usize = 1000;
const SKUS: usize = 100;

/// Each SKU's record, its price moving with every update.
fn records() -> Vec<EventJson> {
    (0..EVENTS)
        .map(|i| {
            let event = serde_json::json!({
                "id": format!("evt-{i}"),
                "kind": "product",
                "tenant": "acme",
                "payload": {
                    "sku": format!("SKU-{:03}", i % SKUS),
                    "title": format!("Champ Tee {}", i % SKUS),
                    "price": format!("{}.99", 10 + i / SKUS),
                    "quantity": i % 7,
                    "description": "The Champ Tee keeps you cool and dry while you do your thing.",
                }
            });
            serde_json::from_value(event).unwrap()
        })
        .collect()
}

fn component() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("wasm32-wasip2/guest/changed_fields.wasm")
}

fn state(c: &mut Criterion) {
    let events = records();
    // The SDK's own event type (the engine's host-side one is another).
    let wit: Vec<sluice_guest::Event> = events
        .iter()
        .map(|e| sluice_guest::Event {
            id: e.id.clone(),
            kind: sluice_guest::EventKind::Product,
            tenant: e.tenant.clone(),
            channel: String::new(),
            source: String::new(),
            correlation_id: e.id.clone(),
            payload: e.payload.get().to_string(),
            topic: String::new(),
            headers: Vec::new(),
            delivery: None,
        })
        .collect();
    let engine = Engine::new(&EngineOptions::default()).unwrap();
    let module = engine.load_file(&component(), Limits::default()).unwrap();
    let pipeline = Pipeline::single(Arc::new(module), "{}");
    let mut group = c.benchmark_group("changed-fields");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("native", |b| {
        b.iter(|| {
            // A fresh runner and an emptied state: every run sends the same.
            for sku in 0..SKUS {
                sluice_guest::state::delete(&format!("last:SKU-{sku:03}"));
            }
            let mut runner = NativeRunner::<ChangedFields>::new("{}").unwrap();
            runner.apply(wit.clone())
        })
    });
    group.bench_function("wasm-state", |b| {
        b.iter(|| {
            let context = RunContext {
                store: Some(Arc::new(MemoryState::default())),
                ..RunContext::empty()
            };
            pipeline.run_in(&events, &context)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = state
}
criterion_main!(benches);
