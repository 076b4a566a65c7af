//! Which language a code message is written in, and what an SMS of it costs.
//!
//! The locale is the first of these that has a template: the login request's `locale`, then
//! the languages of its `Accept-Language` (by weight), then the number's country
//! (`OTP_COUNTRY_LOCALES` over the built-in map), then `OTP_DEFAULT_LOCALE`. A tag matches
//! exactly, then with its last subtags dropped (`zh-Hant-TW` → `zh-Hant` → `zh`), then any
//! template of the same language (`pt-PT` → `pt-BR`). Nothing a client sends is an error: an
//! unknown or malformed locale falls through to the next source.

use std::collections::HashMap;

use crate::config::{LocaleSettings, canonical_tag};

/// A locale that has a template (an index into [`Locales`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocaleId(usize);

/// The templates by locale and the rules that choose one.
#[derive(Debug)]
pub struct Locales {
    tags: Vec<String>,
    templates: Vec<String>,
    default: LocaleId,
    countries: HashMap<String, LocaleId>,
}

/// At most this many `Accept-Language` entries are looked at.
const MAX_ACCEPT_LANGUAGE_ENTRIES: usize = 16;

impl Locales {
    /// The templates and rules of the settings (checked at start: the default has a template).
    pub fn new(settings: &LocaleSettings) -> Self {
        let tags: Vec<String> = settings.templates.keys().cloned().collect();
        let templates = settings.templates.values().cloned().collect();
        let default = LocaleId(
            tags.iter()
                .position(|t| *t == settings.default_locale)
                .unwrap_or(0),
        );
        let mut locales = Self {
            tags,
            templates,
            default,
            countries: HashMap::new(),
        };
        locales.countries = settings
            .country_locales
            .iter()
            .filter_map(|(country, tag)| Some((country.clone(), locales.find(tag)?)))
            .collect();
        locales
    }

    /// The locale for a request: its `locale` field, its `Accept-Language`, the number's
    /// country (ISO 3166 alpha-2), the default.
    pub fn choose(
        &self,
        requested: Option<&str>,
        accept_language: Option<&str>,
        country: Option<&str>,
    ) -> LocaleId {
        requested
            .and_then(canonical_tag)
            .and_then(|tag| self.find(&tag))
            .or_else(|| {
                accept_language.and_then(|header| {
                    preferred_languages(header)
                        .iter()
                        .find_map(|tag| self.find(tag))
                })
            })
            .or_else(|| country.and_then(|c| self.countries.get(c).copied()))
            .unwrap_or(self.default)
    }

    /// The locale with a template that serves `tag` (canonical), if any.
    fn find(&self, tag: &str) -> Option<LocaleId> {
        let mut candidate = tag;
        loop {
            if let Some(i) = self.tags.iter().position(|t| t == candidate) {
                return Some(LocaleId(i));
            }
            match candidate.rsplit_once('-') {
                Some((shorter, _)) => candidate = shorter,
                None => break,
            }
        }
        // `candidate` is the language now: the default if it speaks it, else the first that does.
        let speaks = |t: &String| t.split('-').next() == Some(candidate);
        if speaks(&self.tags[self.default.0]) {
            return Some(self.default);
        }
        self.tags.iter().position(speaks).map(LocaleId)
    }

    /// The default locale (`OTP_DEFAULT_LOCALE`).
    pub fn default_locale(&self) -> LocaleId {
        self.default
    }

    /// The locale's tag (`pt-BR`).
    pub fn tag(&self, id: LocaleId) -> &str {
        &self.tags[id.0]
    }

    /// The locale's template.
    pub fn template(&self, id: LocaleId) -> &str {
        &self.templates[id.0]
    }

    /// Every locale with a template.
    pub fn all(&self) -> impl Iterator<Item = LocaleId> + '_ {
        (0..self.tags.len()).map(LocaleId)
    }
}

