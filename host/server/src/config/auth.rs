//! `auth = { … }`: how Sluice authenticates to an API it calls (a polled
//! source's, and a destination's).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthKind {
    /// A static token, sent as `Authorization: Bearer …` (or in `header`).
    Bearer,
    /// `Authorization: Basic …` of `username` and a password.
    Basic,
    /// An OAuth2 access token from `token-url`, renewed before it expires.
    Oauth2,
}

/// The OAuth2 grant that obtains the access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Grant {
    /// `client_credentials` (RFC 6749 §4.4): POS APIs such as Smaregi.
    ClientCredentials,
    /// `refresh_token` (RFC 6749 §6): Login with Amazon for SP-API.
    RefreshToken,
}

/// One `auth` table. Secrets come from the environment (`*-env`) in
/// `sluice.toml`; through the API a tenant sends them inline, and they are
/// never read back.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AuthConfig {
    /// The scheme; inferred from the keys when left out (`bearer-env` is a bearer token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<AuthKind>,
    /// `bearer`: the environment variable holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_env: Option<String>,
    /// Or a file holding it (relative to `sluice.toml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_file: Option<PathBuf>,
    /// `basic`: the user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// `basic`: the environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Or a file holding it (relative to `sluice.toml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// `oauth2`: the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
    /// `oauth2`: the token endpoint (`https://api.amazon.com/auth/o2/token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// `oauth2`: the client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `oauth2`: the environment variable holding the client secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_env: Option<String>,
    /// Or a file holding it (relative to `sluice.toml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// `oauth2` with `grant = "refresh-token"`: the environment variable holding the refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_env: Option<String>,
    /// Or a file holding it (relative to `sluice.toml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_file: Option<PathBuf>,
    /// `oauth2`: the scopes asked for, space-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The header that carries the token: `Authorization` (as `Bearer …`,
    /// the default) or another, which gets the bare token (`x-amz-access-token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

/// The secrets an `auth` table may name, by the key that holds them
/// inline (through the API) and the key that names their variable (in `sluice.toml`).
pub const AUTH_SECRETS: &[(&str, &str)] = &[
    ("bearer", "bearer-env"),
    ("password", "password-env"),
    ("client-secret", "client-secret-env"),
    ("refresh-token", "refresh-token-env"),
];

impl AuthConfig {
    /// Makes its secret files relative to `dir` (the config file's folder).
    pub fn resolve_paths(&mut self, dir: &std::path::Path) {
        for file in [
            &mut self.bearer_file,
            &mut self.password_file,
            &mut self.client_secret_file,
            &mut self.refresh_token_file,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = dir.join(&*file);
            }
        }
    }

    /// The scheme, as set or as the keys say.
    pub fn kind(&self) -> Result<AuthKind, String> {
        if let Some(kind) = self.kind {
            return Ok(kind);
        }
        if self.token_url.is_some() || self.grant.is_some() {
            Ok(AuthKind::Oauth2)
        } else if self.username.is_some() {
            Ok(AuthKind::Basic)
        } else if self.bearer_env.is_some() || self.bearer_file.is_some() {
            Ok(AuthKind::Bearer)
        } else {
            Err("set `kind` (`bearer`, `basic` or `oauth2`)".into())
        }
    }

    /// What is missing for its scheme; `inline` says whether secrets come
    /// with the config (then no `*-env` key may be set: a tenant may not
    /// read the server's environment).
    pub fn check(&self, inline: bool) -> Result<(), String> {
        let from_env = |key: &'static str, env: bool, file: bool| -> Result<(), String> {
            match (inline, env || file) {
                (true, true) => Err(format!(
                    "`{key}` (or its `-file`) reads the server's environment or files; send the secret itself instead"
                )),
                (false, false) => Err(format!("`{key}` or its `-file` is needed")),
                _ => Ok(()),
            }
        };
        match self.kind()? {
            AuthKind::Bearer => from_env(
                "bearer-env",
                self.bearer_env.is_some(),
                self.bearer_file.is_some(),
            ),
            AuthKind::Basic => {
                self.username.as_ref().ok_or("`basic` needs `username`")?;
                from_env(
                    "password-env",
                    self.password_env.is_some(),
                    self.password_file.is_some(),
                )
            }
            AuthKind::Oauth2 => {
                let url = self.token_url.as_deref().ok_or("`oauth2` needs `token-url`")?;
                if !url.starts_with("https://") && !url.starts_with("http://") {
                    return Err(format!("`token-url` must be http:// or https://, not `{url}`"));
                }
                url.parse::<hyper::Uri>()
                    .map_err(|err| format!("`token-url` is not a URL: {err}"))?;
                self.client_id.as_ref().ok_or("`oauth2` needs `client-id`")?;
                from_env(
                    "client-secret-env",
                    self.client_secret_env.is_some(),
                    self.client_secret_file.is_some(),
                )?;
                match self
                    .grant
                    .ok_or("`oauth2` needs `grant` (`client-credentials` or `refresh-token`)")?
                {
                    Grant::RefreshToken => from_env(
                        "refresh-token-env",
                        self.refresh_token_env.is_some(),
                        self.refresh_token_file.is_some(),
                    ),
                    Grant::ClientCredentials => Ok(()),
                }
            }
        }?;
        if let Some(header) = &self.header {
            let name = hyper::header::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("`header` = `{header}` is not a header name"))?;
            // Headers that frame the request itself are not the credential's to set.
            let framing = [
                "host",
                "content-length",
                "transfer-encoding",
                "connection",
                "content-type",
                "te",
                "upgrade",
            ];
            if framing.contains(&name.as_str()) {
                return Err(format!("`header` = `{header}` frames the request; name another"));
            }
        }
        Ok(())
    }
}
