//! The sidecar's one route table: every endpoint with its method, path and
//! a line on what it answers. The router is built from it, the dispatch in
//! `api::route` matches every `Endpoint` with no catch-all (so a new
//! endpoint cannot go unanswered), a test checks `docs/reference/http-api.md`
//! against it, and the cross-tenant isolation test probes every entry.

use std::sync::LazyLock;

use hyper::Method;

/// Every endpoint of the sidecar: one path with one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Healthz,
    Readyz,
    Metrics,
    Ingest,
    FindEvents,
    ShowEvent,
    Transform,
    ListChannels,
    ShowChannel,
    History,
    ListDestinations,
    Enable,
    Disable,
    Activate,
    Rollback,
    StartShadow,
    ShadowReport,
    StopShadow,
    Promote,
    StartBackfill,
    BackfillReport,
    CancelBackfill,
    StartRecording,
    Recording,
    StopRecording,
    ListModules,
    ListModuleVersions,
    Upload,
    ListLookups,
    ListLookupVersions,
    UploadLookup,
    ListDeadLetters,
    PurgeDeadLetters,
    ShowDeadLetter,
    PurgeDeadLetter,
    Replay,
    CreateTenant,
    CreateToken,
    SourceDelivery,
    PutDestination,
    ShowDestination,
    DeleteDestination,
    PutChannel,
    DeleteChannel,
    ListSources,
    ShowSource,
    PutSource,
    DeleteSource,
    Whoami,
}

/// One row of the route table.
#[derive(Debug, Clone, Copy)]
pub struct RouteEntry {
    /// The HTTP method, upper case.
    pub method: &'static str,
    /// The path, with `{name}` where a name or id stands.
    pub path: &'static str,
    /// What it answers, in a line (the HTTP reference says more).
    pub summary: &'static str,
    /// True for the `/v1` routes, which need a Bearer token and keep tenants apart.
    pub tenant_scoped: bool,
    pub(crate) endpoint: Endpoint,
}

macro_rules! table {
    ($($method:ident $path:literal => $endpoint:ident, $summary:literal;)*) => {
        &[$(RouteEntry {
            method: stringify!($method),
            path: $path,
            summary: $summary,
            // Sources are signed by their platform, not by a Bearer token.
            tenant_scoped: $path.as_bytes()[1] == b'v' && !matches!(Endpoint::$endpoint, Endpoint::SourceDelivery),
            endpoint: Endpoint::$endpoint,
        }),*]
    };
}

/// Every route, in the order the HTTP reference lists them.
pub const ROUTES: &[RouteEntry] = table! {
    GET "/healthz" => Healthz, "200 while the process runs";
    GET "/readyz" => Readyz, "200 when the store answers, every worker runs and no channel is degraded; else 503";
    GET "/metrics" => Metrics, "Prometheus text";
    GET "/v1/whoami" => Whoami, "who the token is: `{\"admin\": true}` or `{\"tenant\": \"acme\"}`";
    POST "/v1/events" => Ingest, "stores events durably (one JSON event, an array, or JSONL); 202 after the commit";
    GET "/v1/events" => FindEvents, "`?entity=SKU-1[&channel=]`: the newest events whose deliveries had that entity key";
    GET "/v1/events/{name}" => ShowEvent, "one event's story: accepted, each channel's pipeline outcome, every delivery attempt with request and response, where it is now";
    POST "/v1/channels/{name}/transform" => Transform, "the channel pipeline's outcomes; nothing is stored";
    GET "/v1/channels" => ListChannels, "the caller's channels with their switch and queue depth";
    GET "/v1/channels/{name}" => ShowChannel, "one channel";
    PUT "/v1/channels/{name}" => PutChannel, "create or replace one of the caller's channels: its destination and uploaded modules as steps";
    DELETE "/v1/channels/{name}" => DeleteChannel, "delete one of the caller's channels (409 while it holds undelivered events)";
    GET "/v1/channels/{name}/history" => History, "the channel's per-minute counts";
    POST "/v1/channels/{name}/enable" => Enable, "switch the channel on (also closes a tripped circuit breaker)";
    POST "/v1/channels/{name}/disable" => Disable, "switch the channel off";
    POST "/v1/channels/{name}/activate" => Activate, "run uploaded module versions as the channel's pipeline";
    POST "/v1/channels/{name}/rollback" => Rollback, "back to the pipeline active before the last activation";
    POST "/v1/channels/{name}/shadow" => StartShadow, "run a candidate pipeline beside the live one";
    GET "/v1/channels/{name}/shadow" => ShadowReport, "how the candidate's outputs differ from the live ones";
    DELETE "/v1/channels/{name}/shadow" => StopShadow, "stop the shadow";
    POST "/v1/channels/{name}/shadow/promote" => Promote, "make the shadow's pipeline the live one";
    POST "/v1/channels/{name}/backfill" => StartBackfill, "run stored events through a candidate pipeline";
    GET "/v1/channels/{name}/backfill" => BackfillReport, "the backfill's progress and differences";
    DELETE "/v1/channels/{name}/backfill" => CancelBackfill, "cancel the backfill";
    POST "/v1/channels/{name}/record" => StartRecording, "record live events as fixture cases, redacted";
    GET "/v1/channels/{name}/record" => Recording, "the recorded cases so far";
    DELETE "/v1/channels/{name}/record" => StopRecording, "stop the recording and answer its cases";
    GET "/v1/destinations" => ListDestinations, "the destinations of the caller's channels";
    PUT "/v1/destinations/{name}" => PutDestination, "create or replace one of the caller's destinations (the fields of a [[destination]] table, secrets inline)";
    GET "/v1/destinations/{name}" => ShowDestination, "one destination, its secrets and header values shown as \"set\"";
    DELETE "/v1/destinations/{name}" => DeleteDestination, "delete one of the caller's destinations that no channel uses";
    GET "/v1/modules" => ListModules, "the caller's module versions";
    GET "/v1/modules/{name}" => ListModuleVersions, "the versions of one module";
    PUT "/v1/modules/{name}" => Upload, "upload a module (checked, and its fixtures run, before it is stored)";
    GET "/v1/lookups" => ListLookups, "the caller's lookup table versions";
    GET "/v1/lookups/{name}" => ListLookupVersions, "the versions of one lookup table";
    PUT "/v1/lookups/{name}" => UploadLookup, "upload a lookup table (`application/json` or `text/csv`), checked before it is stored";
    GET "/v1/dead-letters" => ListDeadLetters, "dead letters, newest first";
    DELETE "/v1/dead-letters" => PurgeDeadLetters, "purge dead letters";
    GET "/v1/dead-letters/{name}" => ShowDeadLetter, "one dead letter in full";
    DELETE "/v1/dead-letters/{name}" => PurgeDeadLetter, "purge one dead letter";
    POST "/v1/dead-letters/{name}/replay" => Replay, "requeue a dead letter";
    PUT "/v1/tenants/{name}" => CreateTenant, "admin: create a tenant";
    POST "/v1/tenants/{name}/tokens" => CreateToken, "admin: issue a tenant a token";
    GET "/v1/sources" => ListSources, "the caller's sources: the operator's (read-only) and its own";
    GET "/v1/sources/{name}" => ShowSource, "one source, its secrets shown as \"set\", with a poll source's cursor";
    PUT "/v1/sources/{name}" => PutSource, "create or replace one of the caller's sources (the fields of a [[source]] table, secrets inline)";
    DELETE "/v1/sources/{name}" => DeleteSource, "delete one of the caller's sources";
    POST "/v1/sources/{name}/{source}" => SourceDelivery, "a platform's signed webhook for tenant {name}'s source: 202 as ingest, 401 unless its signature holds";
};

