//! Limits: the cluster-wide quotas, the per-replica front door, client addresses behind
//! proxies, the countries codes may go to, and the SMS-pumping budgets.

use super::env::{ConfigError, Vars, invalid};
use crate::domain::country::{parse_country, parse_country_caps};
use crate::domain::net::Cidr;
use crate::domain::pumping::{PumpingMode, PumpingPolicy};
use crate::domain::quota::QuotaPolicy;

/// Quotas, the front door, client IPs and country lists.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Cluster-wide quotas (`RATE_LIMIT_*`, `DAILY_SEND_CAP`, `COUNTRY_DAILY_CAPS`).
    pub quotas: QuotaPolicy,
    /// `RATE_LIMIT_FRONTDOOR_PER_SECOND`: requests per second per client IP, per replica
    /// (0 = off).
    pub frontdoor_per_second: u32,
    /// `RATE_LIMIT_FRONTDOOR_BURST`: burst of the front door.
    pub frontdoor_burst: u32,
    /// `TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// `RATE_LIMIT_IPV6_PREFIX`: bits of an IPv6 address that count as one client (default 64).
    pub ipv6_prefix: u8,
    /// `OTP_ALLOWED_COUNTRIES`: when not empty, codes go only to these countries.
    pub allowed_countries: Vec<String>,
    /// `OTP_BLOCKED_COUNTRIES`: codes never go to these countries.
    pub blocked_countries: Vec<String>,
    /// `PUMPING_*`: budgets of unverified codes and blocks on low conversion.
    pub pumping: PumpingPolicy,
}

