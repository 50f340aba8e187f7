//! The scale-out store: several sidecars share one NATS JetStream. Nothing
//! here is a cluster of our own; JetStream holds every message and decides
//! who gets it.
//!
//! | what | where | why it keeps the guarantees |
//! |---|---|---|
//! | events to transform | stream `SLUICE_IN`, subject `sluice.in.<channel>`, one message per ingest request and channel | a durable work-queue consumer per channel with `max_ack_pending = 1`: one batch of a channel is in flight in the whole cluster, so outputs leave in ingest order; a batch is acknowledged only after its outputs and dead letters are stored, and redelivered to any node after `ack_wait` if its node dies |
//! | deliveries | stream `SLUICE_OUT`, subject `sluice.out.<destination>.<partition>.<channel>` | the partition is a hash of the entity key; each partition has a durable consumer with `max_ack_pending = 1`, so one delivery per partition (hence per SKU) is in flight in the cluster, and a later one waits until the earlier one is delivered or dead-lettered |
//! | dead letters | stream `SLUICE_DEAD`, subject `sluice.dead.<tenant>.<channel>` | the message's stream sequence is the dead letter's id on every node |
//! | event ids seen | key-value bucket `sluice-ids`, `max_age` = the idempotency window | an id is looked up before its event is stored and recorded after; JetStream's own `Nats-Msg-Id` window only lasts minutes |
//! | switches, circuit breakers, shared rate limits | bucket `sluice-state` | compare-and-set updates; every node watches the bucket |
//! | failed attempts of a delivery | bucket `sluice-attempts` | a node that takes over a redelivered message continues the count |
//! | tenants, tokens, module versions, activations | bucket `sluice-registry` | watched by every node |
//! | coalescing: how far each entity key is settled | bucket `sluice-attempts`, `w.<destination>.<channel>.<key digest>` | written before the held message is acknowledged; a queued message at or below it is acknowledged unsent (see `latest`) |
//! | what each destination last accepted per entity key (`skip-unchanged`) | bucket `sluice-fingerprints`, no age limit | written before the delivery is acknowledged |
//! | transform state (contract 0.2) and each tenant's usage of it | bucket `sluice-transform-state` | a batch's writes are stored after its outputs and before it is acknowledged (see `state`) |
//! | module bytes | object store `sluice-modules` | fetched by a node that does not have a version yet |
//!
//! Every publish carries a `Nats-Msg-Id` derived from what it says, so a
//! batch redone after a crash within the stream's duplicate window (ten
//! minutes) stores nothing twice; after that, a repeat carries the same
//! `Idempotency-Key` to the destination. Acknowledgements are plain
//! (not double): a lost one only redelivers, which these ids absorb.

mod dead_letters;
mod discard;
mod ingest;
mod latest;
mod names;
mod outbox;
mod queue;
mod registry;
mod state;
mod stories;
mod switches;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, kv, object_store, stream};
use futures_util::StreamExt;
use tokio::runtime::{Handle, Runtime, RuntimeFlavor};
use tokio::sync::{Notify, broadcast};

use super::{SharedChange, StoreError};
use ingest::HeldBatch;
use outbox::HeldDelivery;
use switches::Switch;

/// Why JetStream failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// A JetStream request failed.
    #[error("{what}: {detail}")]
    Failed {
        /// What was being done.
        what: &'static str,
        /// The client's error.
        detail: String,
    },
    /// JetStream did not answer in time.
    #[error("{what}: no answer within {} s", .timeout.as_secs())]
    Timeout {
        /// What was being done.
        what: &'static str,
        /// How long it waited.
        timeout: Duration,
    },
    /// Another request is ingesting the same event id right now.
    #[error("an event id of this request is being ingested by another request; retry shortly")]
    InFlight,
    /// The connection to NATS is down (it is being re-established).
    #[error("not connected to NATS; retry shortly")]
    NotConnected,
    /// One message would be larger than the server accepts.
    #[error("{what} is {size} bytes, more than the JetStream server's max_payload of {max} bytes")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size.
        size: usize,
        /// The server's limit.
        max: usize,
    },
}

