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
    /// Folder to create the transform in (default: `transforms` for Rust,
    /// the current folder for Python and JavaScript).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Rust only: path to the `guest-sdk` folder (the `sluice-guest`
    /// crate). Default: the checkout's when `--dir` is inside one, else the
    /// SDK this `sluice` carries, written under its cache folder.
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
    let parent = args.dir.clone().unwrap_or_else(|| match args.lang {
        Lang::Rust => PathBuf::from("transforms"),
        _ => PathBuf::from("."),
    });
    // A checkout's `transforms/*` are all Cargo workspace members: a folder
    // without a Cargo.toml there would break every cargo command.
    if args.lang != Lang::Rust
        && let Some(sdk) = find_sdk(&parent)
        && let (Ok(at), Some(root)) = (parent.canonicalize(), sdk.parent())
        && at == root.join("transforms")
    {
        bail!(
            "a Python or JavaScript transform cannot live in this checkout's `transforms/` (every folder there is a Rust crate of the workspace): pick another --dir"
        );
    }
    let crate_dir = parent.join(name);
    // The folder is written into generated sources (a Python docstring, a
    // JS comment, Cargo.toml, the README): a path that could end one of
    // those early is refused rather than escaped four ways.
    for path in [&crate_dir, &sdk_hint(&parent, args.lang)] {
        check_templated_path(path)?;
    }
    if crate_dir.exists() {
        bail!(
            "`{}` already exists; pick another name or remove it",
            crate_dir.display()
        );
    }
    std::fs::create_dir_all(&parent).with_context(|| format!("cannot create `{}`", parent.display()))?;
    let sdk = match (args.lang, &args.sdk_path) {
        (Lang::Rust, Some(path)) => path
            .canonicalize()
            .with_context(|| format!("`--sdk-path {}` does not exist", path.display()))?,
        (Lang::Rust, None) => match find_sdk(&parent) {
            Some(sdk) => sdk,
            None => write_embedded_sdk()?,
        },
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

/// The SDK folder a Rust transform under `parent` would point at, for the
/// check of templated paths (the embedded SDK's folder is Sluice's own).
fn sdk_hint(parent: &Path, lang: Lang) -> PathBuf {
    match lang {
        Lang::Rust => find_sdk(parent).unwrap_or_default(),
        _ => PathBuf::new(),
    }
}

/// Refuses a path that is not UTF-8 or holds a quote, a backslash, a
/// backtick or a control character (a newline among them).
fn check_templated_path(path: &Path) -> anyhow::Result<()> {
    let Some(text) = path.to_str() else {
        bail!("`{}` is not UTF-8: pick a --dir whose path is", path.display());
    };
    if let Some(c) = text
        .chars()
        .find(|c| c.is_control() || matches!(c, '"' | '\'' | '\\' | '`' | '\u{2028}' | '\u{2029}'))
    {
        bail!(
            "`{}` holds {:?}, which generated sources cannot carry safely: pick a --dir whose path has no quotes, backslashes, backticks or control characters",
            text.escape_debug(),
            c
        );
    }
    Ok(())
}

/// The `guest-sdk` folder of the Sluice checkout that contains `dir`, if any.
fn find_sdk(dir: &Path) -> Option<PathBuf> {
    let start = dir.canonicalize().ok()?;
    start
        .ancestors()
        .map(|a| a.join("guest-sdk"))
        .find(|sdk| sdk.join("Cargo.toml").is_file())
}

/// The Rust SDK (`sluice-guest`) and the contract, as this `sluice` was built.
const RUST_SDK: &[(&str, &str)] = &[
    (
        "guest-sdk/Cargo.toml",
        include_str!("scaffold/rust-sdk/Cargo.toml"),
    ),
    (
        "guest-sdk/src/event.rs",
        include_str!("../../../guest-sdk/src/event.rs"),
    ),
    (
        "guest-sdk/src/gtin.rs",
        include_str!("../../../guest-sdk/src/gtin.rs"),
    ),
    (
        "guest-sdk/src/lib.rs",
        include_str!("../../../guest-sdk/src/lib.rs"),
    ),
    (
        "guest-sdk/src/log.rs",
        include_str!("../../../guest-sdk/src/log.rs"),
    ),
    (
        "guest-sdk/src/lookup.rs",
        include_str!("../../../guest-sdk/src/lookup.rs"),
    ),
    (
        "guest-sdk/src/mapping.rs",
        include_str!("../../../guest-sdk/src/mapping.rs"),
    ),
    (
        "guest-sdk/src/money.rs",
        include_str!("../../../guest-sdk/src/money.rs"),
    ),
    (
        "guest-sdk/src/outcome.rs",
        include_str!("../../../guest-sdk/src/outcome.rs"),
    ),
    (
        "guest-sdk/src/path.rs",
        include_str!("../../../guest-sdk/src/path.rs"),
    ),
    (
        "guest-sdk/src/product.rs",
        include_str!("../../../guest-sdk/src/product.rs"),
    ),
    (
        "guest-sdk/src/size_classes.rs",
        include_str!("../../../guest-sdk/src/size_classes.rs"),
    ),
    (
        "guest-sdk/src/source.rs",
        include_str!("../../../guest-sdk/src/source.rs"),
    ),
    (
        "guest-sdk/src/state.rs",
        include_str!("../../../guest-sdk/src/state.rs"),
    ),
    (
        "guest-sdk/src/text.rs",
        include_str!("../../../guest-sdk/src/text.rs"),
    ),
    (
        "guest-sdk/src/transform.rs",
        include_str!("../../../guest-sdk/src/transform.rs"),
    ),
    (
        "guest-sdk/src/units.rs",
        include_str!("../../../guest-sdk/src/units.rs"),
    ),
    ("wit/world.wit", include_str!("../../../wit/world.wit")),
    ("wit/types.wit", include_str!("../../../wit/types.wit")),
    ("wit/v0.2/world.wit", include_str!("../../../wit/v0.2/world.wit")),
    ("wit/v0.2/types.wit", include_str!("../../../wit/v0.2/types.wit")),
];

/// Writes the embedded Rust SDK under the cache folder (one folder per
/// content, so an older scaffold keeps building against its own); its
/// `guest-sdk` folder.
fn write_embedded_sdk() -> anyhow::Result<PathBuf> {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    for (file, text) in RUST_SDK {
        digest.update(file.as_bytes());
        digest.update(text.as_bytes());
    }
    let version = hex::encode(digest.finalize());
    let root = super::default_cache_dir().join("rust-sdk").join(&version[..16]);
    for (file, text) in RUST_SDK {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().expect("files are in folders"))?;
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
            std::fs::write(&path, text).with_context(|| format!("cannot write `{}`", path.display()))?;
        }
    }
    eprintln!(
        "using the Rust SDK this sluice carries, written to {}",
        root.display()
    );
    Ok(root.join("guest-sdk"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every dependency of the embedded SDK manifest is the workspace's, so
    /// a scaffold outside the checkout builds what CI builds.
    #[test]
    fn the_embedded_sdk_manifest_matches_the_workspace() {
        let read = |text: &str| text.parse::<toml::Table>().unwrap();
        let embedded = read(include_str!("scaffold/rust-sdk/Cargo.toml"));
        let sdk = read(include_str!("../../../guest-sdk/Cargo.toml"));
        let workspace = read(include_str!("../../../Cargo.toml"));
        let shared = &workspace["workspace"]["dependencies"];
        for (name, spec) in sdk["dependencies"].as_table().unwrap() {
            let as_table = |value: toml::Value| match value {
                toml::Value::String(version) => {
                    toml::Table::from_iter([("version".to_string(), version.into())])
                }
                other => other.as_table().cloned().unwrap_or_default(),
            };
            let mut want = as_table(shared.get(name).cloned().unwrap_or_else(|| spec.clone()));
            if spec.get("optional").is_some() {
                want.insert("optional".into(), true.into());
            }
            let got = as_table(embedded["dependencies"][name].clone());
            assert_eq!(got, want, "dependency `{name}`");
        }
        assert_eq!(embedded["features"], sdk["features"], "features");
        let files: Vec<&str> = RUST_SDK.iter().map(|(f, _)| *f).collect();
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../guest-sdk/src")).unwrap() {
            let name = format!("guest-sdk/src/{}", entry.unwrap().file_name().to_string_lossy());
            assert!(files.contains(&name.as_str()), "{name} is not embedded");
        }
    }
}
