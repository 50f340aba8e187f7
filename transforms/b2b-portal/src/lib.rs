//! Canonical product to a B2B portal listing.
//!
//! The portal wants metric units only, titles of at most `max-title`
//! characters ending in "…", plain-text descriptions, prices as exact
//! decimals with the currency's places, and never a negative stock.
//! Products without a SKU or a weight are rejected with the path of the
//! missing field; inactive products are dropped. Put a source adapter
//! (for example `magento-source`) before it in the pipeline.

use serde_json::{Map, Value};
use sluice_guest::prelude::*;

/// The channel step's configuration.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Longest title the portal accepts, in characters.
    #[serde(default = "default_max_title")]
    pub max_title: usize,
    /// Currency for prices that carry none.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// List inactive products too, instead of dropping them.
    #[serde(default)]
    pub include_inactive: bool,
}

fn default_max_title() -> usize {
    80
}
fn default_currency() -> String {
    "USD".into()
}

/// What the portal receives.
#[derive(Debug, Serialize)]
struct Listing {
    sku: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_id: Option<String>,
    title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    price: Option<String>,
    currency: String,
    quantity: Value,
    weight_kg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions_cm: Option<DimensionsCm>,
    attributes: Map<String, Value>,
}

#[derive(Debug, Serialize)]
struct DimensionsCm {
    length: String,
    width: String,
    height: String,
}

/// The transform: its configuration is all its state.
pub struct B2bPortal {
    cfg: Config,
}

impl Transform for B2bPortal {
    type Config = Config;

    fn init(cfg: Config) -> Result<Self, InitError> {
        if cfg.max_title == 0 {
            return Err("config `max-title` must be at least 1".into());
        }
        Ok(Self { cfg })
    }

    fn product(&mut self, product: Product, event: &Event) -> Outcome {
        if product.active == Some(false) && !self.cfg.include_inactive {
            return Outcome::skip("product is not active at the source");
        }
        let root = JsonPath::root();
        let mut violations = Violations::new();
        let sku = product.sku.filter(|sku| !sku.trim().is_empty());
        let sku = violations.require(sku, &root.key("sku"), "sku");
        let title = violations.require(product.title, &root.key("title"), "title");
        let weight = violations.require(product.weight, &root.key("weight"), "weight");
        let weight_kg = weight.and_then(|w| {
            metric(
                &w.value,
                &w.unit,
                "kg",
                &root.key("weight").key("unit"),
                &mut violations,
            )
        });
        let dimensions_cm = product.dimensions.and_then(|d| {
            let unit_path = root.key("dimensions").key("unit");
            Some(DimensionsCm {
                length: metric(&d.length, &d.unit, "cm", &unit_path, &mut violations)?,
                width: metric(&d.width, &d.unit, "cm", &unit_path, &mut violations)?,
                height: metric(&d.height, &d.unit, "cm", &unit_path, &mut violations)?,
            })
        });
        if let Err(rejection) = violations.into_result() {
            return rejection;
        }
        let (Some(sku), Some(title), Some(weight_kg)) = (sku, title, weight_kg) else {
            unreachable!("violations were empty, so every required field is present");
        };
        let currency = product
            .price
            .as_ref()
            .and_then(|p| p.currency.clone())
            .unwrap_or_else(|| self.cfg.currency.clone());
        let listing = Listing {
            sku,
            source_id: product.id,
            title: text::truncate(&title, self.cfg.max_title),
            description: product.description.as_deref().map(text::strip_html),
            price: product
                .price
                .map(|price| money::round(price.amount, &currency).to_string()),
            currency,
            quantity: clamp_quantity(product.quantity),
            weight_kg,
            dimensions_cm,
            attributes: product.extra,
        };
        Outcome::emit(event, &listing)
    }
}

/// Converts to a metric unit, rounded to 3 places; an unknown unit is a violation at `unit_path`.
fn metric(
    value: &Decimal,
    from: &str,
    to: &str,
    unit_path: &JsonPath,
    violations: &mut Violations,
) -> Option<String> {
    match units::convert(*value, from, to) {
        Ok(converted) => Some(money::round_to(converted, 3).normalize().to_string()),
        Err(err) => {
            violations.push(unit_path, "invalid-unit", err.to_string());
            None
        }
    }
}

/// Stock as a JSON number, never below zero; unknown stock counts as zero.
fn clamp_quantity(qty: Option<Decimal>) -> Value {
    money::json_number(qty.unwrap_or_default().max(Decimal::ZERO))
}

export_transform!(B2bPortal);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_clamped_at_zero() {
        assert_eq!(clamp_quantity(Some("-3".parse().unwrap())), Value::from(0));
        assert_eq!(clamp_quantity(Some("10.0".parse().unwrap())), Value::from(10));
        assert_eq!(
            clamp_quantity(Some("2.5".parse().unwrap())),
            serde_json::json!(2.5)
        );
        assert_eq!(clamp_quantity(None), Value::from(0));
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let err = sluice_guest::native::NativeRunner::<B2bPortal>::new(r#"{"max_title":10}"#)
            .err()
            .unwrap();
        assert!(err.contains("unknown field `max_title`"), "{err}");
    }
}
