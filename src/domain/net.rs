//! Client addresses: CIDR blocks, the client IP behind trusted proxies, and the bucket the
//! limits count an address in (IPv6 by prefix).

use std::net::IpAddr;
use std::str::FromStr;

/// A CIDR block such as `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP or CIDR"))?;
        let network = network.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has a bad prefix length"))?,
        };
        Ok(Cidr { network, prefix })
    }
}

/// The client address as the quotas see it: its [`ip_bucket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Finds the client IP of a request: the peer, or, behind trusted proxies, the right-most
/// forwarded address that is not a trusted proxy.
pub fn client_ip(peer: Option<IpAddr>, forwarded_for: &[&str], trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let mut client = peer;
    for hop in forwarded_for.iter().rev().flat_map(|h| h.rsplit(',')) {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // Garbage in the chain: stop at the last address we could trust.
            break;
        };
        client = ip.to_canonical();
        if !is_trusted(client) {
            break;
        }
    }
    Some(client)
}

/// The address the limits count: IPv4 as is, IPv6 cut to its first `v6_prefix` bits (a holder
/// of a /64 has 2^64 addresses; counting each apart would give it an unlimited budget).
pub fn ip_bucket(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(v6_prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn cidr_matching() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
    }

    #[test]
    fn forwarded_for_is_trusted_only_from_trusted_peers() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        let lb: IpAddr = "10.0.0.5".parse().unwrap();
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        // Untrusted peer: the header changes nothing.
        assert_eq!(
            client_ip(Some(outsider), &["1.2.3.4"], &trusted),
            Some(outsider)
        );
        // Trusted peer: the right-most untrusted hop is the client; spoofed left parts are ignored.
        assert_eq!(
            client_ip(Some(lb), &["6.6.6.6, 1.2.3.4, 10.0.0.7"], &trusted),
            Some("1.2.3.4".parse().unwrap())
        );
        // Several headers are one list.
        assert_eq!(
            client_ip(Some(lb), &["6.6.6.6", "1.2.3.4"], &trusted),
            Some("1.2.3.4".parse().unwrap())
        );
        // No header, or only proxies: the last address seen.
        assert_eq!(client_ip(Some(lb), &[], &trusted), Some(lb));
        assert_eq!(
            client_ip(Some(lb), &["10.0.0.9"], &trusted),
            Some("10.0.0.9".parse().unwrap())
        );
        // Garbage stops the walk at the last good address.
        assert_eq!(client_ip(Some(lb), &["1.2.3.4, junk"], &trusted), Some(lb));
    }

    #[test]
    fn ipv6_clients_are_bucketed_by_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            ip_bucket(ip("2001:db8:1:2:aaaa::1"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            ip_bucket(ip("2001:db8:1:2:aaaa::1"), 64),
            ip_bucket(ip("2001:db8:1:2:ffff:1:2:3"), 64)
        );
        assert_ne!(
            ip_bucket(ip("2001:db8:1:3::1"), 64),
            ip_bucket(ip("2001:db8:1:2::1"), 64)
        );
        assert_eq!(ip_bucket(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(ip_bucket(ip("203.0.113.7"), 64), ip("203.0.113.7"));
        assert_eq!(ip_bucket(ip("::ffff:203.0.113.7"), 64), ip("203.0.113.7"));
    }
}
