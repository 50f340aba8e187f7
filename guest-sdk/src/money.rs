//! Exact money: currency-aware rounding with no float drift.
//!
//! ```
//! use sluice_guest::{Decimal, money};
//! let price: Decimal = "21.985".parse().unwrap();
//! assert_eq!(money::round(price, "USD").to_string(), "21.99");
//! assert_eq!(money::round(price, "JPY").to_string(), "22");
//! ```

use rust_decimal::{Decimal, RoundingStrategy};

/// Currencies whose minor unit is not the cents of most currencies (ISO 4217).
const MINOR_UNITS: &[(&str, u32)] = &[
    ("BHD", 3),
    ("BIF", 0),
    ("CLF", 4),
    ("CLP", 0),
    ("DJF", 0),
    ("GNF", 0),
    ("IQD", 3),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KMF", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("LYD", 3),
    ("OMR", 3),
    ("PYG", 0),
    ("RWF", 0),
    ("TND", 3),
    ("UGX", 0),
    ("UYI", 0),
    ("UYW", 4),
    ("VND", 0),
    ("VUV", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("XPF", 0),
];

/// How many decimal places `currency` (ISO 4217, any case) uses; 2 when unknown.
pub fn minor_units(currency: &str) -> u32 {
    MINOR_UNITS
        .iter()
        .find(|(code, _)| code.eq_ignore_ascii_case(currency))
        .map_or(2, |(_, places)| *places)
}

/// Rounds half away from zero to the currency's minor unit and always shows
/// that many places (`25` USD becomes `25.00`).
pub fn round(amount: Decimal, currency: &str) -> Decimal {
    round_to(amount, minor_units(currency))
}

/// Rounds half away from zero to `places` and shows exactly that many places.
pub fn round_to(amount: Decimal, places: u32) -> Decimal {
    let mut rounded = amount.round_dp_with_strategy(places, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(places);
    rounded
}

/// An amount given in minor units (Square's `{"amount": 1999}` cents) as a
/// decimal in major units, exactly.
pub fn from_minor_units(minor: Decimal, currency: &str) -> Decimal {
    let mut amount = minor;
    // Cannot fail for amounts of money: scales stay far below the maximum of 28.
    let _ = amount.set_scale(amount.scale() + minor_units(currency));
    amount
}

/// A JSON number or numeric string as an exact decimal (`21.99`, `"21.99"`,
/// `"1e-3"`); `None` for anything else, including `""`.
pub fn decimal_from_json(value: &serde_json::Value) -> Option<Decimal> {
    let text = match value {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.trim().to_string(),
        _ => return None,
    };
    text.parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(&text))
        .ok()
}

/// A decimal as a JSON number (destinations that want numbers, not
/// strings): an integer when whole, otherwise the shortest float that reads
/// back as the same decimal (`21.99`, never `21.990000000000002`).
pub fn json_number(value: Decimal) -> serde_json::Value {
    let value = value.normalize();
    if value.fract().is_zero()
        && let Some(whole) = rust_decimal::prelude::ToPrimitive::to_i64(&value)
    {
        return serde_json::Value::from(whole);
    }
    serde_json::from_str(&value.to_string()).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    #[test]
    fn strings_and_numbers_stay_exact() {
        let from_string: Decimal = serde_json::from_str("\"21.99\"").unwrap();
        let from_number: Decimal = serde_json::from_str("21.99").unwrap();
        assert_eq!(round(from_string, "USD").to_string(), "21.99");
        assert_eq!(round(from_number, "USD").to_string(), "21.99");
    }

    #[test]
    fn rounding_follows_the_currency() {
        assert_eq!(round(d("25"), "usd").to_string(), "25.00");
        assert_eq!(round(d("0.125"), "EUR").to_string(), "0.13");
        assert_eq!(round(d("-0.125"), "EUR").to_string(), "-0.13");
        assert_eq!(round(d("1234.5"), "JPY").to_string(), "1235");
        assert_eq!(round(d("1.2345"), "KWD").to_string(), "1.235");
    }

    #[test]
    fn json_numbers_and_strings_parse_exactly() {
        use serde_json::json;
        assert_eq!(decimal_from_json(&json!(21.99)).unwrap().to_string(), "21.99");
        assert_eq!(decimal_from_json(&json!(" 21.99 ")).unwrap().to_string(), "21.99");
        assert_eq!(decimal_from_json(&json!(1e-3)).unwrap().to_string(), "0.001");
        assert_eq!(decimal_from_json(&json!("")), None);
        assert_eq!(decimal_from_json(&json!(true)), None);
    }

    #[test]
    fn decimals_become_plain_json_numbers() {
        use serde_json::json;
        assert_eq!(json_number(d("10.00")), json!(10));
        assert_eq!(json_number(d("21.99")), json!(21.99));
        assert_eq!(json_number(d("-3")), json!(-3));
    }

    #[test]
    fn minor_units_convert_exactly() {
        assert_eq!(from_minor_units(d("1999"), "USD").to_string(), "19.99");
        assert_eq!(from_minor_units(d("150"), "usd").to_string(), "1.50");
        assert_eq!(from_minor_units(d("500"), "JPY").to_string(), "500");
    }
}
