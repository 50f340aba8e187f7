//! `sluice.toml`: the operator's configuration of a sidecar.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::Limits;
use crate::pipeline::StepSpec;

/// The whole file. Unknown keys are errors that name the key.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; `127.0.0.1:0` picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where Sluice keeps its state (compiled-module cache).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes (larger: 413).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Limits for every module (see `sluice run --help` for their meaning).
    #[serde(default)]
    pub limits: Limits,
    /// The channels this sidecar serves.
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelConfig>,
}

/// One channel: a name and its pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ChannelConfig {
    /// The channel's name, as in `/v1/channels/{name}/transform`.
    pub name: String,
    /// The tenant the channel belongs to; stamped on events that carry none.
    #[serde(default)]
    pub tenant: String,
    /// A channel `pipeline.json`, relative to the config file (or give `step`s).
    #[serde(default)]
    pub pipeline: Option<PathBuf>,
    /// The steps: `module` is a built transform's name or a `.wasm` file
    /// relative to the config file; `config` is the step's configuration.
    #[serde(default, rename = "step")]
    pub steps: Vec<StepSpec>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".sluice")
}

fn default_max_body() -> usize {
    8 << 20
}

/// Why `sluice.toml` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or mistyped.
    #[error("`{path}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What and where.
        message: String,
    },
}

impl ServerConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses the text of a `sluice.toml`; the error names the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let de = toml::Deserializer::parse(text).map_err(|err| err.to_string())?;
        let config: ServerConfig = serde_path_to_error::deserialize(de).map_err(|err| {
            let path = err.path().to_string();
            format!("at `{path}`: {}", err.into_inner().message())
        })?;
        let mut names = std::collections::BTreeSet::new();
        for channel in &config.channels {
            if !names.insert(&channel.name) {
                return Err(format!("channel `{}` is defined twice", channel.name));
            }
            if channel.steps.is_empty() == channel.pipeline.is_none() {
                return Err(format!(
                    "channel `{}` needs either `pipeline = \"…/pipeline.json\"` or `[[channel.step]]` entries, not both",
                    channel.name
                ));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        listen = "127.0.0.1:0"

        [[channel]]
        name = "b2b"
        tenant = "acme"
        [[channel.step]]
        module = "magento-source"
        [[channel.step]]
        module = "b2b-portal"
        config = { max-title = 80 }
    "#;

    #[test]
    fn a_good_config_parses_with_defaults() {
        let config = ServerConfig::parse(GOOD).unwrap();
        assert_eq!(config.channels[0].steps.len(), 2);
        assert_eq!(config.channels[0].steps[1].config["max-title"], 80);
        assert_eq!(config.max_body_bytes, 8 << 20);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = ServerConfig::parse(&GOOD.replace("tenant =", "tennant =")).unwrap_err();
        assert!(
            err.contains("channel[0]") && err.contains("unknown field `tennant`"),
            "{err}"
        );
        let err = ServerConfig::parse("listen = 5").unwrap_err();
        assert!(err.contains("listen"), "{err}");
    }

    #[test]
    fn duplicate_channels_are_refused() {
        let twice = format!("{GOOD}\n{}", &GOOD[GOOD.find("[[channel]]").unwrap()..]);
        assert_eq!(
            ServerConfig::parse(&twice).unwrap_err(),
            "channel `b2b` is defined twice"
        );
    }
}
