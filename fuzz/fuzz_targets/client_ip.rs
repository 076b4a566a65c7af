//! CIDR parsing and the X-Forwarded-For walk never panic, and the client is never a trusted
//! proxy unless every hop is one: walking the chain from our side (the peer, then the header
//! entries from right to left, up to the first entry that is not an address), the answer is the
//! first untrusted address, or the farthest address when all of them are trusted. It is never
//! an address that is not in the chain.
//!
//! Input: `trusted CIDRs (comma-separated) | peer | X-Forwarded-For lines (one header each)`.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use otpgate::domain::net::{Cidr, client_ip};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '|');
    let cidrs = parts.next().unwrap_or("");
    let peer = parts.next().unwrap_or("");
    let headers: Vec<&str> = parts.next().unwrap_or("").split('\n').collect();
    let trusted: Vec<Cidr> = cidrs.split(',').filter_map(|c| c.parse().ok()).collect();
    let peer: IpAddr = peer.trim().parse().unwrap_or([10, 0, 0, 1].into());
    let ip = client_ip(Some(peer), &headers, &trusted).expect("a peer gives an ip");
    assert!(
        client_ip(None, &headers, &trusted).is_none(),
        "no peer, no ip"
    );

    // The chain as seen from our side: the peer, then each entry of the joined header from the
    // right, stopping at the first one that is not an address.
    let joined = headers.join(",");
    let mut chain = vec![peer.to_canonical()];
    chain.extend(
        joined
            .split(',')
            .rev()
            .map_while(|hop| hop.trim().parse::<IpAddr>().ok())
            .map(|hop| hop.to_canonical()),
    );
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|c| c.contains(*ip));
    let expected = chain
        .iter()
        .find(|hop| !is_trusted(hop))
        .or(chain.last())
        .copied()
        .expect("the chain holds the peer");
    assert_eq!(ip, expected, "chain {chain:?}, trusted {trusted:?}");
    if is_trusted(&ip) {
        assert!(
            chain.iter().all(is_trusted),
            "a trusted proxy {ip} was taken for the client while {chain:?} has an untrusted hop"
        );
    }
});
