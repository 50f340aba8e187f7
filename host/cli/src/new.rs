//! `sluice new`: scaffolds a transform, in Rust, Python or JavaScript, that
//! builds and passes its fixture unchanged.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use super::build::{JS_HELPER, PYTHON_HELPER};

/// Arguments of `sluice new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The transform's name: lower-case letters, digits and dashes (`acme-marketplace`).
    name: String,
    /// The language to write it in.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// Folder to create the transform in.
    #[arg(long, default_value = "transforms")]
    dir: PathBuf,
    /// Rust only: path to the `guest-sdk` folder (the `sluice-guest`
    /// crate); found automatically when `--dir` is inside a Sluice checkout.
    #[arg(long)]
    sdk_path: Option<PathBuf>,
}

/// The languages `sluice new` scaffolds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust crate using the `sluice-guest` SDK.
    Rust,
    /// A Python module (componentize-py).
    Python,
    /// A JavaScript module (componentize-js).
    Js,
}

/// The fixture every new transform starts with, in every language.
const FIXTURE: &[(&str, &str)] = &[
    (
        "fixtures/example/input.json",
        include_str!("scaffold/fixtures/input.json"),
    ),
    (
        "fixtures/example/config.json",
        include_str!("scaffold/fixtures/config.json"),
    ),
    (
        "fixtures/example/expected.json",
        include_str!("scaffold/fixtures/expected.json"),
    ),
    ("README.md", include_str!("scaffold/README.md.tmpl")),
];

/// The files of a new transform in `lang`, from templates next to this module.
fn files(lang: Lang) -> Vec<(&'static str, &'static str)> {
    let own: &[(&str, &str)] = match lang {
        Lang::Rust => &[
            ("Cargo.toml", include_str!("scaffold/Cargo.toml.tmpl")),
            ("src/lib.rs", include_str!("scaffold/lib.rs.tmpl")),
            (".gitignore", "target/\n"),
        ],
        Lang::Python => &[
            ("app.py", include_str!("scaffold/python/app.py.tmpl")),
            (PYTHON_HELPER.0, PYTHON_HELPER.1),
            (".gitignore", "build/\n__pycache__/\n"),
        ],
        Lang::Js => &[
            ("app.js", include_str!("scaffold/js/app.js.tmpl")),
            (JS_HELPER.0, JS_HELPER.1),
            (".gitignore", "build/\n"),
        ],
    };
    own.iter().chain(FIXTURE).copied().collect()
}

pub fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    let name = &args.name;
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        bail!(
            "`{name}` is not a valid transform name: use lower-case letters, digits and dashes, starting with a letter"
        );
    }
    let crate_dir = args.dir.join(name);
    if crate_dir.exists() {
        bail!(
            "`{}` already exists; pick another name or remove it",
            crate_dir.display()
        );
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create `{}`", args.dir.display()))?;
    let sdk = match (args.lang, &args.sdk_path) {
        (Lang::Rust, Some(path)) => path
            .canonicalize()
            .with_context(|| format!("`--sdk-path {}` does not exist", path.display()))?,
        (Lang::Rust, None) => find_sdk(&args.dir)?,
        _ => PathBuf::new(),
    };
    let type_name: String = name
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    let (how, component) = match args.lang {
        Lang::Rust => (
            "cargo build --release --target wasm32-wasip2".to_string(),
            format!("target/wasm32-wasip2/release/{}.wasm", name.replace('-', "_")),
        ),
        Lang::Python => (
            format!("componentize-py {}", super::build::COMPONENTIZE_PY),
            format!("{}/build/{}.wasm", crate_dir.display(), name.replace('-', "_")),
        ),
        Lang::Js => (
            format!("componentize-js {}", super::build::COMPONENTIZE_JS),
            format!("{}/build/{}.wasm", crate_dir.display(), name.replace('-', "_")),
        ),
    };
    for (file, template) in files(args.lang) {
        let text = if file == PYTHON_HELPER.0 || file == JS_HELPER.0 {
            template.to_string()
        } else {
            template
                .replace("{{name}}", name)
                .replace("{{type_name}}", &type_name)
                .replace("{{sdk_path}}", &sdk.display().to_string())
                .replace("{{dir}}", &crate_dir.display().to_string())
                .replace("{{how}}", &how)
                .replace("{{component}}", &component)
        };
        let path = crate_dir.join(file);
        std::fs::create_dir_all(path.parent().expect("files are in folders"))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    println!("created transform `{name}` in {}", crate_dir.display());
    println!("next:");
    println!("  sluice build {}", crate_dir.display());
    println!("  sluice test {}", crate_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The `guest-sdk` folder of the Sluice checkout that contains `dir`.
fn find_sdk(dir: &Path) -> anyhow::Result<PathBuf> {
    let start = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve `{}`", dir.display()))?;
    start
        .ancestors()
        .map(|a| a.join("guest-sdk"))
        .find(|sdk| sdk.join("Cargo.toml").is_file())
        .with_context(|| {
            format!(
                "`{}` is not inside a Sluice checkout: pass `--sdk-path <path to guest-sdk>`",
                dir.display()
            )
        })
}
