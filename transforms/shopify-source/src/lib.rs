//! Shopify webhooks to the canonical model.
//!
//! - `product` events (`products/create`, `products/update`): one canonical
//!   [`Product`] per variant, with the parent's id in `group_id`.
//! - `inventory` events: `inventory_levels/update` becomes an
//!   [`InventoryEvent`]; `inventory_items/update` carries no stock level and
//!   is dropped with that reason.
//!
//! Ids stay exact strings: Shopify's 64-bit ids never pass through a float.
//! Unmapped product fields are kept under `extra.product`, unmapped variant
//! fields directly in `extra`.

use serde_json::Value;
use sluice_guest::prelude::*;
use sluice_guest::source::{Adapted, Fields, Source, SourceAdapter, SourceConfig};

/// The adapter: the store settings are all its state.
pub struct ShopifySource {
    cfg: SourceConfig,
}

impl SourceAdapter for ShopifySource {
    fn new(cfg: SourceConfig) -> Self {
        Self { cfg }
    }

    fn products(&self, payload: Value) -> Result<Adapted<Product>, Violation> {
        self.variants(payload).map(Adapted::Many)
    }

    fn inventory(&self, payload: Value) -> Result<Adapted<InventoryEvent>, Violation> {
        Ok(match inventory(payload)? {
            Some(update) => Adapted::One(update),
            None => {
                Adapted::Skip("inventory item update without a stock level (inventory_items/update)".into())
            }
        })
    }
}

impl ShopifySource {
    /// One canonical product per variant, keyed by variant id.
    fn variants(&self, payload: Value) -> Result<Vec<(String, Product)>, Violation> {
        let mut product = Fields::new(payload, JsonPath::root())?;
        let group_id = product.take_id("id")?;
        let title = product.take_str("title")?;
        let description = product.take_str("body_html")?;
        let brand = product.take_str("vendor")?;
        let active = product.take_str("status")?.map(|status| status == "active");
        let categories: Vec<String> = product.take_str("product_type")?.into_iter().collect();
        let images = product
            .take_array("images")?
            .into_iter()
            .filter_map(|(image, _)| image.get("src").and_then(Value::as_str).map(str::to_string))
            .collect::<Vec<_>>();
        let variants = product.take_array("variants")?;
        let parent_extra = Value::Object(product.into_extra());

        let mut out = Vec::with_capacity(variants.len());
        for (variant, path) in variants {
            let mut variant = Fields::new(variant, path)?;
            let id = variant.take_id("id")?;
            variant.take_id("product_id")?;
            let variant_title = variant.take_str("title")?;
            let weight = match (variant.take_decimal("weight")?, variant.take_str("weight_unit")?) {
                (Some(value), unit) => Some(Measure {
                    value,
                    unit: unit.unwrap_or_else(|| self.cfg.weight_unit_or("kg")),
                }),
                (None, _) => variant.take_decimal("grams")?.map(|value| Measure {
                    value,
                    unit: "g".into(),
                }),
            };
            let full_title = match (&title, variant_title.as_deref()) {
                (Some(title), Some(v)) if v != "Default Title" => Some(format!("{title} - {v}")),
                (title, _) => title.clone(),
            };
            let suffix = id.clone().unwrap_or_else(|| out.len().to_string());
            let mut canonical = Product {
                id,
                group_id: group_id.clone(),
                sku: variant.take_str("sku")?,
                title: full_title,
                description: description.clone(),
                brand: brand.clone(),
                gtin: variant.take_str("barcode")?,
                active,
                price: variant.take_decimal("price")?.map(|amount| Money {
                    amount,
                    currency: Some(self.cfg.currency.clone()),
                }),
                quantity: variant.take_decimal("inventory_quantity")?,
                weight,
                images: images.clone(),
                categories: categories.clone(),
                extra: variant.into_extra(),
                ..Product::default()
            };
            canonical.extra.insert("product".into(), parent_extra.clone());
            out.push((suffix, canonical));
        }
        if out.is_empty() {
            return Err(Violation::new(
                &JsonPath::root().key("variants"),
                "required",
                "a Shopify product has at least one variant",
            ));
        }
        Ok(out)
    }
}

/// An inventory level, or `None` for an inventory item (no stock level).
fn inventory(payload: Value) -> Result<Option<InventoryEvent>, Violation> {
    let mut level = Fields::new(payload, JsonPath::root())?;
    if !level.has("location_id") {
        return Ok(None);
    }
    Ok(Some(InventoryEvent {
        item_id: level.take_id("inventory_item_id")?,
        location: level.take_id("location_id")?,
        available: level.take_decimal("available")?,
        updated_at: level.take_str("updated_at")?,
        sku: None,
        extra: level.into_extra(),
    }))
}

export_transform!(Source<ShopifySource>);
