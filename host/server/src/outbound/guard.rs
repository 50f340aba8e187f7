//! No SSRF: an API a tenant names (a polled source, a destination, a
//! token endpoint) may not be reached on the sidecar's own networks.
//!
//! The check runs where the connection is made, on the addresses the name
//! resolved to at that moment, so a name that resolves to a public address
//! when it is set up and to `127.0.0.1` when it is called (DNS rebinding)
//! is still refused. Literal addresses are checked the same way.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which addresses a tenant's URL may reach: public ones, and the ranges
/// the operator opened with `allow-networks`.
#[derive(Debug, Clone, Default)]
pub struct NetworkPolicy {
    /// Ranges opened by the operator, although they are not public.
    pub allow: Vec<IpNet>,
}

/// Why a tenant's URL was not called.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{host}` resolves to {address}, a {} address, which is not public (the operator may open it with `allow-networks`)",
    class(*address).unwrap_or("refused")
)]
pub struct Refused {
    /// The host as named.
    pub host: String,
    /// The first address refused.
    pub address: IpAddr,
}

impl NetworkPolicy {
    /// Whether `address` may be reached.
    pub fn allows(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.allow.iter().any(|net| net.contains(&address)) || class(address).is_none()
    }

    /// `Ok` if `host` is a name (checked when it resolves) or an allowed
    /// address: the early check when a tenant sets a URL up.
    pub fn check_host(&self, host: &str) -> Result<(), Refused> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let refused = |address| Refused {
            host: host.to_string(),
            address,
        };
        if let Ok(address) = bare.parse::<IpAddr>() {
            return if self.allows(address) {
                Ok(())
            } else {
                Err(refused(address))
            };
        }
        let lower = bare.to_ascii_lowercase();
        if lower == "localhost" || lower.ends_with(".localhost") {
            return Err(refused(IpAddr::from([127, 0, 0, 1])));
        }
        Ok(())
    }
}

/// The kind of non-public address `address` is, or `None` for a public
/// one: loopback, private, link-local (cloud metadata's 169.254.169.254),
/// CGNAT, unique-local, multicast, unspecified, documentation, benchmarking
/// or reserved. IPv4-compatible and 6to4 addresses are judged by the IPv4
/// address they carry.
pub fn class(address: IpAddr) -> Option<&'static str> {
    match address.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            Some(if v4.is_loopback() {
                "loopback"
            } else if v4.is_private() {
                "private"
            } else if v4.is_link_local() {
                "link-local (cloud metadata)"
            } else if a == 100 && (64..128).contains(&b) {
                "CGNAT"
            } else if v4.is_multicast() {
                "multicast"
            } else if v4.is_unspecified() || a == 0 {
                "unspecified"
            } else if v4.is_broadcast() || a >= 240 || (a == 192 && b == 0 && c == 0) {
                "reserved"
            } else if v4.is_documentation() || (a == 198 && (b == 18 || b == 19)) {
                "documentation or benchmarking"
            } else {
                return None;
            })
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let first = segments[0];
            let embedded = |high: u16, low: u16| {
                let [a, b] = high.to_be_bytes();
                let [c, d] = low.to_be_bytes();
                IpAddr::from([a, b, c, d])
            };
            if segments[..6].iter().all(|s| *s == 0) && !v6.is_loopback() && !v6.is_unspecified() {
                return class(embedded(segments[6], segments[7]));
            }
            if first == 0x2002 {
                return class(embedded(segments[1], segments[2]));
            }
            Some(if v6.is_loopback() {
                "loopback"
            } else if v6.is_unspecified() {
                "unspecified"
            } else if v6.is_multicast() {
                "multicast"
            } else if (first & 0xfe00) == 0xfc00 {
                "unique-local"
            } else if (first & 0xffc0) == 0xfe80 || (first & 0xffc0) == 0xfec0 {
                "link-local"
            } else if first == 0x2001 && segments[1] == 0x0db8 {
                "documentation or benchmarking"
            } else if first == 0x0064 && segments[1] == 0xff9b {
                "reserved"
            } else {
                return None;
            })
        }
    }
}

