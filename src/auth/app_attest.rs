//! The device gate for iOS apps: Apple App Attest.
//!
//! Once per install the app fetches a one-time challenge ([`AuthService::app_attest_challenge`]),
//! has Apple attest its Secure Enclave key with SHA-256 of that challenge, and sends the
//! attestation ([`AuthService::attest_app_key`]): the chain to Apple's root, the app id, the
//! key id and the challenge are checked here ([`crate::domain::app_attest`]) and the public key
//! is stored (`app_attest_keys`). Each code request then carries a fresh challenge and an
//! assertion over the login's client data, [`login_client_data`] (`otpgate-login:`, the number
//! in E.164, `:`, the challenge), made with that key: its signature, app, counter and
//! challenge (ours, at most [`CHALLENGE_SECONDS`] old, used once) are checked, and the counter
//! is moved forward in the database (one statement, so a replayed assertion fails on every
//! replica). A key's public half, app and environment never change, so each replica keeps
//! those it has read ([`KEY_CACHE`] at most): a known key's assertion costs that one
//! statement, and a revoked key (its row deleted) fails it on every replica at once.
//!
//! In `enforce` mode a passing assertion stands in for the captcha, a failing one is 403
//! `integrity_failed`, an unknown key 403 `attestation_failed` (the app attests a new key);
//! `shadow` records verdicts (`otpgate_integrity_verdicts_total{provider="app_attest"}`, audit
//! event `integrity.failed`) and refuses nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::Utc;
use rand::RngExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AppAttestSettings, CaptchaMode};
use crate::db;
use crate::domain::app_attest::{AttestEnvironment, AttestError, Verifier};
use crate::domain::phone::Phone;
use crate::error::Error;

use super::AuthService;
use super::events::EventKind;
use super::integrity::Gate;
use super::sessions::ClientInfo;

/// How long a challenge works.
pub const CHALLENGE_SECONDS: u64 = 300;

/// The client data an app's assertion signs for a code request for `phone` with `challenge`.
pub fn login_client_data(phone: &str, challenge: &str) -> String {
    format!("otpgate-login:{phone}:{challenge}")
}

/// A challenge issued at `now` (Unix seconds): the time, 16 random bytes (base64url) and a MAC
/// of both (32 hex digits of `mac`'s answer).
fn new_challenge(now: i64, random: &[u8; 16], mac: impl Fn(&str) -> String) -> String {
    let body = format!("{now}.{}", URL_SAFE_NO_PAD.encode(random));
    let tag = mac(&body);
    format!("{body}.{}", &tag[..32.min(tag.len())])
}

/// Whether `challenge` carries a valid MAC and was issued at most [`CHALLENGE_SECONDS`] before
/// `now` (and at most a minute after: clocks of replicas differ).
fn challenge_fresh(challenge: &str, now: i64, mac: impl Fn(&str) -> String) -> bool {
    let Some((body, tag)) = challenge.rsplit_once('.') else {
        return false;
    };
    let expected = mac(body);
    if tag.len() != 32
        || expected.len() < 32
        || !bool::from(tag.as_bytes().ct_eq(&expected.as_bytes()[..32]))
    {
        return false;
    }
    let Some(issued) = body
        .split_once('.')
        .and_then(|(at, _)| at.parse::<i64>().ok())
    else {
        return false;
    };
    issued <= now.saturating_add(60) && now.saturating_sub(issued) <= CHALLENGE_SECONDS as i64
}

/// Keys a replica keeps read (then it starts afresh).
const KEY_CACHE: usize = 4096;

/// What never changes about an attested key, as an assertion needs it.
#[derive(Clone)]
struct KnownKey {
    public_key: Vec<u8>,
    app_id: String,
    development: bool,
    /// The counter when last seen here: a floor (the database holds the truth).
    counter: u32,
}

/// The gate, when `APP_ATTEST_APP_ID` is set.
pub(super) struct AppAttestGate {
    pub(super) mode: CaptchaMode,
    allow_development: bool,
    verifier: Verifier,
    keys: Mutex<HashMap<String, KnownKey>>,
}

impl AppAttestGate {
    fn known(&self, key_id: &str) -> Option<KnownKey> {
        self.keys.lock().ok()?.get(key_id).cloned()
    }

    fn remember(&self, key_id: &str, key: KnownKey) {
        if let Ok(mut keys) = self.keys.lock() {
            if keys.len() >= KEY_CACHE && !keys.contains_key(key_id) {
                keys.clear();
            }
            keys.insert(key_id.to_string(), key);
        }
    }

