//! Poll sources: an API with no webhooks, read page by page every
//! `every`. Each record becomes an event through the same durable,
//! idempotent ingest as a webhook. Its id is the record's id and version,
//! so an unchanged record is a duplicate and a changed one a new event.
//!
//! The cursor (the next page of the sweep under way, and when the last
//! sweep ended) is stored after each page's events are committed, so a
//! restart resumes at the page it had not finished: nothing is ingested
//! twice, and nothing is skipped. On a shared store one sidecar polls a
//! source at a time, under a lease.

mod fetch;
mod records;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hyper::{StatusCode, Uri};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use fetch::Poller;
use records::{digest, origin};

use crate::outbound::CallError;
use crate::outbound::auth::AuthError;
use crate::state::App;
use crate::store::{in_store, now_ms};

/// Tries of one chunk's ingest while the tenant's queue is full or over its rate.
const INGEST_TRIES: u32 = 30;
/// Events sent to ingest at once.
const INGEST_CHUNK: usize = 500;

/// How far a source's sweep has come, as stored after every page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The page to read next in the sweep under way; none: between sweeps.
    pub next: Option<String>,
    /// When the sweep under way (or the last one) started, ms since the epoch.
    pub sweep_started_ms: i64,
    /// Pages read in the sweep under way.
    pub pages: u32,
    /// When the last sweep that read every page ended.
    pub completed_ms: Option<i64>,
    /// Why the last page read failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The settings it was made under: a cursor of other settings (a
    /// source replaced through the API, or one of the same name in
    /// `sluice.toml`) is not followed.
    #[serde(default)]
    pub settings: String,
}

/// Why one page could not be read; each is counted under its reason.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The request failed, timed out, or the page was too large.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The API answered an error status.
    #[error("the API answered {0}")]
    Status(u16),
    /// The API asked to wait (429 or 503 with `Retry-After`).
    #[error("the API asked to wait {} s", .0.as_secs())]
    RetryAfter(Duration),
    /// The page is not JSON.
    #[error("the page is not JSON")]
    NotJson,
    /// There is no credential to send.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The API keeps paginating: over `max-pages`, or a page it gave before.
    #[error("{0}")]
    Pagination(String),
    /// Ingest refused the page's events (other than for a full queue or the ingest rate).
    #[error("the page's events were refused: {0}")]
    Refused(String),
}

impl PageError {
    fn reason(&self) -> &'static str {
        match self {
            PageError::Call(CallError::Refused(_)) => "refused-address",
            PageError::Call(CallError::Timeout(_)) => "timeout",
            PageError::Call(CallError::TooLarge(_)) => "too-large",
            PageError::Call(CallError::Failed(_)) => "connection",
            PageError::Status(_) => "status",
            PageError::RetryAfter(_) => "retry-after",
            PageError::NotJson => "not-json",
            PageError::Auth(_) => "auth",
            PageError::Pagination(_) => "pagination",
            PageError::Refused(_) => "refused",
        }
    }
}

/// Polls one source until `stopped` turns true. Every failure is counted
/// and waited out (the API's `Retry-After`, or a backoff up to `every`),
/// and the sweep goes on from the page that failed.
pub async fn run(app: Arc<App>, poller: Arc<Poller>, mut stopped: watch::Receiver<bool>) {
    let holder = format!("{:016x}", fastrand::u64(..));
    let label = poller.label();
    let lease_name = format!("poll.{label}");
    // Renewed before every page, so it outlasts one page's read and ingest;
    // a sidecar that stops renewing is taken over after it runs out.
    let lease_ttl = Duration::from_millis(poller.config.timeout_ms) + Duration::from_secs(10);
    let mut failures: u32 = 0;
    let mut seen = Seen::default();
    loop {
        if *stopped.borrow() {
            return;
        }
        let wait = match step(&app, &poller, &holder, &lease_name, lease_ttl, &mut seen).await {
            Ok(Step::Next) => {
                failures = 0;
                Duration::ZERO
            }
            Ok(Step::Wait(wait)) => {
                failures = 0;
                wait
            }
            Err(err) => {
                failures += 1;
                app.metrics.source_poll_failed(&label, err.reason());
                let wait = match &err {
                    PageError::RetryAfter(wait) => *wait,
                    PageError::Auth(AuthError::TokenEndpoint { retry_in, .. }) => *retry_in,
                    _ => crate::workers::backoff::backoff(
                        &crate::config::RetryPolicy {
                            initial_backoff_ms: 1000,
                            max_backoff_ms: poller.config.every.min(Duration::from_secs(300)).as_millis()
                                as u64,
                            ..Default::default()
                        },
                        failures,
                    ),
                };
                // A `Retry-After: 0` (or a date past) is no reason to spin.
                let wait = wait.max(Duration::from_secs(1));
                tracing::warn!(source = %label, error = %err, retry_in_ms = wait.as_millis() as u64, "a poll source's page failed");
                record_error(&app, &poller, &err).await;
                wait
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => {}
            }
        }
    }
}

