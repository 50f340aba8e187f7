//! Square payloads to the canonical model.
//!
//! - `product` events: a catalog object response (`{"object": …,
//!   "related_objects": …}`) or a batch upsert request (`{"batches": …}`):
//!   one canonical [`Product`] per item variation, keyed by variation id,
//!   with category names resolved from related objects.
//! - `inventory` events: the `inventory.count.updated` webhook and
//!   `BatchChangeInventory` requests: one [`InventoryEvent`] per count or
//!   physical count; adjustments (deltas, not levels) are dropped with a reason.
//!
//! Square prices are integers in minor units (`150` USD is 1.50), converted
//! exactly. Unmapped item fields stay under `extra.item`, variation fields in `extra`.

use std::collections::BTreeMap;

use serde_json::Value;
use sluice_guest::prelude::*;
use sluice_guest::source::{Adapted, Fields, Source, SourceAdapter, SourceConfig};

/// The adapter: the store settings are all its state.
pub struct SquareSource {
    cfg: SourceConfig,
}

impl SourceAdapter for SquareSource {
    fn new(cfg: SourceConfig) -> Self {
        Self { cfg }
    }

    fn products(&self, payload: Value) -> Result<Adapted<Product>, Violation> {
        let products = self.items(payload)?;
        Ok(match products.is_empty() {
            true => Adapted::Skip("no ITEM objects in the payload".into()),
            false => Adapted::Many(products),
        })
    }

    fn inventory(&self, payload: Value) -> Result<Adapted<InventoryEvent>, Violation> {
        let counts = counts(payload)?;
        Ok(match counts.is_empty() {
            true => Adapted::Skip("no inventory counts in the payload (only adjustments)".into()),
            false => Adapted::Many(counts),
        })
    }
}

impl SquareSource {
    /// One canonical product per item variation, from every ITEM object.
    fn items(&self, payload: Value) -> Result<Vec<(String, Product)>, Violation> {
        let mut body = Fields::new(payload, JsonPath::root())?;
        let mut objects = Vec::new();
        if let Some(object) = body.take("object") {
            objects.push((object, body.path("object")));
        }
        for (batch, path) in body.take_array("batches")? {
            objects.extend(Fields::new(batch, path)?.take_array("objects")?);
        }
        let mut categories = BTreeMap::new();
        for (related, _) in body.take_array("related_objects")? {
            if let (Some(id), Some(name)) = (related.get("id"), related.pointer("/category_data/name")) {
                categories.insert(id.as_str().unwrap_or_default().to_string(), name.clone());
            }
        }
        let mut out = Vec::new();
        for (object, path) in objects {
            if object.get("type").and_then(Value::as_str) == Some("ITEM") {
                out.extend(self.item(Fields::new(object, path)?, &categories)?);
            }
        }
        Ok(out)
    }

    fn item(
        &self,
        mut object: Fields,
        categories: &BTreeMap<String, Value>,
    ) -> Result<Vec<(String, Product)>, Violation> {
        let group_id = object.take_id("id")?;
        let active = object
            .get("is_deleted")
            .and_then(Value::as_bool)
            .map(|deleted| !deleted);
        let Some(mut item) = object.take_object("item_data")? else {
            return Err(Violation::new(
                &object.path("item_data"),
                "required",
                "an ITEM object has `item_data`",
            ));
        };
        let title = item.take_str("name")?;
        let description = match item.take_str("description_html")? {
            Some(html) => Some(html),
            None => item.take_str("description")?,
        };
        let category_names: Vec<String> = item
            .take_array("categories")?
            .into_iter()
            .filter_map(|(c, _)| {
                let id = c.get("id")?.as_str()?;
                Some(
                    categories
                        .get(id)
                        .and_then(Value::as_str)
                        .unwrap_or(id)
                        .to_string(),
                )
            })
            .collect();
        let variations = item.take_array("variations")?;
        let mut rest = item.into_extra();
        rest.extend(object.into_extra());

        let mut out = Vec::with_capacity(variations.len());
        for (variation, path) in variations {
            let mut variation = Fields::new(variation, path)?;
            let id = variation.take_id("id")?;
            let mut data = variation
                .take_object("item_variation_data")?
                .unwrap_or(Fields::new(
                    Value::Object(Default::default()),
                    variation.path("item_variation_data"),
                )?);
            data.take_id("item_id")?;
            let name = data.take_str("name")?;
            let price = match data.take_object("price_money")? {
                Some(mut money) => {
                    let currency = money
                        .take_str("currency")?
                        .unwrap_or_else(|| self.cfg.currency.clone());
                    money.take_decimal("amount")?.map(|minor| Money {
                        amount: money::from_minor_units(minor, &currency),
                        currency: Some(currency),
                    })
                }
                None => None,
            };
            let mut product = Product {
                id: id.clone(),
                group_id: group_id.clone(),
                sku: data.take_str("sku")?,
                gtin: data.take_str("upc")?,
                title: match (&title, name) {
                    (Some(title), Some(name)) if name != "Regular" => Some(format!("{title} - {name}")),
                    (title, _) => title.clone(),
                },
                description: description.clone(),
                active,
                price,
                categories: category_names.clone(),
                extra: data.into_extra(),
                ..Product::default()
            };
            product.extra.extend(variation.into_extra());
            product.extra.insert("item".into(), Value::Object(rest.clone()));
            out.push((id.unwrap_or_else(|| out.len().to_string()), product));
        }
        Ok(out)
    }
}

/// Stock levels from a count webhook or a batch change request, keyed by object and location.
fn counts(payload: Value) -> Result<Vec<(String, InventoryEvent)>, Violation> {
    let mut body = Fields::new(payload, JsonPath::root())?;
    let mut levels = Vec::new();
    if let Some(mut data) = body.take_object("data")?
        && let Some(mut object) = data.take_object("object")?
    {
        levels.extend(object.take_array("inventory_counts")?);
    }
    for (change, path) in body.take_array("changes")? {
        let mut change = Fields::new(change, path)?;
        if let Some(count) = change.take("physical_count") {
            levels.push((count, change.path("physical_count")));
        }
    }
    levels
        .into_iter()
        .map(|(level, path)| {
            let mut level = Fields::new(level, path)?;
            let update = InventoryEvent {
                item_id: level.take_id("catalog_object_id")?,
                location: level.take_id("location_id")?,
                available: level.take_decimal("quantity")?,
                updated_at: match level.take_str("calculated_at")? {
                    Some(at) => Some(at),
                    None => level.take_str("occurred_at")?,
                },
                sku: None,
                extra: level.into_extra(),
            };
            let key = format!(
                "{}@{}",
                update.item_id.as_deref().unwrap_or("?"),
                update.location.as_deref().unwrap_or("?")
            );
            Ok((key, update))
        })
        .collect()
}

export_transform!(Source<SquareSource>);