    fn forget(&self, key_id: &str) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.remove(key_id);
        }
    }
}

impl AppAttestGate {
    pub(super) fn new(settings: &AppAttestSettings) -> Result<Self, Error> {
        Ok(Self {
            mode: settings.mode,
            allow_development: settings.allow_development,
            verifier: Verifier::new(
                &settings.root_pem,
                &settings.app_ids,
                settings.allow_development,
            )
            .map_err(Error::Internal)?,
            keys: Mutex::new(HashMap::new()),
        })
    }
}

/// What an iOS app sends with a code request.
#[derive(Debug, Clone, Copy)]
pub struct AppAssertion<'a> {
    /// The key id (base64 of 32 bytes), as `DCAppAttestService` gave it.
    pub key_id: &'a str,
    /// The assertion object (base64), as `generateAssertion` gave it.
    pub assertion: &'a str,
    /// The challenge the assertion's client data carries.
    pub challenge: &'a str,
}

/// A challenge to attest a key with.
#[derive(Debug, Clone)]
pub struct AttestChallenge {
    /// The challenge: the app attests with SHA-256 of its UTF-8 bytes as `clientDataHash`.
    pub challenge: String,
    /// Seconds it works.
    pub expires_in: u64,
}

/// A key attested (now or before).
#[derive(Debug, Clone)]
pub struct AttestedKeyInfo {
    /// The key id, as sent.
    pub key_id: String,
    /// `production` or `development`.
    pub environment: &'static str,
    /// `false` when the key was attested before (nothing changed).
    pub created: bool,
}

/// The outcome of one assertion check.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Pass,
    /// Not an assertion, or its signature is not the key's over this login.
    Fail,
    /// No assertion.
    Missing,
    /// A key never attested here.
    UnknownKey,
    /// For another app than the key's.
    WrongApp,
    /// A development key after `APP_ATTEST_ENVIRONMENT` became `production`.
    Environment,
    /// A counter that did not go up, or a challenge used before: an assertion used before.
    Replayed,
    /// A challenge that is not ours or older than [`CHALLENGE_SECONDS`].
    Stale,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Missing => "missing",
            Verdict::UnknownKey => "unknown_key",
            Verdict::WrongApp => "wrong_request",
            Verdict::Environment => "environment",
            Verdict::Replayed => "replayed",
            Verdict::Stale => "stale",
        }
    }
}

/// The store key that marks `challenge` used.
fn challenge_key(challenge: &str) -> String {
    format!(
        "aac:{}",
        hex::encode(&Sha256::digest(challenge.as_bytes())[..16])
    )
}

/// A base64 field as apps send it: standard or URL-safe alphabet, padded or not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    // A `+` pasted unencoded into a query string arrives as a space (never base64 itself), so
    // spaces are kept, even at the ends (an id may begin with `+`); other whitespace is not.
    let text = text
        .trim_matches(|c: char| c.is_whitespace() && c != ' ')
        .trim_end_matches('=');
    let standard = text.replace('-', "+").replace('_', "/").replace(' ', "+");
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(standard)
        .ok()
}

/// The key id in its stored form (standard base64, padded), if it is 32 bytes.
fn key_id_of(text: &str) -> Option<(String, Vec<u8>)> {
    let raw = decode_base64(text).filter(|k| k.len() == 32)?;
    Some((STANDARD.encode(&raw), raw))
}

impl AuthService {
    fn app_attest_gate(&self) -> Result<&AppAttestGate, Error> {
        self.app_attest
            .as_ref()
            .filter(|g| g.mode != CaptchaMode::Off)
            .ok_or(Error::NotFound)
    }

    /// A one-time challenge to attest a key or make an assertion with (404 when App Attest is
    /// off). Nothing is stored until it is used: it carries its time and a MAC under the OTP
    /// pepper.
    pub fn app_attest_challenge(&self) -> Result<AttestChallenge, Error> {
        self.app_attest_gate()?;
        let mut random = [0u8; 16];
        rand::rng().fill(&mut random);
        Ok(AttestChallenge {
            challenge: new_challenge(Utc::now().timestamp(), &random, |body| {
                self.otp.keyed_hash("app-attest-challenge", body)
            }),
            expires_in: CHALLENGE_SECONDS,
        })
    }

    /// Whether `challenge` is one of ours and fresh (not yet used: see
    /// [`AuthService::spend_challenge`]).
    fn challenge_is_ours(&self, challenge: &str) -> bool {
        challenge_fresh(challenge, Utc::now().timestamp(), |body| {
            self.otp.keyed_hash("app-attest-challenge", body)
        })
    }

