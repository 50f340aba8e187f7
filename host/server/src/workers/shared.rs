//! Applies what other sidecars change in shared state: when several
//! sidecars share one JetStream, a switch, circuit breaker, activation,
//! tenant or token made on one node is in force on every node within
//! moments. A sidecar on SQLite has no such changes and runs no such worker.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::state::App;
use crate::state::auth::Caller;
use crate::store::SharedChange;
use crate::store::in_store;
use sluice_engine::pipeline::PipelineSpec;

/// Runs until `stopped` turns true.
pub async fn run(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    let Some(mut changes) = app.queue.changes() else {
        let _ = stopped.changed().await;
        return;
    };
    // Whatever changed before this worker (re)started.
    resync(&app).await;
    loop {
        let change = tokio::select! {
            change = changes.recv() => change,
            _ = stopped.changed() => return,
        };
        match change {
            Ok(change) => apply(&app, change).await,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "shared changes came faster than they were applied; reloading"
                );
                resync(&app).await;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Reads tenants, tokens, switches and activations again from the store.
async fn resync(app: &App) {
    let registry = app.registry.clone();
    match in_store(move || Ok((registry.tenants()?, registry.tokens()?))).await {
        Ok((tenants, tokens)) => {
            for tenant in tenants {
                app.add_tenant(&tenant);
            }
            for (tenant, sha256) in tokens {
                apply(app, SharedChange::Token { tenant, sha256 }).await;
            }
        }
        Err(err) => tracing::error!(error = %err, "cannot read shared tenants and tokens"),
    }
    for channel in app.channels.values() {
        if channel.owned.is_some() {
            // A tenant's channel has no config value: its switch stays as stored.
            continue;
        }
        let (queue, name) = (app.queue.clone(), channel.name.clone());
        // `set_enabled` with the config's value changes nothing that an
        // operator set; it answers the switch as stored.
        let configured = app.configured_enabled(&channel);
        match in_store(move || Ok((queue.set_enabled(&name, configured, true)?, queue.tripped(&name)?))).await
        {
            Ok((enabled, tripped)) => app.apply_shared_switch(&channel, enabled, tripped),
            Err(err) => {
                tracing::error!(channel = %channel.name, error = %err, "cannot read the channel's switch")
            }
        }
    }
    for channel in app.channels.keys() {
        reload_pipeline(app, &channel).await;
    }
    app.sync_sources().await;
    tokio::task::block_in_place(|| app.sync_owned());
}

async fn apply(app: &App, change: SharedChange) {
    match change {
        SharedChange::Switch {
            channel,
            enabled,
            tripped,
        } => {
            if let Some(channel) = app.channels.get(&channel) {
                app.apply_shared_switch(&channel, enabled, tripped);
            }
        }
        SharedChange::Pipeline { channel } => reload_pipeline(app, &channel).await,
        SharedChange::Tenant(name) => app.add_tenant(&name),
        SharedChange::Setting { kind } if kind == crate::sources::catalog::SETTING_KIND => {
            app.sync_sources().await
        }
        SharedChange::Setting { kind }
            if kind == crate::state::owned::DESTINATION_KIND || kind == crate::state::owned::CHANNEL_KIND =>
        {
            tokio::task::block_in_place(|| app.sync_owned())
        }
        SharedChange::Setting { .. } => {}
        SharedChange::Token { tenant, sha256 } => {
            app.add_tenant(&tenant);
            app.tokens.add(&sha256, Caller::Tenant(tenant));
        }
    }
}

/// Loads the channel's activated pipeline (or its config's) if it is not
/// the one running.
async fn reload_pipeline(app: &App, name: &str) {
    let Some(channel) = app.channels.get(name) else {
        return;
    };
    let registry = app.registry.clone();
    let key = name.to_string();
    let text = match in_store(move || registry.active_pipeline(&key)).await {
        Ok(text) => text,
        Err(err) => {
            tracing::error!(channel = %name, error = %err, "cannot read the channel's activation");
            return;
        }
    };
    if channel.active_spec() == text {
        return;
    }
    let pipeline = match &text {
        None => Ok(app.config_pipeline(&channel)),
        Some(text) => serde_json::from_str::<PipelineSpec>(text)
            .map_err(|err| format!("its stored pipeline is corrupt: {err}"))
            .and_then(|spec| {
                tokio::task::block_in_place(|| app.load_uploaded(&channel, &spec))
                    .map_err(|err| err.to_string())
            }),
    };
    match pipeline {
        Ok(pipeline) => {
            app.swap_pipeline(&channel, pipeline);
            channel.set_active_spec(text);
            tracing::info!(channel = %name, "pipeline changed by another node applied");
        }
        Err(why) => {
            tracing::error!(channel = %name, reason = %why, "channel degraded: the pipeline activated on another node cannot be loaded");
            app.degrade(&channel, why);
        }
    }
}
