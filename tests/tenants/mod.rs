//! Tenants on one sidecar: authentication and isolation, module uploads
//! (checked before they are stored), activation with hot swap and
//! rollback, per-tenant limits and the circuit breaker. The real `sluice
//! serve`, real components, a real HTTP destination. The helpers are here;
//! each topic is a file beside this one.

mod breaker;
mod hot_swap;
mod isolation;
mod module_cache;
mod uploads;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::support::guest;
use crate::support::sidecar::{ADMIN_TOKEN, Sidecar, raw_request, token_hash, wait_for};
use serde_json::{Value, json};
use sluice_server::sink::{Reply, Responder, Sink};

const PATIENCE: Duration = Duration::from_secs(60);
const ACME: &str = "acme-token";
const GLOBEX: &str = "globex-token";
const METRICS: &str = "metrics-token";

/// Two tenants, each with a json-mapping channel delivering to the sink;
/// globex's destination rejects everything (so it has dead letters).
fn config(sink: &Sink, acme_extra: &str) -> String {
    format!(
        r#"
metrics-token-sha256 = ["{metrics}"]

[limits]
timeout-ms = 10000

[[tenant]]
name = "acme"
token-sha256 = ["{acme}"]
max-module-bytes = 4194304
max-modules = 3
{acme_extra}

[[tenant]]
name = "globex"
token-sha256 = ["{globex}"]

[[destination]]
name = "acme-portal"
url = "http://{addr}/acme"
concurrency = 4

[[destination]]
name = "globex-portal"
url = "http://{addr}/globex"

[[channel]]
name = "acme-stock"
tenant = "acme"
destination = "acme-portal"
[[channel.step]]
module = "json-mapping"
config = {{ rules = [ {{ target = "sku", source = "$.sku" }}, {{ target = "qty", source = "$.qty" }} ] }}

[[channel]]
name = "globex-stock"
tenant = "globex"
destination = "globex-portal"
[[channel.step]]
module = "json-mapping"
config = {{ rules = [ {{ target = "sku", source = "$.sku" }} ] }}
"#,
        metrics = token_hash(METRICS),
        acme = token_hash(ACME),
        globex = token_hash(GLOBEX),
        addr = sink.addr,
    )
}

/// The sink: `/globex` answers 400, everything else 200.
fn sink() -> Sink {
    let respond: Arc<Responder> =
        Arc::new(|request, _| Reply::status(if request.path == "/globex" { 400 } else { 200 }));
    Sink::start("127.0.0.1:0".parse().unwrap(), respond).unwrap()
}

fn event(id: &str, tenant: &str, payload: Value) -> String {
    json!({"id": id, "kind": "inventory", "tenant": tenant, "payload": payload}).to_string()
}

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).unwrap()
}

/// A tar with `module.wasm` and `fixtures/<case>/<file>` entries.
fn tar_upload(module: &[u8], files: &[(&str, String)]) -> Vec<u8> {
    let mut archive = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append_data(&mut header, path, bytes).unwrap();
    };
    add("module.wasm", module);
    for (path, text) in files {
        add(&format!("fixtures/{path}"), text.as_bytes());
    }
    archive.into_inner().unwrap()
}

fn upload(sidecar: &Sidecar, token: &str, name: &str, bytes: &[u8]) -> (u16, Value) {
    sidecar.send(
        "PUT",
        &format!("/v1/modules/{name}"),
        Some(token),
        bytes,
        "application/wasm",
    )
}

/// A JSON body's `code`.
fn code(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["code"].as_str().unwrap_or(""))
}
