//! Phone numbers: parsed from the forms clients send, kept and returned in E.164.

use std::fmt;

use phonenumber::Type;
use phonenumber::country::Id as Region;

/// Why a phone number was refused; the text is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPhone(pub String);

/// Longest input we try to parse; real numbers are far shorter, even with spacing.
const MAX_INPUT_LEN: usize = 32;

/// A valid phone number in E.164 form (`+919876543210`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Phone {
    e164: String,
    /// Digits of the country calling code (`91` for India).
    country_code_len: usize,
    /// The region the number belongs to (`IN`), when libphonenumber knows one.
    region: Option<Region>,
    /// Mobile, fixed line, toll-free, premium rate, …
    kind: Type,
}

impl Phone {
    /// Parses `+919876543210`, `919876543210` (digits with country code, the seed's form),
    /// `+91 98765 43210`, `0091 98765 43210`, and, when `default_region` is set, national
    /// numbers such as `098765 43210`.
    pub fn parse(input: &str, default_region: Option<Region>) -> Result<Self, InvalidPhone> {
        let input = input.trim();
        if input.is_empty() {
            return Err(InvalidPhone("The phone number is empty.".into()));
        }
        if input.len() > MAX_INPUT_LEN {
            return Err(InvalidPhone("The phone number is too long.".into()));
        }
        if !input
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '.' | '(' | ')'))
        {
            return Err(InvalidPhone(
                "A phone number may contain only digits, spaces, '+', '-', '.' and parentheses."
                    .into(),
            ));
        }
        let compact: String = input
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == '+')
            .collect();
        if compact.rfind('+').is_some_and(|i| i > 0) {
            return Err(InvalidPhone("'+' may only start the number.".into()));
        }
        let international = if let Some(rest) = compact.strip_prefix("00") {
            Some(format!("+{rest}"))
        } else if compact.starts_with('+') {
            Some(compact.clone())
        } else {
            None
        };

        let candidates: Vec<(Option<Region>, String)> = match (international, default_region) {
            (Some(number), _) => vec![(None, number)],
            // A bare digit string: national first when a region is configured, then with `+`.
            (None, Some(region)) => vec![
                (Some(region), compact.clone()),
                (None, format!("+{compact}")),
            ],
            (None, None) => vec![(None, format!("+{compact}"))],
        };
        for (region, text) in candidates {
            let Ok(number) = phonenumber::parse(region, &text) else {
                continue;
            };
            // `is_valid` is "the number's type is known", so for most numbers computing the
            // type once (a dozen regex matches) validates and classifies together. The library
            // classifies without the national number's leading zeros (Italy's fixed lines
            // keep theirs), so those numbers are validated the long way.
            let kind = super::phone_type::number_type(&number);
            let valid = if number.national().zeros() == 0 {
                kind != Type::Unknown
            } else {
                phonenumber::is_valid(&number)
            };
            if valid {
                // E.164 is `+`, the country code and the national number (leading zeros
                // included); the library's formatter would first match every format pattern.
                let e164 = format!("+{}{}", number.code().value(), number.national());
                let country_code_len = number.code().value().to_string().len();
                let region = number
                    .metadata(&phonenumber::metadata::DATABASE)
                    .and_then(|m| m.id().parse().ok());
                return Ok(Phone {
                    e164,
                    country_code_len,
                    region,
                    kind,
                });
            }
        }
        Err(InvalidPhone(
            "Not a valid phone number; send it with its country code, like +919876543210.".into(),
        ))
    }

    /// The E.164 form, `+919876543210`.
    pub fn as_str(&self) -> &str {
        &self.e164
    }

    /// The ISO 3166 alpha-2 code of the number's region (`IN`), when known.
    pub fn region_code(&self) -> Option<String> {
        self.region.map(|r| r.as_ref().to_string())
    }

    /// The same, borrowed.
    pub fn region(&self) -> Option<&str> {
        self.region.as_ref().map(|r| r.as_ref())
    }

    /// The number's type as libphonenumber classifies it.
    pub fn kind(&self) -> Type {
        self.kind
    }

    /// Whether the number is of a type that must not receive codes at all: premium-rate,
    /// shared-cost and toll-free numbers are where SMS-pumping fraud sends its traffic.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self.kind,
            Type::PremiumRate | Type::SharedCost | Type::TollFree
        )
    }

    /// The number without its last four digits (`+9198765`): a block of 10,000 numbers, the
    /// unit pumping attacks walk through.
    pub fn prefix(&self) -> &str {
        &self.e164[..self.e164.len().saturating_sub(4).max(1)]
    }

    /// The country code and the first `digits` digits of the national number (`+91987` for
    /// 3), never more than the national number without its last five digits (a block of at
    /// least 100,000 numbers), so no prefix narrows a number down more than that.
    pub fn national_prefix(&self, digits: usize) -> &str {
        let national = self.e164.len() - 1 - self.country_code_len.min(self.e164.len() - 1);
        let keep = digits.min(national.saturating_sub(5));
        &self.e164[..1 + self.country_code_len + keep]
    }

    /// The form safe for logs: country code and last four digits, `+91******3210`.
    pub fn masked(&self) -> String {
        let digits = &self.e164[1..];
        let (cc, national) = digits.split_at(self.country_code_len.min(digits.len()));
        let keep = national.len().min(4);
        let hidden = national.len() - keep;
        format!("+{cc}{}{}", "*".repeat(hidden), &national[hidden..])
    }
}

impl AsRef<str> for Phone {
    fn as_ref(&self) -> &str {
        &self.e164
    }
}

