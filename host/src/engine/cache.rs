//! Compiled components cached on disk, so a large module is compiled once,
//! not on every start.
//!
//! An artifact is keyed by the component's sha256 and by the engine's
//! compatibility hash (wasmtime version, cargo features, fuel, epochs and
//! every other setting that changes generated code), so an artifact is
//! never loaded into an engine it was not compiled for.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use wasmtime::component::Component;

/// A directory of precompiled components. The directory must be private to
/// Sluice: loading an artifact trusts its contents.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

/// Whether a component came from the cache or was compiled just now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded a precompiled artifact.
    Hit,
    /// Compiled, and stored for next time.
    Compiled,
    /// Compiled; no cache is configured.
    Uncached,
}

impl ArtifactCache {
    /// A cache in `dir`, created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// The artifact file for this component in this engine configuration.
    pub fn artifact_path(&self, engine: &wasmtime::Engine, digest: &str) -> PathBuf {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()))
    }

    /// Loads the compiled component for `digest`, compiling `bytes` and
    /// storing the result when there is no usable artifact.
    pub fn load_or_compile(
        &self,
        engine: &wasmtime::Engine,
        digest: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let path = self.artifact_path(engine, digest);
        if path.exists() {
            // SAFETY: the artifact was written by `store` below into Sluice's
            // private cache directory, for this exact engine configuration.
            #[allow(unsafe_code)]
            if let Ok(component) = unsafe { Component::deserialize_file(engine, &path) } {
                return Ok((component, CacheOutcome::Hit));
            }
            // A stale or damaged artifact: fall through and replace it.
        }
        let component = Component::new(engine, bytes)?;
        // A cache that cannot be written only costs time on the next start.
        if let Ok(serialized) = component.serialize() {
            let _ = store(&path, &serialized);
        }
        Ok((component, CacheOutcome::Compiled))
    }
}

/// Writes atomically: a crash never leaves a half-written artifact.
fn store(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
