//! Module files and compiled artifacts: a damaged file degrades only its
//! channel, and sidecars can share one compile cache.

use super::*;

#[test]
fn a_damaged_module_file_degrades_its_channel_and_the_server_still_starts() {
    let destination = sink();
    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::start(dir.path(), &config(&destination, ""));
    let (status, stored) = upload(&sidecar, ACME, "mapper", &wasm("json-mapping"));
    assert_eq!(status, 201, "{stored}");
    let version = stored["version"].as_str().unwrap().to_string();
    let pipeline = json!({"steps": [{"module": "mapper", "version": version, "config": {"rules": [{"target": "sku", "source": "$.sku"}]}}]});
    let activate = |sidecar: &Sidecar| {
        let (status, body) = sidecar.send(
            "POST",
            "/v1/channels/acme-stock/activate",
            Some(ACME),
            pipeline.to_string().as_bytes(),
            "application/json",
        );
        assert_eq!(status, 200, "{body}");
    };
    activate(&sidecar);
    sidecar.kill9();
    // As after a power loss: the file is cut short.
    let file = dir.path().join(format!("data/modules/{version}.wasm"));
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    sidecar.restart();

    let (status, ready) = sidecar.get("/readyz");
    assert_eq!(status, 503, "{ready}");
    let why = ready["degraded_channels"]["acme-stock"].as_str().unwrap();
    assert!(why.contains("damaged") && !why.contains("/"), "{why}");
    // The other tenant's channel runs; acme's events wait, nothing is lost.
    let (status, _) = sidecar.send(
        "POST",
        "/v1/events",
        Some(ACME),
        event("held-1", "acme", json!({"sku": "A", "qty": 1})).as_bytes(),
        "application/json",
    );
    assert_eq!(status, 202);
    // Uploading the module again repairs the file; activating brings the channel back.
    assert_eq!(upload(&sidecar, ACME, "mapper", &wasm("json-mapping")).0, 200);
    activate(&sidecar);
    wait_for("the held event", PATIENCE, || {
        destination.count_where(|r| r.header("x-sluice-source-event-id") == Some("held-1")) == 1
    });
    let (status, ready) = sidecar.get("/readyz");
    assert_eq!(status, 200, "{ready}");
}

/// Creates `dir` as a module cache must be: writable by its owner alone,
/// whatever the umask.
fn private_dir(dir: &std::path::Path) {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .unwrap();
}

/// The `.cwasm` files in `dir` with their inodes (a recompiled artifact is
/// written to a new file and renamed over the old one).
fn artifacts_in(dir: &std::path::Path) -> BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap())
                .map(|entry| {
                    (
                        entry.file_name().to_string_lossy().into_owned(),
                        entry.metadata().unwrap().ino(),
                    )
                })
                .filter(|(name, _)| name.ends_with(".cwasm"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sidecars_sharing_a_module_cache_compile_each_module_once_and_never_prune_it() {
    let destination = sink();
    let shared = tempfile::tempdir().unwrap();
    let cache = shared.path().join("modules");
    // An artifact this sidecar has no use for, as another sidecar's would be.
    let foreign = format!("{}-0000000000000000.cwasm", "0".repeat(64));
    private_dir(&cache);
    std::fs::write(cache.join(&foreign), b"another sidecar's").unwrap();

    let first = tempfile::tempdir().unwrap();
    let _first =
        Sidecar::start_with_module_cache(first.path(), &config(&destination, ""), Some(cache.clone()));
    let compiled = artifacts_in(&cache);
    assert_eq!(
        compiled.len(),
        2,
        "json-mapping's artifact beside the foreign one: {compiled:?}"
    );
    assert!(!first.path().join("data/module-cache").exists());

    // A second sidecar loads what the first compiled: no file is rewritten.
    let second = tempfile::tempdir().unwrap();
    let _second =
        Sidecar::start_with_module_cache(second.path(), &config(&destination, ""), Some(cache.clone()));
    assert_eq!(artifacts_in(&cache), compiled);

    // A sidecar's own cache is collected when it starts; a shared one never is.
    let own = tempfile::tempdir().unwrap();
    let own_cache = own.path().join("data/module-cache");
    private_dir(&own_cache);
    std::fs::write(own_cache.join(&foreign), b"stale").unwrap();
    let _own = Sidecar::start_with_module_cache(own.path(), &config(&destination, ""), None);
    wait_for("the own cache's collection", Duration::from_secs(10), || {
        !own_cache.join(&foreign).exists()
    });
    assert_eq!(
        artifacts_in(&cache),
        compiled,
        "the shared cache keeps every artifact"
    );
}
