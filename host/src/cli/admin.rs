//! `sluice channels …` and `sluice dead-letters …`: talk to a running
//! sidecar's admin API and print its JSON answers.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

/// Where the running sidecar is.
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
    let base = args.server.server.trim_end_matches('/');
    match args.command {
        ChannelsCommand::List => call("GET", &format!("{base}/v1/channels")),
        ChannelsCommand::Enable { channel } => {
            call("POST", &format!("{base}/v1/channels/{}/enable", encode(&channel)))
        }
        ChannelsCommand::Disable { channel } => call(
            "POST",
            &format!("{base}/v1/channels/{}/disable", encode(&channel)),
        ),
    }
}

/// Runs `sluice dead-letters …`.
pub fn dead_letters(args: DeadLettersArgs) -> anyhow::Result<ExitCode> {
    let base = args.server.server.trim_end_matches('/');
    let letters = format!("{base}/v1/dead-letters");
    match args.command {
        DeadLettersCommand::List { channel, limit } => {
            let mut url = format!("{letters}?limit={limit}");
            if let Some(channel) = channel {
                url.push_str(&format!("&channel={}", encode(&channel)));
            }
            call("GET", &url)
        }
        DeadLettersCommand::Show { id } => call("GET", &format!("{letters}/{id}")),
        DeadLettersCommand::Replay { id, retransform } => call(
            "POST",
            &format!("{letters}/{id}/replay?retransform={retransform}"),
        ),
        DeadLettersCommand::Purge { id: Some(id), .. } => call("DELETE", &format!("{letters}/{id}")),
        DeadLettersCommand::Purge { channel, .. } => match channel {
            Some(channel) => call("DELETE", &format!("{letters}?channel={}", encode(&channel))),
            None => call("DELETE", &letters),
        },
    }
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Sends the request and prints the JSON answer; exit code 1 on an API error.
fn call(method: &str, url: &str) -> anyhow::Result<ExitCode> {
    let (ok, body) = match ureq::request(method, url).call() {
        Ok(response) => (true, response.into_string()?),
        Err(ureq::Error::Status(_, response)) => (false, response.into_string()?),
        Err(err) => anyhow::bail!("cannot reach the sidecar at {url}: {err}"),
    };
    match serde_json::from_str::<Value>(&body) {
        Ok(json) => println!("{}", serde_json::to_string_pretty(&json)?),
        Err(_) => println!("{body}"),
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
