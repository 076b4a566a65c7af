//! One-time codes: generated from a CSPRNG, stored only as an HMAC, checked atomically.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::Sha256;

use crate::config::{OtpSettings, Pepper};
use crate::delivery::{TwilioVerifySender, VerifyCheck};
use crate::domain::phone::Phone;
use crate::domain::pumping::{PumpCheck, PumpOutcome, PumpRules};
use crate::domain::quota::{Quota, QuotaState, Subjects, whole_seconds};
use crate::error::Error;
use crate::store::{CodeIssue, IssueOutcome, SessionDraft, SessionPut, Store, VerifyOutcome};

type HmacSha256 = Hmac<Sha256>;

/// A code a verify just accepted (and spent), until the login it opened is done: [`keep`]
/// when it succeeded, [`restore`] when it failed. Dropped without either (the request was
/// cancelled mid-login), it puts the code back in the background.
///
/// [`keep`]: SpentOtp::keep
/// [`restore`]: SpentOtp::restore
pub struct SpentOtp {
    store: Arc<dyn Store>,
    phone: String,
    hash: String,
    /// What the send kept beside the code (the pumping defence's mark).
    mark: u64,
    armed: bool,
    /// A Twilio Verify code Twilio approved: Twilio has used it up, so undoing the spend
    /// releases the marker (the user asks for a new code at once) instead of putting it back.
    approved_elsewhere: bool,
    /// The session recorded with the check ([`OtpService::verify`]'s `session`) until the
    /// login takes it ([`SpentOtp::take_session`]); one not taken is dropped from its user's
    /// index ([`SpentOtp::restore`], or in the background when this is dropped).
    session: Option<EarlySession>,
}

/// A session recorded with the code check, for the user proposed before it: the login keeps it
/// when that is the user it opens, and drops it otherwise. Its id was never handed out.
#[derive(Debug)]
pub struct EarlySession {
    /// The proposed user's id.
    pub user: String,
    /// The session's id.
    pub sid: String,
    /// The sessions the put dropped beyond the cap (none for a new user), to revoke.
    pub evicted: Vec<String>,
}

impl SpentOtp {
    /// The mark its send kept beside the code.
    pub fn mark(&self) -> u64 {
        self.mark
    }

    /// The login succeeded: the code stays spent. A session recorded with the check and not
    /// taken is dropped in the background.
    pub fn keep(mut self) {
        self.armed = false;
    }

    /// The session recorded with the check, if any: from now on the caller's (to open, or move
    /// to the user the login opened: [`crate::store::Store::move_session`]).
    pub fn take_session(&mut self) -> Option<EarlySession> {
        self.session.take()
    }

    /// The login failed after the code check: the code works again (unless a newer one
    /// replaced it). Whether it was put back. A code Twilio Verify approved cannot work again:
    /// its marker and the resend cooldown are released instead (`false`).
    pub async fn restore(mut self) -> Result<bool, Error> {
        // Both at once; disarmed only once done, so a restore cut short (the request
        // cancelled) is finished by `Drop` in the background.
        let early = self.session.take();
        let (_, undone) = tokio::join!(
            async {
                if let Some(early) = &early {
                    drop_early(&*self.store, early).await;
                }
            },
            undo(
                &*self.store,
                &self.phone,
                &self.hash,
                self.approved_elsewhere,
            )
        );
        self.armed = false;
        undone
    }
}

/// Drops a session recorded with a code check from its user's index (the login failed). A
/// failure is logged; the entry then lapses with the index (no token was ever issued for it).
async fn drop_early(store: &dyn Store, early: &EarlySession) {
    if let Err(err) = store.drop_session(&early.user, &early.sid).await {
        tracing::warn!(error = %err, "a session recorded with its code check could not be dropped");
    }
}

