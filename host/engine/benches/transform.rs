//! The b2b-portal mapping, native Rust vs the WebAssembly component through
//! the host with limits on, on ~1 kB Magento products, batched (100 events
//! per call) and one event per call. Run with `scripts/dev bench`; compare
//! the groups' throughput as ratios (the machines are shared and noisy).

use std::path::PathBuf;

use std::time::Duration;

use b2b_portal::B2bPortal;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_engine::event::EventJson;
use sluice_engine::pipeline::{Pipeline, Step};
use sluice_engine::{Engine, EngineOptions, Limits};
use sluice_guest::native::NativeRunner;

const CONFIG: &str = r#"{"max-title": 80, "currency": "USD"}"#;

/// `count` distinct ~1.1 kB canonical products (the real Magento "Champ
/// Tee" after magento-source, with a realistic HTML description) as events.
fn products(count: usize) -> Vec<EventJson> {
    (0..count)
        .map(|i| {
            let event = serde_json::json!({
                "id": format!("evt-{i}"),
                "kind": "product",
                "tenant": "acme",
                "channel": "b2b-portal",
                "source": "magento",
                "payload": {
                    "id": (2079 + i).to_string(),
                    "sku": format!("SKU-{i:06}"),
                    "title": format!("Champ Tee Small <b>edition</b> number {i} with a longer title for the portal"),
                    "description": "<p>The Champ Tee keeps you cool and dry while you do your thing.</p><ul><li>Moisture-wicking &amp; breathable</li><li>Relaxed fit</li></ul><p>Let everyone know who you are by adding your name on the back for only $10.</p>",
                    "active": true,
                    "price": {"amount": format!("{}.99", 19 + i % 50), "currency": "USD"},
                    "quantity": (i % 50).to_string(),
                    "weight": {"value": "0.5", "unit": "lbs"},
                    "dimensions": {"length": "12", "width": "10", "height": "1.5", "unit": "in"},
                    "categories": ["11", "12", "16"],
                    "attribute_set_id": 9,
                    "type_id": "simple",
                    "visibility": 1,
                    "created_at": "2017-11-29 20:40:07",
                    "updated_at": "2017-11-29 20:40:07",
                    "custom_attributes": [
                        {"attribute_code": "color", "value": "52"},
                        {"attribute_code": "size", "value": "168"},
                        {"attribute_code": "material", "value": "148"},
                        {"attribute_code": "url_key", "value": format!("champ-tee-small-{i}")}
                    ]
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
