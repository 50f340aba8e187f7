//! `sluice.toml`: the operator's configuration of a sidecar.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use sluice_engine::Limits;
use sluice_engine::pipeline::StepSpec;

/// The whole file. Unknown keys are errors that name the key.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; `127.0.0.1:0` picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where Sluice keeps its state: the SQLite store and the compiled-module
    /// cache (with `queue`, only the cache and copies of uploaded modules).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `nats://host:4222`: share queues and state with every sidecar on
    /// that NATS JetStream instead of keeping them in SQLite (docs/how-to/scale-out.md).
    #[serde(default)]
    pub queue: Option<String>,
    /// Largest request body accepted, in bytes (larger: 413).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Most events one synchronous transform request may carry (more: 413).
    #[serde(default = "default_max_events_per_request")]
    pub max_events_per_request: usize,
    /// Batches of at most this many events first try to run inline on the
    /// async worker that received them (see docs/operations/sandbox.md);
    /// 0 sends every batch to a blocking thread.
    #[serde(default = "default_inline_batch_events")]
    pub inline_batch_events: usize,
    /// Caps on transform state (contract 0.2): key and value sizes, keys
    /// and bytes per tenant, keys written per event (`[server.state-quota]`).
    #[serde(default)]
    pub state_quota: sluice_engine::state::StateQuota,
    /// Where traces are exported (`[telemetry]`).
    #[serde(default)]
    pub telemetry: crate::observe::trace::TelemetryConfig,
    /// Every event's story: how long and how much is kept (`[stories]`).
    #[serde(default)]
    pub stories: crate::observe::story::StoriesConfig,
    /// Largest synchronous transform answer, in bytes (larger: 413).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Connections served at once; further clients wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A client must send a request's headers within this time (slowloris).
    /// It also bounds how long an idle keep-alive connection is kept.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
    /// A client must send a request's whole body within this time.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_ms: u64,
    /// Module uploads checked at once (each compiles and runs fixtures); more wait.
    #[serde(default = "default_upload_concurrency")]
    pub upload_concurrency: usize,
    /// On SIGTERM, how long in-flight requests and workers may take to
    /// finish; then the process exits anyway (nothing accepted is lost:
    /// unfinished work is redone after the restart).
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_ms: u64,
    /// Limits for every module (see `sluice run --help` for their meaning).
    #[serde(default)]
    pub limits: Limits,
    /// How long an ingested event id is remembered, so a redelivered webhook
    /// is recognised as a duplicate.
    #[serde(default = "default_idempotency_window")]
    pub idempotency_window_hours: u64,
    /// SHA-256 (hex) of the admin tokens: the admin manages tenants and
    /// tokens and may act on every tenant's resources.
    #[serde(default)]
    pub admin_token_sha256: Vec<String>,
    /// When set, `GET /metrics` needs one of these tokens (or an admin's).
    #[serde(default)]
    pub metrics_token_sha256: Vec<String>,
    /// Tenants: their tokens, limits and quotas. A channel's tenant that is
    /// not listed here gets the defaults and no token of its own.
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<TenantConfig>,
    /// Retry policy of every destination that sets none of its own.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Where emitted events are delivered.
    #[serde(default, rename = "destination")]
    pub destinations: Vec<DestinationConfig>,
    /// The channels this sidecar serves.
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelConfig>,
    /// Webhook sources: platforms that deliver signed webhooks to
    /// `POST /v1/sources/{tenant}/{source}`.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// Address ranges that URLs set by tenants (polled sources, token
    /// endpoints) may reach although they are not public (`10.1.0.0/16`).
    #[serde(default)]
    pub allow_networks: Vec<ipnet::IpNet>,
}

