//! Uploaded files named by their hash: modules as
//! `data-dir/modules/<sha256>.wasm` and lookup tables as
//! `data-dir/lookups/<sha256>.table`, written durably and checked against
//! their hash when read.

use std::path::Path;

use sha2::{Digest, Sha256};

/// Module files' extension.
pub(crate) const MODULE: &str = "wasm";
/// Lookup tables' extension.
pub(crate) const LOOKUP: &str = "table";

/// Writes `<version>.<ext>` in `dir` durably: a temporary file, fsynced, then
/// renamed, then the folder fsynced. An existing file is kept only if its
/// bytes still hash to its name; a damaged one is replaced.
pub(crate) fn store_file(dir: &Path, ext: &str, version: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{version}.{ext}"));
    if read_stored(dir, ext, version).is_ok() {
        return Ok(());
    }
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut temp, bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(&path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Reads a stored file; one this node does not have yet (uploaded to
/// another sidecar sharing the registry) is fetched and stored first.
pub(crate) fn read_or_fetch(
    dir: &Path,
    ext: &str,
    registry: &dyn crate::store::Registry,
    version: &str,
) -> Result<Vec<u8>, String> {
    let local = read_stored(dir, ext, version);
    if local.is_ok() {
        return local;
    }
    match registry.shared_module(version) {
        Ok(Some(bytes)) if hex::encode(Sha256::digest(&bytes)) == version => {
            store_file(dir, ext, version, &bytes)
                .map_err(|err| format!("cannot store the shared copy ({})", err.kind()))?;
            Ok(bytes)
        }
        Ok(_) => local,
        Err(err) => Err(format!("cannot fetch the shared copy: {err}")),
    }
}

/// Reads a stored file and checks that its bytes hash to its version.
/// The error says what is wrong without naming server paths.
pub(crate) fn read_stored(dir: &Path, ext: &str, version: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(dir.join(format!("{version}.{ext}")))
        .map_err(|err| format!("the stored file cannot be read ({})", err.kind()))?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != version {
        return Err(format!(
            "the stored file is damaged: its {} bytes hash to `{actual}`; upload it again",
            bytes.len()
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_stored_module_is_named_without_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"\0asm module bytes";
        let version = hex::encode(Sha256::digest(bytes));
        store_file(dir.path(), MODULE, &version, bytes).unwrap();
        assert_eq!(read_stored(dir.path(), MODULE, &version).unwrap(), bytes);
        std::fs::write(dir.path().join(format!("{version}.wasm")), b"\0asm").unwrap();
        let err = read_stored(dir.path(), MODULE, &version).unwrap_err();
        assert!(err.contains("damaged") && !err.contains('/'), "{err}");
        store_file(dir.path(), MODULE, &version, bytes).unwrap();
        assert_eq!(
            read_stored(dir.path(), MODULE, &version).unwrap(),
            bytes,
            "storing again repairs it"
        );
    }
}
