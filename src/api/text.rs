//! Checked strings for request fields. The OpenAPI schema carries each field's pattern and
//! length, and the check is a few lines of code: poem-openapi's `pattern` validator compiles its
//! regular expression on every request, which cost more than the rest of a login's parsing.

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;

macro_rules! checked_text {
    (
        $(#[$doc:meta])*
        $name:ident {
            pattern: $pattern:literal,
            max_length: $max:expr,
            rule: $rule:literal,
            check: $check:expr $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub String);

        impl $name {
            /// The pattern the OpenAPI schema shows.
            pub const PATTERN: &'static str = $pattern;
            /// The rule in plain words, for error messages.
            pub const RULE: &'static str = $rule;

            /// Whether `text` follows the rule.
            pub fn check(text: &str) -> bool {
                let check: fn(&str) -> bool = $check;
                text.len() <= $max && check(text)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl Type for $name {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                "string".into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new(MetaSchema {
                    pattern: Some($pattern.to_string()),
                    max_length: Some($max),
                    ..MetaSchema::new("string")
                }))
            }

            fn as_raw_value(&self) -> Option<&Self::RawValueType> {
                Some(self)
            }

            fn raw_element_iter<'a>(
                &'a self,
            ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }

        impl ParseFromJSON for $name {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                // Strings only: a JSON number loses leading zeros (`"0123"` → `123`).
                let text = match value.unwrap_or_default() {
                    Value::String(text) => text,
                    other => return Err(ParseError::expected_type(other)),
                };
                if Self::check(&text) {
                    Ok(Self(text))
                } else {
                    Err(ParseError::custom(concat!("must be ", $rule)))
                }
            }
        }

        impl ToJSON for $name {
            fn to_json(&self) -> Option<Value> {
                Some(Value::String(self.0.clone()))
            }
        }

        /// Form fields (the OAuth token endpoint) go through the same check.
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                if Self::check(&text) {
                    Ok(Self(text))
                } else {
                    Err(serde::de::Error::custom(concat!("must be ", $rule)))
                }
            }
        }
    };
}

checked_text! {
    /// A phone number as typed: digits, spaces, `+`, `(`, `)`, `.` and `-`, as a JSON string.
    PhoneText {
        pattern: r"^[+(]?[0-9][0-9 ().-]*$",
        max_length: 32,
        rule: "a string of up to 32 characters: digits, spaces and + ( ) . - (for example \"+919876543210\")",
        check: |t| {
            let rest = t.strip_prefix(['+', '(']).unwrap_or(t);
            rest.starts_with(|c: char| c.is_ascii_digit())
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b' ' | b'(' | b')' | b'.' | b'-'))
        },
    }
}

checked_text! {
    /// A one-time code: 4 to 10 digits, as a JSON string (a number would lose leading zeros).
    OtpText {
        pattern: r"^[0-9]{4,10}$",
        max_length: 10,
        rule: "a string of 4 to 10 digits (for example \"012345\")",
        check: |t| (4..=10).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()),
    }
}

checked_text! {
    /// A login intent id: 32 lowercase hex digits.
    IntentIdText {
        pattern: r"^[0-9a-f]{32}$",
        max_length: 32,
        rule: "32 lowercase hexadecimal digits, as the intent gave it",
        check: |t| t.len() == 32 && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
    }
}

checked_text! {
    /// A poll token: 43 characters of base64url.
    PollTokenText {
        pattern: r"^[A-Za-z0-9_-]{43}$",
        max_length: 43,
        rule: "43 characters of base64url, as the intent gave it",
        check: |t| t.len() == 43 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
    }
}

checked_text! {
    /// A token as otpgate issues it: a JWT (base64url segments separated by dots).
    TokenText {
        pattern: r"^[A-Za-z0-9_.-]{1,4096}$",
        max_length: 4096,
        rule: "a token as issued (letters, digits, _, - and .)",
        check: |t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')),
    }
}

checked_text! {
    /// Free text of at most 256 characters, as a JSON string (not a number or a boolean).
    Text {
        pattern: r"^[\s\S]{0,256}$",
        max_length: 1024,
        rule: "a string of at most 256 characters",
        check: |t| t.chars().count() <= 256,
    }
}

checked_text! {
    /// The language a client asks the code message in: a BCP 47 tag such as `es` or `pt-BR`.
    /// One the server has no template for (or that is not a tag at all) is not an error: the
    /// next source decides.
    LocaleText {
        pattern: r"^[^\x00-\x1f\x7f]{0,64}$",
        max_length: 256,
        rule: "a language tag such as \"es\" or \"pt-BR\" (a string of at most 64 characters)",
        check: |t| t.chars().count() <= 64 && !t.chars().any(char::is_control),
    }
}

checked_text! {
    /// A device name an app gives a session: at most 64 characters, no control characters.
    DeviceNameText {
        pattern: r"^[^\x00-\x1f\x7f]{1,64}$",
        max_length: 256,
        rule: "a string of 1 to 64 characters without control characters (for example \"Pixel 8\")",
        check: |t| (1..=64).contains(&t.chars().count()) && !t.chars().any(char::is_control),
    }
}

checked_text! {
    /// A captcha token as the widget gives it (Turnstile, hCaptcha, reCAPTCHA): at most 4096
    /// printable ASCII characters (an empty one counts as missing).
    CaptchaTokenText {
        pattern: r"^[\x21-\x7e]{0,4096}$",
        max_length: 4096,
        rule: "a captcha token of at most 4096 printable ASCII characters, as the widget gave it",
        check: |t| t.len() <= 4096 && t.bytes().all(|b| (0x21..=0x7e).contains(&b)),
    }
}

