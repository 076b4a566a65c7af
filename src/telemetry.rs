//! Logs, request ids and Prometheus metrics (layer 1: nothing of the crate below it). The
//! middleware that applies them to HTTP requests is [`crate::app::observe`].
//!
//! - Logs: tracing, JSON lines in production, human-readable in development. Every request runs
//!   in a span carrying its request id, and ends with one access-log line.
//! - Request ids: an incoming `X-Request-Id` is kept when it is sane, else one is generated; it
//!   is echoed in the response and put into problem bodies.
//! - Metrics: one [`Metrics`] registry per app (so tests can run many apps in one process),
//!   rendered in the Prometheus text format at `/metrics`.

use std::sync::Arc;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the development default).
    Pretty,
    /// One JSON object per line (the production default).
    Json,
}

/// Installs the global subscriber once; later calls (tests) do nothing. `level` may be a bare
/// level (`info`) or a full directive (`otpgate=debug,poem=info`).
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

tokio::task_local! {
    /// The id of the request the current task serves.
    static REQUEST_ID: String;
}

/// Runs `work` as part of request `id`: log lines and problem bodies inside it carry the id.
pub async fn with_request_id<F: std::future::Future>(id: String, work: F) -> F::Output {
    REQUEST_ID.scope(id, work).await
}

/// The id of the request being served, when called inside one.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// An incoming id is kept when it is 1–128 characters of `A-Za-z0-9._-`.
pub fn sane_request_id(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The route label for a path: the path itself for known routes, one value for the rest, so a
/// scanner's random URLs cannot blow up the label set.
pub const UNMATCHED_ROUTE: &str = "unmatched";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Every metric otpgate exports, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// `otpgate_http_requests_total{method,route,status}`.
    pub http_requests: IntCounterVec,
    /// `otpgate_http_request_duration_seconds{method,route}`.
    pub http_duration: HistogramVec,
    /// `otpgate_otp_sent_total{channel,outcome}`.
    pub otp_sent: IntCounterVec,
    /// `otpgate_otp_verifications_total{outcome}`.
    pub otp_verifications: IntCounterVec,
    /// `otpgate_rate_limited_total{policy}`.
    pub rate_limited: IntCounterVec,
    /// `otpgate_sessions_total{event}`.
    pub sessions: IntCounterVec,
    /// `otpgate_store_operation_duration_seconds{op}`.
    pub store_duration: HistogramVec,
    /// `otpgate_store_errors_total{op}`.
    pub store_errors: IntCounterVec,
    /// `otpgate_db_query_duration_seconds{query}`.
    pub db_duration: HistogramVec,
    /// `otpgate_db_errors_total`.
    pub db_errors: IntCounter,
    /// `otpgate_last_login_dropped_total`.
    pub last_login_dropped: IntCounter,
    /// `otpgate_delivery_duration_seconds{channel}`.
    pub delivery_duration: HistogramVec,
    /// `otpgate_login_intents_total{channel,outcome}`.
    pub login_intents: IntCounterVec,
    /// `otpgate_webhook_events_total{source,outcome}`.
    pub webhook_events: IntCounterVec,
    /// `otpgate_connection_events_total{event}`.
    pub connection_events: IntCounterVec,
    /// `otpgate_open_connections`.
    pub open_connections: prometheus::IntGauge,
    /// `otpgate_codes_sent_total{channel,country}`.
    pub codes_sent: IntCounterVec,
    /// `otpgate_codes_verified_total{channel,country}`.
    pub codes_verified: IntCounterVec,
    /// `otpgate_delivery_fallbacks_total{from,to,outcome}`.
    pub delivery_fallbacks: IntCounterVec,
    /// `otpgate_delivery_status_total{channel,status}`.
    pub delivery_status: IntCounterVec,
    /// `otpgate_sms_segments_total{encoding}`.
    pub sms_segments: IntCounterVec,
    /// `otpgate_sms_template_segments{locale,encoding}`.
    pub sms_template_segments: IntGaugeVec,
    /// `otpgate_requests_shed_total`.
    pub requests_shed: IntCounter,
    /// `otpgate_audit_dropped_total`.
    pub audit_dropped: IntCounter,
    /// `otpgate_audit_batch_failures_total`.
    pub audit_batch_failures: IntCounter,
    /// `otpgate_event_webhook_deliveries_total{outcome}`.
    pub webhook_deliveries: IntCounterVec,
    /// `otpgate_event_webhook_lag_seconds`.
    pub webhook_lag: prometheus::Gauge,
    /// `otpgate_captcha_verdicts_total{provider,verdict,mode}`.
    pub captcha_verdicts: IntCounterVec,
    /// `otpgate_integrity_verdicts_total{provider,verdict,mode}`.
    pub integrity_verdicts: IntCounterVec,
    /// `otpgate_pumping_refusals_total{scope,reason,mode}`.
    pub pumping_refusals: IntCounterVec,
    /// `otpgate_pumping_blocks_total{scope,mode}`.
    pub pumping_blocks: IntCounterVec,
}

