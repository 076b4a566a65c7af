//! `.env` parsing, database URL normalisation and country-cap lists never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = otpgate::config::parse_dotenv(text);
    let _ = otpgate::config::Settings::from_lookup(|k| env.get(k).cloned());
    let _ = otpgate::config::normalize_database_url(text);
    let _ = otpgate::domain::country::parse_country_caps(text);
});
