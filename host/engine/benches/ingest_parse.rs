//! Ingest parse time of a JSONL body at 20,000 and 200,000 small events
//! (the body of a bulk webhook replay). Parsing must be linear: the
//! per-event time at 200k should match the one at 20k, so the ratio of the
//! two totals stays near 10. Run with `scripts/dev bench`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_engine::event::parse_events;

fn body(events: usize) -> String {
    (0..events)
        .map(|n| format!("{{\"id\":\"evt-{n}\",\"kind\":\"inventory\",\"source\":\"pos\",\"payload\":{{\"sku\":\"SKU-{n}\",\"qty\":{}}}}}\n", n % 97))
        .collect()
}

fn ingest_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest-parse");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    for events in [20_000, 200_000] {
        let text = body(events);
        group.throughput(Throughput::Elements(events as u64));
        group.bench_with_input(BenchmarkId::from_parameter(events), &text, |b, text| {
            b.iter(|| parse_events(text).expect("valid").len())
        });
    }
    group.finish();
}

criterion_group!(benches, ingest_parse);
criterion_main!(benches);