    /// Marks `challenge` used, on every replica: `false` when it was used before.
    async fn spend_challenge(&self, challenge: &str) -> Result<bool, Error> {
        let ttl = Duration::from_secs(CHALLENGE_SECONDS + 60);
        Ok(self
            .store
            .first_delivery(&challenge_key(challenge), ttl)
            .await?)
    }

    /// Verifies and stores an App Attest key: `attestation` made with SHA-256 of `challenge`
    /// (one of ours, used once). 403 `attestation_failed` when anything does not verify.
    pub async fn attest_app_key(
        &self,
        key_id: &str,
        attestation: &str,
        challenge: &str,
        client: &ClientInfo,
    ) -> Result<AttestedKeyInfo, Error> {
        let gate = self.app_attest_gate()?;
        // Verifying costs a chain check and may write a row: limited per client like the
        // Play Integrity checks.
        let quotas = self.quotas.for_integrity(client.ip);
        if !quotas.is_empty()
            && let Err(refusal) = self.store.charge_quotas(&quotas).await?
        {
            self.metrics.refused(refusal.policy);
            return Err(Error::from(refusal));
        }
        let named = key_id_of(key_id).map(|(stored, _)| stored);
        let refused = |reason: &str| {
            tracing::info!(reason, "App Attest attestation refused");
            self.count_app_attest("attestation_failed", gate);
            let mut event = self
                .event(EventKind::IntegrityFailed)
                .client(client)
                .detail("provider", "app_attest")
                .detail("verdict", "attestation_failed")
                .detail("reason", reason)
                .detail("mode", gate.mode.as_str());
            if let Some(named) = &named {
                event = event.detail("app_attest_key_id", named.as_str());
            }
            event.emit();
            Error::AttestationFailed
        };
        let (Some((stored_id, raw_id)), Some(object)) =
            (key_id_of(key_id), decode_base64(attestation))
        else {
            return Err(refused("malformed"));
        };
        if !self.challenge_is_ours(challenge) {
            return Err(refused("challenge"));
        }
        let client_data_hash: [u8; 32] = Sha256::digest(challenge.as_bytes()).into();
        let now = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
        let key = match gate
            .verifier
            .attestation(&object, &raw_id, &client_data_hash, now)
        {
            Ok(key) => key,
            Err(err) => return Err(refused(attest_reason(err))),
        };
        // A challenge works once, on every replica.
        if !self.spend_challenge(challenge).await? {
            return Err(refused("challenge_reused"));
        }
        let created = self
            .db_query(
                "insert_app_attest_key",
                db::app_attest::insert_key(
                    &self.db,
                    db::app_attest_key::Model {
                        key_id: stored_id.clone(),
                        public_key: hex::encode(&key.public_key),
                        app_id: key.app_id.clone(),
                        environment: key.environment.as_str().to_string(),
                        counter: 0,
                        created_at: Utc::now(),
                        last_used_at: None,
                    },
                ),
            )
            .await?;
        self.count_app_attest("attested", gate);
        Ok(AttestedKeyInfo {
            key_id: stored_id,
            environment: key.environment.as_str(),
            created,
        })
    }

    /// Checks the App Attest assertion of a code request for `phone` (see the module). A
    /// missing assertion is decided by [`AuthService::check_human`].
    pub(super) async fn check_app_attest(
        &self,
        proof: AppAssertion<'_>,
        phone: &Phone,
        client: &ClientInfo,
    ) -> Result<Gate, Error> {
        let Ok(gate) = self.app_attest_gate() else {
            return Ok(Gate::Undecided);
        };
        let enforce = gate.mode == CaptchaMode::Enforce;
        let verdict = match self.judge_assertion(gate, proof, phone).await {
            Ok(verdict) => verdict,
            Err(err) if !enforce => {
                tracing::warn!(error = %err, "App Attest assertion not checked");
                return Ok(Gate::Undecided);
            }
            Err(err) => return Err(err),
        };
        self.count_app_attest(verdict.as_str(), gate);
        if verdict == Verdict::Pass {
            return Ok(if enforce {
                Gate::Proven
            } else {
                Gate::Undecided
            });
        }
        let key_id = key_id_of(proof.key_id).map(|(stored, _)| stored);
        self.device_check_failed(
            "app_attest",
            verdict.as_str(),
            gate.mode,
            (phone, key_id.as_deref()),
            client,
        );
        match verdict {
            _ if !enforce => Ok(Gate::Undecided),
            Verdict::UnknownKey => Err(Error::AttestationFailed),
            _ => Err(Error::IntegrityFailed),
        }
    }

