//! `sign = { … }`: how Sluice signs what it delivers, so the receiver can
//! tell the request came from this sidecar.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignKind {
    /// Standard Webhooks v1: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks,
    /// An HMAC-SHA256 of the body in a header of the receiver's choosing.
    Hmac,
}

/// One `sign` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SignConfig {
    /// The signature.
    pub kind: SignKind,
    /// The environment variable holding the secret (`whsec_…` for Standard Webhooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// Or a file holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// During a rotation, a second secret: the request carries a signature by each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_env: Option<String>,
    /// Or a file holding the second secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_file: Option<PathBuf>,
    /// `hmac`: the header (`X-Signature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// `hmac`: text before the signature (`sha256=`).
    #[serde(default)]
    pub prefix: String,
    /// `hmac`: `hex` or `base64`.
    #[serde(default = "default_encoding")]
    pub encoding: String,
}

fn default_encoding() -> String {
    "hex".into()
}
