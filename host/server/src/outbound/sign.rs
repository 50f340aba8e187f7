//! Signatures on deliveries: Standard Webhooks v1 (the id is the
//! delivery's `Idempotency-Key`, so a retry carries the same id), or an
//! HMAC-SHA256 of the body in a header. During a rotation a request
//! carries a signature by each secret, so the receiver can switch over.

use std::path::Path;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use hyper::header::{HeaderName, HeaderValue};
use sha2::Sha256;

use crate::config::{InlineSecrets, SignConfig, SignKind};

/// An HMAC-SHA256 key must be at least this long.
const MIN_SECRET_BYTES: usize = 16;

/// How the signature is written.
enum Scheme {
    StandardWebhooks,
    Hmac {
        header: HeaderName,
        prefix: String,
        hex: bool,
    },
}

/// Signs a destination's requests.
pub struct Signer {
    scheme: Scheme,
    keys: Vec<Vec<u8>>,
}

impl Signer {
    /// The signer of `config`, its secrets read; the error names what is wrong.
    pub fn new(config: &SignConfig, secrets: &InlineSecrets, base: &Path) -> Result<Self, String> {
        let mut texts = vec![
            secrets
                .resolve(
                    "sign.secret",
                    config.secret_env.as_deref(),
                    config.secret_file.as_deref(),
                    base,
                )?
                .ok_or("sign: `secret-env` or `secret-file` is needed")?,
        ];
        if let Some(previous) = secrets.resolve(
            "sign.previous-secret",
            config.previous_secret_env.as_deref(),
            config.previous_secret_file.as_deref(),
            base,
        )? {
            texts.push(previous);
        }
        let scheme = match config.kind {
            SignKind::StandardWebhooks => Scheme::StandardWebhooks,
            SignKind::Hmac
                if config.prefix.len() > 64 || !config.prefix.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                return Err("sign: `prefix` is at most 64 printable characters".into());
            }
            SignKind::Hmac => Scheme::Hmac {
                header: HeaderName::from_bytes(config.header.as_deref().unwrap_or("x-signature").as_bytes())
                    .map_err(|_| "sign: `header` is not a header name".to_string())?,
                prefix: config.prefix.clone(),
                hex: match config.encoding.as_str() {
                    "hex" => true,
                    "base64" => false,
                    other => return Err(format!("sign: `encoding` is `hex` or `base64`, not `{other}`")),
                },
            },
        };
        let keys = texts
            .iter()
            .map(|text| match scheme {
                Scheme::StandardWebhooks => crate::sources::verify::standard_webhooks_key(text),
                Scheme::Hmac { .. } => Ok(text.as_bytes().to_vec()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.iter().any(|key| key.len() < MIN_SECRET_BYTES) {
            return Err(format!(
                "sign: a secret must be at least {MIN_SECRET_BYTES} bytes"
            ));
        }
        Ok(Self { scheme, keys })
    }

    /// The headers that sign `body`, sent as delivery `id`, at `now`.
    pub fn headers(&self, id: &str, body: &[u8], now: SystemTime) -> Vec<(HeaderName, HeaderValue)> {
        let value =
            |text: String| HeaderValue::from_str(&text).expect("ids, digits and base64 are header values");
        match &self.scheme {
            Scheme::StandardWebhooks => {
                let timestamp = now
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
                    .to_string();
                let signatures: Vec<String> = self
                    .keys
                    .iter()
                    .map(|key| {
                        format!(
                            "v1,{}",
                            BASE64.encode(mac(key, &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body]))
                        )
                    })
                    .collect();
                vec![
                    (HeaderName::from_static("webhook-id"), value(id.to_string())),
                    (HeaderName::from_static("webhook-timestamp"), value(timestamp)),
                    (
                        HeaderName::from_static("webhook-signature"),
                        value(signatures.join(" ")),
                    ),
                ]
            }
            Scheme::Hmac { header, prefix, hex } => {
                let signatures: Vec<String> = self
                    .keys
                    .iter()
                    .map(|key| {
                        let digest = mac(key, &[body]);
                        let text = if *hex {
                            hex::encode(digest)
                        } else {
                            BASE64.encode(digest)
                        };
                        format!("{prefix}{text}")
                    })
                    .collect();
                let mut header_value = value(signatures.join(","));
                header_value.set_sensitive(false);
                vec![(header.clone(), header_value)]
            }
        }
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: SignKind) -> SignConfig {
        SignConfig {
            kind,
            secret_env: None,
            secret_file: None,
            previous_secret_env: None,
            previous_secret_file: None,
            header: None,
            prefix: String::new(),
            encoding: "hex".into(),
        }
    }

    /// The test vector of the Standard Webhooks specification
    /// (standard-webhooks/spec, "Signature scheme").
    #[test]
    fn standard_webhooks_signs_the_published_test_vector() {
        let secrets = InlineSecrets(
            [(
                "sign.secret".to_string(),
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
            )]
            .into(),
        );
        let signer = Signer::new(&config(SignKind::StandardWebhooks), &secrets, Path::new(".")).unwrap();
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_614_265_330);
        let headers = signer.headers("msg_p5jXN8AQM9LWM0D4loKWxJek", br#"{"test": 2432232314}"#, at);
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(find("webhook-id"), "msg_p5jXN8AQM9LWM0D4loKWxJek");
        assert_eq!(find("webhook-timestamp"), "1614265330");
        assert_eq!(
            find("webhook-signature"),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_rotation_signs_with_both_secrets_and_short_secrets_are_refused() {
        let mut secrets = InlineSecrets::default();
        secrets
            .0
            .insert("sign.secret".into(), "new-secret-0123456789".into());
        secrets
            .0
            .insert("sign.previous-secret".into(), "old-secret-0123456789".into());
        let mut hmac = config(SignKind::Hmac);
        hmac.prefix = "sha256=".into();
        let signer = Signer::new(&hmac, &secrets, Path::new(".")).unwrap();
        let headers = signer.headers("k", b"{}", SystemTime::now());
        let value = headers[0].1.to_str().unwrap();
        assert_eq!(headers[0].0, "x-signature");
        assert_eq!(value.split(',').count(), 2);
        assert!(
            value
                .split(',')
                .all(|s| s.starts_with("sha256=") && s.len() == 7 + 64),
            "{value}"
        );
        secrets.0.insert("sign.secret".into(), "short".into());
        assert!(Signer::new(&hmac, &secrets, Path::new(".")).is_err());
    }
}
