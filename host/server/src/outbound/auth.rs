//! The credentials of an outbound call: a static bearer token, Basic, or
//! an OAuth2 access token that is fetched once, shared by every caller,
//! renewed before it expires and once more when the API says it expired.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use serde::Deserialize;

use super::{CallError, HttpClient, call};
use crate::config::{AuthConfig, AuthKind, Grant, InlineSecrets};

/// Largest token endpoint answer read.
const MAX_TOKEN_ANSWER: usize = 64 << 10;
/// Time for one token request.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait between two tries of a failing token endpoint.
const MAX_TOKEN_BACKOFF: Duration = Duration::from_secs(300);

/// Why there is no credential to send now.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token endpoint failed; it is tried again after `retry_in`.
    #[error("the token endpoint failed ({detail}); next try in {} s", retry_in.as_secs())]
    TokenEndpoint {
        /// What it answered, without secrets.
        detail: String,
        /// When it may be tried again.
        retry_in: Duration,
    },
}

/// How to make the credential header.
enum Scheme {
    /// A fixed header value.
    Fixed(HeaderName, HeaderValue),
    /// OAuth2: the token endpoint and the form that asks it.
    Oauth2 {
        token_url: Uri,
        form: String,
        basic: Option<HeaderValue>,
        header: HeaderName,
    },
}

/// A token in hand.
struct Token {
    value: HeaderValue,
    renew_at: Instant,
    expires_at: Instant,
}

/// What the token endpoint said last.
#[derive(Default)]
struct Cache {
    token: Option<Token>,
    failures: u32,
    next_try: Option<Instant>,
}

/// The credential of one API, shared by all its callers.
pub struct Authenticator {
    scheme: Scheme,
    client: HttpClient,
    cache: tokio::sync::Mutex<Cache>,
}

