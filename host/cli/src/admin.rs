//! `sluice channels …`, `sluice dead-letters …`, `sluice modules …` and
//! `sluice token …`: talk to a running sidecar's API and print its JSON
//! answers (or, for `token`, make tokens for `sluice.toml`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use sluice_server::auth::{hash_token, new_token};

/// Where the running sidecar is, and who is calling.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The sidecar's base URL.
    #[arg(
        long,
        env = "SLUICE_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    server: String,
    /// The API token (a tenant's, or an admin's).
    #[arg(long, env = "SLUICE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
}

impl ServerArgs {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.trim_end_matches('/'))
    }
}

/// `sluice channels`.
#[derive(Debug, Args)]
pub struct ChannelsArgs {
    #[command(subcommand)]
    command: ChannelsCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum ChannelsCommand {
    /// Every channel with its switch, modules and queue depth.
    List,
    /// Create or replace one of your channels from a JSON file:
    /// `destination`, `steps` (uploaded modules, as `activate` takes them),
    /// `sources`, `enabled`, `when-off`.
    Create {
        /// The channel.
        channel: String,
        /// The JSON file.
        file: PathBuf,
    },
    /// Delete one of your channels (refused while it holds undelivered events).
    Delete {
        /// The channel.
        channel: String,
    },
    /// Switch a channel on: its held events flow again, in order.
    Enable {
        /// The channel.
        channel: String,
    },
    /// Switch a channel off: see `when-off` in sluice.toml for what happens to new events.
    Disable {
        /// The channel.
        channel: String,
    },
    /// Switch a channel to uploaded module versions: a pipeline.json whose
    /// steps name `module`, `version` (see `sluice modules list`) and `config`.
    Activate {
        /// The channel.
        channel: String,
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Return a channel to the pipeline it ran before its last activation.
    Rollback {
        /// The channel.
        channel: String,
    },
    /// Run every event of the channel through a candidate pipeline as well
    /// (a pipeline.json as `activate` takes) and compare; nothing of the
    /// candidate is delivered, except with --canary.
    Shadow {
        /// The channel.
        channel: String,
        /// The candidate pipeline file.
        pipeline: PathBuf,
        /// Deliver this per cent of entities (by entity-key hash) from the candidate.
        #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
        canary: Option<u8>,
    },
    /// How the shadow's candidate compares: events equal and different,
    /// differences per JSON path with samples, the candidate's rejections and faults.
    ShadowReport {
        /// The channel.
        channel: String,
    },
    /// Stop the shadow (or canary); prints its last report.
    ShadowStop {
        /// The channel.
        channel: String,
    },
    /// Activate the shadow's candidate (rollback undoes it) and stop the shadow.
    Promote {
        /// The channel.
        channel: String,
    },
    /// Run the stored events of the ingest log through a candidate pipeline
    /// and the current one, deliver nothing, and report like a shadow.
    Backfill(crate::trial::BackfillArgs),
    /// Write live events of the channel, with today's outputs, as fixture
    /// cases that `sluice test` passes unchanged.
    Record(crate::trial::RecordArgs),
}

/// `sluice modules`.
#[derive(Debug, Args)]
pub struct ModulesArgs {
    #[command(subcommand)]
    command: ModulesCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum ModulesCommand {
    /// Upload a component; the server checks it (and runs the fixtures) before storing it.
    Push {
        /// The component file.
        file: PathBuf,
        /// The module's name (default: the file name without `.wasm`, `_` as `-`).
        #[arg(long)]
        name: Option<String>,
        /// A fixtures folder (`<case>/{input.json, config.json, expected.json}`) every case of which must pass.
        #[arg(long)]
        fixtures: Option<PathBuf>,
    },
    /// Your modules and their versions.
    List,
}

/// `sluice events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    command: EventsCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// One event's story: when it was accepted, what each channel's
    /// pipeline returned (with module versions), every delivery attempt
    /// with its request and response (secrets masked), and where it is now.
    Show {
        /// The event's id.
        id: String,
        /// An admin names the tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// The newest events whose deliveries had an entity key ("where is SKU X?").
    Find {
        /// The entity key (the destination's `entity-key`, e.g. the SKU).
        #[arg(long)]
        entity: String,
        /// Only this channel's.
        #[arg(long)]
        channel: Option<String>,
        /// An admin names the tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// `sluice lookups`.
#[derive(Debug, Args)]
pub struct LookupsArgs {
    #[command(subcommand)]
    command: LookupsCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum LookupsCommand {
    /// Upload a lookup table: a `.csv` file (a header row; the first
    /// column is the key) or a JSON object of key to value. The server
    /// checks it before storing it; a step names it as `<name>@<version>`.
    Push {
        /// The table file.
        file: PathBuf,
        /// The table's name (default: the file name without its extension, `_` as `-`).
        #[arg(long)]
        name: Option<String>,
    },
    /// Your lookup tables and their versions.
    List,
}

/// `sluice destinations`.
#[derive(Debug, Args)]
pub struct DestinationsArgs {
    #[command(subcommand)]
    command: DestinationsCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum DestinationsCommand {
    /// The destinations of your channels and your own, with what their workers are doing.
    List,
    /// One destination, its secrets and header values shown as "set".
    Show {
        /// The destination's name.
        name: String,
    },
    /// Create or replace one of your destinations from a JSON file: the
    /// keys of a `[[destination]]` table, secrets inline (`auth.client-secret`, …).
    Put {
        /// The destination's name.
        name: String,
        /// The JSON file.
        file: PathBuf,
    },
    /// Delete one of your destinations that no channel uses.
    Delete {
        /// The destination's name.
        name: String,
    },
}

/// `sluice sources`.
#[derive(Debug, Args)]
pub struct SourcesArgs {
    #[command(subcommand)]
    command: SourcesCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum SourcesCommand {
    /// Your sources: the operator's (read-only) and your own.
    List,
    /// One source, its secrets shown as "set", with a poll source's cursor.
    Show {
        /// The source's name.
        name: String,
    },
    /// Create or replace one of your sources from a JSON file: the keys of
    /// a `[[source]]` table, secrets inline (`secret`, `auth.bearer`, …).
    Put {
        /// The source's name.
        name: String,
        /// The JSON file.
        file: PathBuf,
    },
    /// Delete one of your sources (the events it made stay).
    Delete {
        /// The source's name.
        name: String,
    },
}

/// `sluice token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a new random token; prints it and the SHA-256 for `sluice.toml`.
    New,
    /// The SHA-256 of a token, for `token-sha256` in `sluice.toml`.
    Hash {
        /// The token.
        token: String,
    },
}

/// `sluice dead-letters`.
#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    command: DeadLettersCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum DeadLettersCommand {
    /// Dead letters, newest first.
    List {
        /// Only this channel's.
        #[arg(long)]
        channel: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One dead letter in full: original event, output, attempts, module versions.
    Show {
        /// Its id.
        id: i64,
    },
    /// Send it again: the stored output, or with --retransform the original
    /// event through the channel's current pipeline.
    Replay {
        /// Its id.
        id: i64,
        /// Re-run the channel's current pipeline on the original event.
        #[arg(long)]
        retransform: bool,
    },
    /// Delete one dead letter, or with --all every one (of --channel).
    Purge {
        /// Its id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every dead letter (of --channel, if given).
        #[arg(long)]
        all: bool,
        /// With --all: only this channel's.
        #[arg(long, requires = "all")]
        channel: Option<String>,
    },
}

/// Runs `sluice channels …`.
pub fn channels(args: ChannelsArgs) -> anyhow::Result<ExitCode> {
    let server = &args.server;
    let channel_url =
        |channel: &str, action: &str| server.url(&format!("/v1/channels/{}/{action}", encode(channel)));
    match &args.command {
        ChannelsCommand::List => call(server, "GET", &server.url("/v1/channels"), None),
        ChannelsCommand::Create { channel, file } => {
            let body = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let url = server.url(&format!("/v1/channels/{}", encode(channel)));
            call(server, "PUT", &url, Some(("application/json", body)))
        }
        ChannelsCommand::Delete { channel } => call(
            server,
            "DELETE",
            &server.url(&format!("/v1/channels/{}", encode(channel))),
            None,
        ),
        ChannelsCommand::Enable { channel } => call(server, "POST", &channel_url(channel, "enable"), None),
        ChannelsCommand::Disable { channel } => call(server, "POST", &channel_url(channel, "disable"), None),
        ChannelsCommand::Activate { channel, pipeline } => {
            let body =
                std::fs::read(pipeline).with_context(|| format!("cannot read {}", pipeline.display()))?;
            call(
                server,
                "POST",
                &channel_url(channel, "activate"),
                Some(("application/json", body)),
            )
        }
        ChannelsCommand::Rollback { channel } => {
            call(server, "POST", &channel_url(channel, "rollback"), None)
        }
        ChannelsCommand::Shadow {
            channel,
            pipeline,
            canary,
        } => {
            let body =
                std::fs::read(pipeline).with_context(|| format!("cannot read {}", pipeline.display()))?;
            let mut url = channel_url(channel, "shadow");
            if let Some(percent) = canary {
                url.push_str(&format!("?canary={percent}"));
            }
            call(server, "POST", &url, Some(("application/json", body)))
        }
        ChannelsCommand::ShadowReport { channel } => {
            call(server, "GET", &channel_url(channel, "shadow"), None)
        }
        ChannelsCommand::ShadowStop { channel } => {
            call(server, "DELETE", &channel_url(channel, "shadow"), None)
        }
        ChannelsCommand::Promote { channel } => {
            call(server, "POST", &channel_url(channel, "shadow/promote"), None)
        }
        ChannelsCommand::Backfill(backfill) => crate::trial::backfill(server, backfill),
        ChannelsCommand::Record(record) => crate::trial::record(server, record),
    }
}

/// Runs `sluice destinations …`.
pub fn destinations(args: DestinationsArgs) -> anyhow::Result<ExitCode> {
    let server = &args.server;
    let one = |name: &str| server.url(&format!("/v1/destinations/{}", encode(name)));
    match &args.command {
        DestinationsCommand::List => call(server, "GET", &server.url("/v1/destinations"), None),
        DestinationsCommand::Show { name } => call(server, "GET", &one(name), None),
        DestinationsCommand::Put { name, file } => {
            let body = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            call(server, "PUT", &one(name), Some(("application/json", body)))
        }
        DestinationsCommand::Delete { name } => call(server, "DELETE", &one(name), None),
    }
}

/// Runs `sluice sources …`.
pub fn sources(args: SourcesArgs) -> anyhow::Result<ExitCode> {
    let server = &args.server;
    let one = |name: &str| server.url(&format!("/v1/sources/{}", encode(name)));
    match &args.command {
        SourcesCommand::List => call(server, "GET", &server.url("/v1/sources"), None),
        SourcesCommand::Show { name } => call(server, "GET", &one(name), None),
        SourcesCommand::Put { name, file } => {
            let body = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            call(server, "PUT", &one(name), Some(("application/json", body)))
        }
        SourcesCommand::Delete { name } => call(server, "DELETE", &one(name), None),
    }
}

/// Runs `sluice modules …`.
pub fn modules(args: ModulesArgs) -> anyhow::Result<ExitCode> {
    let server = &args.server;
    match &args.command {
        ModulesCommand::List => call(server, "GET", &server.url("/v1/modules"), None),
        ModulesCommand::Push { file, name, fixtures } => {
            let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let name = name_or_file_stem(name, file, "module")?;
            let body = match fixtures {
                None => ("application/wasm", bytes),
                Some(dir) => {
                    let mut archive = tar::Builder::new(Vec::new());
                    let mut header = tar::Header::new_gnu();
                    header.set_size(bytes.len() as u64);
                    header.set_mode(0o644);
                    header.set_cksum();
                    archive.append_data(&mut header, "module.wasm", bytes.as_slice())?;
                    append_fixtures(&mut archive, dir)?;
                    ("application/x-tar", archive.into_inner()?)
                }
            };
            let (ok, answer) = send(
                server,
                "PUT",
                &server.url(&format!("/v1/modules/{}", encode(&name))),
                Some(body),
            )?;
            let json: Value = serde_json::from_str(&answer).unwrap_or(Value::String(answer));
            if json["code"] == "fixtures-failed" {
                print_failed_fixtures(&name, &json);
            } else {
                println!("{}", serde_json::to_string_pretty(&json)?);
            }
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

/// Runs `sluice events …`.
pub fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let server = &args.server;
    let with_tenant = |mut url: String, tenant: &Option<String>| {
        if let Some(tenant) = tenant {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("tenant={}", encode(tenant)));
        }
        url
    };
    match &args.command {
        EventsCommand::Show { id, tenant } => {
            let url = with_tenant(server.url(&format!("/v1/events/{}", encode(id))), tenant);
            call(server, "GET", &url, None)
        }
        EventsCommand::Find {
            entity,
            channel,
            tenant,
        } => {
            let mut url = server.url(&format!("/v1/events?entity={}", encode(entity)));
            if let Some(channel) = channel {
                url.push_str(&format!("&channel={}", encode(channel)));
            }
            call(server, "GET", &with_tenant(url, tenant), None)
        }
    }
}

/// The name given, or the file's name without its extension, `_` as `-`.
fn name_or_file_stem(name: &Option<String>, file: &Path, what: &str) -> anyhow::Result<String> {
    match name {
        Some(name) => Ok(name.clone()),
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().replace('_', "-"))
            .with_context(|| format!("name the {what} with --name")),
    }
}

/// Runs `sluice lookups …`.
pub fn lookups(args: LookupsArgs) -> anyhow::Result<ExitCode> {
    let server = &args.server;
    match &args.command {
        LookupsCommand::List => call(server, "GET", &server.url("/v1/lookups"), None),
        LookupsCommand::Push { file, name } => {
            let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let name = name_or_file_stem(name, file, "table")?;
            let csv = file
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("csv"));
            let media = if csv { "text/csv" } else { "application/json" };
            call(
                server,
                "PUT",
                &server.url(&format!("/v1/lookups/{}", encode(&name))),
                Some((media, bytes)),
            )
        }
    }
}

/// Most bytes of fixtures one upload carries (the server's cap).
const MAX_FIXTURE_BYTES: u64 = 8 << 20;

/// Adds the plain files and folders under `dir` to `archive` as
/// `fixtures/…`. A symbolic link is refused, not followed: a fixture that
/// points at `~/.aws/credentials` would upload it, and one that points at
/// `/` would walk the whole disk. So is more than the server would take.
fn append_fixtures(archive: &mut tar::Builder<Vec<u8>>, dir: &Path) -> anyhow::Result<()> {
    let mut total = 0u64;
    let mut pending = vec![(dir.to_path_buf(), PathBuf::from("fixtures"))];
    while let Some((path, name)) = pending.pop() {
        // The folder named on the command line may itself be a link; nothing under it may.
        let meta = if path == dir {
            std::fs::metadata(&path)
        } else {
            std::fs::symlink_metadata(&path)
        }
        .with_context(|| format!("cannot read {}", path.display()))?;
        if meta.file_type().is_symlink() {
            bail!(
                "{} is a symbolic link: fixtures must be plain files and folders",
                path.display()
            );
        }
        if meta.is_dir() {
            archive.append_dir(&name, &path)?;
            let mut entries: Vec<_> = std::fs::read_dir(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .collect::<Result<_, _>>()?;
            entries.sort_by_key(|entry| std::cmp::Reverse(entry.file_name()));
            for entry in entries {
                pending.push((entry.path(), name.join(entry.file_name())));
            }
        } else if meta.is_file() {
            total += meta.len();
            if total > MAX_FIXTURE_BYTES {
                bail!(
                    "the fixtures in {} are over {MAX_FIXTURE_BYTES} bytes, more than an upload may carry",
                    dir.display()
                );
            }
            let mut file =
                std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
            archive.append_file(&name, &mut file)?;
        } else {
            bail!("{} is not a plain file or folder", path.display());
        }
    }
    Ok(())
}

/// An upload refused for its fixtures, as `sluice test` shows cases: each
/// case, and for each difference its JSON path, expected and actual.
fn print_failed_fixtures(module: &str, answer: &Value) {
    println!("{}", answer["message"].as_str().unwrap_or("the fixtures failed"));
    let show = |value: &Value| {
        if value.is_null() {
            "(missing)".to_string()
        } else {
            value.to_string()
        }
    };
    for case in answer["cases"].as_array().into_iter().flatten() {
        let name = case["case"].as_str().unwrap_or("?");
        if case["status"] == "passed" {
            println!("case {module}/{name} ... ok");
            continue;
        }
        println!("case {module}/{name} ... FAILED");
        if let Some(error) = case["error"].as_str() {
            println!("    {error}");
        }
        for difference in case["differences"].as_array().into_iter().flatten() {
            println!("      {}", difference["path"].as_str().unwrap_or("$"));
            println!("        expected: {}", show(&difference["expected"]));
            println!("        actual:   {}", show(&difference["actual"]));
        }
        let shown = case["differences"].as_array().map_or(0, Vec::len) as u64;
        if let Some(total) = case["differences-total"].as_u64().filter(|total| *total > shown) {
            println!("      … {} more difference(s), not shown", total - shown);
        }
        for overrun in case["over-budget"].as_array().into_iter().flatten() {
            println!(
                "    {} {} is over its budget of {}",
                overrun["figure"].as_str().unwrap_or("?"),
                overrun["value"],
                overrun["budget"]
            );
        }
    }
}

/// Runs `sluice token …`.
pub fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TokenCommand::New => {
            let token = new_token();
            println!("token:  {token}\nsha256: {}", hash_token(&token));
        }
        TokenCommand::Hash { token } => println!("{}", hash_token(&token)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `sluice dead-letters …`.
pub fn dead_letters(args: DeadLettersArgs) -> anyhow::Result<ExitCode> {
    let server = &args.server;
    let letters = server.url("/v1/dead-letters");
    match args.command {
        DeadLettersCommand::List { channel, limit } => {
            let mut url = format!("{letters}?limit={limit}");
            if let Some(channel) = channel {
                url.push_str(&format!("&channel={}", encode(&channel)));
            }
            call(server, "GET", &url, None)
        }
        DeadLettersCommand::Show { id } => call(server, "GET", &format!("{letters}/{id}"), None),
        DeadLettersCommand::Replay { id, retransform } => call(
            server,
            "POST",
            &format!("{letters}/{id}/replay?retransform={retransform}"),
            None,
        ),
        DeadLettersCommand::Purge { id: Some(id), .. } => {
            call(server, "DELETE", &format!("{letters}/{id}"), None)
        }
        DeadLettersCommand::Purge { channel, .. } => match channel {
            Some(channel) => call(
                server,
                "DELETE",
                &format!("{letters}?channel={}", encode(&channel)),
                None,
            ),
            None => call(server, "DELETE", &letters, None),
        },
    }
}

pub(crate) fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Sends the request and prints the JSON answer; exit code 1 on an API error.
fn call(
    server: &ServerArgs,
    method: &str,
    url: &str,
    body: Option<(&str, Vec<u8>)>,
) -> anyhow::Result<ExitCode> {
    let (ok, body) = send(server, method, url, body)?;
    match serde_json::from_str::<Value>(&body) {
        Ok(json) => println!("{}", serde_json::to_string_pretty(&json)?),
        Err(_) => println!("{body}"),
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Sends the request: whether the API accepted it, and the answer's text.
/// Sends a JSONL body and answers the status, a `Retry-After` in seconds
/// if there was one, and the body: for callers that retry on 429 and 503.
pub(crate) fn send_status(
    server: &ServerArgs,
    method: &str,
    url: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Option<std::time::Duration>, String)> {
    let mut request = ureq::request(method, url).set("content-type", "application/x-ndjson");
    if let Some(token) = &server.token {
        request = request.set("authorization", &format!("Bearer {token}"));
    }
    let response = match request.send_bytes(body) {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(err) => anyhow::bail!("cannot reach the sidecar at {url}: {err}"),
    };
    let status = response.status();
    let retry_after = response
        .header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    Ok((status, retry_after, response.into_string()?))
}

pub(crate) fn send(
    server: &ServerArgs,
    method: &str,
    url: &str,
    body: Option<(&str, Vec<u8>)>,
) -> anyhow::Result<(bool, String)> {
    let mut request = ureq::request(method, url);
    if let Some(token) = &server.token {
        request = request.set("authorization", &format!("Bearer {token}"));
    }
    let sent = match body {
        Some((content_type, bytes)) => request.set("content-type", content_type).send_bytes(&bytes),
        None => request.call(),
    };
    let (ok, body) = match sent {
        Ok(response) => (true, response.into_string()?),
        Err(ureq::Error::Status(_, response)) => (false, response.into_string()?),
        Err(err) => anyhow::bail!("cannot reach the sidecar at {url}: {err}"),
    };
    Ok((ok, body))
}
