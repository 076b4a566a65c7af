//! App Attest objects never panic the verifier, and nothing but Apple's own attestation (its
//! receipt aside, which Apple alone reads) verifies: an attestation that passes certifies the
//! sample's key id, and an assertion that passes carries a counter above the last one.
//!
//! Input: a mode byte (even: an attestation, odd: an assertion), then the object. The seeds are
//! Apple's objects from `tests/api/fixtures/app-attest`, so mutations start from the real
//! layout (CBOR, certificates, authenticator data).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use otpgate::domain::app_attest::{APPLE_ROOT_PEM, Verifier};
use sha2::{Digest, Sha256};

const APP: &str = "V8H6LQ9448.io.uebelacker.AppAttestExample";
/// The production sample's key id (base64 `SC86LZmoFbL/KxWfezr7ihgEdLHK8ZrDbTwMtAkBCbM=`).
const KEY_ID: [u8; 32] = [
    0x48, 0x2f, 0x3a, 0x2d, 0x99, 0xa8, 0x15, 0xb2, 0xff, 0x2b, 0x15, 0x9f, 0x7b, 0x3a, 0xfb,
    0x8a, 0x18, 0x04, 0x74, 0xb1, 0xca, 0xf1, 0x9a, 0xc3, 0x6d, 0x3c, 0x0c, 0xb4, 0x09, 0x01,
    0x09, 0xb3,
];
/// The assertion sample's public key (an uncompressed P-256 point).
const PUBLIC_KEY: &str = "0483af6dd98ce070f4cb531f1982efab6dc8a479a10bf0fa5bf871b441322e973f18501f6d82fd690d1aee5a4f3b9d90b7a2eaf9ea9cc859aa9711b696c9a99dcc";
const PAYLOAD: &[u8] =
    br#"{"subject":"Lorem ipsum","message":"Lorem ipsum dolor sit amet, consectetur adipiscing elit."}"#;
/// 2024-06-01, inside the sample leaf's validity.
const JUNE_2024: u64 = 1_717_200_000;

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    Verifier::new(APPLE_ROOT_PEM, &[APP.to_string()], true).expect("Apple's root")
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, object)) = data.split_first() else {
        return;
    };
    let verifier = &*VERIFIER;
    if mode % 2 == 0 {
        let hash: [u8; 32] = Sha256::digest(b"de5e0359-84f7-4dd7-a98d-5363e9415fb1").into();
        if let Ok(key) = verifier.attestation(object, &KEY_ID, &hash, JUNE_2024) {
            assert_eq!(Sha256::digest(&key.public_key).as_slice(), KEY_ID);
            assert_eq!(key.app_id, APP);
        }
    } else {
        let key = hex::decode(PUBLIC_KEY).expect("hex");
        if let Ok(counter) = verifier.assertion(object, &key, APP, PAYLOAD, 0) {
            assert!(counter > 0);
        }
    }
});
