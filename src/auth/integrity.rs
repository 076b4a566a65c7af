//! The device gate for Android apps: a Google Play Integrity verdict before a code is sent.
//!
//! The app requests an integrity token with the login's request hash,
//! [`login_request_hash`] (`requestHash` of a standard request, or `nonce` of a classic one),
//! and sends it as `integrity_token`. The verdict must name this app, this request, be fresh
//! (`PLAY_INTEGRITY_MAX_AGE_SECONDS`), come from the app Play distributes and a device meeting
//! `PLAY_INTEGRITY_DEVICE`; a token works once. In `enforce` mode a passing verdict stands in
//! for the captcha (an app proved it runs on a genuine device), a failing one is 403
//! `integrity_failed`; a request without a token goes to the captcha gate when that is
//! enforced, else it is refused too; when Google cannot or will not answer, an enforced captcha
//! decides. `shadow` records verdicts and refuses nothing. Each check is charged to the
//! `integrity-ip` quota first (Google's quota is the app's). Verdicts are counted
//! (`otpgate_integrity_verdicts_total{verdict,mode}`; a missing token only when refused for
//! it); every failed check is an audit event `integrity.failed`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{CaptchaMode, DeviceLevel, IntegritySettings};
use crate::delivery::integrity::{IntegrityError, PlayIntegrity};
use crate::domain::phone::Phone;
use crate::error::Error;

use super::AuthService;
use super::events::EventKind;
use super::sessions::ClientInfo;

/// The request hash (or nonce) an app binds its integrity token to for a login of `phone`:
/// base64url without padding of SHA-256(`otpgate-login:` ‖ the number in E.164).
pub fn login_request_hash(phone: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(format!("otpgate-login:{phone}")))
}

/// The gate, when `PLAY_INTEGRITY_PACKAGE` is set.
pub(super) struct IntegrityGate {
    package: String,
    pub(super) mode: CaptchaMode,
    device: DeviceLevel,
    require_play_recognized: bool,
    max_age_ms: i64,
    fail_open: bool,
    client: PlayIntegrity,
}

impl IntegrityGate {
    pub(super) fn new(settings: &IntegritySettings) -> Result<Self, Error> {
        Ok(Self {
            package: settings.package.clone(),
            mode: settings.mode,
            device: settings.device,
            require_play_recognized: settings.require_play_recognized,
            max_age_ms: i64::try_from(settings.max_age.as_millis()).unwrap_or(i64::MAX),
            fail_open: settings.fail_open,
            client: PlayIntegrity::from_settings(settings).map_err(Error::Internal)?,
        })
    }

    /// What the decoded verdict `payload` says about a login of `phone` at `now_ms`.
    fn judge(&self, payload: &Value, phone: &Phone, now_ms: i64) -> Verdict {
        let request = &payload["requestDetails"];
        if request["requestPackageName"].as_str() != Some(self.package.as_str()) {
            return Verdict::WrongRequest;
        }
        let expected = login_request_hash(phone.as_str());
        let bound = [&request["requestHash"], &request["nonce"]]
            .into_iter()
            .any(|v| v.as_str() == Some(expected.as_str()));
        if !bound {
            return Verdict::WrongRequest;
        }
        // int64 fields are strings in Google's JSON; a number is read too.
        let at = match &request["timestampMillis"] {
            Value::String(s) => s.parse::<i64>().ok(),
            v => v.as_i64(),
        };
        match at {
            Some(at)
                if at <= now_ms.saturating_add(60_000)
                    && now_ms.saturating_sub(at) <= self.max_age_ms => {}
            _ => return Verdict::Stale,
        }
        if self.require_play_recognized
            && payload["appIntegrity"]["appRecognitionVerdict"].as_str() != Some("PLAY_RECOGNIZED")
        {
            return Verdict::AppUnrecognized;
        }
        let labels = payload["deviceIntegrity"]["deviceRecognitionVerdict"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if !labels
            .iter()
            .filter_map(Value::as_str)
            .any(|l| self.device.labels().contains(&l))
        {
            return Verdict::Device;
        }
        Verdict::Pass
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Pass,
    /// Google could not decode the token.
    Fail,
    /// No token.
    Missing,
    /// A token of another app, or for another request (another number).
    WrongRequest,
    /// Older than `PLAY_INTEGRITY_MAX_AGE_SECONDS` (or dated in the future).
    Stale,
    /// A token presented before.
    Replayed,
    /// Not the app Play distributes (re-signed, side-loaded).
    AppUnrecognized,
    /// The device does not meet `PLAY_INTEGRITY_DEVICE`.
    Device,
    /// Google gave no verdict.
    Unavailable,
    /// Google refused us (our credentials or quota): never lets a login through.
    Refused,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Missing => "missing",
            Verdict::WrongRequest => "wrong_request",
            Verdict::Stale => "stale",
            Verdict::Replayed => "replayed",
            Verdict::AppUnrecognized => "app_unrecognized",
            Verdict::Device => "device_integrity",
            Verdict::Unavailable | Verdict::Refused => "unavailable",
        }
    }
}

/// What a device gate (Play Integrity, App Attest) decided.
pub(super) enum Gate {
    /// A pass in `enforce` mode: the device is proven, no captcha needed.
    Proven,
    /// Nothing proven (no gate, shadow, no token): the captcha gate decides.
    Undecided,
    /// Google did not answer and `PLAY_INTEGRITY_FAIL_OPEN` lets the request on, with no
    /// enforced captcha behind: nothing proven, but this gate does not refuse it (another
    /// enforced device gate still does).
    FailedOpen,
}

