//! WooCommerce REST payloads to the canonical model.
//!
//! - `product` events: simple products and variations (`GET products/<id>`,
//!   `GET products/<id>/variations/<id>`) become one canonical [`Product`];
//!   variable parents are dropped, since their variations arrive as events of
//!   their own.
//!
//! WooCommerce prices and measures are strings (`"21.99"`) and carry no
//! unit: set `weight-unit` (default `kg`) and `dimension-unit` (default `cm`)
//! to the store's. Unmapped fields stay in `extra`.

use serde_json::Value;
use sluice_guest::prelude::*;
use sluice_guest::source::{Adapted, Fields, Source, SourceAdapter, SourceConfig};

/// The adapter: the store settings are all its state.
pub struct WooCommerceSource {
    cfg: SourceConfig,
}

impl SourceAdapter for WooCommerceSource {
    fn new(cfg: SourceConfig) -> Self {
        Self { cfg }
    }

    fn products(&self, payload: Value) -> Result<Adapted<Product>, Violation> {
        Ok(match self.canonical(payload)? {
            Some(product) => Adapted::One(product),
            None => Adapted::Skip("variable parent: its variations arrive as their own events".into()),
        })
    }
}

impl WooCommerceSource {
    fn canonical(&self, payload: Value) -> Result<Option<Product>, Violation> {
        let mut fields = Fields::new(payload, JsonPath::root())?;
        if fields.get("type").and_then(Value::as_str) == Some("variable") {
            return Ok(None);
        }
        let mut product = Product {
            id: fields.take_id("id")?,
            group_id: fields.take_id("parent_id")?.filter(|id| id != "0"),
            sku: fields.take_str("sku")?,
            title: fields.take_str("name")?,
            description: fields.take_str("description")?,
            gtin: fields.take_str("global_unique_id")?,
            active: fields.take_str("status")?.map(|status| status == "publish"),
            price: fields.take_decimal("price")?.map(|amount| Money {
                amount,
                currency: Some(self.cfg.currency.clone()),
            }),
            quantity: fields.take_decimal("stock_quantity")?,
            weight: fields.take_decimal("weight")?.map(|value| Measure {
                value,
                unit: self.cfg.weight_unit_or("kg"),
            }),
            ..Product::default()
        };
        if let Some(mut dims) = fields.take_object("dimensions")? {
            let (length, width, height) = (
                dims.take_decimal("length")?,
                dims.take_decimal("width")?,
                dims.take_decimal("height")?,
            );
            if let (Some(length), Some(width), Some(height)) = (length, width, height) {
                product.dimensions = Some(Dimensions {
                    length,
                    width,
                    height,
                    unit: self.cfg.dimension_unit_or("cm"),
                });
            }
        }
        // A variation has one `image`, a product a list of `images`.
        let images = fields.take_array("images")?.into_iter().map(|(image, _)| image);
        product.images = images
            .chain(fields.take("image"))
            .filter_map(|image| image.get("src").and_then(Value::as_str).map(str::to_string))
            .collect();
        product.categories = fields
            .take_array("categories")?
            .into_iter()
            .filter_map(|(category, _)| category.get("name").and_then(Value::as_str).map(str::to_string))
            .collect();
        if product.title.is_none() {
            product.title = variation_title(fields.get("attributes"));
        }
        product.extra = fields.into_extra();
        Ok(Some(product))
    }
}

/// A variation has no name of its own: "Color: Black, Size: M".
fn variation_title(attributes: Option<&Value>) -> Option<String> {
    let parts: Vec<String> = attributes?
        .as_array()?
        .iter()
        .filter_map(|a| {
            Some(format!(
                "{}: {}",
                a.get("name")?.as_str()?,
                a.get("option")?.as_str()?
            ))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

export_transform!(Source<WooCommerceSource>);
