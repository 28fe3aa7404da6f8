//! Where a Web Push may go. A subscription's endpoint is an address a customer hands us,
//! so without a guard they could make the service call anything it can reach (an internal
//! API, the cloud metadata service). Outside local runs only public addresses are dialled:
//! IP-literal hosts are checked as they are, names through a resolver that drops every
//! non-public address it is given.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether `ip` is a public unicast address (not loopback, private, link-local, shared,
/// unspecified, broadcast, documentation, multicast or unique-local).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        // 100.64.0.0/10, carrier-grade NAT (often cluster-internal).
        || (a == 100 && (64..128).contains(&b))
        // 198.18.0.0/15, benchmarking.
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7 unique local, fe80::/10 link local, 2001:db8::/32 documentation.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first == 0x2001 && ip.segments()[1] == 0x0db8))
}

/// Whether `host` of an endpoint URL may be dialled: `localhost` and non-public IP
/// literals are refused (names are checked again when resolved, by [`PublicOnly`]).
pub fn host_allowed(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name != "localhost" && !name.ends_with(".localhost")
        }
        url::Host::Ipv4(ip) => is_public(IpAddr::V4(*ip)),
        url::Host::Ipv6(ip) => is_public(IpAddr::V6(*ip)),
    }
}

/// A resolver that keeps only public addresses; a name with none fails to resolve.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let public: Vec<SocketAddr> = found.filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{} resolves to no public address", name.as_str()).into());
            }
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_not_public() -> Result<(), Box<dyn std::error::Error>> {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_public(ip.parse()?), "{ip}");
        }
        for ip in [
            "142.250.74.206",
            "17.253.144.10",
            "2a00:1450:4007:80c::200a",
        ] {
            assert!(is_public(ip.parse()?), "{ip}");
        }
        Ok(())
    }

    #[test]
    fn localhost_and_private_literals_are_refused_as_hosts() {
        let allowed = |u: &str| {
            url::Url::parse(u)
                .ok()
                .and_then(|u| u.host().map(|h| host_allowed(&h)))
                == Some(true)
        };
        assert!(!allowed("https://localhost/x"));
        assert!(!allowed("https://api.localhost/x"));
        assert!(!allowed("https://10.0.0.5:9200/_search"));
        assert!(!allowed("https://[::1]/x"));
        assert!(allowed("https://fcm.googleapis.com/fcm/send/x"));
    }
}
