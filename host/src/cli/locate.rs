//! Finding built components and fixtures from a transform crate's folder,
//! or a channel pipeline's folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use sluice_host::engine::{Engine, Limits};
use sluice_host::pipeline::{Pipeline, PipelineSpec, Step, StepSpec};

/// Profiles searched for a built component, most optimised first.
const PROFILES: &[&str] = &["guest", "release", "debug"];

/// What a folder given to `sluice test` holds.
pub enum TestTarget {
    /// A transform crate: its built component.
    Module(PathBuf),
    /// A channel: the pipeline described by its `pipeline.json`.
    Pipeline(Pipeline),
}

/// Resolves a transform crate folder (with `Cargo.toml`) or a channel folder
/// (with `pipeline.json`) to what to test and its `fixtures/` folder.
pub fn test_target(
    dir: &Path,
    engine: &Engine,
    limits: &Limits,
) -> anyhow::Result<(String, TestTarget, PathBuf)> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fixtures = dir.join("fixtures");
    if dir.join("pipeline.json").is_file() {
        let pipeline = load_pipeline(&dir.join("pipeline.json"), engine, limits)?;
        return Ok((name, TestTarget::Pipeline(pipeline), fixtures));
    }
    let manifest_path = dir.join("Cargo.toml");
    let manifest: toml::Table = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("`{}` has neither a Cargo.toml nor a pipeline.json", dir.display()))?
        .parse()
        .with_context(|| format!("cannot parse {}", manifest_path.display()))?;
    let Some(package) = manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
    else {
        bail!("{} has no `package.name`", manifest_path.display());
    };
    Ok((
        package.to_string(),
        TestTarget::Module(component(package, dir)?),
        fixtures,
    ))
}

/// Loads a `pipeline.json`: steps naming built transforms (`"magento-source"`)
/// or component files (`"../x.wasm"`, relative to the pipeline file).
pub fn load_pipeline(path: &Path, engine: &Engine, limits: &Limits) -> anyhow::Result<Pipeline> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut de = serde_json::Deserializer::from_str(&text);
    let spec: PipelineSpec = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        anyhow::anyhow!(
            "{}: at {}: {}",
            path.display(),
            sluice_host::diff::path_from_serde(err.path()),
            err.inner()
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    pipeline_from_steps(&spec.steps, base, engine, limits).with_context(|| format!("in {}", path.display()))
}

/// Loads the modules of `steps`; `.wasm` paths are relative to `base`.
pub fn pipeline_from_steps(
    steps_spec: &[StepSpec],
    base: &Path,
    engine: &Engine,
    limits: &Limits,
) -> anyhow::Result<Pipeline> {
    let mut steps = Vec::with_capacity(steps_spec.len());
    for (index, step) in steps_spec.iter().enumerate() {
        if let Some(version) = &step.version {
            bail!(
                "step {index} (`{}`) names version `{version}`: versions name uploaded modules, \
                 which are activated through the API (`sluice channels activate`)",
                step.module
            );
        }
        let file = if step.module.ends_with(".wasm") {
            base.join(&step.module)
        } else {
            component(&step.module, base)?
        };
        let module = engine
            .load_file(&file, limits.clone())
            .with_context(|| format!("step {index} (`{}`)", step.module))?;
        steps.push(Step {
            module: Arc::new(module),
            config: step.config.to_string(),
        });
    }
    Ok(Pipeline::new(steps))
}

/// The built component of the transform crate `package`, searched in the
/// target directory that serves `near`.
fn component(package: &str, near: &Path) -> anyhow::Result<PathBuf> {
    let file = format!("{}.wasm", package.replace('-', "_"));
    let target = target_dir(near);
    let candidates: Vec<PathBuf> = PROFILES
        .iter()
        .map(|profile| target.join("wasm32-wasip2").join(profile).join(&file))
        .collect();
    match candidates.iter().find(|path| path.is_file()) {
        Some(found) => Ok(found.clone()),
        None => bail!(
            "no built component for `{package}`; looked for:\n  {}\nbuild it with `cargo build -p {package} --target wasm32-wasip2 --profile guest`",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join("\n  ")
        ),
    }
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