/// What this sidecar remembers of the sweep under way: the pages it read
/// (an API that sends Sluice back to one of them is looping) and the
/// records of the last one.
#[derive(Default)]
struct Seen {
    urls: HashSet<String>,
    last_page: Option<String>,
}

/// What to do after one step.
enum Step {
    /// Read the next page now.
    Next,
    /// Wait this long (between sweeps, or while another sidecar holds the lease).
    Wait(Duration),
}

/// Reads and ingests one page if one is due, and stores the cursor.
async fn step(
    app: &Arc<App>,
    poller: &Arc<Poller>,
    holder: &str,
    lease_name: &str,
    lease_ttl: Duration,
    seen: &mut Seen,
) -> Result<Step, PageError> {
    if !renew_lease(app, holder, lease_name, lease_ttl).await? {
        return Ok(Step::Wait(lease_ttl / 3));
    }
    let mut cursor = load_cursor(app, poller).await?;
    let now = now_ms();
    let url = match cursor.next.clone() {
        Some(url) => url,
        None => {
            let due = cursor.sweep_started_ms + poller.config.every.as_millis() as i64;
            if cursor.completed_ms.is_some() && now < due {
                return Ok(Step::Wait(Duration::from_millis((due - now) as u64)));
            }
            *seen = Seen::default();
            cursor = Cursor {
                next: None,
                sweep_started_ms: now,
                pages: 0,
                completed_ms: cursor.completed_ms,
                last_error: None,
                settings: poller.fingerprint.clone(),
            };
            poller.url.to_string()
        }
    };
    if cursor.pages >= poller.config.max_pages {
        let err = PageError::Pagination(format!(
            "the sweep needs more than max-pages = {} pages",
            poller.config.max_pages
        ));
        end_sweep(app, poller, cursor, false).await?;
        return Err(err);
    }
    // A page read before in this sweep (not a retry of this one, which is
    // remembered only once it succeeds): the API is going round in circles.
    if seen.urls.contains(&digest(&url)) {
        let err = PageError::Pagination(format!(
            "page {} repeats an earlier page of this sweep",
            cursor.pages + 1
        ));
        end_sweep(app, poller, cursor, false).await?;
        return Err(err);
    }
    let page = poller
        .page(&url, cursor.pages + 1, cursor.sweep_started_ms)
        .await?;
    let label = poller.label();
    // Past its last page, Magento's `searchCriteria[currentPage]` answers
    // the last page again: a page number whose records repeat the page
    // before it ends the sweep.
    let records = digest(&page.events.concat());
    let paged = poller
        .config
        .next
        .as_ref()
        .is_some_and(|next| next.page.is_some());
    if paged && cursor.pages > 0 && seen.last_page.as_deref() == Some(records.as_str()) {
        end_sweep(app, poller, cursor, true).await?;
        return Ok(Step::Wait(poller.config.every));
    }
    if page.no_id > 0 {
        app.metrics.source_polled(&label, "no-id", page.no_id);
        tracing::warn!(source = %label, page = cursor.pages + 1, records = page.no_id, "records without an id (or version) were skipped");
    }
    let count = page.events.len() as u64;
    for chunk in page.events.chunks(INGEST_CHUNK) {
        ingest(app, poller, chunk).await?;
    }
    app.metrics.source_polled(&label, "ok", count);
    cursor.pages += 1;
    cursor.last_error = None;
    // Only the lease's holder moves the cursor: one that lost it while
    // this page was read leaves the cursor to the new holder.
    if !renew_lease(app, holder, lease_name, lease_ttl).await? {
        return Ok(Step::Wait(lease_ttl / 3));
    }
    let step = match page.next {
        Some(next) => {
            cursor.next = Some(next);
            save_cursor(app, poller, &cursor).await?;
            Step::Next
        }
        None => {
            end_sweep(app, poller, cursor, true).await?;
            Step::Wait(poller.config.every)
        }
    };
    // Remembered once the page is done, so a retry of it is no repeat.
    seen.last_page = Some(records);
    seen.urls.insert(digest(&url));
    Ok(step)
}

