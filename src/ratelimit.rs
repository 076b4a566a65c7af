//! Abuse controls in two layers.
//!
//! 1. **Front door, per replica**: a governor limiter keyed by client IP on `/api/*` that sheds
//!    floods before they cost a store round trip. Its keys are swept on a timer.
//! 2. **Quotas, cluster-wide**: GCRA buckets in the store, checked by the same atomic script that
//!    stores (or checks) a code, so a login costs one round trip with every quota on. The
//!    policies, their keys and limits are decided here; the store only runs the arithmetic.
//!
//! The client IP is the socket peer, unless that peer is a trusted proxy (`TRUSTED_PROXIES`):
//! then it is the right-most `X-Forwarded-For` address that is not a trusted proxy.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota as GovernorQuota, RateLimiter};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

use crate::auth::phone::Phone;
use crate::error::Error;
use crate::telemetry::Metrics;

/// How often idle front-door keys are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A named limit: at most `limit` events per `window` for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// Policy name, as sent in `RateLimit-Policy` (`otp-phone`, `otp-ip`, …).
    pub policy: &'static str,
    /// What is counted (a phone, an IP, a prefix, a country…), without the store's prefix.
    pub key: String,
    /// Events allowed per window.
    pub limit: u32,
    /// Its window.
    pub window: Duration,
    /// The bucket belongs to the phone of the call: a Redis Cluster keeps it in the phone's
    /// hash slot, so it is charged in the same atomic script as the phone's code.
    pub with_phone: bool,
}

/// How the quotas name a phone without the number itself: keyed hashes (made by the OTP
/// service with the server pepper), so no store key, dump or `MONITOR` shows a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    /// The phone.
    pub phone: String,
    /// Its number block (the number without its last four digits).
    pub prefix: String,
}

/// Where a quota stands after an allowed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    /// Events still allowed right now.
    pub remaining: u32,
    /// Time until the bucket is empty again (all events forgotten).
    pub reset: Duration,
}

/// A quota that refused an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The policy that refused.
    pub policy: &'static str,
    /// Its limit.
    pub limit: u32,
    /// Its window.
    pub window: Duration,
    /// Time until the event would be allowed.
    pub retry_after: Duration,
}

impl Refusal {
    /// The 429 problem for this refusal.
    pub fn into_error(self) -> Error {
        Error::RateLimited {
            retry_after: crate::auth::otp::whole_seconds(self.retry_after),
            policy: self.policy,
            limit: self.limit,
            window: self.window.as_secs(),
        }
    }
}

/// The `RateLimit-Policy` and `RateLimit` header values (IETF httpapi ratelimit-headers draft)
/// for quotas that allowed an event.
pub fn headers(quotas: &[Quota], states: &[QuotaState]) -> Option<(String, String)> {
    if quotas.is_empty() {
        return None;
    }
    let mut policy = String::new();
    let mut current = String::new();
    for (q, s) in quotas.iter().zip(states) {
        let sep = if policy.is_empty() { "" } else { ", " };
        let _ = write!(
            policy,
            "{sep}\"{}\";q={};w={}",
            q.policy,
            q.limit,
            q.window.as_secs()
        );
        let _ = write!(
            current,
            "{sep}\"{}\";r={};t={}",
            q.policy,
            s.remaining,
            s.reset.as_secs_f64().ceil() as u64
        );
    }
    Some((policy, current))
}

/// The GCRA arithmetic both stores share (the Redis scripts do the same in Lua).
///
/// A bucket holds its "theoretical arrival time" `tat` in milliseconds. With an emission
/// interval `t = window / limit`, an event at `now` is allowed when
/// `max(tat, now) + t - now <= window`, and then moves `tat` to `max(tat, now) + t`.
pub mod gcra {
    /// The interval between events in milliseconds (at least 1).
    pub fn interval_ms(limit: u32, window_ms: u64) -> u64 {
        (window_ms / u64::from(limit.max(1))).max(1)
    }

    /// `Ok(new_tat)` when an event at `now` fits, else `Err(retry_after_ms)`.
    pub fn check(tat: u64, now: u64, limit: u32, window_ms: u64) -> Result<u64, u64> {
        let new_tat = tat.max(now) + interval_ms(limit, window_ms);
        if new_tat - now > window_ms {
            Err(new_tat - now - window_ms)
        } else {
            Ok(new_tat)
        }
    }

    /// Events left after moving to `new_tat` at `now`.
    pub fn remaining(new_tat: u64, now: u64, limit: u32, window_ms: u64) -> u32 {
        let used = new_tat.saturating_sub(now);
        let left = window_ms.saturating_sub(used) / interval_ms(limit, window_ms);
        u32::try_from(left).unwrap_or(u32::MAX).min(limit)
    }
}

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

