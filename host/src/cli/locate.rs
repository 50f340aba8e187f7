//! Finding a transform's compiled component and fixtures from its crate folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The built component and fixtures folder of the transform crate at `dir`.
pub struct TransformCrate {
    /// The compiled `.wasm` component.
    pub component: PathBuf,
    /// The `fixtures/` folder.
    pub fixtures: PathBuf,
}

/// Profiles searched for a built component, most optimised first.
const PROFILES: &[&str] = &["guest", "release", "debug"];

/// Finds the component and fixtures of the transform crate in `dir`.
pub fn transform_crate(dir: &Path) -> anyhow::Result<TransformCrate> {
    let manifest_path = dir.join("Cargo.toml");
    let manifest: toml::Table = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("`{}` is not a transform crate (no Cargo.toml)", dir.display()))?
        .parse()
        .with_context(|| format!("cannot parse {}", manifest_path.display()))?;
    let Some(name) = manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
    else {
        bail!("{} has no `package.name`", manifest_path.display());
    };
    let file = format!("{}.wasm", name.replace('-', "_"));
    let target = target_dir(dir);
    let candidates: Vec<PathBuf> = PROFILES
        .iter()
        .map(|profile| target.join("wasm32-wasip2").join(profile).join(&file))
        .collect();
    let Some(component) = candidates.iter().find(|path| path.is_file()).cloned() else {
        bail!(
            "no built component for `{name}`; looked for:\n  {}\nbuild it with `cargo build -p {name} --target wasm32-wasip2 --profile guest`",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    };
    Ok(TransformCrate {
        component,
        fixtures: dir.join("fixtures"),
    })
}

/// `$CARGO_TARGET_DIR`, or the nearest `target/` folder above `dir`.
fn target_dir(dir: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let start = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    start
        .ancestors()
        .map(|a| a.join("target"))
        .find(|t| t.is_dir())
        .unwrap_or_else(|| PathBuf::from("target"))
}
