//! A tenant as served: its settings, limits and share of the machine.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::config::TenantConfig;
use crate::workers::backoff::TokenBucket;
use sluice_engine::Limits;

/// A tenant as served: its settings and its share of the machine.
pub struct Tenant {
    /// As configured (defaults for a tenant named only by channels or the admin API).
    pub config: TenantConfig,
    /// Limits of its modules.
    pub limits: Limits,
    /// Pipelines of this tenant that may run at once, so that one tenant
    /// cannot take every core from the others.
    pub permits: Arc<Semaphore>,
    /// One module upload of this tenant at a time (quotas stay exact).
    pub uploads: Arc<Semaphore>,
    /// CPU seconds its upload checks may still take this hour.
    pub compile_budget: Arc<crate::modules::compile::CompileBudget>,
    /// Uploads of this tenant waiting for its permit (see `api::modules`).
    pub uploads_waiting: Arc<std::sync::atomic::AtomicUsize>,
    pub(super) ingest: Option<Mutex<TokenBucket>>,
}

impl Tenant {
    pub(super) fn new(config: TenantConfig, limits: Limits) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(config.transform_concurrency.max(1))),
            uploads: Arc::new(Semaphore::new(1)),
            compile_budget: Arc::new(crate::modules::compile::CompileBudget::new(
                config.compile_seconds_per_hour,
            )),
            uploads_waiting: Arc::default(),
            ingest: config
                .ingest_rate
                .map(|rate| Mutex::new(TokenBucket::new(rate, rate.count.max(1)))),
            limits,
            config,
        }
    }

    /// Takes `events` tokens from the tenant's ingest budget; otherwise how long to wait.
    pub fn admit(&self, events: usize) -> Result<(), Duration> {
        let Some(bucket) = &self.ingest else {
            return Ok(());
        };
        let mut bucket = bucket.lock().expect("ingest bucket lock");
        bucket.try_take_many(Instant::now(), events)
    }
}
