//! The audit log and outbound event webhooks: how long audit rows are kept, and where events
//! are delivered, signed with which key, how patiently.

use std::time::Duration;

use super::env::{ConfigError, Vars, invalid};
use crate::domain::webhook::parse_secret;

/// `AUDIT_RETENTION_DAYS` and the event webhook.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// `AUDIT_RETENTION_DAYS`: audit rows (and given-up webhook events) older than this are
    /// deleted; `None` (0) keeps them forever.
    pub audit_retention: Option<Duration>,
    /// `EVENT_WEBHOOK_URL` and its settings; `None`: no event is queued for delivery.
    pub webhook: Option<WebhookSettings>,
}

/// Where events are delivered and how.
#[derive(Clone)]
pub struct WebhookSettings {
    /// `EVENT_WEBHOOK_URL`.
    pub url: String,
    /// The HMAC key: the decoded bytes of `EVENT_WEBHOOK_SECRET` (`whsec_<base64>`).
    pub key: Vec<u8>,
    /// `EVENT_WEBHOOK_SECRET` as given (for the production check against published secrets).
    pub secret: crate::domain::secret::Secret,
    /// `EVENT_WEBHOOK_TIMEOUT_SECONDS`: one attempt's limit.
    pub timeout: Duration,
    /// `EVENT_WEBHOOK_RETRY_BASE_MS`: the first retry's delay, doubled per attempt up to an
    /// hour.
    pub retry_base: Duration,
    /// `EVENT_WEBHOOK_MAX_ATTEMPTS`: attempts before an event is given up (it is also given up
    /// three days after it happened).
    pub max_attempts: u32,
    /// `EVENT_WEBHOOK_LEASE_SECONDS`: how long a replica owns an event it claimed; when it
    /// dies mid-delivery, another replica retries after this.
    pub lease: Duration,
    /// `EVENT_WEBHOOK_DELIVERY`: whether this replica delivers events (every replica queues
    /// them); off on the replicas serving logins when others, set apart, deliver.
    pub deliver: bool,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &crate::domain::secret::redact_credentials(&self.url))
            .field("key", &"[redacted]")
            .field("timeout", &self.timeout)
            .field("retry_base", &self.retry_base)
            .field("max_attempts", &self.max_attempts)
            .field("lease", &self.lease)
            .field("deliver", &self.deliver)
            .finish()
    }
}

impl EventSettings {
    pub(crate) fn from_env(env: &Vars<'_>) -> Result<Self, ConfigError> {
        let days: u64 = env.ranged("AUDIT_RETENTION_DAYS", 90, 0..=36_500)?;
        let timeout = env.ranged("EVENT_WEBHOOK_TIMEOUT_SECONDS", 10, 1..=120)?;
        let retry_base = env.ranged("EVENT_WEBHOOK_RETRY_BASE_MS", 5_000, 10..=3_600_000)?;
        let max_attempts = env.ranged("EVENT_WEBHOOK_MAX_ATTEMPTS", 30, 1..=1_000)?;
        let lease = env.ranged("EVENT_WEBHOOK_LEASE_SECONDS", 60, 1..=3_600)?;
        let deliver = env.bool("EVENT_WEBHOOK_DELIVERY", true)?;
        let url = env.get("EVENT_WEBHOOK_URL").map(|u| u.trim().to_string());
        let secret = env.get("EVENT_WEBHOOK_SECRET");
        let webhook = match (url, secret) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(invalid(
                    "EVENT_WEBHOOK_URL",
                    "EVENT_WEBHOOK_SECRET is set: set the URL events go to, or unset both",
                ));
            }
            (Some(_), None) => {
                return Err(invalid(
                    "EVENT_WEBHOOK_SECRET",
                    "required with EVENT_WEBHOOK_URL: whsec_ followed by base64 (for example \
                     `whsec_$(openssl rand -base64 32)`)",
                ));
            }
            (Some(url), Some(secret)) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(invalid(
                        "EVENT_WEBHOOK_URL",
                        "must start with https:// (or http://)",
                    ));
                }
                let key = parse_secret(&secret)
                    .map_err(|e| invalid("EVENT_WEBHOOK_SECRET", e.to_string()))?;
                Some(WebhookSettings {
                    url,
                    key,
                    secret: crate::domain::secret::Secret::new(secret.trim()),
                    timeout: Duration::from_secs(timeout),
                    retry_base: Duration::from_millis(retry_base),
                    max_attempts,
                    lease: Duration::from_secs(lease),
                    deliver,
                })
            }
        };
        Ok(Self {
            audit_retention: (days > 0).then(|| Duration::from_secs(days * 86_400)),
            webhook,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::settings_from as settings;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn defaults_keep_ninety_days_and_deliver_nothing() {
        let s = settings(&[]).unwrap().events;
        assert_eq!(s.audit_retention.unwrap().as_secs(), 90 * 86_400);
        assert!(s.webhook.is_none());
        let forever = settings(&[("AUDIT_RETENTION_DAYS", "0")]).unwrap().events;
        assert!(forever.audit_retention.is_none());
    }

    #[test]
    fn the_webhook_needs_a_url_and_a_whsec_secret() {
        let var = |pairs: &[(&str, &str)]| settings(pairs).unwrap_err().first().var;
        let url = ("EVENT_WEBHOOK_URL", "https://hooks.example.com/otpgate");
        assert_eq!(var(&[url]), "EVENT_WEBHOOK_SECRET");
        assert_eq!(
            var(&[("EVENT_WEBHOOK_SECRET", SECRET)]),
            "EVENT_WEBHOOK_URL"
        );
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_***",
            "whsec_c2hvcnQ=",
        ] {
            let err = settings(&[url, ("EVENT_WEBHOOK_SECRET", bad)]).unwrap_err();
            assert_eq!(err.first().var, "EVENT_WEBHOOK_SECRET");
            assert!(
                !err.to_string().contains(bad),
                "the secret is not echoed: {err}"
            );
        }
        assert_eq!(
            var(&[
                ("EVENT_WEBHOOK_URL", "ftp://x"),
                ("EVENT_WEBHOOK_SECRET", SECRET)
            ]),
            "EVENT_WEBHOOK_URL"
        );
        let s = settings(&[
            url,
            ("EVENT_WEBHOOK_SECRET", SECRET),
            ("EVENT_WEBHOOK_RETRY_BASE_MS", "50"),
        ])
        .unwrap()
        .events;
        let hook = s.webhook.unwrap();
        assert_eq!(hook.key.len(), 24);
        assert_eq!(hook.retry_base.as_millis(), 50);
        assert_eq!(hook.timeout.as_secs(), 10);
        assert!(hook.deliver);
        let queue_only = settings(&[
            url,
            ("EVENT_WEBHOOK_SECRET", SECRET),
            ("EVENT_WEBHOOK_DELIVERY", "false"),
        ])
        .unwrap()
        .events;
        assert!(!queue_only.webhook.unwrap().deliver);
        assert!(!format!("{hook:?}").contains("MfKQ"));
    }
}
