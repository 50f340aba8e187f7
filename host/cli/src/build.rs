//! `sluice build`: builds a transform folder into a component, in Rust,
//! Python or JavaScript. Python and JavaScript toolchains (componentize-py,
//! componentize-js) are installed, pinned, on first use into a cache folder.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use clap::Args;

/// componentize-py, from PyPI.
pub const COMPONENTIZE_PY: &str = "0.25.1";
/// componentize-js, from npm.
pub const COMPONENTIZE_JS: &str = "0.23.0";

/// The contract, as this `sluice` was built with it.
const WIT: &[(&str, &str)] = &[
    ("world.wit", include_str!("../../../wit/v0.2/world.wit")),
    ("types.wit", include_str!("../../../wit/v0.2/types.wit")),
];

/// The Python component's entry module, written next to its WIT: it runs
/// `app.py` (which registers the handlers) and exports the helper's `Step`,
/// so an `app.py` need not name the contract's exports.
const PYTHON_ENTRY: (&str, &str) = (
    "sluice_step.py",
    "\"\"\"Written by `sluice build`: runs app.py and exports its step (sluice:transform@0.2.0).\"\"\"\n\n\
     import app  # noqa: F401  (registers the handlers)\n\
     from sluice import Step  # noqa: F401\n",
);

/// The JavaScript component's entry module, likewise.
const JS_ENTRY: (&str, &str) = (
    "entry.js",
    "// Written by `sluice build`: runs app.js and exports its step (sluice:transform@0.2.0).\n\
     import '../app.js';\n\
     export { step } from '../sluice.js';\n",
);

/// The helper libraries, as this `sluice` ships them.
pub const PYTHON_HELPER: (&str, &str) = ("sluice.py", include_str!("../../../guest-sdk/python/sluice.py"));
/// See [`PYTHON_HELPER`].
pub const JS_HELPER: (&str, &str) = ("sluice.js", include_str!("../../../guest-sdk/js/sluice.js"));

/// Arguments of `sluice build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Transform folders: a Rust crate (`Cargo.toml`), a Python transform
    /// (`app.py`) or a JavaScript one (`app.js`).
    #[arg(required_unless_present = "install_toolchains")]
    dirs: Vec<PathBuf>,
    /// Only install the Python and JavaScript toolchains (pinned), then exit.
    #[arg(long)]
    install_toolchains: bool,
    /// Where toolchains are installed.
    #[arg(long, env = "SLUICE_TOOLS_DIR", default_value_os_t = default_tools_dir())]
    tools_dir: PathBuf,
}

pub(crate) fn default_tools_dir() -> PathBuf {
    super::default_cache_dir().join("tools")
}

/// A transform folder's language, from the files in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// `Cargo.toml`.
    Rust,
    /// `app.py`.
    Python,
    /// `app.js`.
    JavaScript,
}

impl Language {
    /// The language of the transform in `dir`, if it holds one.
    pub fn of(dir: &Path) -> Option<Language> {
        if dir.join("Cargo.toml").is_file() {
            Some(Language::Rust)
        } else if dir.join("app.py").is_file() {
            Some(Language::Python)
        } else if dir.join("app.js").is_file() {
            Some(Language::JavaScript)
        } else {
            None
        }
    }

    fn helper(self) -> Option<(&'static str, &'static str)> {
        match self {
            Language::Rust => None,
            Language::Python => Some(PYTHON_HELPER),
            Language::JavaScript => Some(JS_HELPER),
        }
    }

    fn source_extension(self) -> &'static str {
        match self {
            Language::Rust => "rs",
            Language::Python => "py",
            Language::JavaScript => "js",
        }
    }
}