/// Debug output is masked so a stray `{:?}` cannot leak a full number into the logs.
impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Phone({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e164(input: &str) -> String {
        Phone::parse(input, None).unwrap().as_str().to_string()
    }

    #[test]
    fn accepted_forms_map_to_one_number() {
        for form in [
            "+919876543210",
            "919876543210",
            "+91 98765 43210",
            "0091 98765 43210",
            "00919876543210",
            " +91-98765-43210 ",
            "+91 (98765) 43210",
        ] {
            assert_eq!(e164(form), "+919876543210", "{form}");
        }
        assert_eq!(e164("+1 415 555 2671"), "+14155552671");
        assert_eq!(e164("+44 7400 123456"), "+447400123456");
        // Italian fixed lines keep their leading zero in E.164.
        assert_eq!(e164("+39 06 4567 8901"), "+390645678901");
    }

    #[test]
    fn national_numbers_need_a_region() {
        assert!(Phone::parse("09876543210", None).is_err());
        let region = "IN".parse().ok();
        assert_eq!(
            Phone::parse("09876543210", region).unwrap().as_str(),
            "+919876543210"
        );
        assert_eq!(
            Phone::parse("98765 43210", region).unwrap().as_str(),
            "+919876543210"
        );
        // Digits with their country code still work when a region is set.
        assert_eq!(
            Phone::parse("14155552671", region).unwrap().as_str(),
            "+14155552671"
        );
    }

    #[test]
    fn rejects_what_is_not_a_number() {
        for bad in [
            "",
            "   ",
            "abc",
            "+91abc9876543210",
            "12",
            "+0000000000",
            "+91 98765 4321",
            "9+19876543210",
            "+999 123456789",
            "+919876543210; DROP TABLE users",
            "1234567890123456789012345678901234567890",
        ] {
            assert!(
                Phone::parse(bad, None).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn region_type_and_prefix() {
        let phone = Phone::parse("+919876543210", None).unwrap();
        assert_eq!(phone.region_code().as_deref(), Some("IN"));
        assert_eq!(phone.kind(), Type::Mobile);
        assert!(!phone.is_unsupported());
        assert_eq!(phone.prefix(), "+91987654");
        let uk = Phone::parse("+44 7400 123456", None).unwrap();
        assert_eq!(uk.region_code().as_deref(), Some("GB"));
        let us_toll_free = Phone::parse("+1 800 253 0000", None).unwrap();
        assert_eq!(us_toll_free.kind(), Type::TollFree);
        assert!(us_toll_free.is_unsupported());
        let uk_premium = Phone::parse("+44 909 8790000", None).unwrap();
        assert_eq!(uk_premium.kind(), Type::PremiumRate);
        let uk_landline = Phone::parse("+44 20 7946 0000", None).unwrap();
        assert_eq!(uk_landline.kind(), Type::FixedLine);
    }

    #[test]
    fn masking_keeps_country_code_and_last_four() {
        let phone = Phone::parse("+919876543210", None).unwrap();
        assert_eq!(phone.masked(), "+91******3210");
        assert_eq!(format!("{phone:?}"), "Phone(+91******3210)");
        let us = Phone::parse("+14155552671", None).unwrap();
        assert_eq!(us.masked(), "+1******2671");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Valid numbers of a few regions: (country code, national number).
    fn numbers() -> impl Strategy<Value = (&'static str, String)> {
        prop_oneof![
            "9[0-9]{9}".prop_map(|n| ("91", n)),       // India, mobile
            "4155[0-9]{6}".prop_map(|n| ("1", n)),     // US, San Francisco
            "7400[0-9]{6}".prop_map(|n| ("44", n)),    // UK, mobile
            "15[125][0-9]{8}".prop_map(|n| ("49", n)), // Germany, mobile (Telekom, Vodafone)
        ]
    }

    proptest! {
        /// Every accepted spelling of a number normalises to the same E.164, and E.164 is a
        /// fixed point.
        #[test]
        fn spellings_round_trip((cc, national) in numbers(), cut in 1usize..6, sep in "[ .-]") {
            // The generators draw from ranges libphonenumber knows as valid: every number must
            // parse, so no case is skipped.
            let canonical = Phone::parse(&format!("+{cc}{national}"), None);
            prop_assert!(canonical.is_ok(), "+{} {} was refused", cc, national);
            let canonical = canonical.unwrap();
            let e164 = canonical.as_str().to_string();
            let (head, tail) = national.split_at(cut.min(national.len() - 1));
            for spelling in [
                format!("{cc}{national}"),
                format!("00{cc}{national}"),
                format!("+{cc}{sep}{head}{sep}{tail}"),
                format!("+{cc} ({head}) {tail}"),
                format!("  +{cc}{national}  "),
                e164.clone(),
            ] {
                let parsed = Phone::parse(&spelling, None);
                prop_assert!(parsed.is_ok(), "{spelling:?} of {e164} was refused");
                let parsed = parsed.unwrap();
                prop_assert_eq!(parsed.as_str(), e164.as_str());
            }
            prop_assert!(canonical.masked().ends_with(&e164[e164.len() - 4..]));
            prop_assert!(!canonical.masked().contains(&national[..national.len() - 4]));
        }

        /// Whatever arrives, parsing answers (never panics) and an answer is valid E.164.
        #[test]
        fn any_input_is_answered(input in "\\PC{0,40}") {
            if let Ok(phone) = Phone::parse(&input, None) {
                prop_assert!(phone.as_str().starts_with('+'));
                prop_assert!(phone.as_str()[1..].bytes().all(|b| b.is_ascii_digit()));
                let again = Phone::parse(phone.as_str(), None).unwrap();
                prop_assert_eq!(again.as_str(), phone.as_str());
            }
        }
    }
}
