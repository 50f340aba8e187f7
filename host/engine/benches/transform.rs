//! The b2b-portal mapping, native Rust vs the WebAssembly component through
//! the host with limits on, on ~1 kB Magento products, batched (100 events
//! per call) and one event per call. Run with `scripts/dev bench`; compare
//! the groups' throughput as ratios (the machines are shared and noisy).

use std::path::PathBuf;

use std::time::Duration;

use b2b_portal::B2bPortal;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_engine::event::{EventJson, OutcomeJson};
use sluice_engine::pipeline::{Pipeline, Step};
use sluice_engine::{Engine, EngineOptions, Limits};
use sluice_guest::native::NativeRunner;
use wasmtime::{Config, Inlining, OptLevel};

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

fn target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn component() -> PathBuf {
    target().join("wasm32-wasip2/guest/b2b_portal.wasm")
}

/// The same guest built another way by `scripts/dev bench` into
/// `target/<dir>`; a lever whose build is missing is skipped.
fn lever_component(dir: &str) -> Option<PathBuf> {
    Some(target().join(dir).join("wasm32-wasip2/guest/b2b_portal.wasm")).filter(|path| path.is_file())
}

/// Guests built another way, each a lever against `wasm-epoch`: the
/// folder under `target/` that `scripts/dev bench` builds it into, and what
/// differs.
const GUEST_LEVERS: [(&str, &str); 3] = [
    // `-C target-feature=+simd128`.
    ("lever:guest-simd128", "simd"),
    // `--features sluice-guest/lever-plain-talc`: talc alone as the allocator.
    ("lever:guest-allocator-talc-alone", "plain-talc"),
    // `-C target-feature=-bulk-memory,-bulk-memory-opt`: copies of unknown
    // length in the guest's own code call a `memcpy` in WebAssembly instead
    // of `memory.copy`, which Wasmtime implements as a call out to the host
    // (the prebuilt standard library keeps its `memory.copy`s).
    ("lever:guest-without-bulk-memory", "no-bulk-memory"),
];

/// Bounds checks as explicit compares: each memory slot reserves only the
/// largest memory a module may have (1 GiB) and no guard pages, so a 32-bit
/// address can fall outside it. By default a slot reserves 4 GiB plus a
/// guard region, every 32-bit address lands in it, and Cranelift emits no
/// checks: an access past the memory hits an unmapped page instead.
fn explicit_bounds(config: &mut Config) {
    config
        .memory_reservation(1 << 30)
        .memory_guard_size(0)
        .memory_reservation_for_growth(0);
}

/// Cranelift told to weigh code size as well as speed.
fn speed_and_size(config: &mut Config) {
    config.cranelift_opt_level(OptLevel::SpeedAndSize);
}

/// Cranelift inlining small functions, within the guest's module as well as
/// across modules (Wasmtime's default inlines neither).
fn inlining(config: &mut Config) {
    config.compiler_inlining(Inlining::Yes);
}

fn wasm_pipeline(fuel: bool) -> Pipeline {
    pipeline_with(fuel, None, &component())
}

fn pipeline_with(fuel: bool, tune: Option<fn(&mut Config)>, component: &std::path::Path) -> Pipeline {
    let engine = Engine::new(&EngineOptions {
        fuel,
        tune,
        ..EngineOptions::default()
    })
    .unwrap();
    let module = engine
        .load_file(component, Limits::default())
        .expect("build guests first: scripts/dev build-guests");
    Pipeline::new(vec![Step {
        module: module.into(),
        config: CONFIG.into(),
        lookups: Default::default(),
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
            topic: String::new(),
            headers: Vec::new(),
            delivery: None,
        })
        .collect();
    let epoch = wasm_pipeline(false);
    let fuel = wasm_pipeline(true);
    // The speed levers, each alone against `wasm-epoch`, batched only.
    let levers = {
        let mut levers = vec![
            (
                "lever:explicit-bounds-checks",
                pipeline_with(false, Some(explicit_bounds), &component()),
            ),
            (
                "lever:cranelift-speed-and-size",
                pipeline_with(false, Some(speed_and_size), &component()),
            ),
            (
                "lever:cranelift-inlining",
                pipeline_with(false, Some(inlining), &component()),
            ),
        ];
        for (name, dir) in GUEST_LEVERS {
            if let Some(guest) = lever_component(dir) {
                levers.push((name, pipeline_with(false, None, &guest)));
            }
        }
        levers
    };

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
        let mut paths = vec![("wasm-epoch", &epoch), ("wasm-fuel+epoch", &fuel)];
        if batch > 1 {
            paths.extend(levers.iter().map(|(name, pipeline)| (*name, pipeline)));
        }
        for (name, pipeline) in paths {
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
        if batch > 1 {
            // Before round 3 every emitted payload was checked twice: once
            // after its step, once more when it became a JSON value. This
            // adds the first check back, to show what removing it saved.
            group.bench_with_input(
                BenchmarkId::new("lever:json-checked-twice (before)", batch),
                &batch,
                |b, &batch| {
                    b.iter(|| {
                        for chunk in events.chunks(batch) {
                            let outcomes = epoch.run(chunk);
                            for outcome in &outcomes {
                                let OutcomeJson::Emit { events } = outcome else {
                                    panic!()
                                };
                                for event in events {
                                    serde_json::from_str::<serde::de::IgnoredAny>(event.payload.get())
                                        .unwrap();
                                }
                            }
                            std::hint::black_box(outcomes);
                        }
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
