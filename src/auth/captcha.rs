//! The human gate before a code is sent: what a captcha verdict means for a login.
//!
//! The provider call is [`crate::delivery::CaptchaVerifier`]; here, the verdict (pass, fail,
//! missing, low score, wrong hostname or action, unavailable), the mode (`shadow` records, `enforce` refuses) and the
//! fail-open choice for an outage. Every verdict is counted
//! (`otpgate_captcha_verdicts_total{provider,verdict,mode}`); every verdict but a pass is an
//! audit event `captcha.failed`.

use crate::config::{CaptchaMode, CaptchaProvider, CaptchaSettings};
use crate::delivery::CaptchaVerifier;
use crate::domain::phone::Phone;
use crate::error::Error;

use super::AuthService;
use super::events::EventKind;
use super::sessions::ClientInfo;

/// What a code request brings for the captcha gate.
#[derive(Debug, Clone, Copy)]
pub enum CaptchaInput<'a> {
    /// A request from a client app: its `captcha_token` and Play Integrity
    /// `integrity_token`, if any.
    Token {
        /// The captcha widget's token.
        captcha: Option<&'a str>,
        /// An Android app's integrity token.
        integrity: Option<&'a str>,
        /// An iOS app's App Attest assertion.
        app_attest: Option<super::app_attest::AppAssertion<'a>>,
    },
    /// Not gated: the user messaged us from their own WhatsApp or Telegram account (a message
    /// command asking for a code), which is itself the human step.
    Exempt,
}

/// The gate, when `CAPTCHA_PROVIDER` is set.
pub(super) struct CaptchaGate {
    provider: CaptchaProvider,
    pub(super) mode: CaptchaMode,
    min_score: f64,
    fail_open: bool,
    hostnames: Vec<String>,
    action: Option<String>,
    verifier: CaptchaVerifier,
}

impl CaptchaGate {
    pub(super) fn new(settings: &CaptchaSettings) -> Result<Self, Error> {
        Ok(Self {
            provider: settings.provider,
            mode: settings.mode,
            min_score: settings.min_score,
            fail_open: settings.fail_open,
            hostnames: settings.hostnames.clone(),
            action: settings.action.clone(),
            verifier: CaptchaVerifier::from_settings(settings).map_err(Error::Internal)?,
        })
    }
}

impl CaptchaGate {
    /// Whether a valid token was solved on one of `CAPTCHA_HOSTNAMES` (its `hostname`, or the
    /// Android app's `apk_package_name`); any site when the list is empty. A token without
    /// either does not match a list.
    fn solved_here(&self, answer: &crate::delivery::Siteverify) -> bool {
        if self.hostnames.is_empty() {
            return true;
        }
        [&answer.hostname, &answer.apk_package_name]
            .into_iter()
            .flatten()
            .any(|site| self.hostnames.contains(&site.to_ascii_lowercase()))
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Pass,
    /// The provider said no (invalid, forged, replayed or expired token).
    Fail,
    /// No token in the request.
    Missing,
    /// A reCAPTCHA score below `CAPTCHA_MIN_SCORE`.
    LowScore,
    /// A valid token solved on another site or app than `CAPTCHA_HOSTNAMES` names.
    WrongHostname,
    /// A valid token for another action than `CAPTCHA_ACTION`.
    WrongAction,
    /// The provider gave no verdict (timeout, connection error, 5xx, unreadable answer).
    Unavailable,
    /// The provider refused to answer us (4xx, 429): counted as unavailable, but never lets a
    /// login through, even with `CAPTCHA_FAIL_OPEN`.
    Refused,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Missing => "missing",
            Verdict::LowScore => "low_score",
            Verdict::WrongHostname => "wrong_hostname",
            Verdict::WrongAction => "wrong_action",
            Verdict::Unavailable | Verdict::Refused => "unavailable",
        }
    }
}

