//! Micro-benchmarks of the work one login flow does in otpgate's own code: parsing the phone,
//! hashing the code, signing and verifying tokens, decoding request bodies, and what the App
//! Attest gate adds (an assertion checked, an attestation checked). Run with
//! `cargo bench --bench hot_path`; CI compiles them (`cargo bench --no-run`).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use otpgate::api::auth::{LoginRequest, VerifyRequest};
use otpgate::api::body;
use otpgate::auth::otp::OtpService;
use otpgate::auth::tokens::{TokenKind, TokenService};
use otpgate::config::Settings;
use otpgate::domain::phone::Phone;
use otpgate::store::MemoryStore;

fn settings() -> Settings {
    Settings::from_lookup(|k| {
        (k == "JWT_SECRET_KEY").then(|| "bench-secret-bench-secret-bench-secret".to_string())
    })
    .expect("settings")
}

fn phone_parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("phone");
    for (name, input) in [
        ("e164_in", "+919876543210"),
        ("spaced_in", "+91 98765 43210"),
        ("digits_us", "14155552671"),
        ("e164_gb", "+447911123456"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| Phone::parse(black_box(input), None).expect("valid"))
        });
    }
    group.finish();
}

fn code_hashing(c: &mut Criterion) {
    let settings = settings();
    let otp = OtpService::new(&settings.otp, Arc::new(MemoryStore::new())).expect("otp");
    let phone = Phone::parse("+919876543210", None).expect("valid");
    c.bench_function("otp/hash", |b| {
        b.iter(|| otp.hash(black_box(&phone), black_box("482913")))
    });
    c.bench_function("otp/subjects", |b| {
        b.iter(|| otp.subjects(black_box(&phone)))
    });
}

fn tokens(c: &mut Criterion) {
    let settings = settings();
    let tokens = TokenService::new(&settings.tokens).expect("tokens");
    let user = uuid::Uuid::now_v7();
    c.bench_function("tokens/issue_pair", |b| {
        b.iter(|| tokens.issue_pair(black_box(user), "sid").expect("signed"))
    });
    let pair = tokens.issue_pair(user, "sid").expect("signed");
    c.bench_function("tokens/decode_access", |b| {
        b.iter(|| {
            tokens
                .decode(black_box(&pair.access_token), TokenKind::Access)
                .expect("valid")
        })
    });
}

fn request_decoding(c: &mut Criterion) {
    let login = br#"{"phone": "+919876543210", "channel": "sms"}"#;
    let verify = br#"{"phone": "+919876543210", "otp_code": "482913"}"#;
    let wrong = br#"{"phone": "+919876543210", "otp_code": 482913}"#;
    c.bench_function("body/login", |b| {
        b.iter(|| body::parse::<LoginRequest>(black_box(login)).expect("valid"))
    });
    c.bench_function("body/verify", |b| {
        b.iter(|| body::parse::<VerifyRequest>(black_box(verify)).expect("valid"))
    });
    c.bench_function("body/verify_refused", |b| {
        b.iter(|| body::parse::<VerifyRequest>(black_box(wrong)).expect_err("refused"))
    });
}

/// Apple's own objects (tests/api/fixtures/app-attest): an assertion, checked at every gated
/// login, and an attestation, checked once per install.
fn app_attest(c: &mut Criterion) {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use otpgate::domain::app_attest::{APPLE_ROOT_PEM, Verifier};
    use sha2::{Digest, Sha256};
    let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    let field = |v: &serde_json::Value, k: &str| STANDARD.decode(v[k].as_str().unwrap()).unwrap();
    let app = "V8H6LQ9448.io.uebelacker.AppAttestExample".to_string();
    let verifier = Verifier::new(APPLE_ROOT_PEM, std::slice::from_ref(&app), false).unwrap();
    let a = json(include_str!(
        "../tests/api/fixtures/app-attest/assertion.json"
    ));
    let assertion = field(&a, "assertion");
    let spki: String = a["publicKey"]
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let spki = STANDARD.decode(spki).unwrap();
    let key = &spki[spki.len() - 65..];
    let payload = a["payload"].as_str().unwrap().as_bytes();
    c.bench_function("app_attest/assertion", |b| {
        b.iter(|| verifier.assertion(black_box(&assertion), key, &app, payload, 0))
    });
    let p = json(include_str!(
        "../tests/api/fixtures/app-attest/production.json"
    ));
    let (object, key_id) = (field(&p, "attestation"), field(&p, "keyId"));
    let hash: [u8; 32] = Sha256::digest(field(&p, "challenge")).into();
    // 2024-06-01, inside the sample leaf's validity.
    c.bench_function("app_attest/attestation", |b| {
        b.iter(|| verifier.attestation(black_box(&object), &key_id, &hash, 1_717_200_000))
    });
}

criterion_group!(
    benches,
    phone_parsing,
    code_hashing,
    tokens,
    request_decoding,
    app_attest
);
criterion_main!(benches);
