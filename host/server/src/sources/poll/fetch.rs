//! Reading one page of a polled API: the request with its credential,
//! the answer within its caps, its records, and where the next page is.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ACCEPT, LINK, RETRY_AFTER};
use hyper::{Method, Request, Uri};
use serde_json::Value;
use sluice_guest::mapping::CompiledPath;

use super::PageError;
use super::records::{
    RecordIdentity, bounded, clip, digest, link_target, origin, record_event, resolve, with_query,
};
use crate::config::{InlineSecrets, SourceConfig};
use crate::outbound::auth::Authenticator;
use crate::outbound::guard::NetworkPolicy;
use crate::outbound::{CallError, HttpClient, call};

/// Longest wait a `Retry-After` may ask for.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// A poll source, ready to run.
pub struct Poller {
    pub(super) config: SourceConfig,
    pub(super) url: Uri,
    records: CompiledPath,
    id: CompiledPath,
    version: Option<CompiledPath>,
    cursor_path: Option<CompiledPath>,
    auth: Option<Authenticator>,
    client: HttpClient,
    /// A digest of the settings and of whose they are (see [`Cursor::settings`]).
    pub(super) fingerprint: String,
    /// Without `version`: each record's content digest, and the sweep since
    /// which it has had that content (see [`record_event`]).
    contents: Arc<std::sync::Mutex<HashMap<String, (String, i64)>>>,
}

/// Most records one page may hold.
pub(super) const MAX_RECORDS_PER_PAGE: usize = 100_000;
/// Records whose content this sidecar remembers for a source without `version`.
pub(super) const MAX_REMEMBERED_RECORDS: usize = 1_000_000;

/// One page read.
pub(super) struct Page {
    pub(super) events: Vec<String>,
    pub(super) no_id: u64,
    pub(super) next: Option<String>,
}

impl Poller {
    /// The poller of `config`. `policy` is set for a tenant's source: its
    /// API (and token endpoint) may only be reached at allowed addresses.
    pub fn new(
        config: &SourceConfig,
        secrets: &InlineSecrets,
        base: &Path,
        policy: Option<Arc<NetworkPolicy>>,
    ) -> Result<Self, String> {
        let compile = |key: &str, path: &str| {
            CompiledPath::compile(path).map_err(|err| format!("`{key}` is not a JSONPath: {err}"))
        };
        let url: Uri = config
            .url
            .as_deref()
            .ok_or("a poll source needs `url`")?
            .parse()
            .map_err(|err| format!("`url` is not a URL: {err}"))?;
        if let (Some(policy), Some(host)) = (&policy, url.host()) {
            policy.check_host(host).map_err(|refused| refused.to_string())?;
        }
        let policy_set = policy.is_some();
        let client = crate::outbound::client(None, policy)?;
        let auth = match &config.auth {
            Some(auth) => Some(Authenticator::new(auth, secrets, base, client.clone())?),
            None => None,
        };
        let next = config.next.clone().unwrap_or_default();
        let owner = if policy_set { "api" } else { "config" };
        let fingerprint = digest(&format!(
            "{owner}:{}",
            serde_json::to_string(config).unwrap_or_default()
        ));
        Ok(Self {
            fingerprint,
            contents: Arc::default(),
            url,
            records: compile("records", &config.records)?,
            id: compile("id", &config.id)?,
            version: config
                .version
                .as_deref()
                .map(|path| compile("version", path))
                .transpose()?,
            cursor_path: next
                .cursor
                .as_deref()
                .map(|path| compile("next.cursor", path))
                .transpose()?,
            auth,
            client,
            config: config.clone(),
        })
    }

    pub(super) fn label(&self) -> String {
        format!("{}/{}", self.config.tenant, self.config.name)
    }

    pub(super) fn cursor_key(&self) -> (String, String) {
        (self.config.tenant.clone(), self.config.name.clone())
    }

