//! The canonical retail model every source adapter produces and every
//! channel transform consumes.
//!
//! Only the fields destinations commonly need are typed; everything else the
//! source sent is kept in `extra`, so nothing is lost on the way through.
//! Ids are strings: 64-bit ids (Shopify's) must never pass through a float.

use std::fmt;

use rust_decimal::Decimal;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A product (or one variant of one), independent of where it came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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

/// A map key of a canonical type: one of its fields, or an attribute for `extra`.
enum Key {
    Field(&'static str),
    Other(String),
}

/// Reads a key, copying it only when it is not one of `fields`.
struct KeySeed(&'static [&'static str]);

impl KeySeed {
    fn key(&self, name: &str) -> Option<Key> {
        self.0
            .iter()
            .find(|field| **field == name)
            .map(|field| Key::Field(field))
    }
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
        Ok(self.key(name).unwrap_or_else(|| Key::Other(name.to_string())))
    }
    fn visit_string<E: de::Error>(self, name: String) -> Result<Key, E> {
        Ok(self.key(&name).unwrap_or(Key::Other(name)))
    }
}

/// `Deserialize` for a canonical type whose unnamed attributes go to
/// `extra`. It does what `#[serde(flatten)]` does (same fields, same errors,
/// a repeated field refused, a repeated attribute's last value kept) without
/// first buffering every attribute in serde's private `Content` tree: that
/// buffer was a tenth of a transform's time under wasmtime.
macro_rules! deserialize_with_extra {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Fields;
                impl<'de> Visitor<'de> for Fields {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("struct ", stringify!($ty)))
                    }
                    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<$ty, M::Error> {
                        $(let mut $field = None;)*
                        let mut extra = Map::new();
                        while let Some(key) = map.next_key_seed(KeySeed(&[$(stringify!($field)),*]))? {
                            match key {
                                $(Key::Field(stringify!($field)) => {
                                    if $field.is_some() {
                                        return Err(de::Error::duplicate_field(stringify!($field)));
                                    }
                                    $field = Some(map.next_value()?);
                                })*
                                Key::Field(_) => unreachable!("KeySeed returns only listed fields"),
                                Key::Other(name) => {
                                    extra.insert(name, map.next_value()?);
                                }
                            }
                        }
                        Ok($ty { $($field: $field.unwrap_or_default(),)* extra })
                    }
                }
                deserializer.deserialize_map(Fields)
            }
        }
    };
}

deserialize_with_extra!(Product {
    id,
    group_id,
    sku,
    title,
    description,
    brand,
    gtin,
    active,
    price,
    quantity,
    weight,
    dimensions,
    images,
    categories,
    variants,
});
deserialize_with_extra!(InventoryEvent {
    sku,
    item_id,
    location,
    available,
    updated_at,
});

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

    /// The `Violation` a payload gets, as the SDK reports it.
    fn violation<T: serde::de::DeserializeOwned + fmt::Debug>(payload: &str) -> (String, String) {
        let event = crate::Event {
            id: "e".into(),
            kind: crate::EventKind::Product,
            tenant: "t".into(),
            channel: "c".into(),
            source: "s".into(),
            correlation_id: "e".into(),
            payload: payload.into(),
            topic: String::new(),
            headers: Vec::new(),
            delivery: None,
        };
        let violation = event.payload_as::<T>().unwrap_err();
        (violation.path, violation.message)
    }

    #[test]
    fn fields_and_attributes_read_as_flatten_would() {
        let json = r#"{"s\u006bu":"A-1","title":null,"x":1,"x":2,"variants":[{"sku":"A-1-S","y":true}]}"#;
        let product: Product = serde_json::from_str(json).unwrap();
        assert_eq!(
            product.sku.as_deref(),
            Some("A-1"),
            "an escaped field name is the field"
        );
        assert_eq!(product.title, None);
        assert_eq!(product.extra["x"], 2, "a repeated attribute keeps its last value");
        assert_eq!(product.variants[0].extra["y"], true);
        let from_value: Product = serde_json::from_value(serde_json::from_str(json).unwrap()).unwrap();
        assert_eq!(from_value, product);
        let stock: InventoryEvent =
            serde_json::from_str(r#"{"sku":"A","available":"3","bin":"B-7"}"#).unwrap();
        assert_eq!(
            (stock.available, &stock.extra["bin"]),
            (Some(Decimal::from(3)), &Value::from("B-7"))
        );
    }

    #[test]
    fn bad_fields_are_named_by_path() {
        assert_eq!(
            violation::<Product>(r#"{"sku":"A","sku":"B"}"#),
            ("$".into(), "duplicate field `sku`".into())
        );
        assert_eq!(
            violation::<Product>(r#"{"variants":[{"price":{"amount":"x"}}]}"#).0,
            "$['variants'][0]['price']['amount']"
        );
        assert_eq!(
            violation::<Product>(r#"{"images":null}"#),
            (
                "$['images']".into(),
                "invalid type: null, expected a sequence".into()
            )
        );
        assert_eq!(
            violation::<Product>("[1]"),
            (
                "$".into(),
                "invalid type: sequence, expected struct Product".into()
            )
        );
        assert_eq!(
            violation::<InventoryEvent>(r#"{"location":7}"#),
            (
                "$['location']".into(),
                "invalid type: integer `7`, expected a string".into()
            )
        );
    }

    #[test]
    fn prices_stay_exact_from_numbers_and_strings() {
        let from_number: Money = serde_json::from_str(r#"{"amount":21.99}"#).unwrap();
        let from_string: Money = serde_json::from_str(r#"{"amount":"21.99"}"#).unwrap();
        assert_eq!(from_number.amount.to_string(), "21.99");
        assert_eq!(from_number, from_string);
    }
}
