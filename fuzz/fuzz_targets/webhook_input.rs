//! Webhook authentication and message scanning never panic on any input: the WhatsApp
//! signature check accepts a header exactly when it is `sha256=` and the hex HMAC-SHA256 of the
//! body under the app secret, the widget hash check exactly when the hash is the hex HMAC of the
//! data-check-string under SHA-256(bot token), and an intent code found in a text always has the
//! code's shape and occurs in the text.
//!
//! Input: `header line \n body`. The right signature and hash are computed here with the `hmac`
//! crate, so the accepting side of each check is exercised on every input too.
#![no_main]

use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use otpgate::auth::intents::{find_code, is_code};
use otpgate::messaging::telegram::{WidgetLogin, widget_hash_valid};
use otpgate::messaging::whatsapp::signature_valid;
use sha2::{Digest, Sha256};

const APP_SECRET: &[u8] = b"app-secret";
const BOT_TOKEN: &str = "1:token";

fn hmac_hex(key: &[u8], data: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// What `header` carries as a MAC, if it is hex after the optional `prefix`.
fn mac_bytes(header: &str, prefix: &str) -> Option<Vec<u8>> {
    hex::decode(header.trim().strip_prefix(prefix)?).ok()
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (header, body) = data.split_at(split);
    let header = String::from_utf8_lossy(header);

    // WhatsApp: accepted iff the header decodes to the body's MAC.
    let right = hmac_hex(APP_SECRET, body);
    let expected = hex::decode(&right).expect("hex");
    let accepted = signature_valid(APP_SECRET, body, Some(&header));
    assert_eq!(
        accepted,
        mac_bytes(&header, "sha256=").as_deref() == Some(expected.as_slice()),
        "signature check disagrees with the HMAC for header {header:?}"
    );
    assert!(signature_valid(
        APP_SECRET,
        body,
        Some(&format!("sha256={right}"))
    ));
    assert!(
        !signature_valid(APP_SECRET, body, Some(&right)),
        "the prefix is required"
    );
    assert!(!signature_valid(APP_SECRET, body, None));
    assert!(!signature_valid(
        b"other-secret",
        body,
        Some(&format!("sha256={right}"))
    ));

    // Intent codes: the shape, and taken from the text.
    let text = String::from_utf8_lossy(data);
    if let Some(code) = find_code(&text) {
        assert!(is_code(&code));
        assert!(
            text.to_ascii_uppercase().contains(&code),
            "{code} is not in the text"
        );
    }

    // Telegram widget: accepted iff the hash is the MAC of the sorted `key=value` lines.
    let fields = vec![
        ("id".to_string(), "1".to_string()),
        ("auth_date".to_string(), text.to_string()),
    ];
    let check_string = format!("auth_date={text}\nid=1");
    let key = Sha256::digest(BOT_TOKEN.as_bytes());
    let right_hash = hmac_hex(&key, check_string.as_bytes());
    let login = |hash: String| WidgetLogin {
        fields: fields.clone(),
        id: 1,
        auth_date: 0,
        hash,
    };
    assert_eq!(
        widget_hash_valid(BOT_TOKEN, &login(header.to_string())),
        mac_bytes(&header, "") == hex::decode(&right_hash).ok(),
        "widget hash check disagrees with the HMAC for hash {header:?}"
    );
    assert!(widget_hash_valid(BOT_TOKEN, &login(right_hash.clone())));
    assert!(!widget_hash_valid("2:other", &login(right_hash)));
});
