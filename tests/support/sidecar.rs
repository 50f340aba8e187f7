//! `sluice serve` as a real child process on 127.0.0.1, with its state in
//! a folder that outlives restarts (and `kill -9`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{target_dir, workspace};

/// The admin token every test sidecar accepts (see [`Sidecar::start`]).
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// SHA-256 of a token, as `sluice.toml` holds it.
pub fn token_hash(token: &str) -> String {
    sluice_server::auth::hash_token(token)
}

/// A running sidecar, killed when dropped.
pub struct Sidecar {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:port`.
    pub base: String,
    /// Holds `sluice.toml`, `data/` and the logs.
    pub dir: PathBuf,
    starts: usize,
    /// `--module-cache`, if not the default in `data/`.
    module_cache: Option<PathBuf>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    /// Writes `config` to `dir/sluice.toml` (`{channels}` becomes the example
    /// channels folder; [`ADMIN_TOKEN`] is made an admin token unless the
    /// config sets its own) and starts `sluice serve` on a free port with
    /// `dir/data` as its data dir.
    ///
    /// Test sidecars share one module cache (`--module-cache`), so a module
    /// is compiled about once for the whole run rather than once per test.
    pub fn start(dir: &Path, config: &str) -> Self {
        Self::start_with_module_cache(dir, config, Some(target_dir().join("sluice-test-sidecar-cache")))
    }

    /// As [`Sidecar::start`], with the module cache in `cache`, or in
    /// `dir/data/module-cache` (a sidecar's default) for `None`.
    pub fn start_with_module_cache(dir: &Path, config: &str, cache: Option<PathBuf>) -> Self {
        Self::write_config(dir, config);
        let (child, base) = spawn(dir, 0, cache.as_deref());
        Self {
            child,
            base,
            dir: dir.to_path_buf(),
            starts: 1,
            module_cache: cache,
        }
    }

    /// Replaces the config file; takes effect on the next restart.
    pub fn write_config(dir: &Path, config: &str) {
        let channels = workspace().join("transforms/channels");
        let mut text = config.replace("{channels}", channels.to_str().unwrap());
        if !text.contains("admin-token-sha256") {
            text = format!("admin-token-sha256 = [\"{}\"]\n{text}", token_hash(ADMIN_TOKEN));
        }
        std::fs::write(dir.join("sluice.toml"), text).unwrap();
    }

    /// `kill -9`: no chance to flush or drain.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        self.child.wait().unwrap()
    }

    /// Starts it again on the same folder (after `kill9` or `terminate`).
    pub fn restart(&mut self) {
        let (child, base) = spawn(&self.dir, self.starts, self.module_cache.as_deref());
        self.child = child;
        self.base = base;
        self.starts += 1;
    }

    /// POSTs `body` to `path` as the admin; the status and the JSON answer, whatever the status.
    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.send(
            "POST",
            path,
            Some(ADMIN_TOKEN),
            body.as_bytes(),
            "application/json",
        )
    }

    /// GETs `path` as the admin; the status and the JSON answer.
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.send("GET", path, Some(ADMIN_TOKEN), b"", "")
    }

    /// Sends any request, with `token` (or none); the status and the JSON answer.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
        content_type: &str,
    ) -> (u16, Value) {
        let mut request = ureq::request(method, &format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.set("authorization", &format!("Bearer {token}"));
        }
        if !content_type.is_empty() {
            request = request.set("content-type", content_type);
        }
        answer(if method == "GET" {
            request.call()
        } else {
            request.send_bytes(body)
        })
    }

    /// The Prometheus text.
    pub fn metrics(&self) -> String {
        ureq::get(&format!("{}/metrics", self.base))
            .set("authorization", &format!("Bearer {ADMIN_TOKEN}"))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }

    /// Runs the `sluice` CLI against this sidecar, as the admin.
    pub fn cli(&self, args: &[&str]) -> (bool, Value) {
        self.cli_as(ADMIN_TOKEN, args)
    }

    /// The `sluice` CLI, pointed at this sidecar with `token`: for runs
    /// whose output is not one JSON document.
    pub fn command_as(&self, token: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .env("SLUICE_SERVER", &self.base)
            .env("SLUICE_TOKEN", token);
        command
    }

    /// Runs the `sluice` CLI against this sidecar with `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> (bool, Value) {
        let output = self.command_as(token).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let json = serde_json::from_str(&stdout).unwrap_or_else(|_| {
            panic!(
                "sluice {args:?} printed no JSON: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.success(), json)
    }

    /// The sidecar's JSON log lines so far, over every start.
    pub fn logs(&self) -> Vec<Value> {
        (0..self.starts)
            .flat_map(|n| {
                std::fs::read_to_string(self.dir.join(format!("serve-{n}.log")))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|line| serde_json::from_str(line).ok())
                    .collect::<Vec<Value>>()
            })
            .collect()
    }
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(err) => panic!("{err}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn spawn(dir: &Path, start: usize, module_cache: Option<&Path>) -> (Child, String) {
    // Logs go to a file: an unread pipe would fill and block the server.
    let log = std::fs::File::create(dir.join(format!("serve-{start}.log"))).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["serve", "--config"])
        .arg(dir.join("sluice.toml"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .env("CARGO_TARGET_DIR", target_dir())
        .env_remove("SLUICE_MODULE_CACHE");
    if let Some(cache) = module_cache {
        command.arg("--module-cache").arg(cache);
    }
    // `dir/sluice.env` (`NAME=value` lines), if a test wrote one: the
    // environment of a sidecar whose config names `*-env` secrets.
    for line in std::fs::read_to_string(dir.join("sluice.env"))
        .unwrap_or_default()
        .lines()
    {
        if let Some((name, value)) = line.split_once('=') {
            command.env(name, value);
        }
    }
    let mut child = command.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
    let mut first_line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let base = first_line
        .trim()
        .strip_prefix("sluice listening on ")
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(dir.join(format!("serve-{start}.log"))).unwrap_or_default();
            panic!("unexpected first line {first_line:?}; log:\n{log}")
        })
        .to_string();
    (child, base)
}

/// Waits until `done` holds, checking every 20 ms; panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A config with one json-mapping channel `stock` (tenant acme) delivering
/// to `http://{addr}/stock`; `extra` adds keys to the destination, and
/// `quantity_field` is the target field of the payload's `qty`.
pub fn stock_config(addr: std::net::SocketAddr, extra: &str, quantity_field: &str) -> String {
    format!(
        r#"
[limits]
timeout-ms = 10000

[retry]
initial-backoff-ms = 100
max-backoff-ms = 1000

[[destination]]
name = "portal"
url = "http://{addr}/stock"
concurrency = 4
{extra}

[[channel]]
name = "stock"
tenant = "acme"
destination = "portal"
[[channel.step]]
module = "json-mapping"
config = {{ rules = [ {{ target = "sku", source = "$.sku" }}, {{ target = "{quantity_field}", source = "$.qty" }} ] }}
"#
    )
}

/// Sends raw bytes to the server and returns its first answer (which may
/// come before a large body is sent).
pub fn raw_request(base: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = vec![0; 4096];
    let read = stream.read(&mut answer).unwrap();
    String::from_utf8_lossy(&answer[..read]).into_owned()
}