/// A client error, with what was being done.
pub(super) fn failed(what: &'static str, err: impl std::fmt::Display) -> NatsError {
    NatsError::Failed {
        what,
        detail: err.to_string(),
    }
}

/// Partitions of every destination's deliveries; entity keys are hashed onto them.
pub const PARTITIONS: u32 = 32;
/// How long a node may hold a message without acknowledging it before
/// JetStream gives it to another node (held deliveries are kept alive
/// with progress acknowledgements).
const ACK_WAIT: Duration = Duration::from_secs(15);
/// How often held messages are reported as still in progress.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// The streams' own duplicate window (`Nats-Msg-Id`).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);
/// Longest wait for one JetStream call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The JetStream [`super::Queue`] and [`super::Registry`], shared by every
/// sidecar connected to the same server.
pub struct NatsStore {
    runtime: Mutex<Option<Runtime>>,
    handle: Handle,
    client: async_nats::Client,
    inbound: stream::Stream,
    outbound: stream::Stream,
    dead: stream::Stream,
    ids: kv::Store,
    state: kv::Store,
    attempts: kv::Store,
    registry: kv::Store,
    /// What each destination last accepted per (channel, entity key), for `skip-unchanged`.
    fingerprints: kv::Store,
    /// Transform state (contract 0.2), see `state`.
    transform_state: kv::Store,
    modules: object_store::ObjectStore,
    /// Deliveries superseded on this node, until their workers count them.
    superseded: super::Tally,
    /// Tenants whose story streams this process has made or updated.
    story_streams: Mutex<std::collections::HashSet<String>>,
    consumers: Mutex<HashMap<String, PullConsumer>>,
    transform: Arc<Mutex<HashMap<String, HeldBatch>>>,
    deliveries: Arc<Mutex<HashMap<String, BTreeMap<u64, HeldDelivery>>>>,
    /// The (channel, destination) pairs whose consumers this node pulls
    /// from, with the tasks that pull them.
    routes: Mutex<HashMap<Route, Pulls>>,
    /// Deliveries JetStream pushed to this node, per destination, in
    /// arrival order, not yet held. Kept alive and given back on close as
    /// held ones are: a message waits here while the delivery worker sleeps
    /// out a `Retry-After` or works through a rate-limited round.
    inboxes: Inboxes,
    /// Set by [`NatsStore::close`]: a delivery that arrives afterwards is
    /// given back at once instead of waiting in an inbox nobody reads.
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// Raised when a destination's inbox receives a delivery.
    signals: Mutex<HashMap<String, Arc<Notify>>>,
    switches: Arc<RwLock<HashMap<String, Switch>>>,
    changes: broadcast::Sender<SharedChange>,
    /// Subscribed before the watch starts, so the first listener misses nothing.
    first_listener: Mutex<Option<broadcast::Receiver<SharedChange>>>,
    next_seq: AtomicI64,
    /// How long `sluice-ids` remembers ids and ingest decisions.
    pub(super) window: Duration,
    max_payload: usize,
}

