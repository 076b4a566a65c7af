//! The HTTP server: where it listens, how it treats connections and requests, what it exposes
//! besides the API (docs, metrics), and its logs.

use std::time::Duration;

use super::env::{ConfigError, Vars, invalid};
use crate::domain::secret::Secret;
use crate::telemetry::LogFormat;

/// Listening, connections, request limits, docs, metrics and logs.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `HOST`: address to listen on.
    pub host: String,
    /// `PORT`: port to listen on (0 picks a free one).
    pub port: u16,
    /// `SHUTDOWN_GRACE_SECONDS`: time in-flight requests get after SIGTERM.
    pub shutdown_grace: Duration,
    /// `CORS_ORIGINS`: browser origins allowed to call the API (`*` only in development).
    pub cors_origins: Vec<String>,
    /// `BODY_LIMIT_BYTES`: largest request body (413 beyond).
    pub body_limit_bytes: usize,
    /// `HTTP_IDLE_TIMEOUT_SECONDS`: connections without traffic for this long are closed.
    pub http_idle_timeout: Duration,
    /// `HTTP_HEADER_TIMEOUT_SECONDS`: time a client has to send a complete request head, from
    /// accept or from the first byte after the previous response.
    pub http_header_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS`: open connections per replica; more are closed at accept.
    pub http_max_connections: usize,
    /// `HTTP_MAX_CONNECTIONS_PER_IP`: open connections per client address (trusted proxies
    /// are exempt; 0 = no per-address cap).
    pub http_max_connections_per_ip: usize,
    /// `HTTP_MAX_IN_FLIGHT`: requests served at once per replica (probes and webhooks aside);
    /// more are answered 503 `overloaded` (0 = no bound).
    pub http_max_in_flight: usize,
    /// `METRICS_PORT`: serve `/metrics` on this port (same host) instead of the main one.
    pub metrics_port: Option<u16>,
    /// `METRICS_TOKEN`: when set, `/metrics` wants `Authorization: Bearer <token>`.
    pub metrics_token: Option<Secret>,
    /// `DOCS_ENABLED`: serve `/docs`, `/redoc` and `/openapi.json` (default: on in
    /// development, off in production).
    pub docs_enabled: bool,
    /// `LOG_LEVEL`: a level or a tracing filter directive.
    pub log_level: String,
    /// `LOG_FORMAT`: `pretty` or `json`.
    pub log_format: LogFormat,
    /// `DEBUG`: the seed's switch; makes `debug` the default log level.
    pub debug: bool,
}

impl ServerSettings {
    pub(crate) fn from_env(env: &Vars<'_>, production: bool) -> Result<Self, ConfigError> {
        let debug = env.bool("DEBUG", false)?;
        let log_format = match env
            .get("LOG_FORMAT")
            .as_deref()
            .map(str::to_ascii_lowercase)
        {
            None if production => LogFormat::Json,
            None => LogFormat::Pretty,
            Some(v) if v == "json" => LogFormat::Json,
            Some(v) if v == "pretty" || v == "text" => LogFormat::Pretty,
            Some(v) => {
                env.report(invalid(
                    "LOG_FORMAT",
                    format!("expected json or pretty, got {v:?}"),
                ));
                LogFormat::Pretty
            }
        };
        let header_timeout: u64 = env.ranged("HTTP_HEADER_TIMEOUT_SECONDS", 10, 1..=300)?;
        let cors_origins = env.list("CORS_ORIGINS");
        for origin in &cors_origins {
            check_origin(origin).map_err(|e| invalid("CORS_ORIGINS", e))?;
        }
        Ok(Self {
            host: env.get("HOST").unwrap_or_else(|| "0.0.0.0".into()),
            port: env.parse("PORT", 8000)?,
            shutdown_grace: Duration::from_secs(env.parse("SHUTDOWN_GRACE_SECONDS", 20)?),
            metrics_port: match env.get("METRICS_PORT") {
                None => None,
                Some(_) => Some(env.parse("METRICS_PORT", 0)?),
            },
            metrics_token: env.get("METRICS_TOKEN").map(Secret::new),
            docs_enabled: env.bool("DOCS_ENABLED", !production)?,
            http_header_timeout: Duration::from_secs(header_timeout),
            http_max_connections: env.ranged("HTTP_MAX_CONNECTIONS", 20_000, 1..=10_000_000)?,
            http_max_connections_per_ip: env.parse("HTTP_MAX_CONNECTIONS_PER_IP", 512)?,
            http_max_in_flight: env.ranged("HTTP_MAX_IN_FLIGHT", 256, 0..=10_000_000)?,
            cors_origins,
            body_limit_bytes: env.parse("BODY_LIMIT_BYTES", 64 * 1024)?,
            http_idle_timeout: Duration::from_secs(env.parse("HTTP_IDLE_TIMEOUT_SECONDS", 30)?),
            log_level: env
                .get("LOG_LEVEL")
                .unwrap_or_else(|| if debug { "debug" } else { "info" }.into())
                .to_ascii_lowercase(),
            log_format,
            debug,
        })
    }
}

/// A `CORS_ORIGINS` entry: `*`, or `scheme://host[:port]` as browsers send it in `Origin`
/// (no path, no trailing slash, no user info).
pub fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let bad = |why: &str| {
        Err(format!(
            "{origin:?} is not an origin ({why}); expected `*` or scheme://host[:port], \
             e.g. https://app.example.com"
        ))
    };
    let Some((scheme, rest)) = origin.split_once("://") else {
        return bad("no scheme");
    };
    if scheme.is_empty()
        || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return bad("bad scheme");
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, tail)) if addr.parse::<std::net::Ipv6Addr>().is_ok() => (addr, tail),
            _ => return bad("bad IPv6 address"),
        }
    } else {
        match rest.split_once(':') {
            Some((host, _)) => (host, &rest[host.len()..]),
            None => (rest, ""),
        }
    };
    let host_ok = rest.starts_with('[')
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
    if !host_ok {
        return bad("bad host; no path or trailing slash");
    }
    if !port.is_empty() {
        let digits = port.strip_prefix(':').unwrap_or("x");
        if digits.is_empty() || digits.len() > 5 || digits.parse::<u16>().is_err() {
            return bad("bad port");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::settings_from as settings;

    #[test]
    fn cors_origins_are_validated_at_load() {
        for good in [
            "*",
            "https://app.example.com",
            "http://localhost:3000",
            "https://[::1]:8443",
            "capacitor://localhost",
        ] {
            assert!(
                settings(&[("CORS_ORIGINS", good)]).is_ok(),
                "{good} should be accepted"
            );
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://",
            "https://host:99999",
            "https://ho st",
            "https://user@host",
            "https://host:",
            "ht tp://host",
        ] {
            let errors = settings(&[("CORS_ORIGINS", bad)]).unwrap_err();
            let err = errors.first();
            assert_eq!(err.var, "CORS_ORIGINS", "{bad}");
        }
    }
}