/// The language tags of an `Accept-Language` header (RFC 9110 §12.5.4), canonical, by
/// descending weight (ties in the header's order); `*`, malformed entries and `q=0` left out.
pub fn preferred_languages(header: &str) -> Vec<String> {
    let mut weighted: Vec<(u16, String)> = header
        .split(',')
        .take(MAX_ACCEPT_LANGUAGE_ENTRIES)
        .filter_map(|entry| {
            let mut parts = entry.split(';');
            let tag = canonical_tag(parts.next()?)?;
            let mut weight = 1000;
            for param in parts {
                let (name, value) = param.split_once('=')?;
                if name.trim().eq_ignore_ascii_case("q") {
                    weight = parse_weight(value.trim())?;
                }
            }
            (weight > 0).then_some((weight, tag))
        })
        .collect();
    weighted.sort_by_key(|w| std::cmp::Reverse(w.0));
    weighted.into_iter().map(|(_, tag)| tag).collect()
}

/// An RFC 9110 weight (`0`, `0.8`, `1.000`) in thousandths.
fn parse_weight(value: &str) -> Option<u16> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths: u16 = format!("{fraction:0<3}").parse().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// How an SMS text is encoded on the air.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsEncoding {
    /// The GSM 03.38 7-bit alphabet: 160 characters in one segment, 153 per segment beyond.
    Gsm7,
    /// UCS-2 (UTF-16 code units): 70 in one segment, 67 per segment beyond.
    Ucs2,
}

impl SmsEncoding {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SmsEncoding::Gsm7 => "gsm7",
            SmsEncoding::Ucs2 => "ucs2",
        }
    }
}

/// The GSM 03.38 basic character set.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The GSM 03.38 extension table (each costs an escape and the character: two septets).
const GSM7_EXTENSION: &str = "\u{0c}^{}\\[~]|€";

