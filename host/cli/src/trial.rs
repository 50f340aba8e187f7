//! `sluice channels backfill` and `sluice channels record`: the commands
//! that follow a sidecar's job to its end and write files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::admin::{ServerArgs, encode, send};

/// Arguments of `sluice channels backfill`.
#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The channel.
    channel: String,
    /// The candidate pipeline file (as `activate` takes).
    pipeline: PathBuf,
    /// Only events received at or after this time (RFC 3339, `2026-11-20T00:00:00Z`).
    #[arg(long, value_name = "RFC3339", value_parser = rfc3339_ms)]
    since: Option<i64>,
    /// At most this many events.
    #[arg(long)]
    limit: Option<u64>,
}

/// Arguments of `sluice channels record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The channel.
    channel: String,
    /// Record the next this many events the channel runs.
    #[arg(long, required_unless_present = "last", conflicts_with = "last")]
    count: Option<usize>,
    /// Record the newest this many stored events instead.
    #[arg(long)]
    last: Option<usize>,
    /// The fixtures folder to write the cases into (one folder each, `recorded-<event id>`).
    #[arg(long, value_name = "FIXTURES_DIR")]
    out: PathBuf,
    /// Replace what this JSONPath selects in every event (input and output,
    /// `$.payload.customer.email`) by a stable placeholder. Repeatable.
    #[arg(long, value_name = "JSONPATH")]
    redact: Vec<String>,
    /// The key placeholders are made with: the same key gives the same
    /// placeholder for the same value. Created on first use (default
    /// `~/.config/sluice/redact-key`, readable by its owner only).
    #[arg(long, value_name = "FILE")]
    redact_key: Option<PathBuf>,
    /// With --count: stop after this many seconds and write what was recorded.
    #[arg(long, value_name = "SECONDS")]
    within: Option<u64>,
}

fn rfc3339_ms(text: &str) -> Result<i64, String> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|err| format!("`{text}` is not an RFC 3339 time like 2026-11-20T00:00:00Z: {err}"))?;
    Ok((at.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// `~/.config/sluice/redact-key`; never a shared folder such as /tmp,
/// where another user could plant a key of their choosing.
fn default_key_file() -> anyhow::Result<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .map(|config| config.join("sluice/redact-key"))
        .context("no HOME or XDG_CONFIG_HOME to keep the redaction key in: pass --redact-key FILE")
}

/// How often a job is looked at.
const POLL: Duration = Duration::from_millis(250);

/// Runs `sluice channels backfill`: starts it, shows its progress on a
/// terminal, prints the report; exit code 1 if it failed.
pub fn backfill(server: &ServerArgs, args: &BackfillArgs) -> anyhow::Result<ExitCode> {
    let body =
        std::fs::read(&args.pipeline).with_context(|| format!("cannot read {}", args.pipeline.display()))?;
    let url = server.url(&format!("/v1/channels/{}/backfill", encode(&args.channel)));
    let mut start = format!("{url}?since-ms={}", args.since.unwrap_or(0));
    if let Some(limit) = args.limit {
        start.push_str(&format!("&limit={limit}"));
    }
    let mut report = api(send(server, "POST", &start, Some(("application/json", body)))?)?;
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template("backfill {bar:30} {percent:>3}% {msg}").expect("a valid template"),
    );
    while report["state"] == "running" {
        show(&bar, &report);
        std::thread::sleep(POLL);
        report = api(send(server, "GET", &url, None)?)?;
    }
    show(&bar, &report);
    bar.finish_and_clear();
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if report["state"] == "failed" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn show(bar: &ProgressBar, report: &Value) {
    let fraction = report["progress"].as_f64().unwrap_or(0.0);
    bar.set_position((fraction * 1000.0) as u64);
    let comparison = &report["comparison"];
    bar.set_message(format!(
        "{} events, {} different",
        report["processed"], comparison["different"]
    ));
}

/// The JSON of an accepted answer; an API error as an error with its message.
fn api((ok, body): (bool, String)) -> anyhow::Result<Value> {
    let json: Value = serde_json::from_str(&body).unwrap_or_else(|_| Value::String(body.clone()));
    if !ok {
        let message = json["message"].as_str().unwrap_or(&body);
        bail!("{message}");
    }
    Ok(json)
}

/// Runs `sluice channels record`: records, then writes one case folder
/// per event into the fixtures folder.
pub fn record(server: &ServerArgs, args: &RecordArgs) -> anyhow::Result<ExitCode> {
    let key_file = match &args.redact_key {
        Some(file) => file.clone(),
        None => default_key_file()?,
    };
    let key = redact_key(&key_file)?;
    let url = server.url(&format!("/v1/channels/{}/record", encode(&args.channel)));
    let mut asked = json!({"redact": args.redact, "key": key});
    match (args.count, args.last) {
        (Some(count), _) => asked["count"] = count.into(),
        (None, Some(last)) => asked["last"] = last.into(),
        (None, None) => bail!("give --count or --last"),
    }
    let mut answer = api(send(
        server,
        "POST",
        &url,
        Some(("application/json", asked.to_string().into_bytes())),
    )?)?;
    let bar = ProgressBar::new(answer["wanted"].as_u64().unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("recording {bar:30} {pos}/{len} events").expect("a valid template"),
    );
    let deadline = args
        .within
        .map(|s| std::time::Instant::now() + Duration::from_secs(s));
    while answer["state"] == "recording" {
        bar.set_position(answer["captured"].as_u64().unwrap_or(0));
        std::thread::sleep(POLL);
        let over = deadline.is_some_and(|at| std::time::Instant::now() >= at);
        answer = api(send(server, if over { "DELETE" } else { "GET" }, &url, None)?)?;
    }
    bar.finish_and_clear();
    let cases = answer["cases"].as_array().cloned().unwrap_or_default();
    for case in &cases {
        write_case(&args.out, case)?;
    }
    println!(
        "wrote {} case(s) to {}; run `sluice test` on them",
        cases.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The redaction key in `file` (hex), made on first use (readable by its owner only).
fn redact_key(file: &Path) -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(file) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file)?.permissions().mode();
            if mode & 0o077 != 0 {
                bail!(
                    "the redaction key {} is readable or writable by others (mode {:o}): \
                     make it yours alone with `chmod 600`",
                    file.display(),
                    mode & 0o777
                );
            }
        }
        let key = text.trim().to_string();
        if key.len() < 32 || hex::decode(&key).is_err() {
            bail!(
                "the redaction key {} must be at least 32 hex digits (16 bytes)",
                file.display()
            );
        }
        return Ok(key);
    }
    let key = sluice_server::auth::new_token()
        .trim_start_matches("slc_")
        .to_string();
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    options
        .open(file)
        .and_then(|mut f| f.write_all(key.as_bytes()))
        .with_context(|| format!("cannot write the redaction key {}", file.display()))?;
    eprintln!("made a redaction key in {}", file.display());
    Ok(key)
}

/// Writes one case folder: `input.json` and `expected.json`.
fn write_case(out: &Path, case: &Value) -> anyhow::Result<()> {
    let name = case["name"].as_str().context("a case without a name")?;
    // The server names cases safely; never trust a name to stay in `out`.
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("the sidecar sent an unsafe case name `{name}`");
    }
    let dir = out.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (file, value) in [
        ("input.json", &case["input"]),
        ("expected.json", &case["expected"]),
    ] {
        let text = serde_json::to_string_pretty(value)? + "\n";
        std::fs::write(dir.join(file), text)
            .with_context(|| format!("cannot write {}/{file}", dir.display()))?;
    }
    Ok(())
}