/// One tenant: who may act for it, and how much it may use.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's name, as in events' `tenant` and channels' `tenant`.
    pub name: String,
    /// SHA-256 (hex) of the tenant's API tokens (`sluice token hash` makes one).
    #[serde(default)]
    pub token_sha256: Vec<String>,
    /// Overrides of the server's `[limits]` for this tenant's modules.
    #[serde(default)]
    pub limits: serde_json::Map<String, serde_json::Value>,
    /// Largest module upload, in bytes.
    #[serde(default = "default_max_module_bytes")]
    pub max_module_bytes: usize,
    /// Most module names the tenant may hold.
    #[serde(default = "default_max_modules")]
    pub max_modules: usize,
    /// Most module versions the tenant may hold, all names together.
    #[serde(default = "default_max_module_versions")]
    pub max_module_versions: usize,
    /// Most bytes of modules the tenant may hold, all versions together.
    #[serde(default = "default_max_module_storage")]
    pub max_module_storage_bytes: u64,
    /// Most lookup table versions the tenant may hold, all names together.
    #[serde(default = "default_max_lookup_versions")]
    pub max_lookup_versions: usize,
    /// Most bytes of lookup tables the tenant may hold, all versions
    /// together (one table is at most 64 MiB).
    #[serde(default = "default_max_lookup_storage")]
    pub max_lookup_storage_bytes: u64,
    /// Most events the tenant may keep stored at once: queued for a
    /// transform, queued for delivery, and dead letters. Ingest beyond it
    /// answers 429 until the queues drain or dead letters are purged.
    #[serde(default = "default_max_stored_events")]
    pub max_stored_events: u64,
    /// Events the tenant may ingest, as `N/s`, `N/min` or `N/h` (429 beyond); none: unlimited.
    #[serde(default)]
    pub ingest_rate: Option<RateLimit>,
    /// Pipelines of this tenant's channels that may run at once.
    #[serde(default = "default_transform_concurrency")]
    pub transform_concurrency: usize,
    /// Consecutive module faults (traps, limits) after which a channel pauses; 0: never.
    #[serde(default = "default_circuit_breaker")]
    pub circuit_breaker: u32,
    /// CPU seconds of upload checks (compiling, fixtures) the tenant may
    /// use per hour; past it, uploads answer 429 until it refills (0: no limit).
    #[serde(default = "default_compile_seconds")]
    pub compile_seconds_per_hour: u64,
    /// Most sources the tenant may keep through the API.
    #[serde(default = "default_max_sources")]
    pub max_sources: usize,
    /// Most destinations the tenant may keep through the API.
    #[serde(default = "default_max_destinations")]
    pub max_destinations: usize,
    /// Most channels the tenant may keep through the API.
    #[serde(default = "default_max_channels")]
    pub max_channels: usize,
}

impl TenantConfig {
    /// The defaults for a tenant named only by its channels.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            token_sha256: Vec::new(),
            limits: Default::default(),
            max_module_bytes: default_max_module_bytes(),
            max_modules: default_max_modules(),
            max_module_versions: default_max_module_versions(),
            max_module_storage_bytes: default_max_module_storage(),
            max_lookup_versions: default_max_lookup_versions(),
            max_lookup_storage_bytes: default_max_lookup_storage(),
            max_stored_events: default_max_stored_events(),
            ingest_rate: None,
            transform_concurrency: default_transform_concurrency(),
            circuit_breaker: default_circuit_breaker(),
            compile_seconds_per_hour: default_compile_seconds(),
            max_sources: default_max_sources(),
            max_destinations: default_max_destinations(),
            max_channels: default_max_channels(),
        }
    }
}

/// What happens to events ingested while their channel is switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenOff {
    /// They wait in the channel's queue and flow, in order, once it is on again.
    #[default]
    Hold,
    /// They are not queued for this channel (counted in `sluice_events_skipped_total`).
    Skip,
}

