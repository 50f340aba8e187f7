//! GTINs (UPC, EAN, GTIN-14): check-digit validation, UPC-A to EAN-13, and
//! the product-id type a marketplace wants.
//!
//! ```
//! use sluice_guest::gtin::{Gtin, IdType};
//! let upc = Gtin::parse("036000291452").unwrap();
//! assert_eq!(upc.id_type(), IdType::Upc);
//! assert_eq!(upc.to_ean13().unwrap(), "0036000291452");
//! assert!(Gtin::parse("036000291453").is_err());
//! ```

use std::fmt;

/// The kind of identifier, by length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdType {
    /// EAN-8 / GTIN-8.
    Ean8,
    /// UPC-A / GTIN-12.
    Upc,
    /// EAN-13 / GTIN-13 (ISBN-13 included).
    Ean,
    /// GTIN-14 (cases and pallets).
    Gtin14,
}

impl IdType {
    /// The name marketplaces use (`upc`, `ean`, `gtin`), lower case.
    pub fn as_str(self) -> &'static str {
        match self {
            IdType::Upc => "upc",
            IdType::Ean8 | IdType::Ean => "ean",
            IdType::Gtin14 => "gtin",
        }
    }
}

/// A validated GTIN: digits only, a known length, a correct check digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gtin(String);

/// Why a text is not a GTIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GtinError {
    /// Something other than digits (spaces and dashes are ignored).
    NotDigits,
    /// Not 8, 12, 13 or 14 digits.
    Length(usize),
    /// The last digit does not match the others.
    CheckDigit {
        /// The check digit the others call for.
        expected: u32,
        /// The check digit given.
        found: u32,
    },
}

impl fmt::Display for GtinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GtinError::NotDigits => f.write_str("a GTIN has only digits"),
            GtinError::Length(n) => write!(f, "a GTIN has 8, 12, 13 or 14 digits, not {n}"),
            GtinError::CheckDigit { expected, found } => {
                write!(f, "check digit is {found} but should be {expected}")
            }
        }
    }
}

impl std::error::Error for GtinError {}

impl Gtin {
    /// Validates `text`; spaces and dashes are ignored.
    pub fn parse(text: &str) -> Result<Gtin, GtinError> {
        let digits: String = text.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(GtinError::NotDigits);
        }
        if !matches!(digits.len(), 8 | 12 | 13 | 14) {
            return Err(GtinError::Length(digits.len()));
        }
        let (body, check) = digits.split_at(digits.len() - 1);
        let expected = check_digit(body);
        let found = u32::from(check.as_bytes()[0] - b'0');
        if expected != found {
            return Err(GtinError::CheckDigit { expected, found });
        }
        Ok(Gtin(digits))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Which kind of identifier this is.
    pub fn id_type(&self) -> IdType {
        match self.0.len() {
            8 => IdType::Ean8,
            12 => IdType::Upc,
            13 => IdType::Ean,
            _ => IdType::Gtin14,
        }
    }

    /// The EAN-13 form of a UPC-A (a leading zero) or an EAN-13; `None` for other lengths.
    pub fn to_ean13(&self) -> Option<String> {
        match self.id_type() {
            IdType::Upc => Some(format!("0{}", self.0)),
            IdType::Ean => Some(self.0.clone()),
            _ => None,
        }
    }
}

/// The GS1 mod-10 check digit for `body` (all digits but the last).
fn check_digit(body: &str) -> u32 {
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 3 } else { 1 })
        .sum();
    (10 - sum % 10) % 10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_gtins_of_every_length() {
        assert_eq!(Gtin::parse("96385074").unwrap().id_type(), IdType::Ean8);
        assert_eq!(Gtin::parse("036000291452").unwrap().id_type(), IdType::Upc);
        assert_eq!(Gtin::parse("4006381333931").unwrap().id_type(), IdType::Ean);
        assert_eq!(Gtin::parse("9780306406157").unwrap().id_type(), IdType::Ean);
        assert_eq!(Gtin::parse("10012345678902").unwrap().id_type(), IdType::Gtin14);
        assert_eq!(Gtin::parse("0360-0029 1452").unwrap().as_str(), "036000291452");
    }

    #[test]
    fn wrong_check_digits_say_which_digit_was_expected() {
        assert_eq!(
            Gtin::parse("4006381333932").unwrap_err(),
            GtinError::CheckDigit {
                expected: 1,
                found: 2
            }
        );
    }

    #[test]
    fn other_texts_are_refused() {
        assert_eq!(Gtin::parse("12345").unwrap_err(), GtinError::Length(5));
        assert_eq!(Gtin::parse("03600029145X").unwrap_err(), GtinError::NotDigits);
        assert_eq!(Gtin::parse("").unwrap_err(), GtinError::NotDigits);
    }

    #[test]
    fn upc_converts_to_ean13() {
        let upc = Gtin::parse("036000291452").unwrap();
        let ean = upc.to_ean13().unwrap();
        assert_eq!(ean, "0036000291452");
        assert_eq!(Gtin::parse(&ean).unwrap().id_type(), IdType::Ean);
    }
}