/// Takes or keeps the source's lease; false while another sidecar holds it.
async fn renew_lease(
    app: &Arc<App>,
    holder: &str,
    lease_name: &str,
    ttl: Duration,
) -> Result<bool, PageError> {
    let registry = app.registry.clone();
    let (lease, holder) = (lease_name.to_string(), holder.to_string());
    in_store(move || registry.take_lease(&lease, &holder, ttl))
        .await
        .map_err(store_failed)
}

/// Ends the sweep under way; a complete one records when it ended.
async fn end_sweep(
    app: &Arc<App>,
    poller: &Arc<Poller>,
    mut cursor: Cursor,
    complete: bool,
) -> Result<(), PageError> {
    cursor.next = None;
    if complete {
        cursor.completed_ms = Some(now_ms());
    } else {
        // An incomplete sweep waits `every` too, as if it had completed.
        cursor.completed_ms = Some(cursor.completed_ms.unwrap_or(0));
    }
    save_cursor(app, poller, &cursor).await
}

/// Ingests one chunk of a page's events, waiting out a full queue or the
/// tenant's ingest rate; ingest is idempotent, so a retry stores nothing twice.
async fn ingest(app: &Arc<App>, poller: &Arc<Poller>, chunk: &[String]) -> Result<(), PageError> {
    let body = format!("[{}]", chunk.join(","));
    for _ in 0..INGEST_TRIES {
        match crate::api::events::ingest_text(app, &poller.config.tenant, body.clone()).await {
            Ok(_) => return Ok(()),
            Err(err)
                if matches!(
                    err.status,
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                ) =>
            {
                let wait = err.retry_after.unwrap_or(Duration::from_secs(1));
                tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
            }
            Err(err) => return Err(PageError::Refused(err.message)),
        }
    }
    Err(PageError::Refused(format!(
        "the tenant's queue stayed full over {INGEST_TRIES} tries"
    )))
}

async fn load_cursor(app: &Arc<App>, poller: &Arc<Poller>) -> Result<Cursor, PageError> {
    let registry = app.registry.clone();
    let (tenant, name) = poller.cursor_key();
    let stored = in_store(move || registry.setting("poll-cursor", &tenant, &name))
        .await
        .map_err(store_failed)?;
    let cursor: Cursor = stored
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    // A cursor of other settings, or one whose next page is elsewhere, is
    // not followed: the sweep starts again from `url`.
    let next_is_ours = cursor.next.as_deref().is_none_or(|next| {
        next.parse::<Uri>()
            .is_ok_and(|uri| origin(&uri) == origin(&poller.url))
    });
    if cursor.settings != poller.fingerprint || !next_is_ours {
        return Ok(Cursor {
            settings: poller.fingerprint.clone(),
            ..Cursor::default()
        });
    }
    Ok(cursor)
}

async fn save_cursor(app: &Arc<App>, poller: &Arc<Poller>, cursor: &Cursor) -> Result<(), PageError> {
    let registry = app.registry.clone();
    let (tenant, name) = poller.cursor_key();
    let text = serde_json::to_string(cursor).expect("a cursor serialises");
    in_store(move || registry.put_setting("poll-cursor", &tenant, &name, &text))
        .await
        .map_err(store_failed)
}

/// Keeps the failure in the cursor, for `GET /v1/sources/{name}`.
async fn record_error(app: &Arc<App>, poller: &Arc<Poller>, err: &PageError) {
    if let Ok(mut cursor) = load_cursor(app, poller).await {
        cursor.last_error = Some(err.to_string());
        let _ = save_cursor(app, poller, &cursor).await;
    }
}

fn store_failed(err: String) -> PageError {
    PageError::Call(CallError::Failed(format!("the store failed: {err}")))
}