pub fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let tools = Toolchains::new(args.tools_dir.clone());
    if args.install_toolchains {
        tools.componentize_py()?;
        tools.componentize_js()?;
        println!(
            "componentize-py {COMPONENTIZE_PY} and componentize-js {COMPONENTIZE_JS} are installed in {}",
            args.tools_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for dir in &args.dirs {
        match build(dir, &tools)? {
            Some(component) => println!("built {}", component.display()),
            None => println!("built {} with cargo", dir.display()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds a Python or JavaScript transform when its component is missing,
/// older than a source file, or built with another version of the helper
/// library than this `sluice` ships. For `sluice test`.
pub fn build_if_needed(dir: &Path, tools_dir: &Path) -> anyhow::Result<()> {
    let Some(language) = Language::of(dir) else {
        return Ok(());
    };
    let tools = Toolchains::new(tools_dir.to_path_buf());
    let stale = match language {
        Language::Rust => return Ok(()),
        _ => {
            let component = component_path(dir);
            let built = std::fs::metadata(&component).and_then(|m| m.modified()).ok();
            let helper_changed = language.helper().is_some_and(|(file, text)| {
                std::fs::read_to_string(dir.join(file)).ok().as_deref() != Some(text)
            });
            match built {
                None => true,
                Some(_) if helper_changed => true,
                Some(built) => newest_source(dir, language).is_some_and(|newest| newest > built),
            }
        }
    };
    if stale {
        eprintln!(
            "building {} (its component is missing or older than its sources)",
            dir.display()
        );
        build(dir, &tools)?;
    }
    Ok(())
}

/// The component a Python or JavaScript transform builds: `build/<folder name>.wasm`.
pub fn component_path(dir: &Path) -> PathBuf {
    sluice_engine::locate::script_component(dir)
}

/// When the newest source file of the transform (outside `build/`) changed.
fn newest_source(dir: &Path, language: Language) -> Option<std::time::SystemTime> {
    let mut newest = None;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).ok()?.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            // The entry's own type: a link to a folder (`/`, say) is not walked.
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                if name != "build"
                    && name != "node_modules"
                    && name != "fixtures"
                    && !name.to_string_lossy().starts_with('.')
                {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|e| e == language.source_extension())
                && let Ok(modified) = entry.metadata().and_then(|m| m.modified())
            {
                newest = newest.max(Some(modified));
            }
        }
    }
    newest
}

/// Builds the transform in `dir`; the component's path (none for Rust,
/// whose component cargo places in its target folder).
pub fn build(dir: &Path, tools: &Toolchains) -> anyhow::Result<Option<PathBuf>> {
    // Absolute: a folder named `-x` is never read as an option by a tool.
    let dir = &dir
        .canonicalize()
        .with_context(|| format!("cannot find the folder `{}`", dir.display()))?;
    let language = Language::of(dir).with_context(|| {
        format!(
            "`{}` holds no transform: a Rust crate has a Cargo.toml, a Python transform an app.py, a JavaScript one an app.js",
            dir.display()
        )
    })?;
    if language == Language::Rust {
        let status = Command::new("cargo")
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(dir.join("Cargo.toml"))
            .status()
            .context("cannot run cargo: is Rust installed (https://rustup.rs)?")?;
        if !status.success() {
            bail!("cargo build failed for {} (its output is above)", dir.display());
        }
        return Ok(None);
    }
    refresh_helper(dir, language)?;
    let out = component_path(dir);
    let wit = dir.join("build/wit");
    refuse_link(&dir.join("build"))?;
    refuse_link(&wit)?;
    std::fs::create_dir_all(&wit).with_context(|| format!("cannot create {}", wit.display()))?;
    for (file, text) in WIT {
        refuse_link(&wit.join(file))?;
        std::fs::write(wit.join(file), text)
            .with_context(|| format!("cannot write {}", wit.join(file).display()))?;
    }
    refuse_own_exports(dir, language)?;
    let (entry_name, entry_text) = match language {
        Language::Python => PYTHON_ENTRY,
        _ => JS_ENTRY,
    };
    let entry = dir.join("build").join(entry_name);
    refuse_link(&entry)?;
    std::fs::write(&entry, entry_text).with_context(|| format!("cannot write {}", entry.display()))?;
    // Per process: two builds of one folder never share a half-written file.
    let partial = out.with_extension(format!("wasm.{}.partial", std::process::id()));
    refuse_link(&partial)?;
    let (tool, status) = match language {
        Language::Python => {
            let python = tools.componentize_py()?;
            let status = Command::new(&python)
                .args(["-c", "import componentize_py; componentize_py.script()"])
                .arg("-d")
                .arg(&wit)
                .args(["-w", "transform", "componentize", "-p"])
                .arg(dir)
                .arg("-p")
                .arg(dir.join("build"))
                .args(["sluice_step", "-o"])
                .arg(&partial)
                .status()
                .with_context(|| format!("cannot run {}", python.display()))?;
            ("componentize-py", status)
        }
        _ => {
            let cli = tools.componentize_js()?;
            let status = Command::new("node")
                .arg(&cli)
                .arg(&entry)
                .arg("--wit")
                .arg(&wit)
                .args(["-n", "transform", "-o"])
                .arg(&partial)
                .status()
                .context("cannot run node: is Node.js installed?")?;
            ("componentize-js", status)
        }
    };
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        bail!("{tool} could not build {} (its output is above)", dir.display());
    }
    std::fs::rename(&partial, &out).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(Some(out))
}

/// Refuses an app that defines the component's exports itself: the entry
/// module exports the helper's step, so its own would be silently unused.
fn refuse_own_exports(dir: &Path, language: Language) -> anyhow::Result<()> {
    let (file, own): (&str, &[&str]) = match language {
        Language::Python => ("app.py", &["class WitWorld", "class Step"]),
        _ => (
            "app.js",
            &[
                "export function apply",
                "export function init",
                "export const step",
            ],
        ),
    };
    let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    if let Some(found) = own.iter().find(|own| text.contains(*own)) {
        bail!(
            "{file} defines `{found}`: the helper exports the component's step for you \
             (sluice:transform@0.2.0); register functions with the helper instead"
        );
    }
    Ok(())
}

/// Refuses to write through a symbolic link: a transform folder from
/// elsewhere could point `sluice.py` or `build/` at any file of the user's.
fn refuse_link(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            bail!(
                "{} is a symbolic link: sluice build writes there and will not write through a link",
                path.display()
            )
        }
        _ => Ok(()),
    }
}

