//! One-time codes: length, lifetime, attempts, resend cooldown, the pepper that keys their
//! hashes, which phone numbers are accepted, and the test numbers for store review and CI.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::env::{ConfigError, Vars, invalid};
use crate::domain::phone::Phone;
use crate::domain::secret::Secret;

/// The HMAC key of stored code hashes.
#[derive(Debug, Clone)]
pub enum Pepper {
    /// `OTP_PEPPER`.
    Set(Secret),
    /// Derived from `JWT_SECRET_KEY` (HMAC-SHA256 of a fixed label), when `OTP_PEPPER` is unset.
    FromJwtSecret(Secret),
}

/// Codes and the numbers they go to.
#[derive(Debug, Clone)]
pub struct OtpSettings {
    /// `OTP_LENGTH`: digits per code, 4 to 10.
    pub length: u32,
    /// `OTP_EXPIRY_MINUTES`: code lifetime, at most 10 minutes.
    pub ttl: Duration,
    /// `OTP_MAX_ATTEMPTS`: wrong tries before a code is burned.
    pub max_attempts: u32,
    /// `OTP_RESEND_SECONDS`: cooldown between two codes for one phone.
    pub resend: Duration,
    /// `OTP_PEPPER`, or where it comes from.
    pub pepper: Pepper,
    /// `EXPOSE_OTP`: return the code in the login response (development and tests only).
    pub expose: bool,
    /// `DEFAULT_REGION`: ISO 3166 region for national-format numbers; unset = E.164 only.
    pub default_region: Option<phonenumber::country::Id>,
    /// `TEST_PHONE_NUMBERS` and `TEST_PHONE_NUMBERS_VALID_UNTIL`.
    pub test_numbers: TestNumbers,
}

/// Numbers for App Store / Play review and CI (`TEST_PHONE_NUMBERS=phone=code,…`): each has a
/// fixed code, and a login for it reaches no provider and skips the send quotas and the resend
/// cooldown. Until `TEST_PHONE_NUMBERS_VALID_UNTIL`, when set; after it they are ordinary
/// numbers again. Neither `Debug` nor anything else here prints a code or a full number.
#[derive(Clone, Default)]
pub struct TestNumbers {
    /// Each number (E.164) with its code.
    numbers: Vec<(Phone, Secret)>,
    /// The instant the numbers stop being test numbers.
    valid_until: Option<DateTime<Utc>>,
}

impl TestNumbers {
    /// The fixed code of `phone` when it is a test number at `now`.
    pub fn code_for(&self, phone: &Phone, now: DateTime<Utc>) -> Option<&str> {
        if self.valid_until.is_some_and(|until| now >= until) {
            return None;
        }
        self.numbers
            .iter()
            .find(|(number, _)| number == phone)
            .map(|(_, code)| code.expose())
    }

    /// The numbers listed, whether or not they are still valid.
    pub fn phones(&self) -> impl Iterator<Item = &Phone> {
        self.numbers.iter().map(|(phone, _)| phone)
    }

    /// `TEST_PHONE_NUMBERS_VALID_UNTIL`, when set.
    pub fn valid_until(&self) -> Option<DateTime<Utc>> {
        self.valid_until
    }

    /// Whether no number is listed.
    pub fn is_empty(&self) -> bool {
        self.numbers.is_empty()
    }

    /// What production start-up warns about: one line per listed number (masked), saying until
    /// when it logs in with a fixed code and no delivery. Nothing outside production.
    pub fn production_warnings(&self, production: bool) -> Vec<String> {
        if !production {
            return Vec::new();
        }
        let now = Utc::now();
        self.phones()
            .map(|phone| {
                let masked = phone.masked();
                match self.valid_until {
                    Some(until) if now >= until => format!(
                        "TEST_PHONE_NUMBERS lists {masked}, but TEST_PHONE_NUMBERS_VALID_UNTIL \
                         ({}) has passed: it is an ordinary number again",
                        until.to_rfc3339()
                    ),
                    Some(until) => format!(
                        "TEST_PHONE_NUMBERS: {masked} logs in with a fixed code, no delivery, no \
                         quota and no cooldown until {} (TEST_PHONE_NUMBERS_VALID_UNTIL)",
                        until.to_rfc3339()
                    ),
                    None => format!(
                        "TEST_PHONE_NUMBERS: {masked} logs in with a fixed code, no delivery, no \
                         quota and no cooldown, with no end (set TEST_PHONE_NUMBERS_VALID_UNTIL)"
                    ),
                }
            })
            .collect()
    }