/// The encoding of `text` as an SMS and the segments it takes (what a carrier bills).
pub fn sms_segments(text: &str) -> (SmsEncoding, u32) {
    let mut septets = 0u32;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == ' ' || GSM7_BASIC.contains(c) {
            septets += 1;
        } else if GSM7_EXTENSION.contains(c) {
            septets += 2;
        } else {
            let units = text.encode_utf16().count() as u32;
            let segments = if units <= 70 { 1 } else { units.div_ceil(67) };
            return (SmsEncoding::Ucs2, segments);
        }
    }
    let segments = if septets <= 160 {
        1
    } else {
        septets.div_ceil(153)
    };
    (SmsEncoding::Gsm7, segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locales(pairs: &[(&str, &str)]) -> Locales {
        let settings = crate::config::settings_from(pairs).unwrap();
        Locales::new(&settings.delivery.locales)
    }

    fn chosen(
        l: &Locales,
        requested: Option<&str>,
        accept: Option<&str>,
        country: Option<&str>,
    ) -> String {
        l.tag(l.choose(requested, accept, country)).to_string()
    }

    #[test]
    fn the_request_then_accept_language_then_the_country_then_the_default() {
        let l = locales(&[]);
        assert_eq!(chosen(&l, Some("es"), Some("pt-BR"), Some("ID")), "es");
        assert_eq!(chosen(&l, Some("xx"), Some("pt-BR"), Some("ID")), "pt-BR");
        assert_eq!(chosen(&l, Some("not a tag!"), None, Some("ID")), "id");
        assert_eq!(chosen(&l, None, Some("de-DE, fr;q=0.9"), Some("MX")), "es");
        assert_eq!(chosen(&l, None, None, Some("DE")), "en");
        assert_eq!(chosen(&l, None, None, None), "en");
        // India is English unless configured (DLT templates).
        assert_eq!(chosen(&l, None, None, Some("IN")), "en");
        let l = locales(&[("OTP_COUNTRY_LOCALES", "IN=hi, BR=en")]);
        assert_eq!(chosen(&l, None, None, Some("IN")), "hi");
        assert_eq!(chosen(&l, None, None, Some("BR")), "en");
    }

    #[test]
    fn tags_match_by_prefix_then_by_language() {
        let l = locales(&[]);
        assert_eq!(chosen(&l, Some("ES-mx"), None, None), "es");
        assert_eq!(chosen(&l, Some("pt"), None, None), "pt-BR");
        assert_eq!(chosen(&l, Some("pt-PT"), None, None), "pt-BR");
        assert_eq!(chosen(&l, Some("ar-EG"), None, None), "ar");
        assert_eq!(chosen(&l, Some("hi_IN"), None, None), "hi");
        assert_eq!(chosen(&l, Some("en-GB"), None, None), "en");
        assert_eq!(chosen(&l, None, None, Some("PT")), "pt-BR");
        assert_eq!(chosen(&l, Some("zh-Hant-TW"), None, None), "en");
    }

    #[test]
    fn accept_language_weights_are_honoured() {
        assert_eq!(
            preferred_languages("fr;q=0.5, es-MX, pt-BR;q=0.8, *;q=0.1, de;q=0"),
            ["es-MX", "pt-BR", "fr"]
        );
        assert_eq!(
            preferred_languages("en;q=1.0, id;q=1.5, ar;q=0.9x, hi;q=0.999"),
            ["en", "hi"]
        );
        assert!(preferred_languages("").is_empty());
        let l = locales(&[]);
        assert_eq!(chosen(&l, None, Some("fr;q=0.9, ar;q=0.8"), None), "ar");
        assert_eq!(chosen(&l, None, Some("ar;q=0, es;q=0.1"), Some("EG")), "es");
        // Only the first entries of a long header are read.
        let long = format!("{}id", "zz,".repeat(40));
        assert_eq!(chosen(&l, None, Some(&long), None), "en");
    }

    #[test]
    fn only_the_listed_locales_and_the_default() {
        let l = locales(&[("OTP_LOCALES", "es"), ("OTP_DEFAULT_LOCALE", "pt-br")]);
        let tags: Vec<&str> = l.all().map(|id| l.tag(id)).collect();
        assert_eq!(tags, ["es", "pt-BR"]);
        assert_eq!(chosen(&l, Some("hi"), None, Some("EG")), "pt-BR");
        assert_eq!(l.tag(l.default_locale()), "pt-BR");
    }

    #[test]
    fn segments_follow_gsm_03_38() {
        assert_eq!(sms_segments("123456 is your code."), (SmsEncoding::Gsm7, 1));
        assert_eq!(sms_segments(&"a".repeat(160)), (SmsEncoding::Gsm7, 1));
        assert_eq!(sms_segments(&"a".repeat(161)), (SmsEncoding::Gsm7, 2));
        assert_eq!(sms_segments(&"a".repeat(306)), (SmsEncoding::Gsm7, 2));
        assert_eq!(sms_segments(&"a".repeat(307)), (SmsEncoding::Gsm7, 3));
        // The extension table costs two septets: 80 euros are 160 septets.
        assert_eq!(sms_segments(&"€".repeat(80)), (SmsEncoding::Gsm7, 1));
        assert_eq!(sms_segments(&"€".repeat(81)), (SmsEncoding::Gsm7, 2));
        // Accents of the basic set stay GSM-7; others need UCS-2.
        assert_eq!(sms_segments("é ñ ü à Ç"), (SmsEncoding::Gsm7, 1));
        assert_eq!(sms_segments("código"), (SmsEncoding::Ucs2, 1));
        assert_eq!(sms_segments(&"á".repeat(70)), (SmsEncoding::Ucs2, 1));
        assert_eq!(sms_segments(&"á".repeat(71)), (SmsEncoding::Ucs2, 2));
        assert_eq!(sms_segments(&"á".repeat(135)), (SmsEncoding::Ucs2, 3));
        // Outside the BMP a character is two UTF-16 units.
        assert_eq!(sms_segments(&"😀".repeat(35)), (SmsEncoding::Ucs2, 1));
        assert_eq!(sms_segments(&"😀".repeat(36)), (SmsEncoding::Ucs2, 2));
    }

    /// The built-in templates take one segment with a 6-digit code, 10 minutes and an app name
    /// of 12 characters, autofill lines aside.
    #[test]
    fn built_in_templates_fit_one_segment() {
        for (tag, template) in crate::config::locales::BUILT_IN_TEMPLATES {
            let text = template
                .replace("{code}", "123456")
                .replace("{minutes}", "10")
                .replace("{app}", "Acme Wallets");
            let (encoding, segments) = sms_segments(&text);
            assert_eq!(segments, 1, "{tag} ({encoding:?}): {text}");
        }
    }
}