impl Authenticator {
    /// The authenticator of `config`, its secrets read; the error names the missing key.
    pub fn new(
        config: &AuthConfig,
        secrets: &InlineSecrets,
        base: &Path,
        client: HttpClient,
    ) -> Result<Self, String> {
        let secret = |inline: &str,
                      env: &Option<String>,
                      file: &Option<std::path::PathBuf>|
         -> Result<String, String> {
            secrets
                .resolve(&format!("auth.{inline}"), env.as_deref(), file.as_deref(), base)?
                .ok_or_else(|| format!("auth: `{inline}` is not set"))
        };
        let header_name = |default: HeaderName| -> Result<HeaderName, String> {
            match &config.header {
                Some(name) => HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("auth: `header` = `{name}` is not a header name")),
                None => Ok(default),
            }
        };
        let sensitive = |text: String| -> Result<HeaderValue, String> {
            let mut value =
                HeaderValue::from_str(&text).map_err(|_| "auth: the secret is not a header value")?;
            value.set_sensitive(true);
            Ok(value)
        };
        let scheme = match config.kind()? {
            AuthKind::Bearer => {
                let header = header_name(AUTHORIZATION)?;
                let token = secret("bearer", &config.bearer_env, &config.bearer_file)?;
                Scheme::Fixed(header.clone(), sensitive(token_text(&header, &token))?)
            }
            AuthKind::Basic => {
                let user = config.username.clone().unwrap_or_default();
                let password = secret("password", &config.password_env, &config.password_file)?;
                Scheme::Fixed(AUTHORIZATION, sensitive(basic(&user, &password))?)
            }
            AuthKind::Oauth2 => {
                let token_url: Uri = config
                    .token_url
                    .as_deref()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|err| format!("auth: `token-url` is not a URL: {err}"))?;
                let client_id = config.client_id.clone().unwrap_or_default();
                let client_secret = secret(
                    "client-secret",
                    &config.client_secret_env,
                    &config.client_secret_file,
                )?;
                let mut form = form_urlencoded::Serializer::new(String::new());
                let basic_header = match config.grant {
                    Some(Grant::RefreshToken) => {
                        // Login with Amazon takes the client's credentials in the form.
                        let refresh = secret(
                            "refresh-token",
                            &config.refresh_token_env,
                            &config.refresh_token_file,
                        )?;
                        form.append_pair("grant_type", "refresh_token")
                            .append_pair("refresh_token", &refresh)
                            .append_pair("client_id", &client_id)
                            .append_pair("client_secret", &client_secret);
                        None
                    }
                    _ => {
                        // RFC 6749 §2.3.1: HTTP Basic of the client's id and secret.
                        form.append_pair("grant_type", "client_credentials");
                        Some(sensitive(basic(&client_id, &client_secret))?)
                    }
                };
                if let Some(scope) = &config.scope {
                    form.append_pair("scope", scope);
                }
                Scheme::Oauth2 {
                    token_url,
                    form: form.finish(),
                    basic: basic_header,
                    header: header_name(AUTHORIZATION)?,
                }
            }
        };
        Ok(Self {
            scheme,
            client,
            cache: tokio::sync::Mutex::default(),
        })
    }

    /// The header to send now. With OAuth2 only one caller asks the token
    /// endpoint at a time and the others wait for its token; while the
    /// endpoint fails, callers are told when to try again without asking it.
    pub async fn header(&self) -> Result<(HeaderName, HeaderValue), AuthError> {
        let (token_url, form, basic, header) = match &self.scheme {
            Scheme::Fixed(name, value) => return Ok((name.clone(), value.clone())),
            Scheme::Oauth2 {
                token_url,
                form,
                basic,
                header,
            } => (token_url, form, basic, header),
        };
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        if let Some(token) = &cache.token
            && now < token.renew_at
        {
            return Ok((header.clone(), token.value.clone()));
        }
        if let Some(next) = cache.next_try
            && now < next
        {
            // While the endpoint is waited out, a token not yet expired still serves.
            if let Some(token) = &cache.token
                && now < token.expires_at
            {
                return Ok((header.clone(), token.value.clone()));
            }
            return Err(AuthError::TokenEndpoint {
                detail: "it failed on the last try".into(),
                retry_in: next - now,
            });
        }
        match self.fetch(token_url, form, basic.as_ref(), header).await {
            Ok(token) => {
                let value = token.value.clone();
                *cache = Cache {
                    token: Some(token),
                    failures: 0,
                    next_try: None,
                };
                Ok((header.clone(), value))
            }
            Err(detail) => {
                cache.failures += 1;
                let wait = Duration::from_secs(1 << cache.failures.min(9)).min(MAX_TOKEN_BACKOFF);
                cache.next_try = Some(now + wait);
                // A token that is due for renewal but not yet expired still serves.
                if let Some(token) = &cache.token
                    && now < token.expires_at
                {
                    return Ok((header.clone(), token.value.clone()));
                }
                tracing::warn!(detail = %detail, retry_in_s = wait.as_secs(), "the token endpoint failed");
                Err(AuthError::TokenEndpoint {
                    detail,
                    retry_in: wait,
                })
            }
        }
    }

    /// The API said `used` has expired (a 401, or SP-API's 403): the next
    /// caller fetches a new token, unless another already did.
    pub async fn expired(&self, used: &HeaderValue) {
        let mut cache = self.cache.lock().await;
        if cache.token.as_ref().is_some_and(|token| token.value == used) {
            cache.token = None;
        }
    }

    /// Whether the API answers to a token that can be renewed.
    pub fn renews(&self) -> bool {
        matches!(self.scheme, Scheme::Oauth2 { .. })
    }

    async fn fetch(
        &self,
        token_url: &Uri,
        form: &str,
        basic: Option<&HeaderValue>,
        header: &HeaderName,
    ) -> Result<Token, String> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(basic) = basic {
            request = request.header(AUTHORIZATION, basic);
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(form.as_bytes())))
            .map_err(|err| format!("cannot build the token request: {err}"))?;
        let answer = call(&self.client, request, MAX_TOKEN_ANSWER, TOKEN_TIMEOUT)
            .await
            .map_err(|err| match err {
                CallError::Refused(refused) => refused.to_string(),
                other => other.to_string(),
            })?;
        if !(200..300).contains(&answer.status) {
            // The error code only (RFC 6749 §5.2): the rest may echo what was sent.
            let code = serde_json::from_slice::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .filter(|code| code.len() <= 64 && code.bytes().all(|b| b.is_ascii_graphic()));
            return Err(match code {
                Some(code) => format!("status {}, error `{code}`", answer.status),
                None => format!("status {}", answer.status),
            });
        }
        #[derive(Deserialize)]
        struct Granted {
            access_token: String,
            /// Seconds; some endpoints send it as a string, some out of range.
            expires_in: Option<serde_json::Value>,
        }
        let granted: Granted = serde_json::from_slice(&answer.body)
            .map_err(|_| "the answer is not a token (RFC 6749 §5.1)".to_string())?;
        let seconds = match &granted.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_f64(),
            Some(serde_json::Value::String(text)) => text.trim().parse::<f64>().ok(),
            _ => None,
        }
        .filter(|s| s.is_finite())
        .unwrap_or(3600.0);
        let life = Duration::from_secs(seconds.clamp(1.0, 86_400.0 * 30.0) as u64);
        // Renewed ahead of its expiry: a tenth of its life before, at most a minute.
        let early = (life / 10).min(Duration::from_secs(60));
        let mut value = HeaderValue::from_str(&token_text(header, &granted.access_token))
            .map_err(|_| "the token is not a header value".to_string())?;
        value.set_sensitive(true);
        let now = Instant::now();
        Ok(Token {
            value,
            renew_at: now + life - early,
            expires_at: now + life,
        })
    }
}