impl LimitSettings {
    pub(crate) fn from_env(env: &Vars<'_>) -> Result<Self, ConfigError> {
        let rate_limit_enabled = env.bool("RATE_LIMIT_ENABLED", true)?;
        let verify_failures: u32 =
            env.parse("RATE_LIMIT_VERIFY_FAILURES_PER_PHONE_PER_HOUR", 20)?;
        if !(1..=100).contains(&verify_failures) {
            env.report(invalid(
                "RATE_LIMIT_VERIFY_FAILURES_PER_PHONE_PER_HOUR",
                "must be between 1 and 100 (NIST SP 800-63B caps failed attempts at 100)",
            ));
        }
        let quotas = QuotaPolicy {
            enabled: rate_limit_enabled,
            phone_per_hour: env.parse("RATE_LIMIT_PHONE_PER_HOUR", 5)?,
            ip_per_hour: env.parse("RATE_LIMIT_IP_PER_HOUR", 30)?,
            prefix_per_hour: env.parse("RATE_LIMIT_PREFIX_PER_HOUR", 50)?,
            verify_ip_per_hour: env.parse("RATE_LIMIT_VERIFY_IP_PER_HOUR", 60)?,
            verify_failures_per_phone_per_hour: verify_failures,
            intent_ip_per_hour: env.parse("RATE_LIMIT_INTENT_IP_PER_HOUR", 30)?,
            intent_global_per_minute: env.parse("RATE_LIMIT_INTENT_GLOBAL_PER_MINUTE", 3000)?,
            daily_send_cap: env.parse("DAILY_SEND_CAP", 0)?,
            country_daily_caps: match env.get("COUNTRY_DAILY_CAPS") {
                None => Vec::new(),
                Some(text) => {
                    parse_country_caps(&text).map_err(|e| invalid("COUNTRY_DAILY_CAPS", e))?
                }
            },
        };
        let trusted_proxies = env
            .list("TRUSTED_PROXIES")
            .iter()
            .map(|c| c.parse::<Cidr>().map_err(|e| invalid("TRUSTED_PROXIES", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let countries = |var: &'static str| {
            env.list(var)
                .iter()
                .map(|c| parse_country(c).map_err(|e| invalid(var, e)))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            frontdoor_per_second: if rate_limit_enabled {
                env.parse("RATE_LIMIT_FRONTDOOR_PER_SECOND", 50)?
            } else {
                0
            },
            frontdoor_burst: env.parse("RATE_LIMIT_FRONTDOOR_BURST", 100)?,
            quotas,
            trusted_proxies,
            ipv6_prefix: env.ranged("RATE_LIMIT_IPV6_PREFIX", 64, 32..=128)?,
            allowed_countries: countries("OTP_ALLOWED_COUNTRIES")?,
            blocked_countries: countries("OTP_BLOCKED_COUNTRIES")?,
            pumping: pumping_from_env(env)?,
        })
    }
}

/// `PUMPING_*`.
fn pumping_from_env(env: &Vars<'_>) -> Result<PumpingPolicy, ConfigError> {
    let mode = match env
        .get("PUMPING_MODE")
        .map(|m| m.trim().to_ascii_lowercase())
    {
        None => PumpingMode::Off,
        Some(m) => match m.as_str() {
            "off" => PumpingMode::Off,
            "record_only" => PumpingMode::RecordOnly,
            "enforce" => PumpingMode::Enforce,
            _ => {
                return Err(invalid(
                    "PUMPING_MODE",
                    format!("{m:?} is not off, record_only or enforce"),
                ));
            }
        },
    };
    let minutes = |var: &'static str, default: u64| -> Result<std::time::Duration, ConfigError> {
        Ok(std::time::Duration::from_secs(
            60 * env.ranged(var, default, 1..=7 * 24 * 60)?,
        ))
    };
    let min_conversion: f64 = env.parse("PUMPING_MIN_CONVERSION", 0.2)?;
    if !(0.0..=1.0).contains(&min_conversion) {
        env.report(invalid(
            "PUMPING_MIN_CONVERSION",
            "must be a ratio between 0 and 1 (0.2 = one code in five verified)",
        ));
    }
    let allow_prefixes = env
        .list("PUMPING_ALLOW_PREFIXES")
        .into_iter()
        .map(|p| {
            let digits = p.strip_prefix('+').unwrap_or(&p);
            if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                Err(invalid(
                    "PUMPING_ALLOW_PREFIXES",
                    format!("{p:?} is not the start of an E.164 number (+ and 1 to 15 digits)"),
                ))
            } else {
                Ok(format!("+{digits}"))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PumpingPolicy {
        mode,
        window: minutes("PUMPING_WINDOW_MINUTES", 60)?,
        country_budget: env.parse("PUMPING_COUNTRY_BUDGET", 1000)?,
        prefix_budget: env.parse("PUMPING_PREFIX_BUDGET", 30)?,
        network_budget: env.parse("PUMPING_NETWORK_BUDGET", 20)?,
        prefix_digits: env.ranged("PUMPING_PREFIX_DIGITS", 4, 1..=12)?,
        min_conversion: min_conversion.clamp(0.0, 1.0),
        country_min_volume: env.parse("PUMPING_COUNTRY_MIN_VOLUME", 500)?,
        prefix_min_volume: env.parse("PUMPING_PREFIX_MIN_VOLUME", 40)?,
        cooldown: minutes("PUMPING_BLOCK_MINUTES", 60)?,
        grace: std::time::Duration::from_secs(env.ranged("PUMPING_GRACE_SECONDS", 60, 0..=3600)?),
        allow_cidrs: env
            .list("PUMPING_ALLOW_CIDRS")
            .iter()
            .map(|c| {
                c.parse::<Cidr>()
                    .map_err(|e| invalid("PUMPING_ALLOW_CIDRS", e))
            })
            .collect::<Result<Vec<_>, _>>()?,
        allow_countries: env
            .list("PUMPING_ALLOW_COUNTRIES")
            .iter()
            .map(|c| parse_country(c).map_err(|e| invalid("PUMPING_ALLOW_COUNTRIES", e)))
            .collect::<Result<Vec<_>, _>>()?,
        allow_prefixes,
    })
}