/// An HTTP endpoint that receives a channel's emitted events, one POST each.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DestinationConfig {
    /// The destination's name, used in metrics, logs and dead letters.
    pub name: String,
    /// `https://host/path` (or `http://` on a private network) that receives
    /// each emitted payload. `{$.sku}` takes a value from the payload,
    /// percent-encoded as one path segment or query value; `{env:NAME}` an
    /// environment variable, read when the config is loaded.
    pub url: String,
    /// Extra trusted CA certificates (PEM) for an `https://` url, besides
    /// the system's; relative to the config file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Requests allowed, as `N/s`, `N/min` or `N/h` (token bucket); none: unlimited.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Requests that may go at once above the steady rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Requests in flight at once (each to a different entity key).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// JSONPath into the emitted payload naming the entity whose order is kept
    /// (first match; events without it are ordered by their own id).
    #[serde(default = "default_entity_key")]
    pub entity_key: String,
    /// Extra request headers (for example `Authorization`).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// This destination's own retry policy.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// The request's method: `POST`, `PUT` (create or replace), `PATCH` or `DELETE`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Other methods a transform's delivery hint (contract 0.2) may choose
    /// for one event (`["DELETE"]`); a hint for any other is a dead letter.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// How Sluice authenticates to it.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// How Sluice signs each request.
    #[serde(default)]
    pub sign: Option<SignConfig>,
    /// A response header announcing the rate the destination applies, in
    /// requests per second (`x-amzn-RateLimit-Limit`): the token bucket
    /// follows it, never above `rate-limit`.
    #[serde(default)]
    pub rate_limit_header: Option<String>,
    /// Latest wins: of one (channel, entity key)'s queued deliveries, only
    /// the newest is sent; the older ones still queued are `superseded`
    /// (counted, never dead letters). One in flight is never cancelled.
    #[serde(default)]
    pub coalesce: bool,
    /// An output whose method, URL and body equal those of the last one
    /// the destination accepted for its (channel, entity key) is not sent,
    /// but counted `unchanged`. A dead letter resent by hand always goes.
    #[serde(default)]
    pub skip_unchanged: bool,
    /// Shares of the destination's requests per event kind, when several
    /// kinds wait: a kind not listed has 1. By default inventory and price
    /// have 4 each (an oversold SKU costs more than a stale description);
    /// every kind that waits gets its share, so none starves.
    #[serde(default = "default_priority")]
    pub priority: std::collections::BTreeMap<String, u32>,
}

/// Inventory and price 4 shares each; every other kind 1.
pub(crate) fn default_priority() -> std::collections::BTreeMap<String, u32> {
    [("inventory".to_string(), 4), ("price".to_string(), 4)].into()
}

fn default_method() -> String {
    "POST".into()
}

impl DestinationConfig {
    /// What is wrong with it, if anything; `inline` says it is a tenant's
    /// (through the API): then it may read neither the server's environment
    /// nor its files, and its concurrency and burst are capped.
    pub fn check(&self, inline: bool) -> Result<(), String> {
        if inline {
            if self.url.contains("{env:") {
                return Err("url: `{env:…}` reads the server's environment".into());
            }
            if self.ca_file.is_some() {
                return Err("`ca-file` reads the server's files".into());
            }
            if let Some(sign) = &self.sign
                && (sign.secret_env.is_some()
                    || sign.secret_file.is_some()
                    || sign.previous_secret_env.is_some()
                    || sign.previous_secret_file.is_some())
            {
                return Err("sign: `*-env` and `*-file` read the server's environment or files; send the secret itself".into());
            }
            if self.concurrency > 16 || self.burst > 100 {
                return Err("`concurrency` is at most 16 and `burst` at most 100".into());
            }
            if let Some(retry) = &self.retry
                && (retry.max_attempts > 100
                    || retry.max_age_secs > 7 * 86_400
                    || retry.initial_backoff_ms < 100
                    || retry.max_backoff_ms > 3_600_000
                    || retry.timeout_ms > 60_000)
            {
                return Err("retry: `max-attempts` is at most 100, `max-age-secs` 604800, `initial-backoff-ms` at least 100, `max-backoff-ms` at most 3600000 and `timeout-ms` at most 60000".into());
            }
            let framing = [
                "host",
                "content-length",
                "transfer-encoding",
                "connection",
                "te",
                "upgrade",
            ];
            if let Some(key) = self
                .headers
                .keys()
                .find(|k| framing.contains(&k.to_ascii_lowercase().as_str()))
            {
                return Err(format!(
                    "header `{key}` frames the request; a destination may not set it"
                ));
            }
        }
        self.target().map_err(|err| format!("url: {err}"))?;
        if self.method().is_none() {
            return Err(format!(
                "method `{}` is not POST, PUT, PATCH or DELETE",
                self.method
            ));
        }
        if let Some(auth) = &self.auth {
            auth.check(inline).map_err(|err| format!("auth: {err}"))?;
        }
        if let Some(header) = &self.rate_limit_header
            && hyper::header::HeaderName::try_from(header.as_str()).is_err()
        {
            return Err(format!("rate-limit-header `{header}` is not a header name"));
        }
        if self.coalesce && self.method.eq_ignore_ascii_case("PATCH") {
            return Err("`coalesce` sends only a key's latest output, so each must be a whole state: not with method PATCH".into());
        }
        if let Some(bad) = self.allow_methods.iter().find(|m| method_named(m).is_none()) {
            return Err(format!(
                "allow-methods: `{bad}` is not POST, PUT, PATCH or DELETE"
            ));
        }
        if self.coalesce && self.allow_methods.iter().any(|m| m.eq_ignore_ascii_case("PATCH")) {
            return Err("`coalesce` sends only a key's latest output, so each must be a whole state: allow-methods may not hold PATCH".into());
        }
        if let Some((kind, share)) = self
            .priority
            .iter()
            .find(|(_, share)| !(1..=100).contains(*share))
        {
            return Err(format!("priority.{kind} is {share}: a share is 1 to 100"));
        }
        if self.priority.len() > 32 {
            return Err("priority lists at most 32 kinds".into());
        }
        sluice_guest::mapping::CompiledPath::compile(&self.entity_key)
            .map_err(|err| format!("entity-key `{}` is not a JSONPath: {err}", self.entity_key))?;
        for (key, value) in &self.headers {
            hyper::header::HeaderName::try_from(key.as_str())
                .map_err(|err| format!("header name `{key}` is invalid: {err}"))?;
            hyper::header::HeaderValue::try_from(value.as_str())
                .map_err(|err| format!("the value of header `{key}` is invalid: {err}"))?;
        }
        if self.concurrency == 0 || self.burst == 0 {
            return Err("concurrency and burst must be at least 1".into());
        }
        Ok(())
    }

