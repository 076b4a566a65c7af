//! Delivery receipts: Twilio's status callbacks (`POST /api/twilio/status`, signed with
//! `X-Twilio-Signature`) and the `statuses` of WhatsApp notifications, counted per channel and
//! status, and noted on the sent code's record, where a failure may claim a fallback by the next
//! channel ([`crate::auth::receipts`]). Failures are logged with the number masked and the
//! provider's error code.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use subtle::ConstantTimeEq;

use super::Messaging;
use crate::domain::channel::Channel;
use crate::domain::phone::Phone;
use crate::domain::secret::Secret;
use crate::error::Error;

const TWILIO: &str = "twilio";

/// The largest status callback parsed (bytes), and its most fields.
const MAX_CALLBACK_BYTES: usize = 8 * 1024;
const MAX_CALLBACK_FIELDS: usize = 64;

/// What checks Twilio's status callbacks: the URL Twilio calls (the one it signs) and the key.
#[derive(Debug, Clone)]
pub struct TwilioCallbacks {
    /// `{PUBLIC_BASE_URL}/api/twilio/status`.
    pub url: String,
    /// `TWILIO_AUTH_TOKEN`: the HMAC-SHA1 key.
    pub auth_token: Secret,
}

/// Twilio's request signature (its documented "validating requests"): the base64 HMAC-SHA1,
/// under the auth token, of the full URL followed by every POST field's name and value, fields
/// sorted by name (then value), without separators.
pub fn twilio_signature(auth_token: &[u8], url: &str, fields: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = fields.iter().collect();
    sorted.sort();
    let Ok(mut mac) = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(auth_token) else {
        // HMAC takes keys of any length.
        return String::new();
    };
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// A provider's status in the bounded set of the metric's `status` label.
fn status_label(status: &str) -> &'static str {
    match status {
        "accepted" => "accepted",
        "queued" => "queued",
        "sending" => "sending",
        "sent" => "sent",
        "delivered" => "delivered",
        "read" => "read",
        "undelivered" => "undelivered",
        "failed" => "failed",
        "canceled" => "canceled",
        _ => "other",
    }
}

/// The number a receipt is about, masked for the log (`+91******3210`), when it parses.
fn masked(number: &str) -> String {
    let e164 = if number.starts_with('+') {
        number.to_string()
    } else {
        format!("+{number}")
    };
    Phone::parse(&e164, None).map_or_else(|_| "unknown".to_string(), |p| p.masked())
}

impl Messaging {
    /// `POST /api/twilio/status`: 404 without `PUBLIC_BASE_URL` and Twilio; 403 unless signed
    /// by our Twilio account; then the status is counted (a failure logged), noted on the sent
    /// code's record, and a failure may start its fallback.
    pub async fn twilio_status(&self, body: &[u8], signature: Option<&str>) -> Result<(), Error> {
        let Some(callbacks) = &self.twilio_callbacks else {
            return Err(Error::NotFound);
        };
        let refuse = || {
            // Counted, not logged at warn: this path has no front door, and a flood of forged
            // calls must not become a flood of log lines.
            self.metrics.webhook(TWILIO, "forbidden");
            tracing::debug!("Twilio status callback without a valid X-Twilio-Signature refused");
            Error::InvalidSignature
        };
        let presented = signature.unwrap_or("").trim();
        if presented.is_empty() {
            return Err(refuse());
        }
        // A real callback is about 15 fields and well under 2 KiB: anything far larger is not
        // parsed (and hashed) for an unauthenticated caller.
        if body.len() > MAX_CALLBACK_BYTES
            || body.iter().filter(|b| **b == b'&').count() >= MAX_CALLBACK_FIELDS
        {
            self.metrics.webhook(TWILIO, "malformed");
            return Err(Error::InvalidRequest(
                "A Twilio status callback is a small form.".into(),
            ));
        }
        let fields: Vec<(String, String)> = form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let expected = twilio_signature(
            callbacks.auth_token.expose().as_bytes(),
            &callbacks.url,
            &fields,
        );
        if !bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            return Err(refuse());
        }
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let status = status_label(field("MessageStatus").unwrap_or(""));
        self.metrics.webhook(TWILIO, "status");
        self.metrics
            .delivery_status
            .with_label_values(&["sms", status])
            .inc();
        let failed = matches!(status, "failed" | "undelivered");
        if failed {
            tracing::info!(
                phone = %masked(field("To").unwrap_or("")),
                status,
                error_code = field("ErrorCode").unwrap_or(""),
                "an SMS was not delivered"
            );
        }
        self.receipt(
            Channel::Sms,
            field("MessageSid").unwrap_or(""),
            status,
            failed,
        )
        .await;
        Ok(())
    }

    /// Notes a receipt on its sent code, and runs the fallback it claims in the background
    /// (the provider is answered at once).
    async fn receipt(&self, channel: Channel, message_id: &str, status: &str, failed: bool) {
        if let Some(fallback) = self
            .auth
            .delivery_receipt(channel, message_id, status, failed)
            .await
        {
            self.auth.spawn_claimed_fallback(fallback);
        }
    }

    /// One `statuses[]` entry of a WhatsApp notification: counted (a failure logged), noted on
    /// the sent code's record, and a failure may start its fallback.
    pub(super) async fn whatsapp_status(&self, status: &serde_json::Value) {
        let label = status_label(status["status"].as_str().unwrap_or(""));
        self.metrics
            .delivery_status
            .with_label_values(&["whatsapp", label])
            .inc();
        let number = status["recipient_id"].as_str().unwrap_or("");
        if label == "failed" {
            tracing::info!(
                phone = %masked(number),
                error_code = status["errors"][0]["code"].as_i64().unwrap_or(0),
                "a WhatsApp message was not delivered"
            );
        }
        self.receipt(
            Channel::Whatsapp,
            status["id"].as_str().unwrap_or(""),
            label,
            label == "failed",
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of Twilio's request-validation documentation.
    #[test]
    fn signatures_match_twilios_documented_example() {
        let fields: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .rev()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            twilio_signature(
                b"12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &fields
            ),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }

    #[test]
    fn statuses_are_bounded() {
        assert_eq!(status_label("delivered"), "delivered");
        assert_eq!(status_label("undelivered"), "undelivered");
        assert_eq!(status_label("DELIVERED"), "other");
        assert_eq!(status_label("x".repeat(1000).as_str()), "other");
    }
}
