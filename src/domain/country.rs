//! Countries as ISO 3166 alpha-2 codes libphonenumber knows, and per-country caps.

/// Parses `IN=50000,GB=2000`.
pub fn parse_country_caps(text: &str) -> Result<Vec<(String, u32)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (country, cap) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not COUNTRY=CAP"))?;
            let country = parse_country(country)?;
            let cap = cap
                .trim()
                .parse()
                .map_err(|_| format!("{pair:?}: the cap is not a number"))?;
            Ok((country, cap))
        })
        .collect()
}

/// Parses an ISO 3166 alpha-2 code that libphonenumber knows.
pub fn parse_country(code: &str) -> Result<String, String> {
    let code = code.trim().to_ascii_uppercase();
    code.parse::<phonenumber::country::Id>()
        .map(|_| code.clone())
        .map_err(|_| format!("{code:?} is not an ISO 3166 alpha-2 country code"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_caps_parse() {
        assert_eq!(
            parse_country_caps("IN=50000, gb=2000").unwrap(),
            vec![("IN".to_string(), 50000), ("GB".to_string(), 2000)]
        );
        assert!(parse_country_caps("XX=1").is_err());
        assert!(parse_country_caps("IN").is_err());
        assert!(parse_country_caps("IN=lots").is_err());
    }
}