/// Undoes a spend: puts the code back, or releases an approved Verify marker.
async fn undo(store: &dyn Store, phone: &str, hash: &str, approved: bool) -> Result<bool, Error> {
    if approved {
        store.release_code(phone, hash, &[]).await?;
        Ok(false)
    } else {
        Ok(store.restore_code(phone, hash).await?)
    }
}

impl Drop for SpentOtp {
    fn drop(&mut self) {
        let early = self.session.take();
        if !self.armed && early.is_none() {
            return;
        }
        let (store, phone, hash, approved, armed) = (
            self.store.clone(),
            std::mem::take(&mut self.phone),
            std::mem::take(&mut self.hash),
            self.approved_elsewhere,
            self.armed,
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Some(early) = early {
                    drop_early(&*store, &early).await;
                }
                if armed && let Err(err) = undo(&*store, &phone, &hash, approved).await {
                    tracing::warn!(error = %err, "a cancelled login's code could not be put back");
                }
            });
        }
    }
}

/// A code that was just stored and must now be delivered.
#[derive(Debug)]
pub struct IssuedCode {
    /// The digits; never logged outside the development `log` channel.
    pub code: String,
    /// What the store holds for it: the code's HMAC, or Twilio Verify's marker (to release it
    /// when delivery fails).
    pub hash: String,
    /// Lifetime of the code.
    pub expires_in: Duration,
    /// When the next code for this phone may be requested.
    pub resend_after: Duration,
    /// Where each quota charged for this send stands now.
    pub quotas: Vec<QuotaState>,
    /// The phone is blocked: no code was stored, and none may be sent.
    pub blocked: bool,
}

/// Issues and verifies codes through the store.
pub struct OtpService {
    store: Arc<dyn Store>,
    mac: HmacSha256,
    length: u32,
    ttl: Duration,
    max_attempts: u32,
    resend: Duration,
    /// Twilio Verify, when it makes and checks the SMS codes.
    delegate: Option<Arc<TwilioVerifySender>>,
}

/// What stands in the store for a code Twilio Verify made (it never leaves Twilio): the HMAC of
/// this text, which no code of digits can match.
const DELEGATED: &str = "twilio-verify";

impl OtpService {
    /// A service keyed by `OTP_PEPPER`, or by a key derived from the JWT secret.
    pub fn new(settings: &OtpSettings, store: Arc<dyn Store>) -> Result<Self, Error> {
        let pepper: Vec<u8> = match &settings.pepper {
            Pepper::Set(p) => p.expose().as_bytes().to_vec(),
            Pepper::FromJwtSecret(jwt_secret) => {
                let mut derive = HmacSha256::new_from_slice(jwt_secret.expose().as_bytes())
                    .map_err(|e| Error::Internal(e.to_string()))?;
                derive.update(b"otpgate/otp-pepper/v1");
                derive.finalize().into_bytes().to_vec()
            }
        };
        Ok(Self {
            store,
            mac: HmacSha256::new_from_slice(&pepper).map_err(|e| Error::Internal(e.to_string()))?,
            length: settings.length,
            ttl: settings.ttl,
            max_attempts: settings.max_attempts,
            resend: settings.resend,
            delegate: None,
        })
    }

    /// Codes whose stored form is [`OtpService::delegated_hash`] are checked by `verifier`.
    pub fn delegate_to(mut self, verifier: Option<Arc<TwilioVerifySender>>) -> Self {
        self.delegate = verifier;
        self
    }

    /// What the store keeps for `phone`'s code once Twilio Verify sent it: a marker, not a
    /// code's HMAC.
    pub fn delegated_hash(&self, phone: &Phone) -> String {
        self.hash(phone, DELEGATED)
    }

    /// The lifetime of a code (`OTP_EXPIRY_MINUTES`).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Wrong tries a code allows (`OTP_MAX_ATTEMPTS`).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// A fresh code of `OTP_LENGTH` digits from the thread-local CSPRNG.
    pub fn generate(&self) -> String {
        let mut rng = rand::rng();
        (0..self.length)
            .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
            .collect()
    }

