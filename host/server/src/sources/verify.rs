//! A webhook's signature, checked over the raw body as its platform
//! documents it. Every comparison is constant-time, the work per request
//! is bounded (one HMAC per secret, however many signatures a header
//! lists), and a refusal's reason is counted but never told to the caller.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Most signatures of one `webhook-signature` header that are looked at.
const MAX_SIGNATURES: usize = 8;
/// Longest signature header read, in bytes.
const MAX_SIGNATURE_HEADER: usize = 1024;
/// Shortest secret (after decoding) a source may have.
pub const MIN_SECRET_BYTES: usize = 16;
/// Widest Standard Webhooks tolerance.
const MAX_TOLERANCE: Duration = Duration::from_secs(24 * 3600);

/// How a platform signs its deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// `X-Shopify-Hmac-Sha256`: base64 HMAC-SHA256 of the body (shopify.dev, "Deliver webhooks through HTTPS", verify the webhook).
    Shopify,
    /// `X-WC-Webhook-Signature`: base64 HMAC-SHA256 of the body (WooCommerce REST API docs, "Webhooks").
    WooCommerce,
    /// `x-square-hmacsha256-signature`: base64 HMAC-SHA256 of the
    /// notification URL followed by the body (Square developer docs,
    /// "Verify and validate an event notification").
    Square {
        /// The notification URL exactly as configured at Square.
        notification_url: String,
    },
    /// Standard Webhooks v1: `webhook-signature: v1,<base64 HMAC-SHA256 of
    /// "{webhook-id}.{webhook-timestamp}.{body}">`, a space-separated list;
    /// the secret is `whsec_` and base64 (standardwebhooks.com, spec v1).
    StandardWebhooks {
        /// How far `webhook-timestamp` may be from now.
        tolerance: Duration,
    },
    /// An HMAC in a header of the tenant's choosing.
    Hmac {
        /// The header (lower case).
        header: String,
        /// Text before the signature in the header (`sha256=`), if any.
        prefix: String,
        /// Hex or base64.
        encoding: Encoding,
    },
    /// A static secret in a header, compared in constant time.
    SharedSecret {
        /// The header (lower case).
        header: String,
    },
}

/// How an HMAC is written in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Lower or upper case hex.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// Why a delivery was refused: counted per source, never answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No signature (or timestamp, or id) where the scheme needs one.
    Missing,
    /// A signature that cannot be read.
    Malformed,
    /// A signature that does not match any of the source's secrets.
    Mismatch,
    /// A timestamp outside the tolerance.
    Stale,
}

impl Refusal {
    /// The reason's label in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Mismatch => "mismatch",
            Refusal::Stale => "stale",
        }
    }
}

/// The key of a Standard Webhooks secret: `whsec_` and base64 (spec v1).
pub(crate) fn standard_webhooks_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    BASE64
        .decode(encoded)
        .map_err(|_| "a Standard Webhooks secret is `whsec_` and base64".to_string())
}

/// A scheme with its secrets (the current one, and the previous one
/// during a rotation).
pub struct Verifier {
    scheme: Scheme,
    keys: Vec<Vec<u8>>,
}

impl Verifier {
    /// A verifier of `scheme` with these secrets as configured (a Standard
    /// Webhooks secret is `whsec_` and base64; others are their bytes).
    pub fn new(scheme: Scheme, secrets: &[String]) -> Result<Self, String> {
        if secrets.is_empty() || secrets.len() > 2 {
            return Err("a source has one secret, or two during a rotation".into());
        }
        let keys: Vec<Vec<u8>> = secrets
            .iter()
            .map(|secret| match scheme {
                Scheme::StandardWebhooks { .. } => standard_webhooks_key(secret),
                _ => Ok(secret.as_bytes().to_vec()),
            })
            .collect::<Result<_, _>>()?;
        // An empty or short key would let anyone who knows the scheme sign.
        if keys.iter().any(|key| key.len() < MIN_SECRET_BYTES) {
            return Err(format!("a secret must be at least {MIN_SECRET_BYTES} bytes"));
        }
        if let Scheme::StandardWebhooks { tolerance } = scheme
            && tolerance > MAX_TOLERANCE
        {
            return Err(format!("`tolerance-secs` is at most {}", MAX_TOLERANCE.as_secs()));
        }
        let keys = match scheme {
            // Compared as digests: equal lengths, so the time says nothing of the secret's length.
            Scheme::SharedSecret { .. } => keys.iter().map(|key| Sha256::digest(key).to_vec()).collect(),
            _ => keys,
        };
        Ok(Self { scheme, keys })
    }

