//! Finding built components and fixtures from a transform crate's folder,
//! or a channel pipeline's folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::pipeline::{Pipeline, PipelineSpec, Step, StepSpec};
use crate::{Engine, Limits, LoadError};

/// Why a folder, pipeline or transform cannot be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// The folder is neither a transform crate nor a channel.
    #[error("`{}` has neither a Cargo.toml nor a pipeline.json", .0.display())]
    NothingThere(PathBuf),
    /// A file cannot be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A `Cargo.toml` without a usable `package.name`.
    #[error("{}: {detail}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A `pipeline.json` that is not a pipeline.
    #[error("{}: at {at}: {detail}", path.display())]
    InvalidPipeline {
        /// The file.
        path: PathBuf,
        /// The JSON path of the bad field.
        at: String,
        /// What is wrong.
        detail: String,
    },
    /// A step of a pipeline file names an uploaded module's version.
    #[error(
        "step {index} (`{module}`) names version `{version}`: versions name uploaded modules, \
         which are activated through the API (`sluice channels activate`)"
    )]
    VersionedStep {
        /// The step's index.
        index: usize,
        /// The module it names.
        module: String,
        /// The version it names.
        version: String,
    },
    /// No built component of a transform crate.
    #[error(
        "no built component for `{package}`; looked for:\n  {}\nbuild it with `sluice build <its folder>`",
        looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n  ")
    )]
    NotBuilt {
        /// The crate.
        package: String,
        /// Where it was looked for.
        looked: Vec<PathBuf>,
    },
    /// A step's component does not load.
    #[error("step {index} (`{module}`): {error}")]
    Load {
        /// The step's index.
        index: usize,
        /// The module it names.
        module: String,
        /// Why.
        error: LoadError,
    },
    /// A step's lookup table cannot be loaded.
    #[error("step {index} (`{module}`): {error}")]
    Lookup {
        /// The step's index.
        index: usize,
        /// The module it names.
        module: String,
        /// Why.
        error: crate::lookup::LookupError,
    },
    /// Something in a pipeline file is wrong.
    #[error("in {}: {error}", path.display())]
    InPipeline {
        /// The file.
        path: PathBuf,
        /// What.
        error: Box<LocateError>,
    },
}

/// Profiles searched for a built component; the newest file wins.
const PROFILES: &[&str] = &["guest", "release", "debug"];

/// What a folder given to `sluice test` holds.
pub enum TestTarget {
    /// A transform crate: its built component.
    Module(PathBuf),
    /// A channel: the pipeline described by its `pipeline.json`.
    Pipeline(Pipeline),
}

/// Resolves a transform folder (a Rust crate with `Cargo.toml`, a Python
/// transform with `app.py`, a JavaScript one with `app.js`) or a channel
/// folder (with `pipeline.json`) to what to test and its `fixtures/` folder.
pub fn test_target(
    dir: &Path,
    engine: &Engine,
    limits: &Limits,
) -> Result<(String, TestTarget, PathBuf), LocateError> {
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
    if !manifest_path.is_file() && (dir.join("app.py").is_file() || dir.join("app.js").is_file()) {
        let component = script_component(dir);
        if !component.is_file() {
            return Err(LocateError::NotBuilt {
                package: name,
                looked: vec![component],
            });
        }
        let name = folder_name(dir);
        return Ok((name, TestTarget::Module(component), fixtures));
    }
    let text =
        std::fs::read_to_string(&manifest_path).map_err(|_| LocateError::NothingThere(dir.to_path_buf()))?;
    let manifest: toml::Table = text
        .parse()
        .map_err(|err: toml::de::Error| LocateError::Manifest {
            path: manifest_path.clone(),
            detail: err.to_string(),
        })?;
    let Some(package) = manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
    else {
        return Err(LocateError::Manifest {
            path: manifest_path,
            detail: "it has no `package.name`".into(),
        });
    };
    Ok((
        package.to_string(),
        TestTarget::Module(component(package, dir)?),
        fixtures,
    ))
}

/// The component a Python (`app.py`) or JavaScript (`app.js`) transform
/// folder builds to: `build/<folder name>.wasm`, `-` as `_`.
pub fn script_component(dir: &Path) -> PathBuf {
    dir.join("build")
        .join(format!("{}.wasm", folder_name(dir).replace('-', "_")))
}

/// A folder's own name, `.` and `..` resolved.
fn folder_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "transform".into())
}

/// Loads a `pipeline.json`: steps naming built transforms (`"magento-source"`)
/// or component files (`"../x.wasm"`, relative to the pipeline file).
pub fn load_pipeline(path: &Path, engine: &Engine, limits: &Limits) -> Result<Pipeline, LocateError> {
    let text = std::fs::read_to_string(path).map_err(|error| LocateError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let mut de = serde_json::Deserializer::from_str(&text);
    let spec: PipelineSpec =
        serde_path_to_error::deserialize(&mut de).map_err(|err| LocateError::InvalidPipeline {
            path: path.to_path_buf(),
            at: crate::diff::path_from_serde(err.path()),
            detail: err.inner().to_string(),
        })?;
    let base = path.parent().unwrap_or(Path::new("."));
    pipeline_from_steps(&spec.steps, base, engine, limits).map_err(|error| LocateError::InPipeline {
        path: path.to_path_buf(),
        error: Box::new(error),
    })
}

/// Loads the modules of `steps`; `.wasm` paths are relative to `base`.
pub fn pipeline_from_steps(
    steps_spec: &[StepSpec],
    base: &Path,
    engine: &Engine,
    limits: &Limits,
) -> Result<Pipeline, LocateError> {
    let mut steps = Vec::with_capacity(steps_spec.len());
    for (index, step) in steps_spec.iter().enumerate() {
        if let Some(version) = &step.version {
            return Err(LocateError::VersionedStep {
                index,
                module: step.module.clone(),
                version: version.clone(),
            });
        }
        let file = if step.module.ends_with(".wasm") {
            base.join(&step.module)
        } else {
            component(&step.module, base)?
        };
        let module = engine
            .load_file(&file, limits.clone())
            .map_err(|error| LocateError::Load {
                index,
                module: step.module.clone(),
                error,
            })?;
        let mut lookups = crate::state::StepLookups::new();
        for (table, file) in &step.lookups {
            let loaded =
                crate::lookup::load_table(table, file, base).map_err(|error| LocateError::Lookup {
                    index,
                    module: step.module.clone(),
                    error,
                })?;
            lookups.insert(table.clone(), Arc::new(loaded));
        }
        steps.push(Step {
            module: Arc::new(module),
            config: step.config_text(),
            lookups: Arc::new(lookups),
        });
    }
    Ok(Pipeline::new(steps))
}

/// The built component of the transform crate `package`, searched in the
/// target directory that serves `near`.
fn component(package: &str, near: &Path) -> Result<PathBuf, LocateError> {
    let file = format!("{}.wasm", package.replace('-', "_"));
    let target = target_dir(near);
    let candidates: Vec<PathBuf> = PROFILES
        .iter()
        .map(|profile| target.join("wasm32-wasip2").join(profile).join(&file))
        .collect();
    // The newest build of any profile: `sluice build` builds `release`,
    // `scripts/dev` builds `guest`, and the last one built is the one edited.
    let newest = candidates
        .iter()
        .filter_map(|path| Some((std::fs::metadata(path).ok()?.modified().ok()?, path)))
        .max_by_key(|(modified, _)| *modified);
    match newest {
        Some((_, found)) => Ok(found.clone()),
        None => Err(LocateError::NotBuilt {
            package: package.to_string(),
            looked: candidates,
        }),
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
