//! `sluice sink`: a local destination that prints every request it receives.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use serde_json::json;
use sluice_server::sink::{Reply, Sink};

/// Arguments of `sluice sink`.
#[derive(Debug, Args)]
pub struct SinkArgs {
    /// Where to listen.
    #[arg(long, env = "SLUICE_SINK_LISTEN", default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Answer every request with this status (try 400 to see dead letters, 503 to see retries).
    #[arg(long, default_value_t = 200)]
    status: u16,
}

/// Prints one JSON line per request: method, path and query, idempotency
/// key, correlation id, which credential headers came (never their
/// values), and the body.
pub fn run(args: SinkArgs) -> anyhow::Result<ExitCode> {
    let status = args.status;
    let sink = Sink::start(
        args.listen,
        Arc::new(move |received, _| {
            let credentials: Vec<&str> = ["authorization", "x-amz-access-token", "webhook-signature"]
                .into_iter()
                .filter(|name| received.header(name).is_some())
                .collect();
            let line = json!({
                "method": received.method,
                "path": received.path,
                "query": received.query,
                "credentials": credentials,
                "idempotency-key": received.header("idempotency-key"),
                "correlation-id": received.header("x-correlation-id"),
                "channel": received.header("x-sluice-channel"),
                "attempt": received.header("x-sluice-attempt"),
                "body": received.json(),
            });
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            Reply::status(status)
        }),
    )?;
    eprintln!("sluice sink listening on http://{} (answers {status})", sink.addr);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        sluice_server::shutdown_signal()?.await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
