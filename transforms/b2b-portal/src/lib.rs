//! B2B portal listing from a Magento 2 REST product.
//!
//! The portal wants metric units only, titles of at most `max-title`
//! characters ending in "…", plain-text descriptions, prices as exact
//! decimals with two places, and never a negative stock. Products without a
//! SKU or a weight are rejected with the path of the missing field; disabled
//! products and configurable parents (whose simple children are listed
//! instead) are dropped.

use serde_json::{Map, Value};
use sluice_guest::Violations;
use sluice_guest::prelude::*;
use sluice_guest::rust_decimal::RoundingStrategy;

/// The channel step's configuration.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Longest title the portal accepts, in characters.
    #[serde(default = "default_max_title")]
    pub max_title: usize,
    /// The Magento store's weight unit (`lbs` or `kgs`).
    #[serde(default = "default_weight_unit")]
    pub weight_unit: String,
    /// The unit of the `ts_dimensions_*` attributes.
    #[serde(default = "default_dimension_unit")]
    pub dimension_unit: String,
    /// The store's currency, ISO 4217.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// List disabled products too, instead of dropping them.
    #[serde(default)]
    pub include_disabled: bool,
}

fn default_max_title() -> usize {
    80
}
fn default_weight_unit() -> String {
    "lbs".into()
}
fn default_dimension_unit() -> String {
    "in".into()
}
fn default_currency() -> String {
    "USD".into()
}

/// The part of a Magento product the portal needs; the rest stays in `extra`.
#[derive(Debug, Deserialize)]
struct MagentoProduct {
    id: Option<Value>,
    sku: Option<String>,
    name: Option<String>,
    price: Option<Decimal>,
    status: Option<i64>,
    type_id: Option<String>,
    weight: Option<Decimal>,
    #[serde(default)]
    extension_attributes: ExtensionAttributes,
    #[serde(default)]
    custom_attributes: Vec<CustomAttribute>,
}

#[derive(Debug, Default, Deserialize)]
struct ExtensionAttributes {
    stock_item: Option<StockItem>,
}

#[derive(Debug, Deserialize)]
struct StockItem {
    qty: Option<Decimal>,
}

#[derive(Debug, Deserialize)]
struct CustomAttribute {
    attribute_code: String,
    value: Value,
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

/// The transform itself: its configuration is all its state.
pub struct B2bPortal {
    cfg: Config,
}

impl Transform for B2bPortal {
    type Config = Config;

    fn init(cfg: Config) -> Result<Self, InitError> {
        for (field, unit) in [
            ("weight-unit", &cfg.weight_unit),
            ("dimension-unit", &cfg.dimension_unit),
        ] {
            units::Unit::parse(unit).map_err(|err| format!("config `{field}`: {err}"))?;
        }
        if cfg.max_title == 0 {
            return Err("config `max-title` must be at least 1".into());
        }
        Ok(Self { cfg })
    }

