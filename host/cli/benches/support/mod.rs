//! Shared by the load benchmarks: the release `sluice serve` as a child process.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The admin token of every benchmarked server.
pub const TOKEN: &str = "bench-admin-token";

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running `sluice serve`, stopped with SIGTERM when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:port`.
    pub base: String,
}

impl Server {
    /// Writes `config` (plus the admin token and `dir/data` as data dir) and starts the server.
    /// Logs are at `warn` unless `SLUICE_LOG` says otherwise.
    pub fn start(dir: &Path, config: &str) -> Self {
        let path = dir.join("sluice.toml");
        let text = format!(
            "admin-token-sha256 = [\"{}\"]\ndata-dir = \"{}\"\n{config}",
            sluice_server::auth::hash_token(TOKEN),
            dir.join("data").display()
        );
        std::fs::write(&path, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "serve",
                "--config",
                path.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .env("CARGO_TARGET_DIR", root().join("target"))
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("sluice listening on ")
            .unwrap()
            .to_string();
        Self { child, base }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The value at quantile `p` of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A number from the environment, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `Authorization` header value for `token`.
pub fn auth_header(token: &str) -> String {
    format!("Bearer {token}")
}
