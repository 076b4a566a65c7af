//! Webhook authentication and message scanning never panic on any input: the WhatsApp
//! signature check accepts nothing but a `sha256=` HMAC, the widget hash check nothing but hex,
//! and an intent code found in a text always has the code's shape.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otpgate::auth::intents::{find_code, is_code};
use otpgate::messaging::telegram::{WidgetLogin, widget_hash_valid};
use otpgate::messaging::whatsapp::signature_valid;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (header, body) = data.split_at(split);
    let header = String::from_utf8_lossy(header);
    if signature_valid(b"app-secret", body, Some(&header)) {
        assert!(header.trim().starts_with("sha256="));
    }
    let text = String::from_utf8_lossy(data);
    if let Some(code) = find_code(&text) {
        assert!(is_code(&code));
    }
    let login = WidgetLogin {
        fields: vec![("id".into(), "1".into()), ("auth_date".into(), text.to_string())],
        id: 1,
        auth_date: 0,
        hash: header.to_string(),
    };
    if widget_hash_valid("1:token", &login) {
        assert!(hex_only(&header));
    }
});

fn hex_only(text: &str) -> bool {
    text.trim().bytes().all(|b| b.is_ascii_hexdigit())
}