/// Resolves names with the system resolver and, under a policy, keeps
/// only the addresses it allows; none left is an error.
#[derive(Clone, Default)]
pub struct GuardedResolver {
    policy: Option<Arc<NetworkPolicy>>,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let Some(policy) = policy else {
                return Ok(found.into_iter());
            };
            let (allowed, refused): (Vec<_>, Vec<_>) =
                found.into_iter().partition(|addr| policy.allows(addr.ip()));
            match (allowed.is_empty(), refused.first()) {
                (true, Some(first)) => Err(Box::new(Refused {
                    host,
                    address: first.ip(),
                }) as BoxError),
                _ => Ok(allowed.into_iter()),
            }
        })
    }
}

/// The TCP connector of every outbound client: under a policy it refuses
/// literal addresses that the policy does not allow, and resolves names
/// through a [`GuardedResolver`].
#[derive(Clone)]
pub struct GuardedConnector {
    inner: HttpConnector<GuardedResolver>,
    policy: Option<Arc<NetworkPolicy>>,
}

impl GuardedConnector {
    /// A connector; `policy` `None` trusts every address (the operator's own URLs).
    pub fn new(policy: Option<Arc<NetworkPolicy>>) -> Self {
        let mut inner = HttpConnector::new_with_resolver(GuardedResolver {
            policy: policy.clone(),
        });
        inner.enforce_http(false);
        inner.set_nodelay(true);
        inner.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
        Self { inner, policy }
    }
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if let (Some(policy), Some(host)) = (&self.policy, uri.host()) {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(address) = bare.parse::<IpAddr>()
                && !policy.allows(address)
            {
                let refused = Refused {
                    host: host.to_string(),
                    address,
                };
                return Box::pin(async move { Err(Box::new(refused) as BoxError) });
            }
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// Whether `err` (from a client request) is a [`Refused`] somewhere in its chain.
pub fn refused_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return Some(refused);
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_and_opened_ranges_are_allowed() {
        let policy = NetworkPolicy::default();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "fec0::1",
        ] {
            assert!(!policy.allows(refused.parse().unwrap()), "{refused}");
        }
        for allowed in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
        ] {
            assert!(policy.allows(allowed.parse().unwrap()), "{allowed}");
        }
        let opened = NetworkPolicy {
            allow: vec!["10.1.0.0/16".parse().unwrap()],
        };
        assert!(opened.allows("10.1.9.9".parse().unwrap()));
        assert!(!opened.allows("10.2.0.1".parse().unwrap()));
        assert!(policy.check_host("[::1]").is_err());
        assert!(policy.check_host("LOCALHOST").is_err());
        assert!(policy.check_host("api.example.com").is_ok());
    }

    /// A name is checked on what it resolves to when the connection is
    /// made (so DNS rebinding gets nowhere): `localhost`, which passes no
    /// early check here, resolves to loopback and is refused.
    #[tokio::test]
    async fn names_are_checked_on_the_addresses_they_resolve_to_at_connect_time() {
        use tower_service::Service;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let uri: Uri = format!("http://localhost:{port}/").parse().unwrap();
        let mut guarded = GuardedConnector::new(Some(Arc::new(NetworkPolicy::default())));
        let err = guarded.call(uri.clone()).await.expect_err("refused");
        let refused = refused_in(err.as_ref()).expect("a refusal");
        assert!(refused.address.is_loopback(), "{refused}");
        let literal: Uri = format!("http://127.0.0.1:{port}/").parse().unwrap();
        assert!(guarded.call(literal.clone()).await.is_err());
        // The operator's own URLs are trusted, and opened ranges too.
        assert!(GuardedConnector::new(None).call(uri.clone()).await.is_ok());
        let opened = NetworkPolicy {
            allow: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        };
        assert!(
            GuardedConnector::new(Some(Arc::new(opened)))
                .call(literal)
                .await
                .is_ok()
        );
    }
}