impl NatsStore {
    /// Connects to `url` (`nats://host:4222`), creates the streams, buckets
    /// and consumers this config needs if they do not exist, and starts
    /// watching shared state. `window` is how long event ids are remembered;
    /// `routes` are the config's `(channel, destination)` pairs.
    pub fn connect(url: &str, window: Duration, routes: &[(String, String)]) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-nats")
            .enable_all()
            .build()
            .map_err(|e| failed("start the NATS client's runtime", e))?;
        let handle = runtime.handle().clone();
        let setup = on_runtime(&handle, "connect to NATS", setup(url, window))?;
        let (changes, first_listener) = broadcast::channel(4096);
        let store = Self {
            runtime: Mutex::new(Some(runtime)),
            handle,
            max_payload: setup.client.server_info().max_payload,
            window,
            client: setup.client,
            inbound: setup.inbound,
            outbound: setup.outbound,
            dead: setup.dead,
            ids: setup.ids,
            state: setup.state,
            attempts: setup.attempts,
            registry: setup.registry,
            fingerprints: setup.fingerprints,
            transform_state: setup.transform_state,
            modules: setup.modules,
            superseded: super::Tally::default(),
            story_streams: Mutex::default(),
            consumers: Mutex::default(),
            transform: Arc::default(),
            deliveries: Arc::default(),
            routes: Mutex::default(),
            inboxes: Arc::default(),
            closing: Arc::default(),
            signals: Mutex::default(),
            switches: Arc::default(),
            changes,
            first_listener: Mutex::new(Some(first_listener)),
            next_seq: AtomicI64::new(1),
        };
        for (channel, destination) in routes {
            store.route(channel, destination)?;
        }
        store.load_switches()?;
        store.watch();
        store.keep_alive();
        Ok(store)
    }

    /// Makes the consumers of `channel`'s queue and of its deliveries to
    /// `destination`, and pulls those deliveries; once per pair.
    pub(crate) fn route(&self, channel: &str, destination: &str) -> Result<(), StoreError> {
        let pair = (channel.to_string(), destination.to_string());
        if self.routes.lock().expect("routes lock").contains_key(&pair) {
            return Ok(());
        }
        self.consumer(&names::transform_consumer(channel), names::inbound(channel))?;
        let signal = self
            .signals
            .lock()
            .expect("signals lock")
            .entry(destination.to_string())
            .or_default()
            .clone();
        let mut pulls = Vec::with_capacity(PARTITIONS as usize);
        for partition in 0..PARTITIONS {
            let consumer = self.consumer(
                &names::delivery_consumer(destination, channel, partition),
                names::outbound(destination, partition, channel),
            )?;
            let inbox = Arc::downgrade(&self.inboxes);
            pulls.push(self.handle.spawn(pull(
                consumer,
                inbox,
                self.closing.clone(),
                destination.to_string(),
                signal.clone(),
            )));
        }
        self.routes.lock().expect("routes lock").insert(pair, pulls);
        Ok(())
    }

    /// Undoes [`NatsStore::route`] for every destination of a deleted
    /// `channel`: its pull tasks stop, and its durable consumers (its
    /// queue's and each partition's of its deliveries) are deleted from
    /// JetStream, so channels made and deleted through the API leave no
    /// consumer or task behind. Every node does it when it learns of the
    /// delete; a consumer already gone is fine.
    pub(crate) fn unroute(&self, channel: &str) -> Result<(), StoreError> {
        let gone: Vec<(Route, Pulls)> = {
            let mut routes = self.routes.lock().expect("routes lock");
            let pairs: Vec<(String, String)> = routes.keys().filter(|(c, _)| c == channel).cloned().collect();
            pairs
                .into_iter()
                .filter_map(|pair| routes.remove_entry(&pair))
                .collect()
        };
        let mut names = vec![(true, names::transform_consumer(channel))];
        for ((_, destination), pulls) in gone {
            for task in pulls {
                task.abort();
            }
            names
                .extend((0..PARTITIONS).map(|p| (false, names::delivery_consumer(&destination, channel, p))));
        }
        self.transform.lock().expect("transform lock").remove(channel);
        {
            let mut consumers = self.consumers.lock().expect("consumers lock");
            for (_, name) in &names {
                consumers.remove(name);
            }
        }
        let (inbound, outbound) = (self.inbound.clone(), self.outbound.clone());
        self.block("delete a channel's consumers", async move {
            for (of_queue, name) in names {
                let stream = if of_queue { &inbound } else { &outbound };
                match stream.delete_consumer(&name).await {
                    Ok(_) => {}
                    Err(err)
                        if matches!(err.kind(), jetstream::stream::ConsumerErrorKind::JetStream(e)
                            if e.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND) => {}
                    Err(err) => return Err(failed("delete a consumer", err)),
                }
            }
            Ok(())
        })
    }

    /// Reports every message this node holds as in progress every
    /// [`KEEP_ALIVE`], wherever it sits (a transform batch, a held delivery,
    /// an inbox), so that JetStream gives a message to another node only
    /// when this one is gone, however long a batch or a round of deliveries
    /// takes or a `Retry-After` lasts.
    fn keep_alive(&self) {
        let (transform, deliveries, inboxes) = (
            Arc::downgrade(&self.transform),
            Arc::downgrade(&self.deliveries),
            Arc::downgrade(&self.inboxes),
        );
        self.handle.spawn(async move {
            loop {
                tokio::time::sleep(KEEP_ALIVE).await;
                let (Some(transform), Some(deliveries), Some(inboxes)) =
                    (transform.upgrade(), deliveries.upgrade(), inboxes.upgrade())
                else {
                    return;
                };
                let held = held_messages(&transform, &deliveries, &inboxes, false);
                for message in held {
                    let _ = message.ack_with(jetstream::AckKind::Progress).await;
                }
            }
        });
    }

    /// Runs `work` on the client's runtime and waits for it (see [`on_runtime`]).
    fn block<T: Send>(
        &self,
        what: &'static str,
        work: impl Future<Output = Result<T, NatsError>> + Send,
    ) -> Result<T, StoreError> {
        on_runtime(&self.handle, what, work)
    }

    /// The durable pull consumer `name` on the stream of `subject`, made if missing.
    fn consumer(&self, name: &str, subject: String) -> Result<PullConsumer, StoreError> {
        if let Some(consumer) = self.consumers.lock().expect("consumers lock").get(name) {
            return Ok(consumer.clone());
        }
        let stream = if subject.starts_with("sluice.in.") {
            self.inbound.clone()
        } else {
            self.outbound.clone()
        };
        let config = jetstream::consumer::pull::Config {
            durable_name: Some(name.to_string()),
            filter_subject: subject,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: 1,
            max_deliver: -1,
            ..Default::default()
        };
        let key = name.to_string();
        let consumer = self.block("create a consumer", async move {
            stream
                .get_or_create_consumer(&key, config)
                .await
                .map_err(|err| failed("create a consumer", err))
        })?;
        self.consumers
            .lock()
            .expect("consumers lock")
            .insert(name.to_string(), consumer.clone());
        Ok(consumer)
    }

    /// Starts watching the shared buckets; each change is applied to this
    /// store's own view (switches) and passed on to [`super::Queue::changes`].
    fn watch(&self) {
        let (state, registry) = (self.state.clone(), self.registry.clone());
        let (switches, changes) = (self.switches.clone(), self.changes.clone());
        self.handle.spawn(async move {
            loop {
                match watch_once(&state, &registry, &switches, &changes).await {
                    Ok(()) => tracing::warn!("the watch of shared state ended; watching again"),
                    Err(err) => tracing::error!(error = %err, "cannot watch shared state; retrying"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Gives back every held message (so another node takes it at once,
    /// not after `ack_wait`) and closes the connection after flushing.
    pub fn close(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::Release);
        let held = held_messages(&self.transform, &self.deliveries, &self.inboxes, true);
        let client = self.client.clone();
        let _ = self.block("flush", async move {
            for message in held {
                let _ = message.ack_with(jetstream::AckKind::Nak(None)).await;
            }
            client.flush().await.map_err(|err| failed("flush", err))
        });
        if let Some(runtime) = self.runtime.lock().expect("runtime lock").take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for NatsStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.lock().expect("runtime lock").take() {
            runtime.shutdown_background();
        }
    }
}

/// A (channel, destination) pair this node pulls deliveries for.
type Route = (String, String);
/// The tasks pulling one route's partitions.
type Pulls = Vec<tokio::task::JoinHandle<()>>;

/// Each destination's inbox: deliveries pushed to this node, in arrival order.
type Inboxes = Arc<Mutex<HashMap<String, Vec<jetstream::Message>>>>;

/// Every message this node holds: transform batches, held deliveries and
/// inboxes; with `take`, they are removed too (to be given back).
fn held_messages(
    transform: &Mutex<HashMap<String, HeldBatch>>,
    deliveries: &Mutex<HashMap<String, BTreeMap<u64, HeldDelivery>>>,
    inboxes: &Mutex<HashMap<String, Vec<jetstream::Message>>>,
    take: bool,
) -> Vec<jetstream::Message> {
    let mut transform = transform.lock().expect("transform lock");
    let mut deliveries = deliveries.lock().expect("deliveries lock");
    let mut inboxes = inboxes.lock().expect("inbox lock");
    let mut held: Vec<jetstream::Message> = transform.values().map(|h| h.message.clone()).collect();
    held.extend(
        deliveries
            .values()
            .flat_map(|d| d.values().map(|h| h.message.clone())),
    );
    held.extend(inboxes.values().flatten().cloned());
    if take {
        transform.clear();
        deliveries.clear();
        inboxes.clear();
    }
    held
}

/// Keeps a pull request open on one delivery partition and passes on what
/// JetStream pushes into `destination`'s inbox: with `max_ack_pending = 1`
/// the next delivery of the partition arrives as soon as the previous one
/// is acknowledged, on whichever node's request is waiting, without polling.
async fn pull(
    consumer: PullConsumer,
    inbox: std::sync::Weak<Mutex<HashMap<String, Vec<jetstream::Message>>>>,
    closing: Arc<std::sync::atomic::AtomicBool>,
    destination: String,
    signal: Arc<Notify>,
) {
    loop {
        let stream = consumer
            .stream()
            .max_messages_per_batch(1)
            .expires(Duration::from_secs(30))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await;
        match stream {
            Ok(mut messages) => {
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(message) => {
                            // The store is gone: this node holds nothing any more.
                            let Some(inbox) = inbox.upgrade() else { return };
                            // Checked under the inbox's lock, which `close` takes after
                            // setting the flag: a message is either taken by it or given back here.
                            let mut inboxes = inbox.lock().expect("inbox lock");
                            if closing.load(std::sync::atomic::Ordering::Acquire) {
                                drop(inboxes);
                                let _ = message.ack_with(jetstream::AckKind::Nak(None)).await;
                                return;
                            }
                            inboxes.entry(destination.clone()).or_default().push(message);
                            drop(inboxes);
                            signal.notify_one();
                        }
                        Err(err) => {
                            tracing::debug!(error = %err, "a delivery pull ended; pulling again");
                            break;
                        }
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot pull deliveries; retrying"),
        }
        if inbox.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `work` on the client's runtime `handle` within [`CALL_TIMEOUT`] and
/// waits for it, from any thread: a blocking thread, an async worker
/// (through `block_in_place`), or outside any runtime.
fn on_runtime<T: Send>(
    handle: &Handle,
    what: &'static str,
    work: impl Future<Output = Result<T, NatsError>> + Send,
) -> Result<T, StoreError> {
    let timed = async {
        tokio::time::timeout(CALL_TIMEOUT, work)
            .await
            .unwrap_or(Err(NatsError::Timeout {
                what,
                timeout: CALL_TIMEOUT,
            }))
    };
    let result = match Handle::try_current() {
        Err(_) => handle.block_on(timed),
        Ok(current) if current.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| handle.block_on(timed))
        }
        Ok(_) => std::thread::scope(|scope| {
            scope
                .spawn(|| handle.block_on(timed))
                .join()
                .unwrap_or(Err(NatsError::Failed {
                    what,
                    detail: "the NATS call panicked".into(),
                }))
        }),
    };
    result.map_err(StoreError::from)
}

struct Setup {
    client: async_nats::Client,
    inbound: stream::Stream,
    outbound: stream::Stream,
    dead: stream::Stream,
    ids: kv::Store,
    state: kv::Store,
    attempts: kv::Store,
    registry: kv::Store,
    fingerprints: kv::Store,
    transform_state: kv::Store,
    modules: object_store::ObjectStore,
}

async fn setup(url: &str, window: Duration) -> Result<Setup, NatsError> {
    let client = async_nats::ConnectOptions::new()
        .name("sluice")
        .retry_on_initial_connect()
        .connect(url)
        .await
        .map_err(|err| failed("connect to NATS", err))?;
    let js = jetstream::new(client.clone());
    let work_queue = |name: &str, subjects: &str| stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        allow_direct: true,
        ..Default::default()
    };
    let inbound = js
        .get_or_create_stream(work_queue("SLUICE_IN", "sluice.in.>"))
        .await
        .map_err(|e| failed("create stream SLUICE_IN", e))?;
    let outbound = js
        .get_or_create_stream(work_queue("SLUICE_OUT", "sluice.out.>"))
        .await
        .map_err(|e| failed("create stream SLUICE_OUT", e))?;
    let dead = js
        .get_or_create_stream(stream::Config {
            name: "SLUICE_DEAD".into(),
            subjects: vec!["sluice.dead.>".into()],
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| failed("create stream SLUICE_DEAD", e))?;
    let bucket = |name: &str, max_age: Duration| kv::Config {
        bucket: name.into(),
        history: 1,
        max_age,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let ids = js
        .create_key_value(bucket("sluice-ids", window))
        .await
        .map_err(|e| failed("create bucket sluice-ids", e))?;
    let state = js
        .create_key_value(bucket("sluice-state", Duration::ZERO))
        .await
        .map_err(|e| failed("create bucket sluice-state", e))?;
    let attempts = js
        .create_key_value(bucket("sluice-attempts", Duration::from_secs(30 * 24 * 3600)))
        .await
        .map_err(|e| failed("create bucket sluice-attempts", e))?;
    let registry = js
        .create_key_value(bucket("sluice-registry", Duration::ZERO))
        .await
        .map_err(|e| failed("create bucket sluice-registry", e))?;
    let fingerprints = js
        .create_key_value(bucket(latest::FINGERPRINTS, Duration::ZERO))
        .await
        .map_err(|e| failed("create bucket sluice-fingerprints", e))?;
    let transform_state = js
        .create_key_value(bucket(state::BUCKET, Duration::ZERO))
        .await
        .map_err(|e| failed("create bucket sluice-transform-state", e))?;
    let modules = js
        .create_object_store(object_store::Config {
            bucket: "sluice-modules".into(),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| failed("create object store sluice-modules", e))?;
    Ok(Setup {
        client,
        inbound,
        outbound,
        dead,
        ids,
        state,
        attempts,
        registry,
        fingerprints,
        transform_state,
        modules,
    })
}

/// Watches both buckets until a watch ends or fails.
async fn watch_once(
    state: &kv::Store,
    registry: &kv::Store,
    switches: &RwLock<HashMap<String, Switch>>,
    changes: &broadcast::Sender<SharedChange>,
) -> Result<(), NatsError> {
    // With history: every key's current value first, so a watch started
    // again (after an error) misses nothing in between.
    let mut state = state
        .watch_with_history(format!("{}>", names::SWITCH))
        .await
        .map_err(|e| failed("watch sluice-state", e))?;
    let mut registry = registry
        .watch_with_history(">")
        .await
        .map_err(|e| failed("watch sluice-registry", e))?;
    loop {
        let entry = tokio::select! {
            entry = state.next() => entry,
            entry = registry.next() => entry,
        };
        let Some(entry) = entry else { return Ok(()) };
        let entry = entry.map_err(|e| failed("watch shared state", e))?;
        if entry.operation != kv::Operation::Put {
            if let Some(change) = registry::setting_change(&entry) {
                let _ = changes.send(change);
            }
            continue;
        }
        let change = if entry.bucket == "sluice-state" {
            let Some(channel) = names::decode_key(entry.key.strip_prefix(names::SWITCH)) else {
                continue;
            };
            let Ok(switch) = serde_json::from_slice::<Switch>(&entry.value) else {
                continue;
            };
            switches
                .write()
                .expect("switches lock")
                .insert(channel.clone(), switch.clone());
            SharedChange::Switch {
                channel,
                enabled: switch.enabled,
                tripped: switch.reason,
            }
        } else if let Some(change) = registry::change(&entry) {
            change
        } else {
            continue;
        };
        // Nobody listening (yet) is fine: the app reads the current state when it starts.
        let _ = changes.send(change);
    }
}
