//! The sidecar's routes as a table: each path pattern names a [`Route`];
//! which methods a route answers is decided by the handler's `match`, and a
//! known route with another method answers 405.

use std::sync::LazyLock;

/// Every endpoint of the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/healthz`
    Healthz,
    /// `/readyz`
    Readyz,
    /// `/metrics`
    Metrics,
    /// `/v1/channels/{name}/transform`
    Transform,
    /// `/v1/events`
    Events,
    /// `/v1/channels`
    Channels,
    /// `/v1/channels/{name}`
    Channel,
    /// `/v1/channels/{name}/history`
    History,
    /// `/v1/destinations`
    Destinations,
    /// `/v1/channels/{name}/enable`
    Enable,
    /// `/v1/channels/{name}/disable`
    Disable,
    /// `/v1/channels/{name}/activate`
    Activate,
    /// `/v1/channels/{name}/rollback`
    Rollback,
    /// `/v1/channels/{name}/shadow`
    Shadow,
    /// `/v1/channels/{name}/shadow/promote`
    Promote,
    /// `/v1/channels/{name}/backfill`
    Backfill,
    /// `/v1/channels/{name}/record`
    Record,
    /// `/v1/modules`
    Modules,
    /// `/v1/modules/{name}`
    Module,
    /// `/v1/dead-letters`
    DeadLetters,
    /// `/v1/dead-letters/{id}`
    DeadLetter,
    /// `/v1/dead-letters/{id}/replay`
    Replay,
    /// `/v1/tenants/{name}`
    Tenant,
    /// `/v1/tenants/{name}/tokens`
    Tokens,
}

const TABLE: &[(&str, Route)] = &[
    ("/healthz", Route::Healthz),
    ("/readyz", Route::Readyz),
    ("/metrics", Route::Metrics),
    ("/v1/events", Route::Events),
    ("/v1/channels", Route::Channels),
    ("/v1/channels/{name}", Route::Channel),
    ("/v1/channels/{name}/transform", Route::Transform),
    ("/v1/channels/{name}/history", Route::History),
    ("/v1/destinations", Route::Destinations),
    ("/v1/channels/{name}/enable", Route::Enable),
    ("/v1/channels/{name}/disable", Route::Disable),
    ("/v1/channels/{name}/activate", Route::Activate),
    ("/v1/channels/{name}/rollback", Route::Rollback),
    ("/v1/channels/{name}/shadow", Route::Shadow),
    ("/v1/channels/{name}/shadow/promote", Route::Promote),
    ("/v1/channels/{name}/backfill", Route::Backfill),
    ("/v1/channels/{name}/record", Route::Record),
    ("/v1/modules", Route::Modules),
    ("/v1/modules/{name}", Route::Module),
    ("/v1/dead-letters", Route::DeadLetters),
    ("/v1/dead-letters/{name}", Route::DeadLetter),
    ("/v1/dead-letters/{name}/replay", Route::Replay),
    ("/v1/tenants/{name}", Route::Tenant),
    ("/v1/tenants/{name}/tokens", Route::Tokens),
];

static ROUTER: LazyLock<matchit::Router<Route>> = LazyLock::new(|| {
    let mut router = matchit::Router::new();
    for (pattern, route) in TABLE {
        router.insert(*pattern, *route).expect("the route table is valid");
    }
    router
});

/// The route of `path` and its `{name}` parameter (empty when it has none).
/// One trailing slash is ignored (`/healthz/` is `/healthz`).
pub fn find(path: &str) -> Option<(Route, &str)> {
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    let found = ROUTER.at(path).ok()?;
    Some((*found.value, found.params.get("name").unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_finds_its_route_and_nothing_else_matches() {
        assert_eq!(
            find("/v1/channels/b2b/transform"),
            Some((Route::Transform, "b2b"))
        );
        assert_eq!(find("/v1/dead-letters/42/replay"), Some((Route::Replay, "42")));
        assert_eq!(find("/v1/channels"), Some((Route::Channels, "")));
        assert_eq!(find("/v1/channels/a/b/c"), None);
        assert_eq!(find("/v1/modules/../../x"), None);
        assert_eq!(find("/nowhere"), None);
        assert_eq!(find("/healthz/"), Some((Route::Healthz, "")));
        assert_eq!(find("/v1/channels/x/"), Some((Route::Channel, "x")));
        for (pattern, route) in TABLE {
            let path = pattern.replace("{name}", "x");
            assert_eq!(find(&path).map(|(r, _)| r), Some(*route), "{pattern}");
        }
    }
}