/// `Bearer <token>` in `Authorization`, the bare token in any other header.
fn token_text(header: &HeaderName, token: &str) -> String {
    if header == AUTHORIZATION {
        format!("Bearer {token}")
    } else {
        token.to_string()
    }
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::sink::{Reply, Sink};

    /// A token endpoint answering `answer` to every request, and the
    /// authenticator of a client-credentials grant against it.
    fn endpoint(answer: Reply) -> (Sink, Authenticator, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let sink = Sink::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(move |_, _| {
                counter.fetch_add(1, Ordering::SeqCst);
                answer.clone()
            }),
        )
        .unwrap();
        let config = AuthConfig {
            grant: Some(Grant::ClientCredentials),
            token_url: Some(format!("http://{}/token", sink.addr)),
            client_id: Some("client".into()),
            ..Default::default()
        };
        let secrets = InlineSecrets([("auth.client-secret".to_string(), "secret".to_string())].into());
        let client = crate::outbound::client(None, None).unwrap();
        let auth = Authenticator::new(&config, &secrets, Path::new("."), client).unwrap();
        (sink, auth, calls)
    }

    fn token(expires_in: &str) -> Reply {
        Reply {
            status: 200,
            headers: vec![],
            body: format!(r#"{{"access_token": "tok", "token_type": "Bearer", "expires_in": {expires_in}}}"#),
        }
    }

    use std::sync::Arc;

    #[tokio::test]
    async fn hostile_token_endpoints_get_a_bounded_retry_and_never_a_panic() {
        for answer in [
            Reply {
                status: 200,
                headers: vec![],
                body: "not json".into(),
            },
            Reply {
                status: 200,
                headers: vec![],
                body: format!(r#"{{"access_token": "{}"}}"#, "x".repeat(100 << 10)),
            },
            Reply {
                status: 401,
                headers: vec![],
                body: r#"{"error": "invalid_client"}"#.into(),
            },
            Reply {
                status: 500,
                headers: vec![],
                body: "<html>".into(),
            },
        ] {
            let (_sink, auth, calls) = endpoint(answer.clone());
            let Err(AuthError::TokenEndpoint { detail, retry_in }) = auth.header().await else {
                panic!("{answer:?} gave a token");
            };
            assert!(!detail.contains("secret"), "{detail}");
            assert!(retry_in >= Duration::from_secs(1));
            // Within the backoff the endpoint is not asked again.
            assert!(auth.header().await.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{answer:?}");
        }
    }

    #[tokio::test]
    async fn lifetimes_of_zero_and_ten_to_the_twelve_are_clamped_and_the_token_is_shared() {
        for expires_in in ["0", "1000000000000", "-5", "\"3600\"", "1e308", "3600"] {
            let (_sink, auth, calls) = endpoint(token(expires_in));
            let (name, value) = auth
                .header()
                .await
                .unwrap_or_else(|err| panic!("{expires_in}: {err}"));
            assert_eq!((name, value.to_str().unwrap()), (AUTHORIZATION, "Bearer tok"));
            let _ = auth.header().await;
            assert!(calls.load(Ordering::SeqCst) <= 2, "{expires_in}");
        }
        // Expired by the API: the next caller asks again, once.
        let (_sink, auth, calls) = endpoint(token("3600"));
        let (_, used) = auth.header().await.unwrap();
        auth.expired(&used).await;
        auth.header().await.unwrap();
        auth.header().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
