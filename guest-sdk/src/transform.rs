//! The [`Transform`] trait and the glue that runs it behind the WIT exports.

use std::cell::RefCell;
use std::fmt;

use serde::de::DeserializeOwned;

use crate::path::JsonPath;
use crate::{Event, EventKind, InventoryEvent, Outcome, Product};

/// Why a transform could not start with the configuration it was given.
/// The message is shown to the operator: name the bad field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitError(pub String);

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for InitError {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for InitError {
    fn from(message: &str) -> Self {
        Self(message.to_string())
    }
}

/// One step of a channel's pipeline, written in Rust.
///
/// Implement [`Transform::product`] and/or [`Transform::inventory`] to work
/// on the canonical model, or [`Transform::event`] to see every event with
/// its raw JSON payload (source adapters do that). Whatever is not
/// implemented passes events through unchanged.
pub trait Transform: Sized + 'static {
    /// The step's configuration, parsed from the channel's JSON config.
    type Config: DeserializeOwned;

    /// Builds the transform from its configuration; called once per instance.
    fn init(config: Self::Config) -> Result<Self, InitError>;

    /// Handles a `product` event whose payload parsed as a canonical [`Product`].
    fn product(&mut self, product: Product, event: &Event) -> Outcome {
        let _ = product;
        Outcome::pass(event)
    }

    /// Handles an `inventory` event whose payload parsed as an [`InventoryEvent`].
    fn inventory(&mut self, update: InventoryEvent, event: &Event) -> Outcome {
        let _ = update;
        Outcome::pass(event)
    }

    /// Handles any event. The default parses the payload by kind and calls
    /// [`Transform::product`] or [`Transform::inventory`]; a payload that does
    /// not parse is rejected with the path of the bad field.
    fn event(&mut self, event: Event) -> Outcome {
        match event.kind {
            EventKind::Product => match event.payload_as::<Product>() {
                Ok(product) => self.product(product, &event),
                Err(violation) => Outcome::Reject(vec![violation]),
            },
            EventKind::Inventory => match event.payload_as::<InventoryEvent>() {
                Ok(update) => self.inventory(update, &event),
                Err(violation) => Outcome::Reject(vec![violation]),
            },
            _ => Outcome::pass(&event),
        }
    }
}

/// Parses the JSON config and builds `T`, with the path of a bad field in the error.
fn build<T: Transform>(config: &str) -> Result<T, String> {
    let config = if config.trim().is_empty() { "{}" } else { config };
    let mut de = serde_json::Deserializer::from_str(config);
    let parsed: T::Config = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = JsonPath::from_serde(err.path());
        format!("invalid config at {path}: {}", err.into_inner())
    })?;
    T::init(parsed).map_err(|err| err.0)
}

/// Backs the WIT `init` export.
#[doc(hidden)]
pub fn run_init<T: Transform>(state: &RefCell<Option<T>>, config: &str) -> Result<(), String> {
    *state.borrow_mut() = Some(build::<T>(config)?);
    Ok(())
}

/// Backs the WIT `apply` export.
#[doc(hidden)]
pub fn run_apply<T: Transform>(state: &RefCell<Option<T>>, batch: Vec<Event>) -> Vec<Outcome> {
    let mut state = state.borrow_mut();
    let transform = state
        .as_mut()
        .expect("sluice: `apply` was called before a successful `init`");
    batch.into_iter().map(|event| transform.event(event)).collect()
}

/// Runs a [`Transform`] in plain Rust, exactly as the component would run
/// it, minus the sandbox. Use it in unit tests and native baselines.
pub struct NativeRunner<T: Transform> {
    transform: T,
}

impl<T: Transform> NativeRunner<T> {
    /// Builds the transform from a JSON config text.
    pub fn new(config: &str) -> Result<Self, String> {
        Ok(Self {
            transform: build::<T>(config)?,
        })
    }

    /// Transforms a batch, one outcome per event.
    pub fn apply(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
        batch
            .into_iter()
            .map(|event| self.transform.event(event))
            .collect()
    }
}
