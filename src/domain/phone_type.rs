//! libphonenumber's classification of a number (phonenumber's `PhoneNumber::number_type`), with
//! the same answers, computed faster: each region's patterns are compiled once, anchored, and
//! kept. phonenumber looks every pattern up by its text in one global, mutex-guarded cache of
//! 100 compiled regexes (hashing the text each time, recompiling when more than a few regions
//! are in use) and searches unanchored for a match that starts at the first digit. Parsing, and
//! finding the region of a country code that several regions share (+1, +7, +44…), still go
//! through the library and its cache.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use phonenumber::metadata::{Descriptor, Metadata};
use phonenumber::{PhoneNumber, Type};
use regex::{Regex, RegexBuilder};

/// The type of `number`, exactly as `number.number_type(&phonenumber::metadata::DATABASE)`.
pub fn number_type(number: &PhoneNumber) -> Type {
    let Some(meta) = number.metadata(&phonenumber::metadata::DATABASE) else {
        return Type::Unknown;
    };
    // The library classifies the national number as an integer's digits (no leading zeros).
    let national = number.national().value().to_string();
    patterns(meta).classify(&national)
}

/// One descriptor: its possible lengths and its national-number pattern, anchored at the start
/// (the library accepts a match that starts at the first digit, wherever it ends).
struct Pattern {
    lengths: Vec<u16>,
    regex: Regex,
}

impl Pattern {
    fn new(descriptor: &Descriptor) -> Option<Self> {
        let source = descriptor.national_number().as_str();
        // The library builds its patterns in verbose mode (whitespace ignored); so do we.
        let regex = RegexBuilder::new(&format!("^(?:{source})"))
            .ignore_whitespace(true)
            .build()
            .ok()?;
        Some(Self {
            lengths: descriptor.possible_length().to_vec(),
            regex,
        })
    }

    fn matches(&self, national: &str) -> bool {
        (self.lengths.is_empty() || self.lengths.contains(&(national.len() as u16)))
            && self.regex.is_match(national)
    }
}

/// A region's patterns in the order the library tries them.
struct RegionPatterns {
    general: Option<Pattern>,
    /// Premium rate, toll free, shared cost, VoIP, personal, pager, UAN, voicemail: the first
    /// that matches is the answer.
    special: Vec<(Type, Pattern)>,
    fixed_line: Option<Pattern>,
    mobile: Option<Pattern>,
    /// Fixed-line and mobile numbers share one pattern (the library compares the texts).
    fixed_line_is_mobile: bool,
}

impl RegionPatterns {
    fn new(meta: &Metadata) -> Self {
        let d = meta.descriptors();
        let special = [
            (Type::PremiumRate, d.premium_rate()),
            (Type::TollFree, d.toll_free()),
            (Type::SharedCost, d.shared_cost()),
            (Type::Voip, d.voip()),
            (Type::PersonalNumber, d.personal_number()),
            (Type::Pager, d.pager()),
            (Type::Uan, d.uan()),
            (Type::Voicemail, d.voicemail()),
        ]
        .into_iter()
        .filter_map(|(kind, descriptor)| Some((kind, Pattern::new(descriptor?)?)))
        .collect();
        let text = |d: Option<&Descriptor>| d.map(|d| d.national_number().as_str().to_string());
        Self {
            general: Pattern::new(d.general()),
            special,
            fixed_line: d.fixed_line().and_then(Pattern::new),
            mobile: d.mobile().and_then(Pattern::new),
            fixed_line_is_mobile: text(d.fixed_line()) == text(d.mobile()),
        }
    }

    fn classify(&self, national: &str) -> Type {
        let hit = |p: &Option<Pattern>| p.as_ref().is_some_and(|p| p.matches(national));
        if !hit(&self.general) {
            return Type::Unknown;
        }
        if let Some((kind, _)) = self.special.iter().find(|(_, p)| p.matches(national)) {
            return *kind;
        }
        if hit(&self.fixed_line) {
            return if self.fixed_line_is_mobile || hit(&self.mobile) {
                Type::FixedLineOrMobile
            } else {
                Type::FixedLine
            };
        }
        if hit(&self.mobile) {
            return Type::Mobile;
        }
        Type::Unknown
    }
}

/// The compiled patterns of `meta`'s region, compiled on its first number.
fn patterns(meta: &'static Metadata) -> Arc<RegionPatterns> {
    static REGIONS: OnceLock<RwLock<HashMap<usize, Arc<RegionPatterns>>>> = OnceLock::new();
    let regions = REGIONS.get_or_init(Default::default);
    // The metadata lives in the library's static database: its address names the region.
    let key = meta as *const Metadata as usize;
    if let Some(found) = regions
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&key)
    {
        return found.clone();
    }
    let compiled = Arc::new(RegionPatterns::new(meta));
    regions
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(key)
        .or_insert(compiled)
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example number of every region and type, and numbers near them (each digit changed
    /// two ways, one added, one dropped), get the library's type.
    #[test]
    fn same_answers_as_the_library() {
        let database = &phonenumber::metadata::DATABASE;
        let mut checked = 0;
        let mut kinds = std::collections::HashSet::new();
        for code in 1..=999u16 {
            let Some(regions) = database.by_code(&code) else {
                continue;
            };
            for meta in regions {
                let d = meta.descriptors();
                let examples = [
                    Some(d.general()),
                    d.fixed_line(),
                    d.mobile(),
                    d.toll_free(),
                    d.premium_rate(),
                    d.shared_cost(),
                    d.personal_number(),
                    d.voip(),
                    d.pager(),
                    d.uan(),
                    d.voicemail(),
                ]
                .into_iter()
                .flatten()
                .filter_map(|d| d.example().map(str::to_string));
                for example in examples {
                    let mut variants = vec![example.clone(), format!("{example}7")];
                    if example.len() > 1 {
                        variants.push(example[..example.len() - 1].to_string());
                    }
                    for (i, c) in example.char_indices() {
                        let digit = c.to_digit(10).unwrap_or(0);
                        for other in [(digit + 1) % 10, (digit + 5) % 10] {
                            variants.push(format!("{}{other}{}", &example[..i], &example[i + 1..]));
                        }
                    }
                    for national in variants {
                        let text = format!("+{code}{national}");
                        let Ok(number) = phonenumber::parse(None, &text) else {
                            continue;
                        };
                        let expected = number.number_type(database);
                        assert_eq!(number_type(&number), expected, "{text}");
                        kinds.insert(format!("{expected:?}"));
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 20_000, "only {checked} numbers compared");
        assert!(kinds.len() >= 10, "types seen: {kinds:?}");
    }
}