/// Writes this `sluice`'s helper library into the transform folder if the
/// copy there differs.
fn refresh_helper(dir: &Path, language: Language) -> anyhow::Result<()> {
    let Some((file, text)) = language.helper() else {
        return Ok(());
    };
    let path = dir.join(file);
    refuse_link(&path)?;
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {} (the helper library of this sluice)", path.display());
    }
    Ok(())
}

/// Pinned toolchains in one folder, installed on first use.
pub struct Toolchains {
    dir: PathBuf,
}

/// Marks a toolchain folder whose installation finished.
const COMPLETE: &str = ".complete";

impl Toolchains {
    /// Toolchains kept in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The Python of a virtual environment holding componentize-py.
    pub fn componentize_py(&self) -> anyhow::Result<PathBuf> {
        let home = self.dir.join(format!("componentize-py-{COMPONENTIZE_PY}"));
        let python = home.join("bin/python");
        self.install(
            &home,
            &format!("componentize-py {COMPONENTIZE_PY} from PyPI"),
            || {
                run_tool(
                    Command::new("python3").args(["-m", "venv"]).arg(&home),
                    "python3 -m venv",
                )?;
                run_tool(
                    Command::new(&python)
                        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                        .arg(format!("componentize-py=={COMPONENTIZE_PY}")),
                    "pip install componentize-py",
                )
            },
        )?;
        Ok(python)
    }

    /// componentize-js's command-line script (run with `node`).
    pub fn componentize_js(&self) -> anyhow::Result<PathBuf> {
        let home = self.dir.join(format!("componentize-js-{COMPONENTIZE_JS}"));
        self.install(
            &home,
            &format!("componentize-js {COMPONENTIZE_JS} from npm"),
            || {
                std::fs::create_dir_all(&home)?;
                run_tool(
                    Command::new("npm")
                        .args([
                            "install",
                            "--no-audit",
                            "--no-fund",
                            "--loglevel=error",
                            "--prefix",
                        ])
                        .arg(&home)
                        .arg(format!("@bytecodealliance/componentize-js@{COMPONENTIZE_JS}")),
                    "npm install @bytecodealliance/componentize-js",
                )
            },
        )?;
        Ok(home.join("node_modules/@bytecodealliance/componentize-js/src/cli.js"))
    }

    /// Runs `install` into `home` unless a finished installation is there;
    /// a half-finished one is removed first.
    fn install(
        &self,
        home: &Path,
        what: &str,
        install: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if home.join(COMPLETE).is_file() {
            return Ok(());
        }
        // One installer at a time per toolchain, across processes; the
        // others wait, then find it complete.
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let lock_path = home.with_extension("lock");
        let lock = std::fs::File::create(&lock_path)
            .with_context(|| format!("cannot create {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        if home.join(COMPLETE).is_file() {
            return Ok(());
        }
        eprintln!("installing {what} into {} (first use)", home.display());
        if home.exists() {
            std::fs::remove_dir_all(home).with_context(|| format!("cannot remove {}", home.display()))?;
        }
        install().with_context(|| format!("cannot install {what}"))?;
        std::fs::write(home.join(COMPLETE), "")
            .with_context(|| format!("cannot write into {}", home.display()))?;
        Ok(())
    }
}

/// Runs a command; an error names it when it fails or cannot start.
fn run_tool(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("cannot run {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
