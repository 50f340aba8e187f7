//! Canonical product to an Amazon SP-API listing: by default the body of
//! a Listings Items API 2021-08-01 `putListingsItem` request
//! (`productType`, `requirements`, `attributes`, as the
//! `ListingsItemPutRequest` model defines them), for a destination with
//! `method = "PUT"` and the URL `…/items/{sellerId}/{$.sku}`; with
//! `request = "feed-message"`, a `JSON_LISTINGS_FEED` message
//! (`operationType: UPDATE`, listings feed schema v2). Either way the
//! payload keeps `sku`, which the destination's URL and entity key read.
//!
//! Attributes are arrays of `{value, marketplace_id, language_tag}`, as
//! Amazon requires. The product-id type comes from a validated GTIN (UPC,
//! EAN or GTIN-14), prices are rounded to the currency's minor unit, stock
//! is clamped at zero, inactive products are dropped, and every attribute the configured product type
//! requires must be present: each missing one is a violation with its path.
//! A product that breaks a rule is left out (a contract 0.2 `partial`
//! outcome): of a product fanned out per variant, the good variants are
//! listed and only the bad one becomes a dead letter. The feed's `messageId` is assigned when messages are assembled into a feed.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sluice_guest::gtin::Gtin;
use sluice_guest::prelude::*;

/// The channel step's configuration.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// The marketplace, e.g. `ATVPDKIKX0DER` (amazon.com).
    pub marketplace_id: String,
    /// Language of texts, e.g. `en_US`.
    #[serde(default = "default_language")]
    pub language_tag: String,
    /// The Amazon product type listings are created as, e.g. `SHIRT`.
    pub product_type: String,
    /// Required attributes per product type: canonical field names
    /// (`brand`, `gtin`, `description`) or attribute names in `extra`.
    #[serde(default)]
    pub required_attributes: BTreeMap<String, Vec<String>>,
    /// The fulfillment channel for stock (`DEFAULT` is merchant-fulfilled).
    #[serde(default = "default_fulfillment")]
    pub fulfillment_channel: String,
    /// Currency when the product's price has none.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// What to emit: a `put` request body (the default) or a `feed-message`.
    #[serde(default)]
    pub request: Request,
}

/// The shape of the emitted listing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    /// The body of `PUT /listings/2021-08-01/items/{sellerId}/{sku}`.
    #[default]
    Put,
    /// A `JSON_LISTINGS_FEED` message with `operationType: UPDATE`.
    FeedMessage,
}

fn default_language() -> String {
    "en_US".into()
}
fn default_fulfillment() -> String {
    "DEFAULT".into()
}
fn default_currency() -> String {
    "USD".into()
}

/// The transform: its configuration is all its state.
pub struct AmazonListing {
    cfg: Config,
}

impl Transform for AmazonListing {
    type Config = Config;

    fn init(cfg: Config) -> Result<Self, InitError> {
        if cfg.marketplace_id.trim().is_empty() {
            return Err("config `marketplace-id` must not be empty".into());
        }
        Ok(Self { cfg })
    }

    fn product(&mut self, product: Product, event: &Event) -> Outcome {
        if product.active == Some(false) {
            return Outcome::skip("inactive products are not listed");
        }
        let root = JsonPath::root();
        let required = self
            .cfg
            .required_attributes
            .get(&self.cfg.product_type)
            .map_or(&[][..], Vec::as_slice);
        let mut violations = Violations::new();
        let sku = violations.require(product.sku.clone(), &root.key("sku"), "sku");
        let title = violations.require(product.title.clone(), &root.key("title"), "title");
        for name in required {
            if !has_attribute(&product, name) {
                violations.push(
                    &root.key(name.as_str()),
                    "required-attribute",
                    format!("product type `{}` requires `{name}`", self.cfg.product_type),
                );
            }
        }
        let gtin = match product.gtin.as_deref().map(Gtin::parse) {
            Some(Ok(gtin)) => Some(gtin),
            Some(Err(err)) => {
                violations.push(
                    &root.key("gtin"),
                    "invalid-gtin",
                    format!(
                        "`{}` is not a valid GTIN: {err}",
                        product.gtin.as_deref().unwrap_or_default()
                    ),
                );
                None
            }
            None => None,
        };
        // One variant that breaks a rule is left out; its siblings are listed.
        if let Err(left_out) = violations.into_left_out() {
            return left_out;
        }
        let (Some(sku), Some(title)) = (sku, title) else {
            unreachable!("violations were empty, so sku and title are present");
        };

        let mut attributes = serde_json::Map::new();
        attributes.insert("item_name".into(), self.text(&title));
        if let Some(brand) = &product.brand {
            attributes.insert("brand".into(), self.text(brand));
        }
        if let Some(description) = &product.description {
            attributes.insert(
                "product_description".into(),
                self.text(&text::strip_html(description)),
            );
        }
        if let Some(gtin) = &gtin {
            attributes.insert(
                "externally_assigned_product_identifier".into(),
                json!([{"type": gtin.id_type().as_str(), "value": gtin.as_str(), "marketplace_id": self.cfg.marketplace_id}]),
            );
        }
        if let Some(price) = &product.price {
            let currency = price
                .currency
                .clone()
                .unwrap_or_else(|| self.cfg.currency.clone());
            let amount = money::round(price.amount, &currency);
            attributes.insert(
                "purchasable_offer".into(),
                json!([{
                    "currency": currency,
                    "our_price": [{"schedule": [{"value_with_tax": money::json_number(amount)}]}],
                    "marketplace_id": self.cfg.marketplace_id,
                }]),
            );
        }
        let quantity = product.quantity.unwrap_or_default().max(Decimal::ZERO).floor();
        attributes.insert(
            "fulfillment_availability".into(),
            json!([{"fulfillment_channel_code": self.cfg.fulfillment_channel, "quantity": money::json_number(quantity)}]),
        );
        for name in required {
            if let Some(value) = product.extra.get(name).filter(|_| !attributes.contains_key(name)) {
                attributes.insert(name.clone(), self.value(value.clone()));
            }
        }
        let mut listing = json!({
            "sku": sku,
            "productType": self.cfg.product_type,
            "requirements": "LISTING",
            "attributes": attributes,
        });
        if self.cfg.request == Request::FeedMessage {
            listing["operationType"] = "UPDATE".into();
        }
        Outcome::emit(event, &listing)
    }
}

impl AmazonListing {
    /// A text attribute: `[{value, language_tag, marketplace_id}]`.
    fn text(&self, value: &str) -> Value {
        json!([{"value": value, "language_tag": self.cfg.language_tag, "marketplace_id": self.cfg.marketplace_id}])
    }

    /// Any other attribute: `[{value, marketplace_id}]`.
    fn value(&self, value: Value) -> Value {
        json!([{"value": value, "marketplace_id": self.cfg.marketplace_id}])
    }
}

/// Whether the product has a canonical field or an `extra` attribute of that name.
fn has_attribute(product: &Product, name: &str) -> bool {
    let canonical = match name {
        "sku" => product.sku.is_some(),
        "title" => product.title.is_some(),
        "description" => product.description.is_some(),
        "brand" => product.brand.is_some(),
        "gtin" => product.gtin.is_some(),
        "price" => product.price.is_some(),
        "weight" => product.weight.is_some(),
        "dimensions" => product.dimensions.is_some(),
        "images" => !product.images.is_empty(),
        _ => false,
    };
    canonical || product.extra.get(name).is_some_and(|v| !v.is_null() && v != "")
}

export_transform!(AmazonListing);
