//! Write Sluice transforms in Rust.
//!
//! A transform is one step of a channel's pipeline: it receives events
//! (products, stock levels, prices) and answers, for each, with an
//! [`Outcome`]: emit the reshaped event(s), drop it with a reason, reject
//! it with [`Violation`]s that carry the JSON path of the bad field, or
//! emit some parts and reject the rest ([`Outcome::partial`]).
//!
//! It builds components for contract `sluice:transform@0.2.0`
//! (`wit/v0.2/`): besides the event, a transform may keep [`state`] across
//! batches, read [`lookup`] tables, and choose how an emitted event is
//! delivered ([`Event::deliver_as`], [`Event::with_param`]).
//!
//! ```ignore
//! use sluice_guest::prelude::*;
//!
//! #[derive(Deserialize)]
//! struct Config { max_title: usize }
//!
//! struct ShortTitles { cfg: Config }
//!
//! impl Transform for ShortTitles {
//!     type Config = Config;
//!     fn init(cfg: Config) -> Result<Self, InitError> { Ok(Self { cfg }) }
//!     fn product(&mut self, mut p: Product, event: &Event) -> Outcome {
//!         p.title = p.title.map(|t| text::truncate(&t, self.cfg.max_title));
//!         Outcome::emit(event, &p)
//!     }
//! }
//!
//! export_transform!(ShortTitles);
//! ```
//!
//! The crate hides the WebAssembly plumbing: a tenant's `Cargo.toml` names
//! only `sluice-guest` and `serde`, and builds with
//! `cargo build --target wasm32-wasip2`.

extern crate self as sluice_guest;

mod event;
pub mod gtin;
mod log;
pub mod lookup;
#[cfg(feature = "mapping")]
pub mod mapping;
pub mod money;
mod outcome;
pub mod path;
mod product;
#[cfg(any(all(target_arch = "wasm32", not(feature = "lever-plain-talc")), test))]
mod size_classes;
pub mod source;
pub mod state;
pub mod text;
mod transform;
pub mod units;

#[doc(hidden)]
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/v0.2",
        world: "transform",
        pub_export_macro: true,
        export_macro_name: "__export_sluice_world",
        default_bindings_module: "::sluice_guest::bindings",
        runtime_path: "::sluice_guest::__rt::wit_bindgen::rt",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::sluice::transform::types::{
    DeliveryHint, Event, EventKind, Method, Outcome, Partial, Violation,
};

/// Transforms allocate for every event (parsed JSON, strings, outputs):
/// small blocks from size-class free lists, the rest from talc, whose bins
/// beat the default dlmalloc (see docs/operations/performance.md).
#[cfg(all(target_arch = "wasm32", not(feature = "lever-plain-talc")))]
#[global_allocator]
static ALLOCATOR: size_classes::SizeClasses<talc::wasm::WasmDynamicTalc> =
    size_classes::SizeClasses::new(talc::wasm::new_wasm_dynamic_allocator());
#[cfg(all(target_arch = "wasm32", feature = "lever-plain-talc"))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();
pub use log::{LogLevel, log};
pub use outcome::Violations;
pub use path::JsonPath;
pub use product::{Dimensions, InventoryEvent, Measure, Money, Product};
pub use rust_decimal::{self, Decimal};
pub use transform::{InitError, Transform};

/// Everything a transform usually needs, in one import.
pub mod prelude {
    pub use crate::path::JsonPath;
    pub use crate::{
        Decimal, Dimensions, Event, EventKind, InitError, InventoryEvent, Measure, Method, Money, Outcome,
        Product, Transform, Violation, Violations, export_transform, gtin, lookup, money, source, state,
        text, units,
    };
    pub use serde::{Deserialize, Serialize};
}

/// Re-exports used by the code that [`export_transform!`] expands to.
#[doc(hidden)]
pub mod __rt {
    pub use crate::transform::{run_apply, run_init};
    pub use wit_bindgen;
}

/// Runs a transform natively, without WebAssembly: for unit tests and for
/// benchmarks that compare the component against plain Rust.
pub mod native {
    pub use crate::transform::NativeRunner;
}

/// Makes a type implementing [`Transform`] the exported transform of this
/// component. Use it exactly once per crate.
#[macro_export]
macro_rules! export_transform {
    ($transform:ty) => {
        const _: () = {
            ::std::thread_local! {
                static SLUICE_STATE: ::std::cell::RefCell<::std::option::Option<$transform>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            #[allow(dead_code)]
            struct SluiceExport;

            impl $crate::bindings::exports::sluice::transform::step::Guest for SluiceExport {
                fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    SLUICE_STATE.with(|state| $crate::__rt::run_init::<$transform>(state, &config))
                }

                fn apply(batch: ::std::vec::Vec<$crate::Event>) -> ::std::vec::Vec<$crate::Outcome> {
                    SLUICE_STATE.with(|state| $crate::__rt::run_apply::<$transform>(state, batch))
                }
            }

            // Only components export the world's symbols: natively, several
            // transforms can then be linked into one program (benchmarks).
            #[cfg(target_arch = "wasm32")]
    $crate::bindings::__export_sluice_world!(SluiceExport with_types_in $crate::bindings);
        };
    };
}
