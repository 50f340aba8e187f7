//! The contract versions a component may be built for, told apart by what
//! it exports, and the conversion of a 0.1 component's events and outcomes
//! to and from 0.2's, in which the engine works.

use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::{AsContextMut, Store};

use crate::Sandbox;
use crate::bindings::v0_1::sluice::transform::types as old;
use crate::bindings::{Event, EventKind, Outcome, Violation, v0_1, v0_2};

/// The export through which a 0.2 component is called.
pub(crate) const V0_2_EXPORT: &str = "sluice:transform/step@0.2.0";
/// What every versioned transform export's name starts with.
const EXPORT_PREFIX: &str = "sluice:transform/step@";
/// The versions this engine runs, for messages.
pub(crate) const KNOWN: &str = "0.1.0 and 0.2.0";

/// A contract version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V0_1,
    V0_2,
}

impl Version {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Version::V0_1 => "0.1.0",
            Version::V0_2 => "0.2.0",
        }
    }
}

/// Why a component's exports name no contract this engine runs.
pub(crate) enum Unknown {
    /// It exports `sluice:transform/step` of another version.
    Version(String),
    /// It exports no transform at all.
    NoTransform,
}

/// The contract a component was built for, from its exports.
pub(crate) fn detect(exports: &[String]) -> Result<Version, Unknown> {
    if exports.iter().any(|e| e == V0_2_EXPORT) {
        return Ok(Version::V0_2);
    }
    if let Some(other) = exports.iter().find_map(|e| e.strip_prefix(EXPORT_PREFIX)) {
        return Err(Unknown::Version(other.to_string()));
    }
    if ["init", "apply"]
        .iter()
        .all(|name| exports.iter().any(|e| e == name))
    {
        return Ok(Version::V0_1);
    }
    Err(Unknown::NoTransform)
}

/// Links the host side of every version.
pub(crate) fn add_to_linker(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    v0_1::sluice::transform::host::add_to_linker::<Sandbox, HasSelf<Sandbox>>(linker, |sandbox| sandbox)?;
    v0_2::sluice::transform::host::add_to_linker::<Sandbox, HasSelf<Sandbox>>(linker, |sandbox| sandbox)?;
    v0_2::sluice::transform::state::add_to_linker::<Sandbox, HasSelf<Sandbox>>(linker, |sandbox| sandbox)?;
    v0_2::sluice::transform::lookup::add_to_linker::<Sandbox, HasSelf<Sandbox>>(linker, |sandbox| sandbox)
}

/// A type-checked component, ready to instantiate.
#[derive(Clone)]
pub(crate) enum Pre {
    V0_1(v0_1::TransformPre<Sandbox>),
    V0_2(v0_2::TransformPre<Sandbox>),
}

/// A live instance's exports.
pub(crate) enum Bindings {
    V0_1(v0_1::Transform),
    V0_2(v0_2::Transform),
}

impl Pre {
    pub(crate) fn new(version: Version, pre: InstancePre<Sandbox>) -> wasmtime::Result<Self> {
        Ok(match version {
            Version::V0_1 => Pre::V0_1(v0_1::TransformPre::new(pre)?),
            Version::V0_2 => Pre::V0_2(v0_2::TransformPre::new(pre)?),
        })
    }

    pub(crate) fn version(&self) -> Version {
        match self {
            Pre::V0_1(_) => Version::V0_1,
            Pre::V0_2(_) => Version::V0_2,
        }
    }

    pub(crate) fn instance_pre(&self) -> &InstancePre<Sandbox> {
        match self {
            Pre::V0_1(pre) => pre.instance_pre(),
            Pre::V0_2(pre) => pre.instance_pre(),
        }
    }

    pub(crate) fn instantiate(&self, store: &mut Store<Sandbox>) -> wasmtime::Result<Bindings> {
        Ok(match self {
            Pre::V0_1(pre) => Bindings::V0_1(pre.instantiate(store)?),
            Pre::V0_2(pre) => Bindings::V0_2(pre.instantiate(store)?),
        })
    }
}

impl Bindings {
    pub(crate) fn call_init(
        &self,
        store: impl AsContextMut<Data = Sandbox>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Bindings::V0_1(b) => b.call_init(store, config),
            Bindings::V0_2(b) => b.sluice_transform_step().call_init(store, config),
        }
    }

    /// Calls `apply`; a 0.1 component's outcomes come back in 0.2's form.
    pub(crate) fn call_apply(
        &self,
        store: impl AsContextMut<Data = Sandbox>,
        batch: &[Event],
    ) -> wasmtime::Result<Vec<Outcome>> {
        match self {
            Bindings::V0_2(b) => b.sluice_transform_step().call_apply(store, batch),
            Bindings::V0_1(b) => {
                let old_batch: Vec<old::Event> = batch.iter().map(to_old).collect();
                let outcomes = b.call_apply(store, &old_batch)?;
                // A count that does not match is reported by the caller.
                Ok(outcomes
                    .into_iter()
                    .zip(batch.iter().chain(std::iter::repeat(&batch[0])))
                    .map(|(outcome, input)| from_old(outcome, input))
                    .collect())
            }
        }
    }
}

fn to_old(event: &Event) -> old::Event {
    old::Event {
        id: event.id.clone(),
        kind: match &event.kind {
            EventKind::Product => old::EventKind::Product,
            EventKind::Inventory => old::EventKind::Inventory,
            EventKind::Price => old::EventKind::Price,
            EventKind::Other(name) => old::EventKind::Other(name.clone()),
        },
        tenant: event.tenant.clone(),
        channel: event.channel.clone(),
        source: event.source.clone(),
        correlation_id: event.correlation_id.clone(),
        payload: event.payload.clone(),
    }
}

/// A 0.1 outcome in 0.2's form. Emitted events keep the input's topic,
/// headers and delivery hint, which a 0.1 component cannot see or set.
fn from_old(outcome: old::Outcome, input: &Event) -> Outcome {
    let violations = |found: Vec<old::Violation>| {
        found
            .into_iter()
            .map(|v| Violation {
                path: v.path,
                code: v.code,
                message: v.message,
            })
            .collect()
    };
    match outcome {
        old::Outcome::Emit(events) => Outcome::Emit(
            events
                .into_iter()
                .map(|event| Event {
                    id: event.id,
                    kind: match event.kind {
                        old::EventKind::Product => EventKind::Product,
                        old::EventKind::Inventory => EventKind::Inventory,
                        old::EventKind::Price => EventKind::Price,
                        old::EventKind::Other(name) => EventKind::Other(name),
                    },
                    tenant: event.tenant,
                    channel: event.channel,
                    source: event.source,
                    correlation_id: event.correlation_id,
                    payload: event.payload,
                    topic: input.topic.clone(),
                    headers: input.headers.clone(),
                    delivery: input.delivery.clone(),
                })
                .collect(),
        ),
        old::Outcome::Drop(reason) => Outcome::Drop(reason),
        old::Outcome::Reject(found) => Outcome::Reject(violations(found)),
    }
}