    /// Reads both variables; every malformed entry is reported (by its position and, once
    /// parsed, its masked number; never its code) and left out.
    fn from_env(
        env: &Vars<'_>,
        length: u32,
        default_region: Option<phonenumber::country::Id>,
    ) -> Self {
        const VAR: &str = "TEST_PHONE_NUMBERS";
        let mut numbers: Vec<(Phone, Secret)> = Vec::new();
        let mut positions: Vec<usize> = Vec::new();
        for (i, entry) in env.list(VAR).iter().enumerate() {
            let n = i + 1;
            let Some((phone, code)) = entry.split_once('=') else {
                env.report(invalid(
                    VAR,
                    format!("entry {n} is not phone=code (no `=`)"),
                ));
                continue;
            };
            let phone = match Phone::parse(phone, default_region) {
                Ok(phone) => phone,
                Err(e) => {
                    env.report(invalid(VAR, format!("entry {n}: {e}")));
                    continue;
                }
            };
            let code = code.trim();
            if code.len() != length as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
                env.report(invalid(
                    VAR,
                    format!(
                        "entry {n} ({}): the code must be {length} digits (OTP_LENGTH)",
                        phone.masked()
                    ),
                ));
                continue;
            }
            if let Some(first) = numbers.iter().position(|(p, _)| *p == phone) {
                env.report(invalid(
                    VAR,
                    format!(
                        "entry {n} ({}) repeats entry {}",
                        phone.masked(),
                        positions[first]
                    ),
                ));
                continue;
            }
            numbers.push((phone, Secret::new(code)));
            positions.push(n);
        }
        let valid_until = env.get("TEST_PHONE_NUMBERS_VALID_UNTIL").and_then(|raw| {
            DateTime::parse_from_rfc3339(raw.trim())
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    env.report(invalid(
                        "TEST_PHONE_NUMBERS_VALID_UNTIL",
                        format!(
                            "{raw:?} is not an RFC 3339 instant such as 2027-01-31T23:59:59Z: {e}"
                        ),
                    ))
                })
                .ok()
        });
        Self {
            numbers,
            valid_until,
        }
    }
}

/// Masked numbers and the end instant only: the codes never print.
impl fmt::Debug for TestNumbers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let masked: Vec<String> = self.phones().map(Phone::masked).collect();
        f.debug_struct("TestNumbers")
            .field("numbers", &masked)
            .field("valid_until", &self.valid_until)
            .finish()
    }
}