/// Cluster-wide limits, from the settings.
#[derive(Debug, Clone)]
pub struct QuotaPolicy {
    /// Off for benchmarks only (`RATE_LIMIT_ENABLED=false`).
    pub enabled: bool,
    /// Sends per phone per hour.
    pub phone_per_hour: u32,
    /// Sends per client IP per hour.
    pub ip_per_hour: u32,
    /// Sends per number prefix (the number without its last four digits) per hour.
    pub prefix_per_hour: u32,
    /// Verify attempts per client IP per hour.
    pub verify_ip_per_hour: u32,
    /// Failed verifications per phone per hour, across codes.
    pub verify_failures_per_phone_per_hour: u32,
    /// Login intents per client IP per hour.
    pub intent_ip_per_hour: u32,
    /// Login intents per minute over all clients.
    pub intent_global_per_minute: u32,
    /// Sends per day over all numbers (0 = off).
    pub daily_send_cap: u32,
    /// Sends per day per country (ISO 3166 alpha-2 → cap).
    pub country_daily_caps: Vec<(String, u32)>,
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

impl QuotaPolicy {
    fn quota(policy: &'static str, key: String, limit: u32, window: Duration) -> Option<Quota> {
        (limit > 0).then_some(Quota {
            policy,
            key,
            limit,
            window,
            with_phone: false,
        })
    }

    fn phone_quota(
        policy: &'static str,
        subjects: &Subjects,
        limit: u32,
        window: Duration,
    ) -> Option<Quota> {
        (limit > 0).then_some(Quota {
            policy,
            key: format!("{policy}:{}", subjects.phone),
            limit,
            window,
            with_phone: true,
        })
    }

    /// The quotas one code send is charged against.
    pub fn for_send(&self, phone: &Phone, subjects: &Subjects, ip: Option<IpAddr>) -> Vec<Quota> {
        if !self.enabled {
            return Vec::new();
        }
        let country = phone.region_code();
        let country_cap = self
            .country_daily_caps
            .iter()
            .find(|(c, _)| Some(c.as_str()) == country.as_deref())
            .map_or(0, |(_, cap)| *cap);
        [
            Self::phone_quota("otp-phone", subjects, self.phone_per_hour, HOUR),
            ip.and_then(|ip| Self::quota("otp-ip", format!("ip:{ip}"), self.ip_per_hour, HOUR)),
            Self::quota(
                "otp-prefix",
                format!("prefix:{}", subjects.prefix),
                self.prefix_per_hour,
                HOUR,
            ),
            Self::quota("otp-daily", "global".into(), self.daily_send_cap, DAY),
            Self::quota(
                "otp-country-daily",
                format!("country:{}", country.unwrap_or_default()),
                country_cap,
                DAY,
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The quotas one login intent is charged against: per client IP and over all clients.
    pub fn for_intent(&self, ip: Option<IpAddr>) -> Vec<Quota> {
        if !self.enabled {
            return Vec::new();
        }
        [
            ip.and_then(|ip| {
                Self::quota(
                    "intent-ip",
                    format!("intent-ip:{ip}"),
                    self.intent_ip_per_hour,
                    HOUR,
                )
            }),
            Self::quota(
                "intent-global",
                "intent-global".into(),
                self.intent_global_per_minute,
                Duration::from_secs(60),
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The quotas of one verification: attempts (charged every time) and failures (checked
    /// every time, charged on a wrong code).
    pub fn for_verify(&self, subjects: &Subjects, ip: Option<IpAddr>) -> (Vec<Quota>, Vec<Quota>) {
        if !self.enabled {
            return (Vec::new(), Vec::new());
        }
        let attempts = ip
            .and_then(|ip| {
                Self::quota(
                    "verify-ip",
                    format!("verify-ip:{ip}"),
                    self.verify_ip_per_hour,
                    HOUR,
                )
            })
            .into_iter()
            .collect();
        let failures = Self::phone_quota(
            "verify-phone-failures",
            subjects,
            self.verify_failures_per_phone_per_hour,
            HOUR,
        )
        .into_iter()
        .collect();
        (attempts, failures)
    }
}

/// Parses `IN=50000,GB=2000`.
pub fn parse_country_caps(text: &str) -> Result<Vec<(String, u32)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (country, cap) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not COUNTRY=CAP"))?;
            let country = parse_country(country)?;
            let cap = cap
                .trim()
                .parse()
                .map_err(|_| format!("{pair:?}: the cap is not a number"))?;
            Ok((country, cap))
        })
        .collect()
}

/// Parses an ISO 3166 alpha-2 code that libphonenumber knows.
pub fn parse_country(code: &str) -> Result<String, String> {
    let code = code.trim().to_ascii_uppercase();
    code.parse::<phonenumber::country::Id>()
        .map(|_| code.clone())
        .map_err(|_| format!("{code:?} is not an ISO 3166 alpha-2 country code"))
}

/// The per-replica front door: one GCRA bucket per client IP.
pub struct FrontDoor {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    per_second: u32,
}

impl FrontDoor {
    /// A limiter of `per_second` requests with bursts of `burst`; `None` when `per_second` is 0.
    pub fn new(per_second: u32, burst: u32) -> Option<Arc<Self>> {
        let rate = NonZeroU32::new(per_second)?;
        let burst_nz = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
        let quota = GovernorQuota::per_second(rate).allow_burst(burst_nz);
        Some(Arc::new(Self {
            limiter: RateLimiter::keyed(quota),
            per_second,
        }))
    }

    /// Drops idle keys every minute while the limiter lives (governor#171: keyed limiters
    /// otherwise keep every IP they ever saw).
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(door) = weak.upgrade() else { break };
                door.limiter.retain_recent();
                door.limiter.shrink_to_fit();
            }
        });
    }

