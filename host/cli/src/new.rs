//! `sluice new`: scaffolds a transform crate that builds and passes its
//! fixture unchanged.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

/// Arguments of `sluice new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The transform's name: lower-case letters, digits and dashes (`acme-marketplace`).
    name: String,
    /// Folder to create the crate in.
    #[arg(long, default_value = "transforms")]
    dir: PathBuf,
    /// Path to the `guest-sdk` folder (the `sluice-guest` crate); found
    /// automatically when `--dir` is inside a Sluice checkout.
    #[arg(long)]
    sdk_path: Option<PathBuf>,
}

/// The files of a new transform, from templates next to this module.
const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("scaffold/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("scaffold/lib.rs.tmpl")),
    ("README.md", include_str!("scaffold/README.md.tmpl")),
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
];

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
    let sdk = match &args.sdk_path {
        Some(path) => path
            .canonicalize()
            .with_context(|| format!("`--sdk-path {}` does not exist", path.display()))?,
        None => find_sdk(&args.dir)?,
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
    for (file, template) in FILES {
        let text = template
            .replace("{{name}}", name)
            .replace("{{type_name}}", &type_name)
            .replace("{{sdk_path}}", &sdk.display().to_string())
            .replace("{{dir}}", &crate_dir.display().to_string());
        let path = crate_dir.join(file);
        std::fs::create_dir_all(path.parent().expect("files are in folders"))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    println!("created transform `{name}` in {}", crate_dir.display());
    println!("next:");
    println!(
        "  cargo build --manifest-path {}/Cargo.toml --target wasm32-wasip2 --release",
        crate_dir.display()
    );
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
