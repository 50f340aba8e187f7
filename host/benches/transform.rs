//! The b2b-portal mapping, native Rust vs the WebAssembly component through
//! the host with limits on, on ~1 kB Magento products, batched (100 events
//! per call) and one event per call. Run with `scripts/dev bench`; compare
//! the groups' throughput as ratios (the machines are shared and noisy).

use std::path::PathBuf;
use std::time::Duration;

use b2b_portal::B2bPortal;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_guest::native::NativeRunner;
use sluice_host::engine::{Engine, EngineOptions, Limits};
use sluice_host::event::EventJson;
use sluice_host::pipeline::{Pipeline, Step};

const CONFIG: &str = r#"{"max-title": 80, "weight-unit": "lbs", "currency": "USD"}"#;

/// `count` distinct ~1 kB Magento products as JSON events.
fn products(count: usize) -> Vec<EventJson> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let text =
        std::fs::read_to_string(root.join("transforms/b2b-portal/fixtures/magento-simple-child/input.json"))
            .unwrap();
    let template: serde_json::Value = serde_json::from_str(&text).unwrap();
    (0..count)
        .map(|i| {
            let mut event = template.clone();
            event["id"] = format!("evt-{i}").into();
            event["payload"]["sku"] = format!("SKU-{i:06}").into();
            event["payload"]["price"] = serde_json::json!(19.99 + i as f64);
            // Trim Magento's stock flags so the payload is ~1 kB, as the benchmark promises.
            event["payload"]["extension_attributes"] =
                serde_json::json!({"stock_item": {"qty": i % 50, "is_in_stock": true}});
            event["payload"]["name"] =
                format!("Champ Tee Small <b>edition</b> number {i} with a longer title for the portal")
                    .into();
            serde_json::from_value(event).unwrap()
        })
        .collect()
}

fn component() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("wasm32-wasip2/guest/b2b_portal.wasm")
}

fn wasm_pipeline(fuel: bool) -> Pipeline {
    let engine = Engine::new(&EngineOptions {
        fuel,
        ..EngineOptions::default()
    })
    .unwrap();
    let module = engine
        .load_file(&component(), Limits::default())
        .expect("build guests first: scripts/dev build-guests");
    Pipeline::new(vec![Step {
        module: module.into(),
        config: CONFIG.into(),
    }])
}

fn bench(c: &mut Criterion) {
    let events = products(100);
    let payload_bytes: usize = events.iter().map(|e| e.payload.get().len()).sum::<usize>() / events.len();
    eprintln!("average payload: {payload_bytes} bytes");
    let wit_events: Vec<sluice_guest::Event> = events
        .iter()
        .map(|e| sluice_guest::Event {
            id: e.id.clone(),
            kind: sluice_guest::EventKind::Product,
            tenant: e.tenant.clone(),
            channel: e.channel.clone(),
            source: e.source.clone(),
            correlation_id: e.id.clone(),
            payload: e.payload.get().to_string(),
        })
        .collect();
    let epoch = wasm_pipeline(false);
    let fuel = wasm_pipeline(true);

    let mut group = c.benchmark_group("b2b-portal");
    group.measurement_time(Duration::from_secs(4)).sample_size(30);
    for batch in [100usize, 1] {
        group.throughput(Throughput::Elements(100));
        group.bench_with_input(BenchmarkId::new("native", batch), &batch, |b, &batch| {
            let mut runner = NativeRunner::<B2bPortal>::new(CONFIG).unwrap();
            b.iter(|| {
                for chunk in wit_events.chunks(batch) {
                    std::hint::black_box(runner.apply(chunk.to_vec()));
                }
            })
        });
        for (name, pipeline) in [("wasm-epoch", &epoch), ("wasm-fuel+epoch", &fuel)] {
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                b.iter(|| {
                    for chunk in events.chunks(batch) {
                        let outcomes = pipeline.run(chunk);
                        assert!(outcomes.iter().all(|o| o.tag() == "emit"));
                        std::hint::black_box(outcomes);
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