/// A path's routes: the method → endpoint pairs one pattern answers.
type Methods = Vec<(&'static str, Endpoint)>;

static ROUTER: LazyLock<matchit::Router<Methods>> = LazyLock::new(|| {
    let mut by_path: Vec<(&str, Methods)> = Vec::new();
    for entry in ROUTES {
        match by_path.iter_mut().find(|(path, _)| *path == entry.path) {
            Some((_, methods)) => methods.push((entry.method, entry.endpoint)),
            None => by_path.push((entry.path, vec![(entry.method, entry.endpoint)])),
        }
    }
    let mut router = matchit::Router::new();
    for (path, methods) in by_path {
        router.insert(path, methods).expect("the route table is valid");
    }
    router
});

/// A path that is a route: the endpoint for the request's method (`None`
/// when the path answers other methods only: 405) and its `{name}`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Found<'a> {
    pub endpoint: Option<Endpoint>,
    pub name: &'a str,
    /// A second name, where the path has one (`{source}`).
    pub source: &'a str,
}

/// The route of `method` on `path`, or `None` when the path is no route.
/// One trailing slash is ignored (`/healthz/` is `/healthz`).
pub(crate) fn find<'a>(method: &Method, path: &'a str) -> Option<Found<'a>> {
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    let found = ROUTER.at(path).ok()?;
    let endpoint = found
        .value
        .iter()
        .find(|(m, _)| *m == method.as_str())
        .map(|(_, e)| *e);
    Some(Found {
        endpoint,
        name: found.params.get("name").unwrap_or(""),
        source: found.params.get("source").unwrap_or(""),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(method: Method, path: &str) -> Option<(Option<Endpoint>, &str)> {
        find(&method, path).map(|f| (f.endpoint, f.name))
    }

    #[test]
    fn every_pattern_finds_its_route_and_nothing_else_matches() {
        assert_eq!(
            endpoint(Method::POST, "/v1/channels/b2b/transform"),
            Some((Some(Endpoint::Transform), "b2b"))
        );
        assert_eq!(
            endpoint(Method::POST, "/v1/dead-letters/42/replay"),
            Some((Some(Endpoint::Replay), "42"))
        );
        assert_eq!(
            endpoint(Method::GET, "/v1/channels"),
            Some((Some(Endpoint::ListChannels), ""))
        );
        assert_eq!(endpoint(Method::GET, "/v1/channels/a/b/c"), None);
        assert_eq!(endpoint(Method::GET, "/v1/modules/../../x"), None);
        assert_eq!(endpoint(Method::GET, "/nowhere"), None);
        assert_eq!(
            endpoint(Method::GET, "/healthz/"),
            Some((Some(Endpoint::Healthz), ""))
        );
        assert_eq!(
            endpoint(Method::GET, "/v1/channels/x/"),
            Some((Some(Endpoint::ShowChannel), "x"))
        );
        assert_eq!(endpoint(Method::PATCH, "/v1/channels"), Some((None, "")));
        for entry in ROUTES {
            let path = entry.path.replace("{name}", "x");
            let method = Method::from_bytes(entry.method.as_bytes()).unwrap();
            assert_eq!(
                find(&method, &path).and_then(|f| f.endpoint),
                Some(entry.endpoint),
                "{} {}",
                entry.method,
                entry.path
            );
        }
    }

    #[test]
    fn every_endpoint_has_one_row() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(a.endpoint != b.endpoint, "{:?} twice", a.endpoint);
                assert!(
                    (a.method, a.path) != (b.method, b.path),
                    "{} {} twice",
                    a.method,
                    a.path
                );
            }
        }
    }
}
