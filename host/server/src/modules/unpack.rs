//! Unpacking an uploaded module tar: `module.wasm` and `fixtures/…` only,
//! every entry read with a cap.

use std::io::Read;
use std::path::Path;

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnpackError {
    /// Not a tar, or an entry that may not be there; the text says which.
    #[error("{0}")]
    Invalid(String),
    /// An entry over its cap; `code` names which cap.
    #[error("`{name}` is larger than the {cap} bytes it may hold")]
    TooLarge {
        code: &'static str,
        name: String,
        cap: usize,
    },
    /// A folder for the fixtures could not be made.
    #[error("cannot unpack the fixtures ({})", .0.kind())]
    Io(std::io::Error),
}

/// Caps on what a module tar may unpack.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnpackCaps {
    /// Largest `module.wasm`.
    pub module_bytes: usize,
    /// All fixture files together.
    pub fixture_bytes: usize,
}

/// Extracts `module.wasm` (returned) and `fixtures/…` (written under
/// `root`) from a tar. Only regular files and folders are accepted (no
/// links, devices or sparse files), paths must stay inside the archive, and
/// every entry is read with a cap, checked against its declared size first.
pub(crate) fn unpack(tar: impl std::io::Read, root: &Path, caps: UnpackCaps) -> Result<Vec<u8>, UnpackError> {
    use std::path::Component;
    use tar::EntryType;

    let invalid = UnpackError::Invalid;
    let mut archive = tar::Archive::new(tar);
    let mut module = None;
    let mut fixture_bytes = 0usize;
    for entry in archive
        .entries()
        .map_err(|e| invalid(format!("not a tar archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| invalid(format!("a tar entry cannot be read: {e}")))?;
        let path = entry.path().map_err(|e| invalid(e.to_string()))?.into_owned();
        let text = path.to_string_lossy().trim_start_matches("./").to_string();
        let kind = entry.header().entry_type();
        if !matches!(kind, EntryType::Regular | EntryType::Directory) {
            return Err(invalid(format!(
                "`{text}` is a {kind:?} entry: the archive may hold only regular files and folders"
            )));
        }
        let mut parts = Vec::new();
        for component in path.components() {
            match component {
                Component::Normal(part) => parts.push(part.to_os_string()),
                Component::CurDir => {}
                _ => {
                    return Err(invalid(format!(
                        "`{text}` would land outside the archive's folder"
                    )));
                }
            }
        }
        let declared = entry.header().size().unwrap_or(u64::MAX);
        let is_module = parts.len() == 1 && parts[0] == "module.wasm";
        let in_fixtures = parts.len() > 1 && parts[0] == "fixtures";
        if kind == EntryType::Directory {
            if parts.is_empty() || parts == ["fixtures"] || in_fixtures {
                continue;
            }
        } else if is_module {
            module = Some(read_capped(
                &mut entry,
                declared,
                caps.module_bytes,
                &text,
                "module-too-large",
            )?);
            continue;
        } else if in_fixtures {
            let room = caps.fixture_bytes.saturating_sub(fixture_bytes);
            let bytes = read_capped(&mut entry, declared, room, &text, "fixtures-too-large")?;
            fixture_bytes += bytes.len();
            let target = parts
                .iter()
                .fold(root.to_path_buf(), |path, part| path.join(part));
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(UnpackError::Io)?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&target)
                .and_then(|mut file| std::io::Write::write_all(&mut file, &bytes))
                .map_err(|e| invalid(format!("`{text}` cannot be unpacked: {}", e.kind())))?;
            continue;
        }
        return Err(invalid(format!(
            "unexpected entry `{text}`: the archive holds `module.wasm` and `fixtures/<case>/…`"
        )));
    }
    module.ok_or_else(|| invalid("the archive has no `module.wasm`".into()))
}

/// Reads a tar entry that may hold at most `cap` bytes: refused on its
/// declared size before reading, and read through a limit in case the
/// header lies.
fn read_capped(
    entry: &mut impl Read,
    declared: u64,
    cap: usize,
    name: &str,
    code: &'static str,
) -> Result<Vec<u8>, UnpackError> {
    let too_large = || UnpackError::TooLarge {
        code,
        name: name.to_string(),
        cap,
    };
    if declared > cap as u64 {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(declared as usize);
    entry
        .take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| UnpackError::Invalid(format!("`{name}`: {e}")))?;
    if bytes.len() > cap {
        return Err(too_large());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const CAPS: UnpackCaps = UnpackCaps {
        module_bytes: 4096,
        fixture_bytes: 8192,
    };

    fn entry_type() -> impl Strategy<Value = tar::EntryType> {
        prop_oneof![
            Just(tar::EntryType::Regular),
            Just(tar::EntryType::Directory),
            Just(tar::EntryType::Symlink),
            Just(tar::EntryType::Link),
            Just(tar::EntryType::GNUSparse),
            Just(tar::EntryType::Char),
            Just(tar::EntryType::Fifo),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("module.wasm".to_string()),
            "fixtures/[a-c]{1,2}/(input|expected|config)\\.json",
            "fixtures/(\\.\\.|/etc|[a-c])/[a-z.]{1,8}",
            "[a-z./]{1,16}",
        ]
    }

    proptest! {
        /// Arbitrary bytes as a tar: refused or unpacked, never a panic.
        #[test]
        fn prop_any_bytes_are_refused_or_unpacked(bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
            let root = tempfile::tempdir().unwrap();
            let _ = unpack(bytes.as_slice(), root.path(), CAPS);
        }

        /// Archives of random entries: whatever is accepted unpacked only
        /// regular files, inside the folder, within the caps.
        #[test]
        fn prop_only_regular_files_within_caps_land_inside(
            entries in prop::collection::vec((path(), entry_type(), 0usize..6000), 1..8)
        ) {
            let mut archive = tar::Builder::new(Vec::new());
            for (path, kind, size) in &entries {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(*kind);
                header.set_size(*size as u64);
                header.set_mode(0o644);
                if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                    header.set_link_name("/etc/passwd").unwrap();
                }
                if header.set_path(path).is_err() {
                    continue;
                }
                header.set_cksum();
                archive.append(&header, std::io::repeat(b'x').take(*size as u64)).unwrap();
            }
            let bytes = archive.into_inner().unwrap();
            let root = tempfile::tempdir().unwrap();
            if let Ok(module) = unpack(bytes.as_slice(), root.path(), CAPS) {
                prop_assert!(module.len() <= CAPS.module_bytes);
                let mut total = 0;
                let mut stack = vec![root.path().to_path_buf()];
                while let Some(dir) = stack.pop() {
                    for entry in std::fs::read_dir(dir).unwrap() {
                        let entry = entry.unwrap();
                        let kind = entry.file_type().unwrap();
                        prop_assert!(kind.is_file() || kind.is_dir(), "{:?}", entry.path());
                        if kind.is_dir() {
                            stack.push(entry.path());
                        } else {
                            total += entry.metadata().unwrap().len() as usize;
                        }
                    }
                }
                prop_assert!(total <= CAPS.fixture_bytes);
            }
        }
    }
}