    /// HMAC-SHA256(pepper, phone ‖ 0x00 ‖ code), hex: the only form a code is stored in.
    pub fn hash(&self, phone: &Phone, code: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(phone.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(code.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// How the store and the quotas name `phone`: keyed hashes, never the number.
    pub fn subjects(&self, phone: &Phone) -> Subjects {
        let mut subject = self.keyed_hash("store-phone", phone.as_str());
        subject.truncate(32);
        let mut prefix = self.keyed_hash("store-prefix", phone.prefix());
        prefix.truncate(32);
        Subjects {
            phone: subject,
            prefix,
        }
    }

    /// HMAC-SHA256(pepper, `domain` ‖ 0x00 ‖ `value`), hex: for other secrets that are looked
    /// up by value (login-intent codes), so the store never holds them in the clear.
    pub fn keyed_hash(&self, domain: &str, value: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Stores a new code for `phone`, replacing any earlier one, unless the resend cooldown
    /// is running or one of `quotas` refuses (then `rate_limited` with the seconds left).
    ///
    /// With `delegated` (Twilio Verify sends first), the store keeps the
    /// [`OtpService::delegated_hash`] marker instead of the fresh code's HMAC; the fresh code
    /// is still returned, for a fallback channel ([`IssuedCode::hash`] is what the store holds).
    pub async fn issue(
        &self,
        phone: &Phone,
        subjects: &Subjects,
        quotas: &[Quota],
        mark: u64,
        delegated: bool,
    ) -> Result<IssuedCode, Error> {
        let (code, hash) = self.fresh(phone, delegated);
        let outcome = self
            .store
            .issue_code_marked(
                &subjects.phone,
                &hash,
                self.ttl,
                self.resend,
                quotas,
                mark,
                if delegated { self.max_attempts } else { 0 },
            )
            .await?;
        self.issued(code, hash, outcome)
    }

    /// [`OtpService::issue`] after a pumping-defence send over `checks`, in one store step
    /// where the store can ([`Store::pump_then_issue`]). Returns the send's outcome and, unless
    /// `enforce` refused the send, the code's.
    #[allow(clippy::too_many_arguments)]
    pub async fn pump_then_issue(
        &self,
        phone: &Phone,
        subjects: &Subjects,
        quotas: &[Quota],
        mark: u64,
        delegated: bool,
        checks: &[PumpCheck],
        enforce: bool,
        rules: &PumpRules,
    ) -> Result<(PumpOutcome, Option<Result<IssuedCode, Error>>), Error> {
        let (code, hash) = self.fresh(phone, delegated);
        let request = CodeIssue {
            phone: &subjects.phone,
            code_hash: &hash,
            ttl: self.ttl,
            cooldown: self.resend,
            quotas,
            mark,
            keep_tries_below: if delegated { self.max_attempts } else { 0 },
        };
        let (pumped, outcome) = self
            .store
            .pump_then_issue(checks, enforce, rules, &request)
            .await?;
        Ok((pumped, outcome.map(|o| self.issued(code, hash, o))))
    }

    /// A fresh code and what the store keeps for it: its HMAC, or with `delegated` the
    /// [`OtpService::delegated_hash`] marker.
    fn fresh(&self, phone: &Phone, delegated: bool) -> (String, String) {
        let code = self.generate();
        let hash = if delegated {
            self.delegated_hash(phone)
        } else {
            self.hash(phone, &code)
        };
        (code, hash)
    }

    /// The code just stored, or the limit that refused it.
    fn issued(
        &self,
        code: String,
        hash: String,
        outcome: IssueOutcome,
    ) -> Result<IssuedCode, Error> {
        match outcome {
            IssueOutcome::Issued(states) => Ok(IssuedCode {
                code,
                hash,
                expires_in: self.ttl,
                resend_after: self.resend,
                quotas: states,
                blocked: false,
            }),
            IssueOutcome::Blocked(states) => Ok(IssuedCode {
                code,
                hash,
                expires_in: self.ttl,
                resend_after: self.resend,
                quotas: states,
                blocked: true,
            }),
            IssueOutcome::Cooldown { retry_after } => Err(Error::RateLimited {
                retry_after: whole_seconds(retry_after),
                policy: "otp-resend",
                limit: 1,
                window: self.resend.as_secs(),
            }),
            IssueOutcome::Limited(refusal) => Err(Error::from(refusal)),
        }
    }

    /// Stores the fixed `code` of a test number (`TEST_PHONE_NUMBERS`) as [`OtpService::issue`]
    /// stores a fresh one, so verification, attempts and one-time use are the same; but with
    /// no quota charged and no resend cooldown started. The answer reports the usual lifetime
    /// and cooldown, so it reads as for any other number.
    pub async fn issue_fixed(
        &self,
        phone: &Phone,
        subjects: &Subjects,
        code: &str,
    ) -> Result<IssuedCode, Error> {
        let hash = self.hash(phone, code);
        match self
            .store
            .issue_code(&subjects.phone, &hash, self.ttl, Duration::ZERO, &[])
            .await?
        {
            IssueOutcome::Issued(states) => Ok(IssuedCode {
                code: code.to_string(),
                hash,
                expires_in: self.ttl,
                resend_after: self.resend,
                quotas: states,
                blocked: false,
            }),
            // A blocked user's test number: no code stored either.
            IssueOutcome::Blocked(states) => Ok(IssuedCode {
                code: code.to_string(),
                hash,
                expires_in: self.ttl,
                resend_after: self.resend,
                quotas: states,
                blocked: true,
            }),
            // A cooldown an ordinary login of this number started before it was listed.
            IssueOutcome::Cooldown { retry_after } => Err(Error::RateLimited {
                retry_after: whole_seconds(retry_after),
                policy: "otp-resend",
                limit: 1,
                window: self.resend.as_secs(),
            }),
            IssueOutcome::Limited(refusal) => Err(Error::from(refusal)),
        }
    }

    /// Gives back a code that could not be delivered, with its cooldown and quota charges.
    pub async fn release(
        &self,
        subjects: &Subjects,
        issued: &IssuedCode,
        quotas: &[Quota],
    ) -> Result<(), Error> {
        Ok(self
            .store
            .release_code(&subjects.phone, &issued.hash, quotas)
            .await?)
    }

    /// Checks `code` for `phone`: right once, then gone (the returned [`SpentOtp`] can put it
    /// back); burned after too many wrong tries. `attempts` quotas are charged on every check,
    /// `failures` on a wrong code. `session`: one to record with a right code where the store
    /// does that in the same step ([`Store::verify_code_then_session`]; the returned
    /// [`SpentOtp`] holds it then).
    pub async fn verify(
        &self,
        phone: &Phone,
        subjects: &Subjects,
        code: &str,
        (attempts, failures): (&[Quota], &[Quota]),
        session: Option<SessionDraft<'_>>,
    ) -> Result<SpentOtp, Error> {
        let code = code.trim();
        if code.len() != self.length as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::InvalidField {
                field: "otp_code".into(),
                problem: format!("must be exactly {} digits", self.length),
            });
        }
        let hash = self.hash(phone, code);
        let marker = self.delegate.as_ref().map(|_| self.delegated_hash(phone));
        let (outcome, put) = match &session {
            Some(draft) => {
                self.store
                    .verify_code_then_session(
                        &subjects.phone,
                        &hash,
                        marker.as_deref(),
                        self.max_attempts,
                        attempts,
                        failures,
                        draft,
                    )
                    .await?
            }
            None => (
                self.store
                    .verify_code_or_delegated(
                        &subjects.phone,
                        &hash,
                        marker.as_deref(),
                        self.max_attempts,
                        attempts,
                        failures,
                    )
                    .await?,
                None,
            ),
        };
        match outcome {
            VerifyOutcome::Verified { mark } => Ok(SpentOtp {
                store: self.store.clone(),
                phone: subjects.phone.clone(),
                hash,
                mark,
                armed: true,
                approved_elsewhere: false,
                // A blocked user's put recorded nothing: the login finds the block again.
                session: match (session, put) {
                    (Some(draft), Some(SessionPut::Recorded(evicted))) => Some(EarlySession {
                        user: draft.user.to_owned(),
                        sid: draft.sid.to_owned(),
                        evicted,
                    }),
                    _ => None,
                },
            }),
            VerifyOutcome::Delegated { mark, remaining } => {
                let (Some(verifier), Some(marker)) = (&self.delegate, marker) else {
                    return Err(Error::Internal(
                        "a delegated code without a verifier".into(),
                    ));
                };
                // Spent (and this try counted) while Twilio looks; put back unless it approves.
                // Dropped mid-check (the client left), it is put back with the try counted.
                let mut spent = SpentOtp {
                    store: self.store.clone(),
                    phone: subjects.phone.clone(),
                    hash: marker,
                    mark,
                    armed: true,
                    approved_elsewhere: false,
                    session: None,
                };
                match verifier.check(phone.as_str(), code).await {
                    Ok(VerifyCheck::Approved) => {
                        spent.approved_elsewhere = true;
                        Ok(spent)
                    }
                    Ok(VerifyCheck::Refused) => {
                        spent.restore().await?;
                        Err(if remaining == 0 {
                            Error::TooManyAttempts
                        } else {
                            Error::InvalidOtp { remaining }
                        })
                    }
                    Err(err) => {
                        let reason = err
                            .reason
                            .replace(phone.as_str(), &phone.masked())
                            .replace(phone.as_str().trim_start_matches('+'), &phone.masked());
                        tracing::warn!(phone = %phone.masked(), reason, "Twilio Verify did not check a code");
                        let (subject, marker) = (spent.phone.clone(), spent.hash.clone());
                        // On a store failure the guard puts it back (the try stays counted).
                        self.store.refund_attempt(&subject, &marker).await?;
                        spent.keep();
                        Err(Error::VerifierUnavailable)
                    }
                }
            }
            VerifyOutcome::Invalid { remaining } => Err(Error::InvalidOtp { remaining }),
            VerifyOutcome::Missing => Err(Error::OtpExpired),
            VerifyOutcome::Burned => Err(Error::TooManyAttempts),
            VerifyOutcome::Limited(refusal) => Err(Error::from(refusal)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn service(pairs: &[(&str, &str)]) -> OtpService {
        let settings = crate::config::settings_from(pairs).unwrap();
        OtpService::new(&settings.otp, Arc::new(MemoryStore::new())).unwrap()
    }

    #[test]
    fn codes_have_the_configured_length_and_vary() {
        let otp = service(&[("OTP_LENGTH", "8")]);
        let codes: std::collections::HashSet<String> = (0..200).map(|_| otp.generate()).collect();
        assert!(
            codes
                .iter()
                .all(|c| c.len() == 8 && c.bytes().all(|b| b.is_ascii_digit()))
        );
        assert!(
            codes.len() > 190,
            "200 random 8-digit codes should hardly ever collide"
        );
    }

    #[test]
    fn hash_binds_phone_and_pepper() {
        let a = Phone::parse("+919876543210", None).unwrap();
        let b = Phone::parse("+14155552671", None).unwrap();
        let otp = service(&[]);
        assert_eq!(otp.hash(&a, "123456"), otp.hash(&a, "123456"));
        assert_ne!(otp.hash(&a, "123456"), otp.hash(&b, "123456"));
        assert_ne!(otp.hash(&a, "123456"), otp.hash(&a, "123457"));
        let peppered = service(&[("OTP_PEPPER", "another pepper")]);
        assert_ne!(otp.hash(&a, "123456"), peppered.hash(&a, "123456"));
        assert_eq!(otp.hash(&a, "123456").len(), 64);
    }
}
