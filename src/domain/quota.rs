//! Quotas: named limits (`otp-phone`, `otp-ip`, …), where a bucket stands, why an event was
//! refused, the GCRA arithmetic every store shares, and the policy that decides which quotas an
//! event is charged to. No I/O: the store runs the arithmetic against shared state.

use std::net::IpAddr;
use std::time::Duration;

use super::phone::Phone;

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

    /// The quota of one Play Integrity check (a call to Google, whose daily quota is the app's):
    /// per client IP, as many per hour as codes (`integrity-ip`).
    pub fn for_integrity(&self, ip: Option<IpAddr>) -> Vec<Quota> {
        if !self.enabled {
            return Vec::new();
        }
        ip.and_then(|ip| {
            Self::quota(
                "integrity-ip",
                format!("integrity-ip:{ip}"),
                self.ip_per_hour,
                HOUR,
            )
        })
        .into_iter()
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

/// Rounds up to whole seconds, at least 1, as `Retry-After` needs.
pub fn whole_seconds(d: Duration) -> u64 {
    d.as_millis()
        .div_ceil(1000)
        .max(1)
        .try_into()
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn retry_after_rounds_up() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }
}