impl AuthService {
    /// Checks the captcha of a code request for `phone`. `Ok` lets the code be sent; in
    /// `enforce` mode a failed verdict is 403 `captcha_failed`, an outage 503
    /// `captcha_unavailable` unless `CAPTCHA_FAIL_OPEN`. `shadow` mode never refuses.
    pub(super) async fn check_captcha(
        &self,
        input: CaptchaInput<'_>,
        phone: &Phone,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        let Some(gate) = &self.captcha else {
            return Ok(());
        };
        let token = match input {
            CaptchaInput::Exempt => return Ok(()),
            _ if gate.mode == CaptchaMode::Off => return Ok(()),
            CaptchaInput::Token { captcha, .. } => captcha.filter(|t| !t.trim().is_empty()),
        };
        let mut score = None;
        let verdict = match token {
            None => Verdict::Missing,
            Some(token) => match gate.verifier.verify(token, client.ip).await {
                Ok(answer) => {
                    score = answer.score;
                    if !answer.success {
                        tracing::info!(
                            phone = %phone.masked(),
                            error_codes = ?answer.error_codes,
                            "captcha refused by the provider"
                        );
                        Verdict::Fail
                    } else if !gate.solved_here(&answer) {
                        tracing::info!(
                            phone = %phone.masked(),
                            "captcha solved on another site or app than CAPTCHA_HOSTNAMES"
                        );
                        Verdict::WrongHostname
                    } else if gate
                        .action
                        .as_ref()
                        .is_some_and(|want| answer.action.as_deref() != Some(want.as_str()))
                    {
                        tracing::info!(
                            phone = %phone.masked(),
                            "captcha solved for another action than CAPTCHA_ACTION"
                        );
                        Verdict::WrongAction
                    } else if gate.provider == CaptchaProvider::Recaptcha
                        && answer.score.is_some_and(|s| s < gate.min_score)
                    {
                        Verdict::LowScore
                    } else {
                        Verdict::Pass
                    }
                }
                Err(outage) => {
                    tracing::warn!(
                        provider = gate.provider.as_str(),
                        fail_open = gate.fail_open && !outage.refused,
                        error = %outage,
                        "captcha verifier unavailable"
                    );
                    if outage.refused {
                        Verdict::Refused
                    } else {
                        Verdict::Unavailable
                    }
                }
            },
        };
        self.metrics
            .captcha_verdicts
            .with_label_values(&[gate.provider.as_str(), verdict.as_str(), gate.mode.as_str()])
            .inc();
        if verdict == Verdict::Pass {
            return Ok(());
        }
        // No row for a request that brought no token at all in enforce mode (refused at once,
        // counted): a flood of them would fill the audit queue and crowd out real events.
        if verdict == Verdict::Missing && gate.mode == CaptchaMode::Enforce {
            return Err(Error::CaptchaFailed);
        }
        let mut event = self
            .event(EventKind::CaptchaFailed)
            .phone(phone)
            .client(client)
            .detail("provider", gate.provider.as_str())
            .detail("verdict", verdict.as_str())
            .detail("mode", gate.mode.as_str());
        // Only reCAPTCHA's score means "how human"; hCaptcha Enterprise's is a risk score.
        if let Some(score) = score.filter(|_| gate.provider == CaptchaProvider::Recaptcha) {
            event = event.detail("score", score);
        }
        event.emit();
        if gate.mode != CaptchaMode::Enforce {
            return Ok(());
        }
        match verdict {
            Verdict::Unavailable if gate.fail_open => Ok(()),
            Verdict::Unavailable | Verdict::Refused => Err(Error::CaptchaUnavailable),
            _ => {
                tracing::info!(phone = %phone.masked(), verdict = verdict.as_str(), "code refused: captcha");
                Err(Error::CaptchaFailed)
            }
        }
    }
}

impl AuthService {
    /// The human or device gate before a code is sent: a passing device proof (a Play
    /// Integrity verdict, an App Attest assertion) in `enforce` mode stands on its own;
    /// otherwise the captcha gate decides when it is enforced; otherwise a request without a
    /// passing proof is refused when a device gate is enforced (see
    /// [`AuthService::check_integrity`], [`AuthService::check_app_attest`] and
    /// [`AuthService::check_captcha`]).
    pub(super) async fn check_human(
        &self,
        input: CaptchaInput<'_>,
        phone: &Phone,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        use super::integrity::Gate;
        let CaptchaInput::Token {
            integrity,
            app_attest,
            ..
        } = input
        else {
            return self.check_captcha(input, phone, client).await;
        };
        let integrity = integrity.filter(|t| !t.trim().is_empty());
        // One proof is checked: the one for a gate this server has (Android's first).
        let gate = match (integrity, app_attest) {
            (Some(token), _) if self.integrity_on() => {
                self.check_integrity(token, phone, client).await?
            }
            // Boxed: its database futures would otherwise grow every login's future.
            (_, Some(proof)) if self.app_attest_on() => {
                Box::pin(self.check_app_attest(proof, phone, client)).await?
            }
            _ => Gate::Undecided,
        };
        if let Gate::Proven = gate {
            return Ok(());
        }
        let captcha_enforced = self
            .captcha
            .as_ref()
            .is_some_and(|c| c.mode == CaptchaMode::Enforce);
        // Nothing proven and no captcha to decide: an enforced device gate refuses (a proof
        // checked by a gate in shadow mode proves nothing either), unless it is Play Integrity
        // failing open on an outage.
        let failed_open = matches!(gate, Gate::FailedOpen);
        if !captcha_enforced && failed_open && self.app_attest_enforced() {
            // Letting the request on would let any client that claims to be Android around
            // the enforced App Attest gate: the outage is an outage (503).
            return Err(Error::IntegrityUnavailable);
        }
        let integrity_refuses = self.integrity_enforced() && !failed_open;
        if !captcha_enforced && (integrity_refuses || self.app_attest_enforced()) {
            if integrity.is_none() {
                self.count_integrity_missing();
            }
            if app_attest.is_none() {
                self.count_app_attest_missing();
            }
            return Err(Error::IntegrityFailed);
        }
        self.check_captcha(input, phone, client).await
    }
}