    /// The compiled `url`, its `{env:…}` read now.
    pub(crate) fn target(&self) -> Result<crate::outbound::target::UrlTemplate, String> {
        crate::outbound::target::UrlTemplate::parse(&self.url, |name| std::env::var(name).ok())
    }

    /// The `method`, if it is one a destination may use.
    pub fn method(&self) -> Option<hyper::Method> {
        method_named(&self.method)
    }

    /// The methods a delivery hint may choose: `method` and `allow-methods`.
    pub fn allowed_methods(&self) -> Vec<hyper::Method> {
        std::iter::once(&self.method)
            .chain(&self.allow_methods)
            .filter_map(|name| method_named(name))
            .collect()
    }
}

/// The HTTP method of a config name, in any case.
fn method_named(name: &str) -> Option<hyper::Method> {
    match name.to_ascii_uppercase().as_str() {
        "POST" => Some(hyper::Method::POST),
        "PUT" => Some(hyper::Method::PUT),
        "PATCH" => Some(hyper::Method::PATCH),
        "DELETE" => Some(hyper::Method::DELETE),
        _ => None,
    }
}

/// A steady request rate: `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests allowed per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl RateLimit {
    /// Requests per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

/// The rate as it was configured (`60/min` stays `60/min`, not `1.000/s`).
impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            _ => return write!(f, "{}/{}s", self.count, self.per.as_secs_f64()),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a rate such as `60/min`, `10/s` or `1000/h`");
        let (count, unit) = text.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("`{text}`: the count must be at least 1"));
        }
        Ok(Self { count, per })
    }
}

impl serde::Serialize for RateLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// When a failed delivery is tried again, and when it becomes a dead letter.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all (the first included) before the event is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Age after which a still-failing event is dead-lettered, in seconds.
    #[serde(default = "default_max_age")]
    pub max_age_secs: u64,
    /// Wait before the second attempt; doubled on each further one, with jitter.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff_ms: u64,
    /// Longest wait between attempts; a `Retry-After` asking for more is cut to this.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
    /// A request without a response after this long counts as failed (retried).
    #[serde(default = "default_request_timeout")]
    pub timeout_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            max_age_secs: default_max_age(),
            initial_backoff_ms: default_initial_backoff(),
            max_backoff_ms: default_max_backoff(),
            timeout_ms: default_request_timeout(),
        }
    }
}

/// 64 MiB: a hello-world Python component is 18 MB and a JavaScript one
/// 12 MB, with room for the tenant's own code and libraries.
fn default_max_module_bytes() -> usize {
    64 << 20
}
fn default_max_sources() -> usize {
    20
}

fn default_max_destinations() -> usize {
    10
}

fn default_max_channels() -> usize {
    20
}

