//! Token checking never panics and never accepts what it did not sign.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use otpgate::auth::tokens::{TokenKind, TokenService};
use otpgate::config::Settings;

static TOKENS: LazyLock<TokenService> = LazyLock::new(|| {
    let settings = Settings::from_lookup(|_| None).expect("default settings");
    TokenService::new(&settings.tokens).expect("token service")
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    assert!(TOKENS.decode(text, TokenKind::Access).is_err());
    assert!(TOKENS.decode(text, TokenKind::Refresh).is_err());
});
