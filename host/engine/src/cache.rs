//! Compiled components cached on disk, so a large module is compiled once,
//! not on every start.
//!
//! An artifact is keyed by the component's sha256 and by the engine's
//! compatibility hash (wasmtime version, cargo features, fuel, epochs and
//! every other setting that changes generated code), so an artifact is
//! never loaded into an engine it was not compiled for.
//!
//! Loading an artifact runs the machine code in it, so the directory must be
//! Sluice's alone: it is created private (0700), and a directory that is
//! owned by another user or writable by others is refused.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;

/// A directory of precompiled components, private to Sluice.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

/// Why the cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// It cannot be created or read.
    #[error("cannot use the module cache directory `{}`: {error}", dir.display())]
    Io {
        /// The directory.
        dir: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// Someone else could plant machine code in it.
    #[error(
        "the module cache directory `{}` is not private to this user ({why}): \
         loading an artifact runs its code, so fix its owner and mode (0700)", dir.display()
    )]
    NotPrivate {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Whether a component came from the cache or was compiled just now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded a precompiled artifact.
    Hit,
    /// Compiled just now.
    Compiled,
    /// Compiled; no cache is configured.
    Uncached,
}

impl ArtifactCache {
    /// A cache in `dir`, created private if missing; refused if it is not private.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let dir = dir.into();
        let io_err = |error| CacheError::Io {
            dir: dir.clone(),
            error,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err)?;
        let meta = std::fs::symlink_metadata(&dir).map_err(io_err)?;
        let not_private = |why: String| CacheError::NotPrivate {
            dir: dir.clone(),
            why,
        };
        if !meta.is_dir() {
            return Err(not_private("it is not a directory".into()));
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(not_private(format!(
                "it is owned by uid {}, not {me}",
                meta.uid()
            )));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(not_private(format!(
                "its mode {:o} lets others write",
                meta.permissions().mode() & 0o777
            )));
        }
        Ok(Self { dir })
    }

    /// The artifact file for this component in this engine configuration.
    pub fn artifact_path(&self, engine: &wasmtime::Engine, digest: &str) -> PathBuf {
        self.dir
            .join(format!("{digest}-{:016x}.cwasm", engine_key(engine)))
    }

    /// The compiled component for `digest`, if a usable artifact is cached.
    pub fn load(&self, engine: &wasmtime::Engine, digest: &str) -> Option<Component> {
        let path = self.artifact_path(engine, digest);
        // SAFETY: the artifact was written by `save` into a directory that
        // `open` checked is private to this user, for this exact engine
        // configuration (the file name carries its compatibility hash), and
        // wasmtime checks that hash again while deserializing.
        #[allow(unsafe_code)]
        unsafe { Component::deserialize_file(engine, &path) }.ok()
    }

    /// Stores a compiled component (replacing a stale or damaged artifact),
    /// atomically and synced: a crash never leaves a half-written artifact.
    pub fn save(&self, engine: &wasmtime::Engine, digest: &str, component: &Component) -> io::Result<()> {
        let path = self.artifact_path(engine, digest);
        let bytes = component.serialize().map_err(io::Error::other)?;
        let mut temp = tempfile::NamedTempFile::new_in(&self.dir)?;
        io::Write::write_all(&mut temp, &bytes)?;
        temp.as_file().sync_all()?;
        temp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Deletes every artifact that `keep` does not want (by component
    /// sha256), every artifact of another engine configuration, and stray
    /// temporary files. Returns how many files were deleted.
    pub fn collect(&self, engine: &wasmtime::Engine, keep: impl Fn(&str) -> bool) -> io::Result<usize> {
        let suffix = format!("-{:016x}.cwasm", engine_key(engine));
        let mut deleted = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let wanted = name.strip_suffix(&suffix).is_some_and(&keep);
            if !wanted && std::fs::remove_file(entry.path()).is_ok() {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn engine_key(engine: &wasmtime::Engine) -> u64 {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_directory_others_can_write_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        ArtifactCache::open(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ArtifactCache::open(&dir).unwrap_err();
        assert!(matches!(err, CacheError::NotPrivate { .. }), "{err}");
    }

    #[test]
    fn collection_keeps_only_wanted_artifacts_of_this_engine() {
        let root = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(root.path().join("c")).unwrap();
        let engine = wasmtime::Engine::default();
        for digest in ["aaa", "bbb"] {
            std::fs::write(cache.artifact_path(&engine, digest), b"x").unwrap();
        }
        std::fs::write(cache.dir().join("ccc-0000000000000000.cwasm"), b"x").unwrap();
        std::fs::write(cache.dir().join(".tmpXYZ"), b"x").unwrap();
        assert_eq!(cache.collect(&engine, |digest| digest == "aaa").unwrap(), 3);
        assert!(cache.artifact_path(&engine, "aaa").is_file());
        assert_eq!(std::fs::read_dir(cache.dir()).unwrap().count(), 1);
    }
}
