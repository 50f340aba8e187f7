//! Interfaces a transform may import but never use: a component that
//! imports them loads, and every call into them fails that call's event
//! with a [`FaultKind::Denied`](crate::FaultKind::Denied) fault naming
//! the function. componentize-js, for one, imports `wasi:http` by default
//! whether or not the code ever calls `fetch`.
//!
//! Every function of a denied interface traps before doing anything, and
//! every resource is an empty host type no function can make, so nothing
//! can leave the sandbox through them.

#[cfg(feature = "wasi")]
use wasmtime::component::types::ComponentItem;
#[cfg(feature = "wasi")]
use wasmtime::component::{Component, Linker, ResourceType};

#[cfg(feature = "wasi")]
use crate::Sandbox;

/// Import prefixes linked as denied.
pub const DENIED_IMPORTS: &[&str] = &["wasi:http/"];

/// A guest called a denied import; its event fails with this.
#[derive(Debug, Clone, thiserror::Error)]
#[error("called `{import}`, which is denied: transforms may not make network requests")]
pub struct Denied {
    /// The function called (`wasi:http/types@0.2.10#[constructor]fields`).
    pub import: String,
}

/// The resource type every denied resource gets: none can ever exist.
#[cfg(feature = "wasi")]
struct DeniedResource;

/// Whether an import (an interface's full name) is linked as denied.
pub fn is_denied(import: &str) -> bool {
    DENIED_IMPORTS.iter().any(|prefix| import.starts_with(prefix))
}

/// The host type of a WASI resource another interface shares (`use`s),
/// by its unversioned name: a denied interface must name it as the WASI
/// linker does.
#[cfg(feature = "wasi")]
fn shared_resource(name: &str) -> Option<ResourceType> {
    use wasmtime_wasi_io::{poll, streams};
    Some(match name {
        "wasi:io/poll#pollable" => ResourceType::host::<poll::DynPollable>(),
        "wasi:io/streams#input-stream" => ResourceType::host::<streams::DynInputStream>(),
        "wasi:io/streams#output-stream" => ResourceType::host::<streams::DynOutputStream>(),
        "wasi:io/error#error" => ResourceType::host::<streams::Error>(),
        _ => return None,
    })
}

/// Defines every denied interface `component` imports in `linker`.
#[cfg(feature = "wasi")]
pub(crate) fn link(
    linker: &mut Linker<Sandbox>,
    component: &Component,
    engine: &wasmtime::Engine,
) -> wasmtime::Result<()> {
    // Resources the denied interfaces share with provided ones, by type.
    let mut provided = Vec::new();
    for (name, item) in component.component_type().imports(engine) {
        if let ComponentItem::ComponentInstance(instance) = item.ty
            && !is_denied(name)
        {
            let unversioned = name.split('@').next().unwrap_or(name);
            for (export, item) in instance.exports(engine) {
                if let ComponentItem::Resource(ty) = item.ty {
                    provided.push((ty, format!("{unversioned}#{export}")));
                }
            }
        }
    }
    for (name, item) in component.component_type().imports(engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        if !is_denied(name) {
            continue;
        }
        let mut defined = linker.instance(name)?;
        for (export, item) in instance.exports(engine) {
            match item.ty {
                ComponentItem::ComponentFunc(_) => {
                    let import = format!("{name}#{export}");
                    defined.func_new(export, move |_, _, _, _| {
                        Err(wasmtime::Error::new(Denied {
                            import: import.clone(),
                        }))
                    })?;
                }
                ComponentItem::Resource(ty) => {
                    let shared = provided
                        .iter()
                        .find(|(other, _)| *other == ty)
                        .and_then(|(_, name)| shared_resource(name));
                    let host = shared.unwrap_or_else(ResourceType::host::<DeniedResource>);
                    defined.resource(export, host, |_, _| Ok(()))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}