impl Metrics {
    /// A fresh registry with every metric, the build info and the process collector.
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, prometheus::Error> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                    labels,
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let metrics = Metrics {
            http_requests: counter(
                "otpgate_http_requests_total",
                "HTTP requests by method, route template and status.",
                &["method", "route", "status"],
            )?,
            http_duration: histogram(
                "otpgate_http_request_duration_seconds",
                "HTTP request latency by method and route template.",
                &["method", "route"],
            )?,
            otp_sent: counter(
                "otpgate_otp_sent_total",
                "One-time codes handed to a delivery channel, by channel and outcome.",
                &["channel", "outcome"],
            )?,
            otp_verifications: counter(
                "otpgate_otp_verifications_total",
                "Code verifications by outcome (success, invalid, expired, burned, rate_limited, \
                 test_number; verifier_unavailable: Twilio Verify did not answer a check).",
                &["outcome"],
            )?,
            rate_limited: counter(
                "otpgate_rate_limited_total",
                "Requests refused by a rate limit, by policy.",
                &["policy"],
            )?,
            sessions: counter(
                "otpgate_sessions_total",
                "Session events (issued, refreshed, revoked, reuse_detected).",
                &["event"],
            )?,
            store_duration: histogram(
                "otpgate_store_operation_duration_seconds",
                "Latency of store (Redis or in-process) operations.",
                &["op"],
            )?,
            store_errors: counter(
                "otpgate_store_errors_total",
                "Store operations that failed or timed out.",
                &["op"],
            )?,
            db_duration: histogram(
                "otpgate_db_query_duration_seconds",
                "Latency of database queries.",
                &["query"],
            )?,
            db_errors: {
                let c =
                    IntCounter::new("otpgate_db_errors_total", "Database queries that failed.")?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            last_login_dropped: {
                let c = IntCounter::new(
                    "otpgate_last_login_dropped_total",
                    "Returning users' login times not written: the queue to the database was full.",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            delivery_duration: histogram(
                "otpgate_delivery_duration_seconds",
                "Latency of code delivery by channel.",
                &["channel"],
            )?,
            login_intents: counter(
                "otpgate_login_intents_total",
                "Login intents by channel and outcome (created, bound, claimed, expired, rejected).",
                &["channel", "outcome"],
            )?,
            webhook_events: counter(
                "otpgate_webhook_events_total",
                "Inbound webhook events by source (whatsapp, telegram, twilio) and outcome.",
                &["source", "outcome"],
            )?,
            connection_events: counter(
                "otpgate_connection_events_total",
                "Connections refused at accept (refused_total_cap, refused_ip_cap) or closed \
                 because a request head did not arrive in time (header_timeout).",
                &["event"],
            )?,
            open_connections: {
                let g = prometheus::IntGauge::new(
                    "otpgate_open_connections",
                    "HTTP connections open on the main port.",
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            codes_sent: counter(
                "otpgate_codes_sent_total",
                "Codes a provider accepted, by the channel that took them and the number's \
                 country (ISO 3166 alpha-2; test numbers left out): the denominator of the \
                 conversion ratio.",
                &["channel", "country"],
            )?,
            codes_verified: counter(
                "otpgate_codes_verified_total",
                "Codes verified, by the channel that delivered them (unknown for codes sent \
                 before this was recorded) and the number's country (test numbers left out): \
                 the numerator of the conversion ratio.",
                &["channel", "country"],
            )?,
            delivery_fallbacks: counter(
                "otpgate_delivery_fallbacks_total",
                "Codes re-sent by the next channel because a delivery receipt reported a \
                 failure, by the failed channel, the next one and the outcome (sent; failed: the \
                 next provider refused too; stale: the code was verified, replaced or expired \
                 first; no_route: the next channel cannot reach the number).",
                &["from", "to", "outcome"],
            )?,
            delivery_status: counter(
                "otpgate_delivery_status_total",
                "Delivery receipts by channel (sms: Twilio status callbacks; whatsapp: the \
                 statuses of WhatsApp notifications) and status (queued, sent, delivered, read, \
                 undelivered, failed, ...).",
                &["channel", "status"],
            )?,
            sms_segments: counter(
                "otpgate_sms_segments_total",
                "SMS segments of the code messages sent (what carriers bill), by encoding \
                 (gsm7: 160 characters in one segment, 153 beyond; ucs2: 70, then 67).",
                &["encoding"],
            )?,
            sms_template_segments: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "otpgate_sms_template_segments",
                        "SMS segments a code message takes in each locale, known at start (the \
                         code's length, its lifetime, APP_NAME and the autofill lines included).",
                    ),
                    &["locale", "encoding"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            requests_shed: {
                let c = IntCounter::new(
                    "otpgate_requests_shed_total",
                    "Requests answered 503 overloaded because HTTP_MAX_IN_FLIGHT requests were \
                     being served already.",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            audit_dropped: {
                let c = IntCounter::new(
                    "otpgate_audit_dropped_total",
                    "Audit events not written: the queue to the database was full, or their \
                     batch failed.",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            audit_batch_failures: {
                let c = IntCounter::new(
                    "otpgate_audit_batch_failures_total",
                    "Batches of audit events the database refused (their events are dropped).",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            webhook_deliveries: counter(
                "otpgate_event_webhook_deliveries_total",
                "Event webhook attempts by outcome (delivered, failed_attempt, gave_up).",
                &["outcome"],
            )?,
            webhook_lag: {
                let g = prometheus::Gauge::new(
                    "otpgate_event_webhook_lag_seconds",
                    "How late the earliest due event of this replica's latest event webhook claim was (0: none due).",
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            captcha_verdicts: counter(
                "otpgate_captcha_verdicts_total",
                "Captcha checks before a code is sent, by provider, verdict (pass, fail, missing, \
                 low_score, unavailable) and mode (shadow, enforce).",
                &["provider", "verdict", "mode"],
            )?,
            integrity_verdicts: counter(
                "otpgate_integrity_verdicts_total",
                "Device integrity checks before a code is sent, by provider (play_integrity, \
                 app_attest), verdict (pass, fail, missing, wrong_request, stale, replayed, \
                 app_unrecognized, device_integrity, unavailable; for App Attest also \
                 unknown_key, environment, and attested or attestation_failed for keys) and mode \
                 (shadow, enforce).",
                &["provider", "verdict", "mode"],
            )?,
            pumping_refusals: counter(
                "otpgate_pumping_refusals_total",
                "Code sends the pumping defence refused (mode enforce) or would have refused \
                 (record_only), by scope (country, prefix, network), reason (over_budget: the \
                 scope's unverified codes reached its budget; blocked: the scope is blocked) and \
                 mode.",
                &["scope", "reason", "mode"],
            )?,
            pumping_blocks: counter(
                "otpgate_pumping_blocks_total",
                "Prefixes and countries blocked because their conversion (verified / sent) fell \
                 below PUMPING_MIN_CONVERSION with enough volume, and blocks set by an operator, \
                 by scope and mode (record_only blocks are recorded, not enforced).",
                &["scope", "mode"],
            )?,
            registry,
        };
        let build_info = IntGaugeVec::new(
            Opts::new("otpgate_build_info", "Build information; always 1."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        metrics.registry.register(Box::new(build_info))?;
        #[cfg(target_os = "linux")]
        metrics.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Arc::new(metrics))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %err, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Runs `work`, timing it into `histogram{label}`; `failed` sees the error when it fails
    /// (to count it). The one way otpgate times store, database and provider calls.
    pub async fn timed<T, E>(
        histogram: &HistogramVec,
        label: &str,
        work: impl std::future::Future<Output = Result<T, E>>,
        failed: impl FnOnce(&E),
    ) -> Result<T, E> {
        let started = std::time::Instant::now();
        let result = work.await;
        histogram
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        if let Err(err) = &result {
            failed(err);
        }
        result
    }

    /// Counts a login-intent event.
    pub fn intent(&self, channel: &str, outcome: &str) {
        self.login_intents
            .with_label_values(&[channel, outcome])
            .inc();
    }

    /// Counts an inbound webhook event.
    pub fn webhook(&self, source: &str, outcome: &str) {
        self.webhook_events
            .with_label_values(&[source, outcome])
            .inc();
    }

    /// Counts a refusal by `policy`.
    pub fn refused(&self, policy: &str) {
        self.rate_limited.with_label_values(&[policy]).inc();
    }

    /// Counts a connection event.
    pub fn connection(&self, event: &str) {
        self.connection_events.with_label_values(&[event]).inc();
    }

    /// Counts a session event.
    pub fn session(&self, event: &str) {
        self.sessions.with_label_values(&[event]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_sanitised() {
        assert!(sane_request_id("abc"));
        assert!(sane_request_id("0d3f-9a_b.c"));
        assert!(!sane_request_id(""));
        assert!(!sane_request_id("has space"));
        assert!(!sane_request_id("line\nbreak"));
        assert!(!sane_request_id(&"x".repeat(129)));
    }

    #[test]
    fn metrics_render_in_text_format() {
        let m = Metrics::new().unwrap();
        m.refused("otp-phone");
        let text = m.render();
        assert!(
            text.contains("otpgate_rate_limited_total{policy=\"otp-phone\"} 1"),
            "{text}"
        );
        assert!(text.contains("otpgate_build_info{version="));
    }
}
