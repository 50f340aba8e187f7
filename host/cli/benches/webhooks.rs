//! Signed webhook ingest against plain ingest, side by side in one run:
//! the same 1 KB product event sent `SLUICE_WEBHOOK_REQUESTS` times (5,000)
//! from 4 client threads, once as `POST /v1/events` with a Bearer token
//! and once as a Shopify delivery to `POST /v1/sources/acme/shop`
//! (`X-Shopify-Hmac-Sha256` over the raw body, as Shopify documents it).
//! Signatures are made before the clock starts, so only the sidecar's
//! work is timed. Reports requests per second, p50 and p99 of each, and
//! their ratios.
//!
//! Run with `cargo bench -p sluice-cli --bench webhooks` (part of `scripts/dev bench`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::{Server, TOKEN, auth_header, env_number, percentile};

mod support;

const SECRET: &str = "shpss_bench_secret_of_enough_bytes";
const CLIENTS: usize = 4;

/// A request's headers.
type Headers = Vec<(String, String)>;

fn main() {
    let requests = env_number("SLUICE_WEBHOOK_REQUESTS", 5000) as usize;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.secret"), SECRET).unwrap();
    let config = format!(
        "[[tenant]]\nname = \"acme\"\n[[source]]\nname = \"shop\"\ntenant = \"acme\"\nkind = \"shopify\"\nsecret-file = \"{}\"\n",
        dir.path().join("shop.secret").display()
    );
    let server = Server::start(dir.path(), &config);
    let payload = |n: usize| {
        format!(
            r#"{{"sku": "SKU-{n}", "title": "{}", "qty": {}}}"#,
            "A product title of some length ".repeat(30),
            n % 17
        )
    };

    let plain: Vec<Headers> = (0..requests)
        .map(|_| vec![("authorization".into(), auth_header(TOKEN))])
        .collect();
    let plain_bodies: Vec<String> = (0..requests)
        .map(|n| {
            format!(
                r#"{{"id": "plain-{n}", "kind": "product", "tenant": "acme", "payload": {}}}"#,
                payload(n)
            )
        })
        .collect();
    let signed_bodies: Vec<String> = (0..requests).map(payload).collect();
    let signed: Vec<Headers> = signed_bodies
        .iter()
        .enumerate()
        .map(|(n, body)| {
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
            mac.update(body.as_bytes());
            let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            vec![
                ("x-shopify-hmac-sha256".into(), signature),
                ("x-shopify-event-id".into(), format!("event-{n}")),
                ("x-shopify-topic".into(), "products/update".into()),
            ]
        })
        .collect();

    let (plain_rate, plain_latencies) = phase(&format!("{}/v1/events", server.base), plain, plain_bodies);
    let (signed_rate, signed_latencies) = phase(
        &format!("{}/v1/sources/acme/shop", server.base),
        signed,
        signed_bodies,
    );
    let stats = |latencies: &[Duration]| (percentile(latencies, 0.5), percentile(latencies, 0.99));
    let (p50, p99) = stats(&plain_latencies);
    let (s50, s99) = stats(&signed_latencies);
    println!("webhook ingest: {requests} requests from {CLIENTS} clients each way");
    println!("  POST /v1/events            {plain_rate:>8.0} req/s   p50 {p50:>9.2?} p99 {p99:>9.2?}");
    println!("  POST /v1/sources (Shopify) {signed_rate:>8.0} req/s   p50 {s50:>9.2?} p99 {s99:>9.2?}");
    println!(
        "  signed / plain: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
        signed_rate / plain_rate,
        s50.as_secs_f64() / p50.as_secs_f64(),
        s99.as_secs_f64() / p99.as_secs_f64()
    );
}

/// Sends every body with its headers from [`CLIENTS`] threads; requests per
/// second and every latency, sorted.
fn phase(url: &str, headers: Vec<Headers>, bodies: Vec<String>) -> (f64, Vec<Duration>) {
    let work: Arc<Vec<(Headers, String)>> = Arc::new(headers.into_iter().zip(bodies).collect());
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (work, url) = (work.clone(), url.to_string());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().build();
                let mut latencies = Vec::new();
                for (headers, body) in work.iter().skip(client).step_by(CLIENTS) {
                    let mut request = agent.post(&url);
                    for (name, value) in headers {
                        request = request.set(name, value);
                    }
                    let sent = Instant::now();
                    let answer = request.send_string(body).expect("accepted");
                    assert_eq!(answer.status(), 202);
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    (rate, latencies)
}