    /// Whether `body` with `headers` was signed with one of the secrets, at `now`.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<(), Refusal> {
        match &self.scheme {
            Scheme::Shopify => self.base64_hmac(header(headers, "x-shopify-hmac-sha256")?, &[body]),
            Scheme::WooCommerce => self.base64_hmac(header(headers, "x-wc-webhook-signature")?, &[body]),
            Scheme::Square { notification_url } => self.base64_hmac(
                header(headers, "x-square-hmacsha256-signature")?,
                &[notification_url.as_bytes(), body],
            ),
            Scheme::StandardWebhooks { tolerance } => self.standard(headers, body, now, *tolerance),
            Scheme::Hmac {
                header: name,
                prefix,
                encoding,
            } => {
                let value = header(headers, name)?;
                let signature = value
                    .get(..prefix.len())
                    .filter(|start| start.eq_ignore_ascii_case(prefix))
                    .map(|_| &value[prefix.len()..])
                    .ok_or(Refusal::Malformed)?;
                let presented = match encoding {
                    Encoding::Hex => hex::decode(signature.trim()).map_err(|_| Refusal::Malformed)?,
                    Encoding::Base64 => BASE64.decode(signature.trim()).map_err(|_| Refusal::Malformed)?,
                };
                self.any_key_signs(&[body], &[presented])
            }
            Scheme::SharedSecret { header: name } => {
                let value = Sha256::digest(header(headers, name)?.as_bytes());
                // Every key is compared, whichever matches.
                let matched = self.keys.iter().fold(0u8, |found, key| {
                    found | key.as_slice().ct_eq(value.as_slice()).unwrap_u8()
                });
                if matched == 1 {
                    Ok(())
                } else {
                    Err(Refusal::Mismatch)
                }
            }
        }
    }

    /// What can be refused before the body is read: a missing or oversized
    /// signature header, and a stale Standard Webhooks timestamp. A flood of
    /// such requests costs no body read and no HMAC.
    pub fn precheck(&self, headers: &HeaderMap, now: SystemTime) -> Result<(), Refusal> {
        match &self.scheme {
            Scheme::Shopify => header(headers, "x-shopify-hmac-sha256").map(drop),
            Scheme::WooCommerce => header(headers, "x-wc-webhook-signature").map(drop),
            Scheme::Square { .. } => header(headers, "x-square-hmacsha256-signature").map(drop),
            Scheme::StandardWebhooks { tolerance } => {
                header(headers, "webhook-signature")?;
                fresh(header(headers, "webhook-timestamp")?, now, *tolerance)
            }
            Scheme::Hmac { header: name, .. } | Scheme::SharedSecret { header: name } => {
                header(headers, name).map(drop)
            }
        }
    }

    fn base64_hmac(&self, value: &str, parts: &[&[u8]]) -> Result<(), Refusal> {
        let presented = BASE64.decode(value.trim()).map_err(|_| Refusal::Malformed)?;
        self.any_key_signs(parts, &[presented])
    }

    fn standard(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
        tolerance: Duration,
    ) -> Result<(), Refusal> {
        let id = header(headers, "webhook-id")?;
        let timestamp = header(headers, "webhook-timestamp")?;
        let signatures = header(headers, "webhook-signature")?;
        fresh(timestamp, now, tolerance)?;
        let presented: Vec<Vec<u8>> = signatures
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .take(MAX_SIGNATURES)
            .filter_map(|signature| BASE64.decode(signature).ok())
            .collect();
        if presented.is_empty() {
            return Err(Refusal::Malformed);
        }
        self.any_key_signs(
            &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
            &presented,
        )
    }

    /// One HMAC-SHA256 per key over `parts`, compared in constant time
    /// with every presented signature.
    fn any_key_signs(&self, parts: &[&[u8]], presented: &[Vec<u8>]) -> Result<(), Refusal> {
        let mut matched = 0u8;
        for key in &self.keys {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
            for part in parts {
                mac.update(part);
            }
            let expected = mac.finalize().into_bytes();
            for signature in presented {
                matched |= expected.as_slice().ct_eq(signature).unwrap_u8();
            }
        }
        if matched == 1 {
            Ok(())
        } else {
            Err(Refusal::Mismatch)
        }
    }
}

/// Whether a unix-seconds timestamp is within `tolerance` of `now`, either way.
fn fresh(timestamp: &str, now: SystemTime, tolerance: Duration) -> Result<(), Refusal> {
    let sent: u64 = timestamp.trim().parse().map_err(|_| Refusal::Malformed)?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if now.abs_diff(sent) > tolerance.as_secs() {
        return Err(Refusal::Stale);
    }
    Ok(())
}