    async fn judge_assertion(
        &self,
        gate: &AppAttestGate,
        proof: AppAssertion<'_>,
        phone: &Phone,
    ) -> Result<Verdict, Error> {
        let (Some((key_id, _)), Some(object)) =
            (key_id_of(proof.key_id), decode_base64(proof.assertion))
        else {
            return Ok(Verdict::Fail);
        };
        if !self.challenge_is_ours(proof.challenge) {
            return Ok(Verdict::Stale);
        }
        let key = match gate.known(&key_id) {
            Some(key) => key,
            None => {
                let Some(row) = self
                    .db_query(
                        "find_app_attest_key",
                        db::app_attest::find_key(&self.db, &key_id),
                    )
                    .await?
                else {
                    return Ok(Verdict::UnknownKey);
                };
                let Ok(public_key) = hex::decode(&row.public_key) else {
                    return Ok(Verdict::UnknownKey);
                };
                let key = KnownKey {
                    public_key,
                    app_id: row.app_id,
                    development: row.environment == AttestEnvironment::Development.as_str(),
                    counter: u32::try_from(row.counter).unwrap_or(u32::MAX),
                };
                gate.remember(&key_id, key.clone());
                key
            }
        };
        if key.development && !gate.allow_development {
            return Ok(Verdict::Environment);
        }
        // A counter read earlier may be behind: the update below refuses one not above the
        // stored counter, so a replay still passes only once.
        let client_data = login_client_data(phone.as_str(), proof.challenge);
        let counter = match gate.verifier.assertion(
            &object,
            &key.public_key,
            &key.app_id,
            client_data.as_bytes(),
            key.counter,
        ) {
            Ok(counter) => counter,
            Err(AttestError::Counter) => return Ok(Verdict::Replayed),
            Err(AttestError::AppId) => return Ok(Verdict::WrongApp),
            Err(_) => return Ok(Verdict::Fail),
        };
        // The challenge works once, and the counter moves forward once: the same assertion on
        // two replicas passes on one.
        if !self.spend_challenge(proof.challenge).await? {
            return Ok(Verdict::Replayed);
        }
        let moved = match self
            .db_query(
                "advance_app_attest_counter",
                db::app_attest::advance_counter(&self.db, &key_id, i64::from(counter), Utc::now()),
            )
            .await
        {
            Ok(moved) => moved,
            Err(err) => {
                // The client retries with the same challenge: not a replay (the counter still
                // lets the assertion through once, should the update have committed).
                if let Err(forget) = self
                    .store
                    .forget_delivery(&challenge_key(proof.challenge))
                    .await
                {
                    tracing::warn!(error = %forget, "a spent App Attest challenge stays spent");
                }
                return Err(err);
            }
        };
        if moved {
            gate.remember(&key_id, KnownKey { counter, ..key });
            return Ok(Verdict::Pass);
        }
        // Another replica took this counter first, or an operator revoked the key meanwhile.
        let still_there = self
            .db_query(
                "find_app_attest_key",
                db::app_attest::find_key(&self.db, &key_id),
            )
            .await?
            .is_some();
        Ok(if still_there {
            Verdict::Replayed
        } else {
            gate.forget(&key_id);
            Verdict::UnknownKey
        })
    }

