//! Compile fairness: tenant `quiet` sends one synchronous transform every
//! 20 ms, first alone and then while tenant `uploader` uploads new versions
//! of a component back to back (each a few bytes different, so each is
//! compiled again). Reports the quiet tenant's p50 and p99 in both phases
//! and their ratio, and how many uploads were compiled meanwhile. Uploads
//! compile on one low-priority thread each (`modules::compile`), and the
//! uploader's `compile-seconds-per-hour` is raised so that it compiles for
//! the whole phase.
//!
//! Run with `cargo bench -p sluice-cli --bench compile` (part of
//! `scripts/dev bench`). `SLUICE_COMPILE_COMPONENT` names the component to
//! upload (default: the json-mapping guest; an 18 MB Python component
//! made with `sluice new --lang python` and `sluice build` shows the
//! measured case of the hardening issue); `SLUICE_COMPILE_SECONDS` sets
//! each phase's length (10 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{Server, TOKEN, auth_header, env_number, percentile, root};

mod support;

fn main() {
    let seconds = env_number("SLUICE_COMPILE_SECONDS", 10);
    let component_path = std::env::var("SLUICE_COMPILE_COMPONENT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root().join("target/wasm32-wasip2/guest/json_mapping.wasm"));
    let component = std::fs::read(&component_path).unwrap_or_else(|err| {
        panic!(
            "cannot read {}: {err} (run scripts/dev build-guests)",
            component_path.display()
        )
    });
    let channel = root().join("transforms/channels/b2b-portal-from-magento");
    let event = std::fs::read_to_string(channel.join("fixtures/simple-product/input.json")).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[tenant]]\nname = \"quiet\"\n[[tenant]]\nname = \"uploader\"\ncompile-seconds-per-hour = 1000000\nmax-module-bytes = 67108864\nmax-module-versions = 100000\nmax-module-storage-bytes = 1099511627776\n\
         [[channel]]\nname = \"quiet\"\ntenant = \"quiet\"\npipeline = \"{}\"\n",
        channel.join("pipeline.json").display()
    );
    let server = Server::start(dir.path(), &config);

    let alone = quiet_phase(&server.base, &event, seconds);
    let uploading = Arc::new(AtomicBool::new(true));
    let uploaded = Arc::new(AtomicUsize::new(0));
    let uploader = {
        let (base, uploading, uploaded) = (server.base.clone(), uploading.clone(), uploaded.clone());
        std::thread::spawn(move || upload_back_to_back(&base, &component, &uploading, &uploaded))
    };
    std::thread::sleep(Duration::from_secs(1));
    let loaded = quiet_phase(&server.base, &event, seconds);
    uploading.store(false, Ordering::Release);
    uploader.join().unwrap();

    let (a50, a99) = (percentile(&alone, 0.5), percentile(&alone, 0.99));
    let (l50, l99) = (percentile(&loaded, 0.5), percentile(&loaded, 0.99));
    println!(
        "compile fairness: tenant `quiet`'s sync transform alone, then while tenant `uploader` uploads {} ({} bytes) back to back: {} versions compiled",
        component_path.file_name().unwrap().to_string_lossy(),
        std::fs::metadata(&component_path).map(|m| m.len()).unwrap_or(0),
        uploaded.load(Ordering::Acquire)
    );
    println!(
        "  sync transform  alone p50 {a50:>10.2?} p99 {a99:>10.2?}   uploading p50 {l50:>10.2?} p99 {l99:>10.2?}   ratio p50 {:.2}x p99 {:.2}x",
        l50.as_secs_f64() / a50.as_secs_f64(),
        l99.as_secs_f64() / a99.as_secs_f64()
    );
}

/// One sync request every 20 ms for `seconds`; their latencies, sorted.
fn quiet_phase(base: &str, event: &str, seconds: u64) -> Vec<Duration> {
    let agent = ureq::AgentBuilder::new().build();
    let auth = auth_header(TOKEN);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let sent = Instant::now();
        agent
            .post(&format!("{base}/v1/channels/quiet/transform"))
            .set("authorization", &auth)
            .send_string(event)
            .unwrap();
        latencies.push(sent.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    latencies.sort();
    latencies
}

/// Uploads `component` with a different custom section each time until told to stop.
fn upload_back_to_back(base: &str, component: &[u8], uploading: &AtomicBool, uploaded: &AtomicUsize) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(300))
        .build();
    let auth = auth_header(TOKEN);
    let mut n = 0u32;
    while uploading.load(Ordering::Acquire) {
        n += 1;
        // A custom section (id 0, size, name, bytes) makes a new version of the same code.
        let name = b"sluice-bench";
        let mut bytes = component.to_vec();
        bytes.extend_from_slice(&[0, (1 + name.len() + 4) as u8, name.len() as u8]);
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&n.to_le_bytes());
        let answer = agent
            .put(&format!("{base}/v1/modules/m{}?tenant=uploader", n % 40))
            .set("authorization", &auth)
            .set("content-type", "application/wasm")
            .send_bytes(&bytes);
        match answer {
            Ok(_) => {
                uploaded.fetch_add(1, Ordering::AcqRel);
            }
            Err(err) => panic!("upload {n} failed: {err}"),
        }
    }
}