/// A header's value as text, bounded; missing if absent or not text.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Refusal> {
    let value = headers.get(name).ok_or(Refusal::Missing)?;
    if value.len() > MAX_SIGNATURE_HEADER {
        return Err(Refusal::Malformed);
    }
    value.to_str().map_err(|_| Refusal::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::try_from(*name).unwrap(),
                HeaderValue::try_from(*value).unwrap(),
            );
        }
        map
    }

    fn sign(key: &[u8], parts: &[&[u8]]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        for part in parts {
            mac.update(part);
        }
        BASE64.encode(mac.finalize().into_bytes())
    }

    /// The published test vector of the Standard Webhooks specification.
    #[test]
    fn the_standard_webhooks_test_vector_verifies() {
        let verifier = Verifier::new(
            Scheme::StandardWebhooks {
                tolerance: Duration::from_secs(300),
            },
            &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
        )
        .unwrap();
        let signed = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        let at = UNIX_EPOCH + Duration::from_secs(1614265330);
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(verifier.verify(&signed, body, at), Ok(()));
        assert_eq!(
            verifier.verify(&signed, br#"{"test": 2432232315}"#, at),
            Err(Refusal::Mismatch)
        );
        assert_eq!(
            verifier.verify(&signed, body, at + Duration::from_secs(301)),
            Err(Refusal::Stale)
        );
        assert_eq!(
            verifier.verify(&signed, body, at - Duration::from_secs(301)),
            Err(Refusal::Stale)
        );
        // A header of 10,000 signatures is over the header cap: refused before any HMAC.
        let many = format!(
            "{} v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            vec!["v1,AAAA"; 10_000].join(" ")
        );
        let flooded = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", &many),
        ]);
        assert_eq!(verifier.verify(&flooded, body, at), Err(Refusal::Malformed));
    }

    #[test]
    fn shopify_woocommerce_and_square_sign_as_documented_and_a_rotation_takes_either_secret() {
        let body = br#"{"id": 1}"#;
        let now = SystemTime::now();
        let shopify = Verifier::new(
            Scheme::Shopify,
            &["new-secret-of-16b".into(), "old-secret-of-16b".into()],
        )
        .unwrap();
        for key in [b"new-secret-of-16b".as_slice(), b"old-secret-of-16b"] {
            let signed = headers(&[("x-shopify-hmac-sha256", &sign(key, &[body]))]);
            assert_eq!(shopify.verify(&signed, body, now), Ok(()));
        }
        let other = headers(&[("x-shopify-hmac-sha256", &sign(b"other", &[body]))]);
        assert_eq!(shopify.verify(&other, body, now), Err(Refusal::Mismatch));
        assert_eq!(
            shopify.verify(&HeaderMap::new(), body, now),
            Err(Refusal::Missing)
        );

        let woo = Verifier::new(Scheme::WooCommerce, &["woo-secret-of-16b".into()]).unwrap();
        let signed = headers(&[("x-wc-webhook-signature", &sign(b"woo-secret-of-16b", &[body]))]);
        assert_eq!(woo.verify(&signed, body, now), Ok(()));

        let url = "https://sluice.example/v1/sources/acme/square";
        let square = Verifier::new(
            Scheme::Square {
                notification_url: url.into(),
            },
            &["square-key-of-16b".into()],
        )
        .unwrap();
        let signed = headers(&[(
            "x-square-hmacsha256-signature",
            &sign(b"square-key-of-16b", &[url.as_bytes(), body]),
        )]);
        assert_eq!(square.verify(&signed, body, now), Ok(()));
        let body_only = headers(&[(
            "x-square-hmacsha256-signature",
            &sign(b"square-key-of-16b", &[body]),
        )]);
        assert_eq!(square.verify(&body_only, body, now), Err(Refusal::Mismatch));
    }

    #[test]
    fn a_configured_hmac_and_a_shared_secret_verify() {
        let body = b"{}";
        let now = SystemTime::now();
        let hmac = Verifier::new(
            Scheme::Hmac {
                header: "x-signature".into(),
                prefix: "sha256=".into(),
                encoding: Encoding::Hex,
            },
            &["hmac-secret-of-16b".into()],
        )
        .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"hmac-secret-of-16b").unwrap();
        mac.update(body);
        let signed = headers(&[(
            "x-signature",
            &format!("SHA256={}", hex::encode(mac.finalize().into_bytes())),
        )]);
        assert_eq!(hmac.verify(&signed, body, now), Ok(()));
        assert_eq!(
            hmac.verify(&headers(&[("x-signature", "md5=00")]), body, now),
            Err(Refusal::Malformed)
        );

        let shared = Verifier::new(
            Scheme::SharedSecret {
                header: "x-token".into(),
            },
            &["shared-token-of-16b".into()],
        )
        .unwrap();
        assert_eq!(
            shared.verify(&headers(&[("x-token", "shared-token-of-16b")]), body, now),
            Ok(())
        );
        assert_eq!(
            shared.verify(&headers(&[("x-token", "shared-token-of-16B")]), body, now),
            Err(Refusal::Mismatch)
        );
        assert_eq!(
            shared.verify(&headers(&[("x-token", "short")]), body, now),
            Err(Refusal::Mismatch)
        );
        // An empty or short secret is refused when the source is set up.
        assert!(Verifier::new(Scheme::Shopify, &["short".into()]).is_err());
        assert!(
            Verifier::new(
                Scheme::StandardWebhooks {
                    tolerance: Duration::from_secs(300)
                },
                &["whsec_".into()]
            )
            .is_err()
        );
    }
}
