//! Exact unit conversion for mass, length and volume.
//!
//! Factors are the exact legal definitions (1 lb = 0.45359237 kg,
//! 1 in = 2.54 cm, 1 US gal = 3.785411784 l), applied to exact decimals, so
//! converting never adds float noise. Round the result yourself with
//! [`Decimal::round_dp`].
//!
//! ```
//! use sluice_guest::{Decimal, units};
//! let kg = units::convert(Decimal::from(2), "lbs", "kg").unwrap();
//! assert_eq!(kg.to_string(), "0.90718474");
//! ```

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

/// What a unit measures. Only units of the same dimension convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    /// Weight; base unit gram.
    Mass,
    /// Distance; base unit millimetre.
    Length,
    /// Capacity; base unit millilitre.
    Volume,
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dimension::Mass => "mass",
            Dimension::Length => "length",
            Dimension::Volume => "volume",
        })
    }
}

/// A unit Sluice knows, with its exact size in the dimension's base unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// The canonical symbol (`kg`, `lb`, `in`, `fl oz`, …).
    pub symbol: &'static str,
    /// What it measures.
    pub dimension: Dimension,
    /// Its size in the base unit (g, mm or ml), as an exact decimal text.
    base: &'static str,
}

/// Every unit with the spellings real feeds use for it (compared case-insensitively).
const UNITS: &[(Unit, &[&str])] = &[
    (
        unit("mg", Dimension::Mass, "0.001"),
        &["mg", "milligram", "milligrams"],
    ),
    (
        unit("g", Dimension::Mass, "1"),
        &["g", "gr", "gram", "grams", "gramme", "grammes"],
    ),
    (
        unit("kg", Dimension::Mass, "1000"),
        &["kg", "kgs", "kilo", "kilos", "kilogram", "kilograms"],
    ),
    (
        unit("oz", Dimension::Mass, "28.349523125"),
        &["oz", "ozs", "ounce", "ounces"],
    ),
    (
        unit("lb", Dimension::Mass, "453.59237"),
        &["lb", "lbs", "lb.", "lbs.", "pound", "pounds", "#"],
    ),
    (
        unit("mm", Dimension::Length, "1"),
        &["mm", "millimeter", "millimeters", "millimetre", "millimetres"],
    ),
    (
        unit("cm", Dimension::Length, "10"),
        &[
            "cm",
            "cms",
            "centimeter",
            "centimeters",
            "centimetre",
            "centimetres",
        ],
    ),
    (
        unit("m", Dimension::Length, "1000"),
        &["m", "meter", "meters", "metre", "metres"],
    ),
    (
        unit("in", Dimension::Length, "25.4"),
        &["in", "in.", "inch", "inches", "\"", "″"],
    ),
    (
        unit("ft", Dimension::Length, "304.8"),
        &["ft", "ft.", "foot", "feet", "'", "′"],
    ),
    (
        unit("ml", Dimension::Volume, "1"),
        &["ml", "millilitre", "milliliter", "millilitres", "milliliters"],
    ),
    (
        unit("l", Dimension::Volume, "1000"),
        &["l", "lt", "ltr", "litre", "liter", "litres", "liters"],
    ),
    (
        unit("fl oz", Dimension::Volume, "29.5735295625"),
        &["fl oz", "floz", "fl. oz.", "fl.oz", "fluid ounce", "fluid ounces"],
    ),
    (
        unit("gal", Dimension::Volume, "3785.411784"),
        &["gal", "gallon", "gallons"],
    ),
];

const fn unit(symbol: &'static str, dimension: Dimension, base: &'static str) -> Unit {
    Unit {
        symbol,
        dimension,
        base,
    }
}

/// Why a conversion could not be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitError {
    /// The unit's spelling is not one Sluice knows.
    Unknown(String),
    /// The two units measure different things (for example kg to cm).
    Mismatch {
        /// The unit converted from.
        from: &'static str,
        /// The unit converted to.
        to: &'static str,
    },
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitError::Unknown(unit) => write!(f, "unknown unit `{unit}`"),
            UnitError::Mismatch { from, to } => write!(f, "cannot convert `{from}` to `{to}`"),
        }
    }
}

impl std::error::Error for UnitError {}

impl Unit {
    /// Finds a unit by any of its spellings (`"LBS"`, `"pounds"`, `"\""`).
    pub fn parse(spelling: &str) -> Result<Unit, UnitError> {
        let trimmed = spelling.trim();
        // Spellings are lower case; ASCII text (nearly all) is compared
        // without building a lower-cased copy.
        let lowered;
        let wanted = if trimmed.is_ascii() {
            trimmed
        } else {
            lowered = trimmed.to_lowercase();
            &lowered
        };
        UNITS
            .iter()
            .find(|(_, spellings)| spellings.iter().any(|s| s.eq_ignore_ascii_case(wanted)))
            .map(|(unit, _)| *unit)
            .ok_or_else(|| UnitError::Unknown(spelling.to_string()))
    }

    fn base_factor(&self) -> Decimal {
        Decimal::from_str(self.base).expect("unit factors are valid decimals")
    }
}

/// Converts `value` from one unit to another of the same dimension, exactly.
pub fn convert(value: Decimal, from: &str, to: &str) -> Result<Decimal, UnitError> {
    let (from, to) = (Unit::parse(from)?, Unit::parse(to)?);
    if from.dimension != to.dimension {
        return Err(UnitError::Mismatch {
            from: from.symbol,
            to: to.symbol,
        });
    }
    if from == to {
        return Ok(value);
    }
    Ok((value * from.base_factor() / to.base_factor()).normalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    #[test]
    fn spellings_are_lower_case_and_found_in_any_case() {
        for (unit, spellings) in UNITS.iter() {
            for spelling in spellings.iter() {
                assert_eq!(spelling.to_lowercase(), *spelling, "parse compares lower case");
                assert_eq!(Unit::parse(&spelling.to_uppercase()).unwrap(), *unit);
            }
        }
        assert_eq!(Unit::parse(" LBS ").unwrap().symbol, "lb");
    }

    #[test]
    fn pounds_and_ounces_to_kilograms_are_exact() {
        assert_eq!(convert(d("1"), "lb", "kg").unwrap(), d("0.45359237"));
        assert_eq!(convert(d("16"), "oz", "lb").unwrap(), d("1"));
        assert_eq!(convert(d("8"), "ounces", "kg").unwrap(), d("0.226796185"));
    }

    #[test]
    fn inches_to_centimetres_are_exact() {
        assert_eq!(convert(d("10"), "\"", "cm").unwrap(), d("25.4"));
        assert_eq!(convert(d("1"), "FT", "cm").unwrap(), d("30.48"));
    }

    #[test]
    fn volumes_convert() {
        assert_eq!(convert(d("1"), "gal", "l").unwrap(), d("3.785411784"));
        assert_eq!(convert(d("2"), "fl oz", "ml").unwrap(), d("59.147059125"));
    }

    #[test]
    fn real_feed_spellings_are_accepted() {
        for spelling in ["lbs", "LB", "Pounds", " lbs. "] {
            assert_eq!(Unit::parse(spelling).unwrap().symbol, "lb", "{spelling}");
        }
        assert_eq!(Unit::parse("inch").unwrap().symbol, "in");
    }

    #[test]
    fn unknown_units_and_mismatches_are_clear_errors() {
        assert_eq!(
            convert(d("1"), "stone", "kg").unwrap_err().to_string(),
            "unknown unit `stone`"
        );
        assert_eq!(
            convert(d("1"), "kg", "cm").unwrap_err().to_string(),
            "cannot convert `kg` to `cm`"
        );
    }
}
