//! Magento 2 REST payloads to the canonical model.
//!
//! - `product` events (`GET/POST /V1/products` bodies): simple, virtual,
//!   downloadable and bundle products become one canonical [`Product`];
//!   configurable parents are dropped, since their simple children arrive as
//!   events of their own.
//! - `inventory` events: MSI source items (`{"sourceItems": […]}` requests or
//!   `{"items": […]}` search results) become one [`InventoryEvent`] each.
//!
//! Magento weights carry no unit: set `weight-unit` to the store's (`lbs`,
//! the default, or `kgs`). Unmapped custom attributes stay in
//! `extra.custom_attributes`, other unmapped fields in `extra`.

use serde_json::Value;
use sluice_guest::prelude::*;
use sluice_guest::source::{Adapted, Fields, Source, SourceAdapter, SourceConfig};

/// The adapter: the store settings are all its state.
pub struct MagentoSource {
    cfg: SourceConfig,
}

impl SourceAdapter for MagentoSource {
    fn new(cfg: SourceConfig) -> Self {
        Self { cfg }
    }

    fn products(&self, payload: Value) -> Result<Adapted<Product>, Violation> {
        Ok(match self.canonical(payload)? {
            Some(product) => Adapted::One(product),
            None => {
                Adapted::Skip("configurable parent: its simple products arrive as their own events".into())
            }
        })
    }

    fn inventory(&self, payload: Value) -> Result<Adapted<InventoryEvent>, Violation> {
        source_items(payload).map(Adapted::Many)
    }
}

impl MagentoSource {
    fn canonical(&self, payload: Value) -> Result<Option<Product>, Violation> {
        let mut fields = Fields::new(payload, JsonPath::root())?;
        if fields.get("type_id").and_then(Value::as_str) == Some("configurable") {
            return Ok(None);
        }
        let mut product = Product {
            id: fields.take_id("id")?,
            sku: fields.take_str("sku")?,
            title: fields.take_str("name")?,
            active: fields
                .take_decimal("status")?
                .map(|status| status == Decimal::ONE),
            price: fields.take_decimal("price")?.map(|amount| Money {
                amount,
                currency: Some(self.cfg.currency.clone()),
            }),
            weight: fields.take_decimal("weight")?.map(|value| Measure {
                value,
                unit: self.cfg.weight_unit_or("lbs"),
            }),
            ..Product::default()
        };
        if let Some(mut extension) = fields.take_object("extension_attributes")? {
            if let Some(mut stock) = extension.take_object("stock_item")? {
                product.quantity = stock.take_decimal("qty")?;
                extension_put(&mut extension, "stock_item", stock.into_extra());
            }
            extension_put(&mut fields, "extension_attributes", extension.into_extra());
        }
        let mut dimensions = [None, None, None];
        let mut unmapped = Vec::new();
        for (attribute, path) in fields.take_array("custom_attributes")? {
            let mut attribute = Fields::new(attribute, path)?;
            let code = attribute.take_str("attribute_code")?.unwrap_or_default();
            let slot = match code.as_str() {
                "description" => {
                    product.description = attribute.take_str("value")?;
                    continue;
                }
                "ts_dimensions_length" => 0,
                "ts_dimensions_width" => 1,
                "ts_dimensions_height" => 2,
                _ => {
                    unmapped
                        .push(serde_json::json!({"attribute_code": code, "value": attribute.take("value")}));
                    continue;
                }
            };
            dimensions[slot] = attribute.take_decimal("value")?;
        }
        if let [Some(length), Some(width), Some(height)] = dimensions {
            product.dimensions = Some(Dimensions {
                length,
                width,
                height,
                unit: self.cfg.dimension_unit_or("in"),
            });
        }
        if !unmapped.is_empty() {
            fields
                .rest_mut()
                .insert("custom_attributes".into(), Value::Array(unmapped));
        }
        product.extra = fields.into_extra();
        Ok(Some(product))
    }
}

/// Puts what is left of a nested object back, unless nothing is left.
fn extension_put(parent: &mut Fields, key: &str, rest: serde_json::Map<String, Value>) {
    if !rest.is_empty() {
        parent.rest_mut().insert(key.into(), Value::Object(rest));
    }
}

/// MSI source items, one canonical stock level each, keyed by SKU and source.
fn source_items(payload: Value) -> Result<Vec<(String, InventoryEvent)>, Violation> {
    let mut body = Fields::new(payload, JsonPath::root())?;
    let key = if body.has("sourceItems") {
        "sourceItems"
    } else {
        "items"
    };
    let items = body.take_array(key)?;
    if items.is_empty() {
        return Err(Violation::new(
            &body.path("sourceItems"),
            "required",
            "expected `sourceItems` or `items` with at least one source item",
        ));
    }
    items
        .into_iter()
        .map(|(item, path)| {
            let mut item = Fields::new(item, path)?;
            let update = InventoryEvent {
                sku: item.take_str("sku")?,
                location: item.take_str("source_code")?,
                available: item.take_decimal("quantity")?,
                item_id: None,
                updated_at: None,
                extra: item.into_extra(),
            };
            let suffix = format!(
                "{}@{}",
                update.sku.as_deref().unwrap_or("?"),
                update.location.as_deref().unwrap_or("?")
            );
            Ok((suffix, update))
        })
        .collect()
}

export_transform!(Source<MagentoSource>);
