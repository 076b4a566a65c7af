//! Phone parsing never panics, and whatever it accepts is E.164 that parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otpgate::domain::phone::Phone;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for region in [None, "IN".parse().ok(), "US".parse().ok()] {
        if let Ok(phone) = Phone::parse(text, region) {
            let e164 = phone.as_str();
            assert!(e164.starts_with('+') && e164[1..].bytes().all(|b| b.is_ascii_digit()));
            let again = Phone::parse(e164, None).expect("E.164 parses");
            assert_eq!(again.as_str(), e164);
            let _ = (phone.masked(), phone.prefix(), phone.region_code());
        }
    }
});