checked_text! {
    /// A Play Integrity token as the Android SDK gives it: at most 16384 printable ASCII
    /// characters (an empty one counts as missing).
    IntegrityTokenText {
        pattern: r"^[\x21-\x7e]{0,16384}$",
        max_length: 16384,
        rule: "a Play Integrity token of at most 16384 printable ASCII characters, as the SDK gave it",
        check: |t| t.len() <= 16384 && t.bytes().all(|b| (0x21..=0x7e).contains(&b)),
    }
}

checked_text! {
    /// An Apple App Attest value as the iOS SDK gives it, base64 (standard or URL-safe
    /// alphabet, padded or not): a key id, an attestation or an assertion.
    AppAttestText {
        pattern: r"^[A-Za-z0-9+/_=-]{0,16384}$",
        max_length: 16384,
        rule: "base64 of at most 16384 characters, as the App Attest SDK gave it",
        check: |t| {
            t.len() <= 16384
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/_=-".contains(&b))
        },
    }
}

checked_text! {
    /// A challenge otpgate issued for App Attest: at most 128 printable ASCII characters (an
    /// empty one counts as missing).
    AttestChallengeText {
        pattern: r"^[\x21-\x7e]{0,128}$",
        max_length: 128,
        rule: "the challenge from POST /api/auth/app-attest/challenge, unchanged",
        check: |t| t.len() <= 128 && t.bytes().all(|b| (0x21..=0x7e).contains(&b)),
    }
}

checked_text! {
    /// A hex SHA-256 HMAC: 64 hex digits.
    HexHashText {
        pattern: r"^[0-9a-fA-F]{64}$",
        max_length: 64,
        rule: "64 hexadecimal digits",
        check: |t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()),
    }
}

/// A checked text's pattern, its check, and the rule in words.
pub(crate) type Rule = (&'static str, fn(&str) -> bool, &'static str);

/// Every checked text type's pattern, check and rule: request errors name the rule a field
/// broke (see `api::body`).
pub(crate) const RULES: &[Rule] = &[
    (PhoneText::PATTERN, PhoneText::check, PhoneText::RULE),
    (OtpText::PATTERN, OtpText::check, OtpText::RULE),
    (
        IntentIdText::PATTERN,
        IntentIdText::check,
        IntentIdText::RULE,
    ),
    (
        PollTokenText::PATTERN,
        PollTokenText::check,
        PollTokenText::RULE,
    ),
    (HexHashText::PATTERN, HexHashText::check, HexHashText::RULE),
    (
        CaptchaTokenText::PATTERN,
        CaptchaTokenText::check,
        CaptchaTokenText::RULE,
    ),
    (
        IntegrityTokenText::PATTERN,
        IntegrityTokenText::check,
        IntegrityTokenText::RULE,
    ),
    (
        AppAttestText::PATTERN,
        AppAttestText::check,
        AppAttestText::RULE,
    ),
    (
        AttestChallengeText::PATTERN,
        AttestChallengeText::check,
        AttestChallengeText::RULE,
    ),
    (TokenText::PATTERN, TokenText::check, TokenText::RULE),
    (Text::PATTERN, Text::check, Text::RULE),
    (
        DeviceNameText::PATTERN,
        DeviceNameText::check,
        DeviceNameText::RULE,
    ),
    (LocaleText::PATTERN, LocaleText::check, LocaleText::RULE),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: ParseFromJSON>(v: Value) -> bool {
        T::parse_from_json(Some(v)).is_ok()
    }

    #[test]
    fn checks_match_the_documented_patterns() {
        use serde_json::json;
        for ok in ["+919876543210", "(91) 98765-43210", "0091 98765.43210", "9"] {
            assert!(parse::<PhoneText>(json!(ok)), "{ok}");
        }
        for bad in ["", "+", "++91", "+ 91", "91a", "(+91)", &"9".repeat(33)] {
            assert!(!parse::<PhoneText>(json!(bad)), "{bad}");
        }
        // JSON numbers are refused: they cannot carry a leading zero or a `+`.
        assert!(!parse::<PhoneText>(json!(14155552671u64)));
        assert!(!parse::<PhoneText>(json!(-5)));
        assert!(!parse::<PhoneText>(json!(true)));
        assert!(parse::<OtpText>(json!("0123")) && !parse::<OtpText>(json!(123456)));
        assert!(!parse::<OtpText>(json!("123")) && !parse::<OtpText>(json!("12345678901")));
        assert!(!parse::<OtpText>(json!("12 34")));
        assert!(parse::<IntentIdText>(json!(
            "0123456789abcdef0123456789abcdef"
        )));
        assert!(!parse::<IntentIdText>(json!(
            "0123456789ABCDEF0123456789abcdef"
        )));
        assert!(parse::<PollTokenText>(json!("a".repeat(43))));
        assert!(
            !parse::<PollTokenText>(json!("a".repeat(42))) && !parse::<PollTokenText>(json!(1))
        );
        assert!(parse::<HexHashText>(json!("aF".repeat(32))));
        assert!(!parse::<HexHashText>(json!("g".repeat(64))));
        assert!(parse::<DeviceNameText>(json!("Asha's Pixel 8 ✓")));
        assert!(!parse::<DeviceNameText>(json!("")));
        assert!(!parse::<DeviceNameText>(json!("line\nbreak")));
        assert!(!parse::<DeviceNameText>(json!("x".repeat(65))));
    }
}