fn default_max_modules() -> usize {
    50
}
fn default_max_module_versions() -> usize {
    200
}
fn default_max_module_storage() -> u64 {
    1 << 30
}
fn default_max_lookup_versions() -> usize {
    100
}
fn default_max_lookup_storage() -> u64 {
    256 << 20
}
fn default_max_stored_events() -> u64 {
    1_000_000
}
fn default_inline_batch_events() -> usize {
    16
}
fn default_max_events_per_request() -> usize {
    1000
}
fn default_max_response_bytes() -> usize {
    64 << 20
}
fn default_max_connections() -> usize {
    1024
}
fn default_header_timeout() -> u64 {
    10_000
}
fn default_body_timeout() -> u64 {
    30_000
}
fn default_upload_concurrency() -> usize {
    2
}
fn default_shutdown_grace() -> u64 {
    10_000
}
fn default_transform_concurrency() -> usize {
    1
}
fn default_compile_seconds() -> u64 {
    600
}

fn default_circuit_breaker() -> u32 {
    10
}
fn default_idempotency_window() -> u64 {
    7 * 24
}
fn default_burst() -> u32 {
    1
}
fn default_concurrency() -> usize {
    8
}
fn default_entity_key() -> String {
    "$.sku".into()
}
fn default_max_attempts() -> u32 {
    10
}
fn default_max_age() -> u64 {
    24 * 3600
}
fn default_initial_backoff() -> u64 {
    500
}
fn default_max_backoff() -> u64 {
    5 * 60 * 1000
}
fn default_request_timeout() -> u64 {
    10_000
}
fn default_true() -> bool {
    true
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
    /// The destination that receives what the pipeline emits for ingested
    /// events; a channel without one serves only the synchronous path.
    #[serde(default)]
    pub destination: Option<String>,
    /// Whether the channel starts switched on. A change made through the
    /// admin API is kept across restarts until this value is edited.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// What happens to events ingested while the channel is off.
    #[serde(default)]
    pub when_off: WhenOff,
    /// Only ingested events whose `source` is one of these reach this
    /// channel (empty: every event of the tenant).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Overrides of the tenant's limits for this channel's modules.
    #[serde(default)]
    pub limits: serde_json::Map<String, serde_json::Value>,
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
    #[error("cannot read `{path}`: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
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
    /// The settings of `tenant` (defaults when it is not listed).
    pub fn tenant(&self, tenant: &str) -> TenantConfig {
        self.tenants
            .iter()
            .find(|t| t.name == tenant)
            .cloned()
            .unwrap_or_else(|| TenantConfig::named(tenant))
    }

    /// The limits of a tenant's modules: `[limits]`, then the tenant's overrides.
    pub fn tenant_limits(&self, tenant: &str) -> Limits {
        self.limits
            .with_overrides(&self.tenant(tenant).limits)
            .expect("checked when the config was parsed")
    }

    /// The limits of a channel's modules: the tenant's, then the channel's overrides.
    pub fn channel_limits(&self, channel: &ChannelConfig) -> Limits {
        self.tenant_limits(&channel.tenant)
            .with_overrides(&channel.limits)
            .expect("checked when the config was parsed")
    }

    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    /// Makes file paths in the config relative to `dir` (the config file's folder).
    pub fn resolve_paths(&mut self, dir: &Path) {
        for destination in &mut self.destinations {
            if let Some(file) = &destination.ca_file
                && file.is_relative()
            {
                destination.ca_file = Some(dir.join(file));
            }
            if let Some(auth) = &mut destination.auth {
                auth.resolve_paths(dir);
            }
            if let Some(sign) = &mut destination.sign {
                for file in [&mut sign.secret_file, &mut sign.previous_secret_file]
                    .into_iter()
                    .flatten()
                {
                    if file.is_relative() {
                        *file = dir.join(&*file);
                    }
                }
            }
        }
    }

    /// Parses the text of a `sluice.toml`; the error names the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let de = toml::Deserializer::parse(text).map_err(|err| err.to_string())?;
        let config: ServerConfig = serde_path_to_error::deserialize(de).map_err(|err| {
            let path = err.path().to_string();
            format!("at `{path}`: {}", err.into_inner().message())
        })?;
        config.check_destinations()?;
        config.check_tokens()?;
        config.check_tenants()?;
        config.check_channels()?;
        config.check_sources()?;
        config.check_state_quota()?;
        Ok(config)
    }

    /// A stored state value (with the value from before its batch, on
    /// JetStream) must fit one message of the store.
    fn check_state_quota(&self) -> Result<(), String> {
        const MAX_VALUE: usize = 256 << 10;
        let quota = &self.state_quota;
        if quota.max_value_bytes > MAX_VALUE || quota.max_key_bytes > 4096 {
            return Err(format!(
                "state-quota: max-value-bytes is at most {MAX_VALUE} and max-key-bytes at most 4096 \
                 (a stored value, with the one before it, must fit one message of the store)"
            ));
        }
        Ok(())
    }

    /// Destination names are unique, and each one's URL, entity key,
    /// headers, concurrency and burst are usable.
    fn check_destinations(&self) -> Result<(), String> {
        let mut destinations = std::collections::BTreeSet::new();
        for destination in &self.destinations {
            if !destinations.insert(destination.name.as_str()) {
                return Err(format!("destination `{}` is defined twice", destination.name));
            }
            destination
                .check(false)
                .map_err(|err| format!("destination `{}`: {err}", destination.name))?;
        }
        Ok(())
    }

    /// Every token hash is a SHA-256 and names one caller: the same token
    /// cannot be an admin and a tenant, or two tenants.
    fn check_tokens(&self) -> Result<(), String> {
        let mut holders = std::collections::BTreeMap::<String, String>::new();
        let named = self
            .admin_token_sha256
            .iter()
            .map(|hash| (hash, "the admin".to_string()))
            .chain(
                self.metrics_token_sha256
                    .iter()
                    .map(|hash| (hash, "the metrics reader".to_string())),
            )
            .chain(self.tenants.iter().flat_map(|t| {
                t.token_sha256
                    .iter()
                    .map(move |hash| (hash, format!("tenant `{}`", t.name)))
            }));
        for (hash, holder) in named {
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "`{hash}` is not a SHA-256 in hex (64 characters); make one with `sluice token hash`"
                ));
            }
            if let Some(first) = holders.insert(hash.to_ascii_lowercase(), holder.clone()) {
                return Err(format!(
                    "token hash `{hash}` is given to both {first} and {holder}: give each its own token"
                ));
            }
        }
        Ok(())
    }

    /// Tenant names are unique and their limit overrides are known limits.
    fn check_tenants(&self) -> Result<(), String> {
        let mut tenants = std::collections::BTreeSet::new();
        for tenant in &self.tenants {
            if !tenants.insert(tenant.name.as_str()) {
                return Err(format!("tenant `{}` is defined twice", tenant.name));
            }
            if let Err(err) = self.limits.with_overrides(&tenant.limits) {
                return Err(format!("tenant `{}`: limits: {err}", tenant.name));
            }
        }
        Ok(())
    }

    /// Source names are unique per tenant and safe in a path.
    fn check_sources(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for source in &self.sources {
            source
                .check(false)
                .map_err(|err| format!("source `{}` of `{}`: {err}", source.name, source.tenant))?;
            if !self.tenants.iter().any(|tenant| tenant.name == source.tenant) {
                return Err(format!(
                    "source `{}`: tenant `{}` is not defined (add a [[tenant]] with that name)",
                    source.name, source.tenant
                ));
            }
            if !names.insert((source.tenant.as_str(), source.name.as_str())) {
                return Err(format!(
                    "source `{}` of tenant `{}` is defined twice",
                    source.name, source.tenant
                ));
            }
        }
        Ok(())
    }

    /// Channel names are unique, their destination exists, their limit
    /// overrides are known, and each has either a pipeline file or steps.
    fn check_channels(&self) -> Result<(), String> {
        let destinations: std::collections::BTreeSet<&str> =
            self.destinations.iter().map(|d| d.name.as_str()).collect();
        let mut names = std::collections::BTreeSet::new();
        for channel in &self.channels {
            if let Err(err) = self.limits.with_overrides(&channel.limits) {
                return Err(format!("channel `{}`: limits: {err}", channel.name));
            }
            if let Some(destination) = &channel.destination
                && !destinations.contains(destination.as_str())
            {
                return Err(format!(
                    "channel `{}`: destination `{destination}` is not defined (add a [[destination]] with that name)",
                    channel.name
                ));
            }
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
        Ok(())
    }
}

mod auth;
mod secrets;
mod sign;
mod source;

pub use auth::{AUTH_SECRETS, AuthConfig, AuthKind, Grant};
pub use secrets::InlineSecrets;
pub use sign::{SignConfig, SignKind};
pub use source::{NextPageConfig, SourceConfig, SourceKind};

#[cfg(test)]
mod keys_in_step;

#[cfg(test)]
mod tests;
