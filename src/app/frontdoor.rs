//! The per-replica front door: a governor limiter keyed by client IP (its bucket) that sheds
//! floods before they cost a store round trip, on every path but the probes and the webhooks.
//! Its keys are swept on a timer. It also finds the client IP of each request for the quotas,
//! and says which paths the bound on requests served at once leaves alone ([`is_gated`]).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota as GovernorQuota, RateLimiter};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

use crate::domain::net::{Cidr, ClientIp, client_ip, ip_bucket};
use crate::domain::quota::whole_seconds;
use crate::error::Error;
use crate::telemetry::Metrics;

/// How often idle front-door keys are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

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
const UNGATED: [&str; 6] = [
    "/health",
    "/ready",
    "/metrics",
    "/api/whatsapp/webhook",
    "/api/telegram/webhook",
    "/api/twilio/status",
];

/// Whether the front door and the in-flight bound stand before `path` (not the probes, nor the
/// webhooks).
pub fn is_gated(path: &str) -> bool {
    !UNGATED.contains(&path)
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
        let gated = is_gated(req.uri().path());
        if let (Some(door), Some(ip), true) = (&self.door, ip, gated)
            && let Err(wait) = door.check(ip)
        {
            self.metrics.refused("frontdoor");
            tracing::debug!("front door refused a request");
            return Err(Error::RateLimited {
                retry_after: whole_seconds(wait),
                policy: "frontdoor",
                limit: door.per_second,
                window: 1,
            }
            .into());
        }
        if let Some(ip) = ip {
            req.extensions_mut().insert(ClientIp(ip));
        }
        // Boxed, as in `ObserveEndpoint`: the layers above stay small.
        Box::pin(self.inner.call(req))
            .await
            .map(IntoResponse::into_response)
    }
}