    /// Keys currently held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// `Err(wait)` when `ip` is over its rate.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.limiter
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Paths the front door leaves alone: the probes (a kubelet or Prometheus must never be
/// refused) and the webhooks (Meta and Telegram send from few addresses and are authenticated
/// by signature; a per-IP limit would only make them retry).
const UNGATED: [&str; 5] = [
    "/health",
    "/ready",
    "/metrics",
    "/api/whatsapp/webhook",
    "/api/telegram/webhook",
];

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

/// Middleware: finds the client IP, stores its bucket ([`ip_bucket`]) in the request for the
/// quotas, and applies the front door (when there is one) to every path but the probes and the
/// webhooks.
pub struct ClientGate {
    /// Trusted proxies.
    pub trusted: Arc<Vec<Cidr>>,
    /// The front door, when enabled.
    pub door: Option<Arc<FrontDoor>>,
    /// Where front-door refusals are counted.
    pub metrics: Arc<Metrics>,
    /// `RATE_LIMIT_IPV6_PREFIX`: bits of an IPv6 address that identify one client.
    pub v6_prefix: u8,
}

impl<E: Endpoint> Middleware<E> for ClientGate {
    type Output = ClientGateEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        ClientGateEndpoint {
            inner: ep,
            trusted: self.trusted.clone(),
            door: self.door.clone(),
            metrics: self.metrics.clone(),
            v6_prefix: self.v6_prefix,
        }
    }
}

/// The endpoint [`ClientGate`] wraps.
pub struct ClientGateEndpoint<E> {
    inner: E,
    trusted: Arc<Vec<Cidr>>,
    door: Option<Arc<FrontDoor>>,
    metrics: Arc<Metrics>,
    v6_prefix: u8,
}

impl<E: Endpoint> Endpoint for ClientGateEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Self::Output> {
        let peer = req.remote_addr().as_socket_addr().map(|a| a.ip());
        let forwarded: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let ip = client_ip(peer, &forwarded, &self.trusted).map(|ip| ip_bucket(ip, self.v6_prefix));
        let gated = !UNGATED.contains(&req.uri().path());
        if let (Some(door), Some(ip), true) = (&self.door, ip, gated)
            && let Err(wait) = door.check(ip)
        {
            self.metrics.refused("frontdoor");
            tracing::debug!("front door refused a request");
            return Err(Error::RateLimited {
                retry_after: crate::auth::otp::whole_seconds(wait),
                policy: "frontdoor",
                limit: door.per_second,
                window: 1,
            }
            .into());
        }
        if let Some(ip) = ip {
            req.extensions_mut().insert(ClientIp(ip));
        }
        self.inner.call(req).await.map(IntoResponse::into_response)
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

    #[test]
    fn gcra_allows_the_limit_then_refuses() {
        let (limit, window) = (3, 3_600_000);
        let mut tat = 0;
        let now = 1_000_000;
        for left in (0..3).rev() {
            tat = gcra::check(tat, now, limit, window).unwrap();
            assert_eq!(gcra::remaining(tat, now, limit, window), left);
        }
        let retry = gcra::check(tat, now, limit, window).unwrap_err();
        assert_eq!(retry, 1_200_000, "one slot frees after window / limit");
        // After that interval one more event fits.
        assert!(gcra::check(tat, now + retry, limit, window).is_ok());
    }

    #[test]
    fn country_caps_parse() {
        assert_eq!(
            parse_country_caps("IN=50000, gb=2000").unwrap(),
            vec![("IN".to_string(), 50000), ("GB".to_string(), 2000)]
        );
        assert!(parse_country_caps("XX=1").is_err());
        assert!(parse_country_caps("IN").is_err());
        assert!(parse_country_caps("IN=lots").is_err());
    }

    #[test]
    fn header_values() {
        let quotas = vec![
            Quota {
                policy: "otp-phone",
                key: "p".into(),
                limit: 5,
                window: HOUR,
                with_phone: true,
            },
            Quota {
                policy: "otp-ip",
                key: "i".into(),
                limit: 30,
                window: HOUR,
                with_phone: false,
            },
        ];
        let states = vec![
            QuotaState {
                remaining: 4,
                reset: Duration::from_millis(720_000),
            },
            QuotaState {
                remaining: 29,
                reset: Duration::from_millis(119_500),
            },
        ];
        let (policy, current) = headers(&quotas, &states).unwrap();
        assert_eq!(policy, "\"otp-phone\";q=5;w=3600, \"otp-ip\";q=30;w=3600");
        assert_eq!(current, "\"otp-phone\";r=4;t=720, \"otp-ip\";r=29;t=120");
        assert!(headers(&[], &[]).is_none());
    }
}