impl OtpSettings {
    pub(crate) fn from_env(
        env: &Vars<'_>,
        production: bool,
        jwt_secret: &Secret,
    ) -> Result<Self, ConfigError> {
        let length: u32 = env.ranged("OTP_LENGTH", 6, 4..=10)?;
        let minutes: u64 = env.ranged("OTP_EXPIRY_MINUTES", 5, 1..=10)?;
        let max_attempts: u32 = env.ranged("OTP_MAX_ATTEMPTS", 5, 1..=20)?;
        let default_region = match env.get("DEFAULT_REGION") {
            None => None,
            Some(code) => Some(
                code.trim()
                    .to_ascii_uppercase()
                    .parse::<phonenumber::country::Id>()
                    .map_err(|_| {
                        invalid(
                            "DEFAULT_REGION",
                            format!("{code:?} is not an ISO 3166 region"),
                        )
                    })?,
            ),
        };
        let test_numbers = TestNumbers::from_env(env, length, default_region);
        Ok(Self {
            length,
            ttl: Duration::from_secs(minutes * 60),
            max_attempts,
            resend: Duration::from_secs(env.parse("OTP_RESEND_SECONDS", 60)?),
            pepper: match env.get("OTP_PEPPER") {
                Some(pepper) => Pepper::Set(Secret::new(pepper)),
                None => Pepper::FromJwtSecret(jwt_secret.clone()),
            },
            expose: env.bool("EXPOSE_OTP", !production)?,
            default_region,
            test_numbers,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::config::settings_from as settings;

    fn phone(text: &str) -> Phone {
        Phone::parse(text, None).unwrap()
    }

    /// The messages of every problem with `TEST_PHONE_NUMBERS…`, or the numbers when none.
    fn problems(pairs: &[(&str, &str)]) -> Vec<String> {
        match settings(pairs) {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .0
                .iter()
                .map(|e| {
                    assert!(e.var.starts_with("TEST_PHONE_NUMBERS"), "{e}");
                    e.to_string()
                })
                .collect(),
        }
    }

    #[test]
    fn test_numbers_parse_the_api_forms_to_e164() {
        let s = settings(&[(
            "TEST_PHONE_NUMBERS",
            " +12015550123=123456, 0091 98765 43210 = 000000 ,,",
        )])
        .unwrap();
        let numbers = &s.otp.test_numbers;
        let listed: Vec<&str> = numbers.phones().map(Phone::as_str).collect();
        assert_eq!(listed, ["+12015550123", "+919876543210"]);
        let now = Utc::now();
        assert_eq!(
            numbers.code_for(&phone("+12015550123"), now),
            Some("123456")
        );
        assert_eq!(
            numbers.code_for(&phone("919876543210"), now),
            Some("000000")
        );
        assert_eq!(numbers.code_for(&phone("+14155552671"), now), None);
        assert_eq!(numbers.valid_until(), None);
        // Unset or empty: no test numbers.
        assert!(settings(&[]).unwrap().otp.test_numbers.is_empty());
        assert!(
            settings(&[("TEST_PHONE_NUMBERS", "")])
                .unwrap()
                .otp
                .test_numbers
                .is_empty()
        );
        // National forms only with DEFAULT_REGION, as in the API.
        let s = settings(&[
            ("DEFAULT_REGION", "IN"),
            ("TEST_PHONE_NUMBERS", "098765 43210=111111"),
        ])
        .unwrap();
        assert_eq!(
            s.otp.test_numbers.code_for(&phone("+919876543210"), now),
            Some("111111")
        );
        // The code has OTP_LENGTH digits.
        let s = settings(&[
            ("OTP_LENGTH", "8"),
            ("TEST_PHONE_NUMBERS", "+12015550123=12345678"),
        ])
        .unwrap();
        assert_eq!(s.otp.test_numbers.phones().count(), 1);
    }

    #[test]
    fn test_numbers_end_at_valid_until() {
        let s = settings(&[
            ("TEST_PHONE_NUMBERS", "+12015550123=123456"),
            (
                "TEST_PHONE_NUMBERS_VALID_UNTIL",
                "2027-01-31T12:00:00+01:00",
            ),
        ])
        .unwrap();
        let numbers = &s.otp.test_numbers;
        let until = Utc.with_ymd_and_hms(2027, 1, 31, 11, 0, 0).unwrap();
        assert_eq!(numbers.valid_until(), Some(until));
        let number = phone("+12015550123");
        let second = chrono::Duration::seconds(1);
        assert_eq!(numbers.code_for(&number, until - second), Some("123456"));
        assert_eq!(numbers.code_for(&number, until), None);
        assert_eq!(numbers.code_for(&number, until + second), None);
    }

    #[test]
    fn bad_test_numbers_name_the_entry_never_the_code() {
        for (value, expected) in [
            ("+12015550123", "entry 1 is not phone=code"),
            ("+12015550123=123456,+1201555=135791", "entry 2: "),
            (
                "+12015550123=24680",
                "entry 1 (+1******0123): the code must be 6 digits",
            ),
            (
                "+12015550123=24680a",
                "entry 1 (+1******0123): the code must be 6 digits",
            ),
            ("+12015550123=2468024", "the code must be 6 digits"),
            (
                "+12015550123=123456,+919876543210=222222,1 201 555 0123=333333",
                "entry 3 (+1******0123) repeats entry 1",
            ),
        ] {
            let found = problems(&[("TEST_PHONE_NUMBERS", value)]);
            assert_eq!(found.len(), 1, "{value}: {found:?}");
            assert!(found[0].contains(expected), "{value}: {found:?}");
            for code in ["123456", "24680", "135791", "222222", "333333"] {
                assert!(!found[0].contains(code), "{value}: {found:?}");
            }
        }
        let found = problems(&[
            ("TEST_PHONE_NUMBERS", "+12015550123=123456"),
            ("TEST_PHONE_NUMBERS_VALID_UNTIL", "next friday"),
        ]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("configuration error: TEST_PHONE_NUMBERS_VALID_UNTIL:"),
            "{found:?}"
        );
        // Every bad entry is reported at once.
        let found = problems(&[("TEST_PHONE_NUMBERS", "x=123456,+12015550123=1,nothing")]);
        assert_eq!(found.len(), 3, "{found:?}");
    }

    #[test]
    fn production_warns_once_per_number_without_its_code() {
        let pairs = [
            (
                "TEST_PHONE_NUMBERS",
                "+12015550123=918273,+919876543210=192837",
            ),
            ("TEST_PHONE_NUMBERS_VALID_UNTIL", "2999-01-01T00:00:00Z"),
        ];
        let numbers = settings(&pairs).unwrap().otp.test_numbers;
        assert!(numbers.production_warnings(false).is_empty());
        let warnings = numbers.production_warnings(true);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("+1******0123"), "{warnings:?}");
        assert!(warnings[1].contains("+91******3210"), "{warnings:?}");
        assert!(
            warnings[0].contains("until 2999-01-01T00:00:00+00:00"),
            "{warnings:?}"
        );
        for w in &warnings {
            assert!(!w.contains("  "), "one line of text: {w}");
            for secret in ["918273", "192837", "2015550123", "9876543210"] {
                assert!(!w.contains(secret), "{w}");
            }
        }
        let past = settings(&[
            ("TEST_PHONE_NUMBERS", "+12015550123=918273"),
            ("TEST_PHONE_NUMBERS_VALID_UNTIL", "2020-01-01T00:00:00Z"),
        ])
        .unwrap()
        .otp
        .test_numbers;
        assert!(past.production_warnings(true)[0].contains("ordinary number again"));
    }

    #[test]
    fn test_numbers_do_not_debug_print_their_codes() {
        let s = settings(&[("TEST_PHONE_NUMBERS", "+12015550123=918273")]).unwrap();
        let shown = format!("{s:?}");
        assert!(shown.contains("+1******0123"), "{shown}");
        assert!(
            !shown.contains("918273") && !shown.contains("2015550123"),
            "{shown}"
        );
    }
}