impl AuthService {
    /// Checks the integrity `token` of a code request for `phone` (see the module).
    pub(super) async fn check_integrity(
        &self,
        token: &str,
        phone: &Phone,
        client: &ClientInfo,
    ) -> Result<Gate, Error> {
        let Some(gate) = self
            .integrity
            .as_ref()
            .filter(|g| g.mode != CaptchaMode::Off)
        else {
            return Ok(Gate::Undecided);
        };
        let enforce = gate.mode == CaptchaMode::Enforce;
        // Whether an enforced captcha stands behind this gate.
        let captcha_enforced = self
            .captcha
            .as_ref()
            .is_some_and(|c| c.mode == CaptchaMode::Enforce);
        // Each check is a call against the app's daily Google quota: limited per client.
        let quotas = self.quotas.for_integrity(client.ip);
        if !quotas.is_empty()
            && let Err(refusal) = self.store.charge_quotas(&quotas).await?
        {
            self.metrics.refused(refusal.policy);
            return Err(Error::from(refusal));
        }
        let verdict = match gate.client.decode(token).await {
            Ok(payload) => match gate.judge(&payload, phone, chrono::Utc::now().timestamp_millis())
            {
                Verdict::Pass => {
                    // A token works once (on every replica).
                    let seen = format!("pi:{}", hex::encode(&Sha256::digest(token)[..16]));
                    let ttl = std::time::Duration::from_millis(
                        u64::try_from(gate.max_age_ms).unwrap_or(0) + 60_000,
                    );
                    match self.store.first_delivery(&seen, ttl).await {
                        Ok(true) => Verdict::Pass,
                        Ok(false) => Verdict::Replayed,
                        Err(err) if !enforce => {
                            tracing::warn!(error = %err, "integrity token not checked for reuse");
                            Verdict::Pass
                        }
                        Err(err) => return Err(err.into()),
                    }
                }
                other => other,
            },
            Err(IntegrityError::Invalid) => Verdict::Fail,
            Err(err @ IntegrityError::Outage { refused, .. }) => {
                tracing::warn!(
                    fail_open = gate.fail_open && !refused,
                    error = %err,
                    "Play Integrity unavailable"
                );
                if refused {
                    Verdict::Refused
                } else {
                    Verdict::Unavailable
                }
            }
        };
        self.count_integrity(verdict, gate);
        if verdict == Verdict::Pass {
            return Ok(if enforce {
                Gate::Proven
            } else {
                Gate::Undecided
            });
        }
        self.device_check_failed(
            "play_integrity",
            verdict.as_str(),
            gate.mode,
            (phone, None),
            client,
        );
        if !enforce {
            return Ok(Gate::Undecided);
        }
        match verdict {
            // Google unreachable and fail-open, or Google refusing us (quota, credentials)
            // with an enforced captcha behind: the captcha decides (a failed fetch never passes
            // anyone on its own).
            Verdict::Unavailable if captcha_enforced => Ok(Gate::Undecided),
            // Fail-open and nothing behind: the login goes on unchecked.
            Verdict::Unavailable if gate.fail_open => Ok(Gate::FailedOpen),
            Verdict::Refused if captcha_enforced => Ok(Gate::Undecided),
            Verdict::Unavailable | Verdict::Refused => Err(Error::IntegrityUnavailable),
            _ => Err(Error::IntegrityFailed),
        }
    }

    /// Records a device check (Play Integrity, App Attest) that did not pass: a log line and an
    /// `integrity.failed` audit event.
    /// `key_id`: App Attest's key (for an operator to revoke it).
    pub(super) fn device_check_failed(
        &self,
        provider: &'static str,
        verdict: &'static str,
        mode: CaptchaMode,
        (phone, key_id): (&Phone, Option<&str>),
        client: &ClientInfo,
    ) {
        tracing::info!(phone = %phone.masked(), provider, verdict, mode = mode.as_str(), "device check did not pass");
        let mut event = self
            .event(EventKind::IntegrityFailed)
            .phone(phone)
            .client(client)
            .detail("provider", provider)
            .detail("verdict", verdict)
            .detail("mode", mode.as_str());
        if let Some(key_id) = key_id {
            event = event.detail("app_attest_key_id", key_id);
        }
        event.emit();
    }

    /// Whether the Play Integrity gate checks tokens (`shadow` or `enforce`).
    pub(super) fn integrity_on(&self) -> bool {
        self.integrity
            .as_ref()
            .is_some_and(|g| g.mode != CaptchaMode::Off)
    }

    /// Whether the Play Integrity gate is enforced.
    pub(super) fn integrity_enforced(&self) -> bool {
        self.integrity
            .as_ref()
            .is_some_and(|g| g.mode == CaptchaMode::Enforce)
    }

    /// Counts a request without a token that an enforced Play Integrity gate refuses.
    pub(super) fn count_integrity_missing(&self) {
        if let Some(gate) = &self.integrity
            && gate.mode == CaptchaMode::Enforce
        {
            self.count_integrity(Verdict::Missing, gate);
        }
    }

    fn count_integrity(&self, verdict: Verdict, gate: &IntegrityGate) {
        self.metrics
            .integrity_verdicts
            .with_label_values(&["play_integrity", verdict.as_str(), gate.mode.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_hash_is_documented_and_binds_the_number() {
        let a = login_request_hash("+919876543210");
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(a, login_request_hash("+919876543211"));
        // printf 'otpgate-login:+919876543210' | openssl dgst -sha256 -binary | basenc --base64url
        assert_eq!(a, "hagB_fe471Si2GK3lOUVgkjEqsG1Vjxe1bJ7lyJiiWo");
    }
}
