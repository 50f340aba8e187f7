//! The canonical retail model every source adapter produces and every
//! channel transform consumes.
//!
//! Only the fields destinations commonly need are typed; everything else the
//! source sent is kept in `extra`, so nothing is lost on the way through.
//! Ids are strings: 64-bit ids (Shopify's) must never pass through a float.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A product (or one variant of one), independent of where it came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Product {
    /// The source system's id for the product, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The source's id of the product this one is a variant of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Stock keeping unit: the key destinations use to match listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// The product's name or title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The long description, possibly HTML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The brand or manufacturer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    /// A GTIN (UPC, EAN, ISBN) as digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtin: Option<String>,
    /// Whether the source sells it now (`false` for drafts, disabled or deleted products).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// The selling price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Money>,
    /// Units available to sell, if the source says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<Decimal>,
    /// Shipping weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Measure>,
    /// Package dimensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<Dimensions>,
    /// Image URLs, main image first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// Category names or ids, as the source gives them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// Variants (sizes, colours) of this product.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<Product>,
    /// Every attribute not named above, exactly as the source sent it.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An amount of money in one currency, exact (never a float).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Money {
    /// The amount, exactly as the source gave it (`"21.99"` or `21.99`).
    pub amount: Decimal,
    /// ISO 4217 code, when the source says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// A value with a unit, such as a weight (`{"value": "1.5", "unit": "lb"}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    /// The number.
    pub value: Decimal,
    /// The unit as the source wrote it; see [`crate::units`] for the accepted spellings.
    pub unit: String,
}

/// Length, width and height in one unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dimensions {
    /// Longest side.
    pub length: Decimal,
    /// Second side.
    pub width: Decimal,
    /// Third side.
    pub height: Decimal,
    /// The unit of all three.
    pub unit: String,
}

/// A stock level at one location.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InventoryEvent {
    /// The SKU whose stock changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// The source system's inventory item id, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    /// The source system's location (warehouse, store) id, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Units available at the location after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<Decimal>,
    /// When the source recorded the change (RFC 3339), if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// Every attribute not named above, exactly as the source sent it.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_attributes_survive_a_round_trip() {
        let json = r#"{"sku":"A-1","price":{"amount":"21.99"},"color":"red","nested":{"x":[1,2]}}"#;
        let product: Product = serde_json::from_str(json).unwrap();
        assert_eq!(product.extra["color"], "red");
        let back: Value = serde_json::to_value(&product).unwrap();
        let original: Value = serde_json::from_str(json).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn prices_stay_exact_from_numbers_and_strings() {
        let from_number: Money = serde_json::from_str(r#"{"amount":21.99}"#).unwrap();
        let from_string: Money = serde_json::from_str(r#"{"amount":"21.99"}"#).unwrap();
        assert_eq!(from_number.amount.to_string(), "21.99");
        assert_eq!(from_number, from_string);
    }
}