    /// Reads one page: its events, and where the next one is.
    pub(super) async fn page(&self, url: &str, page_number: u32, sweep_ms: i64) -> Result<Page, PageError> {
        let mut renewed = false;
        loop {
            let mut request = Request::builder()
                .method(Method::GET)
                .uri(url)
                .header(ACCEPT, "application/json");
            let mut used = None;
            if let Some(auth) = &self.auth {
                let (name, value) = auth.header().await?;
                used = Some(value.clone());
                request = request.header(name, value);
            }
            let request = request
                .body(Full::new(Bytes::new()))
                .map_err(|err| PageError::Call(CallError::Failed(err.to_string())))?;
            let answer = call(
                &self.client,
                request,
                self.config.max_page_bytes,
                Duration::from_millis(self.config.timeout_ms),
            )
            .await?;
            let status = answer.status;
            if matches!(status, 401 | 403)
                && !renewed
                && let (Some(auth), Some(used)) = (&self.auth, &used)
                && auth.renews()
            {
                auth.expired(used).await;
                renewed = true;
                continue;
            }
            if matches!(status, 429 | 503) {
                let wait = answer
                    .headers
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| crate::workers::backoff::retry_after(v, std::time::SystemTime::now()))
                    .unwrap_or(Duration::from_secs(1))
                    .min(MAX_RETRY_AFTER);
                return Err(PageError::RetryAfter(wait));
            }
            if !(200..300).contains(&status) {
                return Err(PageError::Status(status));
            }
            let body = answer.body;
            let link = answer
                .headers
                .get_all(LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect::<Vec<_>>();
            let records = self.records.clone();
            let id = self.id.clone();
            let version = self.version.clone();
            let cursor_path = self.cursor_path.clone();
            let name = self.config.name.clone();
            let tenant = self.config.tenant.clone();
            let kind = self.config.event_kind.clone();
            let contents = self.contents.clone();
            let most_bytes = self.config.max_page_bytes.saturating_mul(2);
            // Parsing and selecting over up to `max-page-bytes`: off the async threads.
            let parsed = tokio::task::spawn_blocking(move || {
                let document: Value = serde_json::from_slice(&body).map_err(|_| PageError::NotJson)?;
                let found = records.select(&document);
                if found.len() > MAX_RECORDS_PER_PAGE {
                    return Err(PageError::Pagination(format!(
                        "the page holds {} records, over {MAX_RECORDS_PER_PAGE}",
                        found.len()
                    )));
                }
                let mut events = Vec::with_capacity(found.len());
                let (mut no_id, mut bytes) = (0, 0usize);
                let mut contents = contents.lock().unwrap_or_else(|e| e.into_inner());
                for (record, _) in &found {
                    let identity = RecordIdentity {
                        id: &id,
                        version: version.as_ref(),
                        contents: &mut contents,
                        sweep_ms,
                    };
                    match record_event(record, identity, &name, &tenant, &kind) {
                        Some(event) => {
                            // Records that nest (`$..*`) repeat each other: bounded by the page.
                            bytes += event.len();
                            if bytes > most_bytes {
                                return Err(PageError::Pagination(
                                    "the page's records are over twice max-page-bytes (do they nest?)".into(),
                                ));
                            }
                            events.push(event);
                        }
                        None => no_id += 1,
                    }
                }
                let cursor = cursor_path.as_ref().map(|path| {
                    path.select(&document).first().and_then(|(v, _)| match v {
                        Value::String(text) if !text.is_empty() => Some(text.clone()),
                        Value::Number(number) => Some(number.to_string()),
                        _ => None,
                    })
                });
                Ok::<_, PageError>((events, no_id, cursor, found.is_empty()))
            })
            .await
            .map_err(|join| PageError::Call(CallError::Failed(join.to_string())))??;
            let (events, no_id, cursor, empty) = parsed;
            let next = bounded(self.next_page(url, page_number, cursor.flatten(), &link, empty)?)?;
            return Ok(Page { events, no_id, next });
        }
    }

    /// The next page's URL, if there is one.
    fn next_page(
        &self,
        url: &str,
        page_number: u32,
        cursor: Option<String>,
        links: &[String],
        empty: bool,
    ) -> Result<Option<String>, PageError> {
        let next = self.config.next.clone().unwrap_or_default();
        if let Some(param) = &next.param {
            return Ok(cursor.map(|cursor| with_query(&self.url, param, &cursor)));
        }
        if let Some(param) = &next.page {
            return Ok((!empty).then(|| with_query(&self.url, param, &(page_number + 1).to_string())));
        }
        if let Some(rel) = &next.link {
            let Some(target) = links.iter().find_map(|header| link_target(header, rel)) else {
                return Ok(None);
            };
            let resolved = resolve(url, &target).ok_or_else(|| {
                PageError::Pagination(format!("the `{rel}` link `{}` is not a URL", clip(&target)))
            })?;
            // The next page is on the API's own origin: a link cannot send
            // Sluice (and its credentials) elsewhere.
            if origin(&resolved) != origin(&self.url) {
                return Err(PageError::Pagination(format!(
                    "the `{rel}` link leads away from {}",
                    self.url.host().unwrap_or_default()
                )));
            }
            return Ok(Some(resolved.to_string()));
        }
        Ok(None)
    }
}