    /// App Attest keys for operators, newest first, at most `limit`; only `key_id`'s when
    /// given (either base64 alphabet; a key id that is not 32 bytes finds nothing).
    pub async fn admin_app_attest_keys(
        &self,
        key_id: Option<&str>,
        limit: u64,
    ) -> Result<Vec<db::app_attest_key::Model>, Error> {
        let key_id = match key_id {
            Some(text) => match key_id_of(text) {
                Some((stored, _)) => Some(stored),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        self.db_query(
            "list_app_attest_keys",
            db::app_attest::list_keys(&self.db, key_id.as_deref(), limit),
        )
        .await
    }

    /// Revokes App Attest key `key_id`: its assertions are refused from now on, on every
    /// replica (403 `attestation_failed`: the app attests a new key). 404 when there is no
    /// such key.
    pub async fn admin_revoke_app_attest_key(
        &self,
        key_id: &str,
        actor: &super::admin::AdminActor,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        let Some((stored, _)) = key_id_of(key_id) else {
            return Err(Error::NotFound);
        };
        let deleted = self
            .db_query(
                "delete_app_attest_key",
                db::app_attest::delete_key(&self.db, &stored),
            )
            .await?;
        if let Some(gate) = &self.app_attest {
            gate.forget(&stored);
        }
        if !deleted {
            return Err(Error::NotFound);
        }
        tracing::info!(key_id = %stored, "App Attest key revoked by an operator");
        self.event(EventKind::AdminAction)
            .client(client)
            .detail("action", "app_attest.revoke")
            .detail("app_attest_key_id", stored.as_str())
            .detail("actor", "admin")
            .detail("key_id", actor.key_id.as_str())
            .emit();
        Ok(())
    }

    /// Whether the App Attest gate is enforced.
    pub(super) fn app_attest_enforced(&self) -> bool {
        self.app_attest
            .as_ref()
            .is_some_and(|g| g.mode == CaptchaMode::Enforce)
    }

    /// Whether the App Attest gate checks assertions (`shadow` or `enforce`).
    pub(super) fn app_attest_on(&self) -> bool {
        self.app_attest_gate().is_ok()
    }

    /// Counts a request without an assertion that an enforced App Attest gate refuses.
    pub(super) fn count_app_attest_missing(&self) {
        if let Some(gate) = &self.app_attest
            && gate.mode == CaptchaMode::Enforce
        {
            self.count_app_attest(Verdict::Missing.as_str(), gate);
        }
    }

    fn count_app_attest(&self, verdict: &str, gate: &AppAttestGate) {
        self.metrics
            .integrity_verdicts
            .with_label_values(&["app_attest", verdict, gate.mode.as_str()])
            .inc();
    }
}

fn attest_reason(err: AttestError) -> &'static str {
    match err {
        AttestError::Malformed => "malformed",
        AttestError::Chain => "certificate_chain",
        AttestError::Nonce => "challenge",
        AttestError::KeyId => "key_id",
        AttestError::AppId => "app_id",
        AttestError::Environment => "environment",
        AttestError::Counter => "counter",
        AttestError::Signature => "signature",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_and_objects_decode_in_either_alphabet() {
        let id = STANDARD.encode([0xfbu8; 32]);
        assert!(id.contains('+') || id.contains('/'));
        let url = id.replace('+', "-").replace('/', "_");
        assert_eq!(key_id_of(&id).unwrap().0, id);
        assert_eq!(key_id_of(&url).unwrap().0, id);
        assert_eq!(key_id_of(url.trim_end_matches('=')).unwrap().0, id);
        assert!(key_id_of(&STANDARD.encode([1u8; 31])).is_none());
        assert!(key_id_of("not base64!").is_none());
        // One that begins with `+`, pasted into a query string: it arrives with a leading
        // space (and a copied line may end with a newline).
        let mut raw = [7u8; 32];
        raw[0] = 0xf8;
        let plus = STANDARD.encode(raw);
        assert!(plus.starts_with('+'));
        assert_eq!(
            key_id_of(&format!("{}\n", plus.replace('+', " ")))
                .unwrap()
                .0,
            plus
        );
    }

    #[test]
    fn the_client_data_binds_the_number_and_the_challenge() {
        assert_eq!(
            login_client_data("+919876543210", "1796025600.abc.0f"),
            "otpgate-login:+919876543210:1796025600.abc.0f"
        );
    }

    #[test]
    fn challenges_expire_and_cannot_be_forged() {
        let mac = |body: &str| hex::encode(Sha256::digest(format!("key:{body}")));
        let other = |body: &str| hex::encode(Sha256::digest(format!("other:{body}")));
        let now = 1_796_025_600;
        let c = new_challenge(now, &[7; 16], mac);
        assert!(challenge_fresh(&c, now, mac));
        assert!(challenge_fresh(&c, now + 300, mac));
        assert!(!challenge_fresh(&c, now + 301, mac), "expired");
        assert!(
            challenge_fresh(&c, now - 60, mac),
            "a replica a minute behind"
        );
        assert!(!challenge_fresh(&c, now - 61, mac), "from the future");
        assert!(!challenge_fresh(&c, now, other), "another pepper");
        // Another time under the same MAC.
        let (body, tag) = c.rsplit_once('.').unwrap();
        let later = body.replacen(&now.to_string(), &(now + 200).to_string(), 1);
        assert!(!challenge_fresh(&format!("{later}.{tag}"), now + 400, mac));
        for bad in [
            "",
            ".",
            "x.y",
            &format!("{body}."),
            &format!("{body}.{}", &tag[..31]),
        ] {
            assert!(!challenge_fresh(bad, now, mac), "{bad:?}");
        }
        assert_ne!(c, new_challenge(now, &[8; 16], mac));
    }
}