    fn event(&mut self, event: Event) -> Outcome {
        if event.kind != EventKind::Product {
            return Outcome::pass(&event);
        }
        match event.payload_as::<MagentoProduct>() {
            Ok(product) => self.listing(product, &event),
            Err(violation) => Outcome::Reject(vec![violation]),
        }
    }
}

impl B2bPortal {
    fn listing(&self, product: MagentoProduct, event: &Event) -> Outcome {
        let root = JsonPath::root();
        if product.type_id.as_deref() == Some("configurable") {
            return Outcome::skip("configurable parent: its simple products are listed instead");
        }
        if product.status == Some(2) && !self.cfg.include_disabled {
            return Outcome::skip("product is disabled in Magento");
        }

        let mut violations = Violations::new();
        let sku = product.sku.filter(|sku| !sku.trim().is_empty());
        let sku = violations.require(sku, &root.key("sku"), "sku");
        let weight = violations.require(product.weight, &root.key("weight"), "weight");
        let title = violations.require(product.name, &root.key("name"), "name");

        let mut attributes = Map::new();
        let mut description = None;
        let mut dimensions = [None, None, None];
        for (index, attribute) in product.custom_attributes.into_iter().enumerate() {
            let path = root.key("custom_attributes").index(index).key("value");
            let slot = match attribute.attribute_code.as_str() {
                "description" => {
                    description = attribute.value.as_str().map(text::strip_html);
                    continue;
                }
                "ts_dimensions_length" => 0,
                "ts_dimensions_width" => 1,
                "ts_dimensions_height" => 2,
                _ => {
                    attributes.insert(attribute.attribute_code, attribute.value);
                    continue;
                }
            };
            match decimal(&attribute.value) {
                Some(value) => dimensions[slot] = Some(value),
                None => violations.push(
                    &path,
                    "invalid-number",
                    format!("`{}` must be a number", attribute.attribute_code),
                ),
            }
        }
        if let Err(rejection) = violations.into_result() {
            return rejection;
        }
        let (Some(sku), Some(weight), Some(title)) = (sku, weight, title) else {
            unreachable!("violations were empty, so every required field is present");
        };

        let listing = Listing {
            sku,
            source_id: product.id.map(|id| id.to_string().trim_matches('"').to_string()),
            title: text::truncate(&title, self.cfg.max_title),
            description,
            price: product.price.map(|price| money(price).to_string()),
            currency: self.cfg.currency.clone(),
            quantity: clamp_quantity(product.extension_attributes.stock_item.and_then(|s| s.qty)),
            weight_kg: self.metric(weight, &self.cfg.weight_unit, "kg").to_string(),
            dimensions_cm: match dimensions {
                [Some(length), Some(width), Some(height)] => Some(DimensionsCm {
                    length: self.metric(length, &self.cfg.dimension_unit, "cm").to_string(),
                    width: self.metric(width, &self.cfg.dimension_unit, "cm").to_string(),
                    height: self.metric(height, &self.cfg.dimension_unit, "cm").to_string(),
                }),
                _ => None,
            },
            attributes,
        };
        Outcome::emit(event, &listing)
    }

    /// Converts to a metric unit, rounded to 3 places. Units were checked in `init`.
    fn metric(&self, value: Decimal, from: &str, to: &str) -> Decimal {
        units::convert(value, from, to)
            .expect("units were validated in init")
            .round_dp_with_strategy(3, RoundingStrategy::MidpointAwayFromZero)
            .normalize()
    }
}

/// A price with exactly two decimal places, rounded half away from zero.
fn money(price: Decimal) -> Decimal {
    let mut rounded = price.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(2);
    rounded
}

/// Stock as a JSON number, never below zero; unknown stock counts as zero.
fn clamp_quantity(qty: Option<Decimal>) -> Value {
    let qty = qty.unwrap_or_default().max(Decimal::ZERO).normalize();
    if qty.fract().is_zero() {
        Value::from(i64::try_from(qty.mantissa()).unwrap_or(i64::MAX))
    } else {
        serde_json::from_str(&qty.to_string()).unwrap_or(Value::Null)
    }
}

/// A Magento attribute value (a number or a numeric string) as a decimal.
fn decimal(value: &Value) -> Option<Decimal> {
    match value {
        Value::String(text) => text.trim().parse().ok(),
        Value::Number(number) => number.to_string().parse().ok(),
        _ => None,
    }
}

export_transform!(B2bPortal);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_keep_two_exact_places() {
        assert_eq!(money("19.99".parse().unwrap()).to_string(), "19.99");
        assert_eq!(money("25".parse().unwrap()).to_string(), "25.00");
        assert_eq!(money("0.125".parse().unwrap()).to_string(), "0.13");
    }

    #[test]
    fn quantities_are_clamped_at_zero() {
        assert_eq!(clamp_quantity(Some("-3".parse().unwrap())), Value::from(0));
        assert_eq!(clamp_quantity(Some("10.0".parse().unwrap())), Value::from(10));
        assert_eq!(clamp_quantity(None), Value::from(0));
    }

    #[test]
    fn bad_units_in_config_name_the_field() {
        let err = sluice_guest::native::NativeRunner::<B2bPortal>::new(r#"{"weight-unit":"stone"}"#)
            .err()
            .unwrap();
        assert_eq!(err, "config `weight-unit`: unknown unit `stone`");
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let err = sluice_guest::native::NativeRunner::<B2bPortal>::new(r#"{"max_title":10}"#)
            .err()
            .unwrap();
        assert!(err.contains("unknown field `max_title`"), "{err}");
    }
}
