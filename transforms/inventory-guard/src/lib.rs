//! Canonical stock level to a channel stock update.
//!
//! Location ids map to the channel's warehouse codes through a config
//! table; a safety-stock buffer is held back from every channel update, and
//! the result never goes below zero. Stock at an unmapped location is
//! dropped with a reason (the channel does not sell from it).

use std::collections::BTreeMap;

use serde_json::json;
use sluice_guest::prelude::*;

/// The channel step's configuration.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Source location id → channel warehouse code.
    pub locations: BTreeMap<String, String>,
    /// Units held back from the channel at every location.
    #[serde(default)]
    pub safety_stock: Decimal,
}

/// The transform: its configuration is all its state.
pub struct InventoryGuard {
    cfg: Config,
}

impl Transform for InventoryGuard {
    type Config = Config;

    fn init(cfg: Config) -> Result<Self, InitError> {
        if cfg.safety_stock.is_sign_negative() {
            return Err("config `safety-stock` must not be negative".into());
        }
        Ok(Self { cfg })
    }

    fn inventory(&mut self, update: InventoryEvent, event: &Event) -> Outcome {
        let root = JsonPath::root();
        let Some(location) = update.location.as_deref() else {
            return Outcome::reject_one(
                &root.key("location"),
                "required",
                "a stock level needs its location",
            );
        };
        let Some(warehouse) = self.cfg.locations.get(location) else {
            return Outcome::skip(format!(
                "location `{location}` is not mapped to a warehouse of this channel"
            ));
        };
        if update.sku.is_none() && update.item_id.is_none() {
            return Outcome::reject_one(
                &root.key("sku"),
                "required",
                "a stock level needs a `sku` or an `item_id`",
            );
        }
        let Some(available) = update.available else {
            return Outcome::skip("the source reports no stock level (untracked item)");
        };
        let quantity = (available - self.cfg.safety_stock).max(Decimal::ZERO).floor();
        let mut update_json = json!({
            "warehouse": warehouse,
            "quantity": money::json_number(quantity),
        });
        for (key, value) in [
            ("sku", update.sku),
            ("item_id", update.item_id),
            ("updated_at", update.updated_at),
        ] {
            if let Some(value) = value {
                update_json[key] = value.into();
            }
        }
        Outcome::emit(event, &update_json)
    }
}

export_transform!(InventoryGuard);
