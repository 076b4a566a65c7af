//! The App Attest gate (`APP_ATTEST_*`), with a device played here: a local CA stands in for
//! Apple's (`APP_ATTEST_ROOT_CA_FILE`; Apple's own objects are checked against Apple's root in
//! the unit tests of `domain::app_attest`), and the device's Secure Enclave key is a P-256 key
//! that signs exactly what Apple documents. A key attested with a one-time challenge logs in
//! once per assertion (on any replica); replayed, other-number, unknown-key and missing
//! assertions are refused with nothing sent; attestations for another app, another root,
//! another challenge or a development build are refused; shadow mode refuses nothing but
//! never lets a request around another enforced gate.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helpers::{Backend, Reply, TestApp, field, spawn_app_with, unique_phone};
use crate::observability::{metrics_text, sample};

crate::on_both_backends!(
    an_attested_key_sends_a_code_once_per_assertion,
    attestations_that_do_not_verify_are_refused,
    shadow_refuses_nothing_and_opens_no_way_around_another_gate,
);

const APP_ID: &str = "ABCDE12345.com.acme.app";

// ---- a certificate authority and a device, in DER and CBOR ----

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend([0x81, len as u8]),
        _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    der(0x30, &parts.concat())
}

fn oid(bytes: &[u8]) -> Vec<u8> {
    der(0x06, bytes)
}

const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// Apple's nonce extension, 1.2.840.113635.100.8.2.
const NONCE: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x63, 0x64, 0x08, 0x02];

fn name(common_name: &str) -> Vec<u8> {
    let attribute = seq(&[&oid(COMMON_NAME), &der(0x0c, common_name.as_bytes())]);
    seq(&[&der(0x31, &attribute)])
}

fn key_pair(p384: bool) -> EcdsaKeyPair {
    let alg = if p384 {
        &ECDSA_P384_SHA384_ASN1_SIGNING
    } else {
        &ECDSA_P256_SHA256_ASN1_SIGNING
    };
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new()).unwrap();
    EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).unwrap()
}

/// A P-384 certificate authority, as Apple's root and intermediate are.
struct Ca {
    key: EcdsaKeyPair,
    name: Vec<u8>,
    der: Vec<u8>,
}

impl Ca {
    fn root(common_name: &str) -> Ca {
        let key = key_pair(true);
        let name = name(common_name);
        let der = issue(
            &key,
            &name,
            &name,
            key.public_key().as_ref(),
            P384,
            true,
            vec![],
        );
        Ca { key, name, der }
    }

    fn intermediate(&self, common_name: &str) -> Ca {
        let key = key_pair(true);
        let name = name(common_name);
        let der = issue(
            &self.key,
            &self.name,
            &name,
            key.public_key().as_ref(),
            P384,
            true,
            vec![],
        );
        Ca { key, name, der }
    }

    fn pem(&self) -> String {
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            STANDARD.encode(&self.der)
        )
    }
}

/// A certificate for `public_key` (on `curve`) signed by `issuer_key` (ECDSA with SHA-384).
fn issue(
    issuer_key: &EcdsaKeyPair,
    issuer: &[u8],
    subject: &[u8],
    public_key: &[u8],
    curve: &[u8],
    ca: bool,
    mut extensions: Vec<Vec<u8>>,
) -> Vec<u8> {
    let bit_string = |bytes: &[u8]| der(0x03, &[&[0u8][..], bytes].concat());
    let key_info = seq(&[
        &seq(&[&oid(EC_PUBLIC_KEY), &oid(curve)]),
        &bit_string(public_key),
    ]);
    let constraints = if ca {
        seq(&[&der(0x01, &[0xff])])
    } else {
        seq(&[])
    };
    extensions.push(seq(&[
        &oid(BASIC_CONSTRAINTS),
        &der(0x01, &[0xff]),
        &der(0x04, &constraints),
    ]));
    let extensions: Vec<&[u8]> = extensions.iter().map(Vec::as_slice).collect();
    let algorithm = seq(&[&oid(ECDSA_SHA384)]);
    let serial: [u8; 8] = rand_bytes();
    let tbs = seq(&[
        &der(0xa0, &der(0x02, &[2])),
        &der(0x02, &[&[1u8][..], &serial].concat()),
        &algorithm,
        issuer,
        &seq(&[&der(0x17, b"240101000000Z"), &der(0x17, b"491231235959Z")]),
        subject,
        &key_info,
        &der(0xa3, &seq(&extensions)),
    ]);
    let signature = issuer_key.sign(&SystemRandom::new(), &tbs).unwrap();
    seq(&[&tbs, &algorithm, &bit_string(signature.as_ref())])
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).unwrap();
    out
}

fn cbor_head(major: u8, len: usize) -> Vec<u8> {
    match len {
        0..=23 => vec![major << 5 | len as u8],
        24..=0xff => vec![major << 5 | 24, len as u8],
        _ => vec![major << 5 | 25, (len >> 8) as u8, len as u8],
    }
}

fn cbor_bytes(bytes: &[u8]) -> Vec<u8> {
    [cbor_head(2, bytes.len()), bytes.to_vec()].concat()
}

fn cbor_map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = cbor_head(5, entries.len());
    for (key, value) in entries {
        out.extend(cbor_head(3, key.len()));
        out.extend(key.as_bytes());
        out.extend(value);
    }
    out
}

/// An iOS device with one App Attest key.
struct Device {
    key: EcdsaKeyPair,
    counter: u32,
}

impl Device {
    fn new() -> Device {
        Device {
            key: key_pair(false),
            counter: 0,
        }
    }

    fn key_id_raw(&self) -> Vec<u8> {
        Sha256::digest(self.key.public_key().as_ref()).to_vec()
    }

    fn key_id(&self) -> String {
        STANDARD.encode(self.key_id_raw())
    }

    /// Apple's attestation of this key for `app_id`, made with SHA-256 of `challenge`, issued
    /// by `ca` (whose root the server may or may not trust); `aaguid` names the environment.
    fn attestation(&self, ca: &Ca, app_id: &str, challenge: &str, aaguid: &[u8; 16]) -> String {
        self.attestation_for(ca, app_id, challenge, aaguid, &self.key_id_raw())
    }

    /// The same, naming `credential_id` in the authenticator data (Apple names the key id).
    fn attestation_for(
        &self,
        ca: &Ca,
        app_id: &str,
        challenge: &str,
        aaguid: &[u8; 16],
        credential_id: &[u8],
    ) -> String {
        let mut auth_data = Sha256::digest(app_id.as_bytes()).to_vec();
        auth_data.push(0x40);
        auth_data.extend(0u32.to_be_bytes());
        auth_data.extend(aaguid);
        auth_data.extend((credential_id.len() as u16).to_be_bytes());
        auth_data.extend(credential_id);
        // The COSE key follows (not read: the certificate's key is the one that counts).
        auth_data.extend(cbor_map(&[]));
        let nonce = Sha256::new()
            .chain_update(&auth_data)
            .chain_update(Sha256::digest(challenge.as_bytes()))
            .finalize();
        let nonce_extension = seq(&[
            &oid(NONCE),
            &der(0x04, &seq(&[&der(0xa1, &der(0x04, &nonce))])),
        ]);
        let leaf = issue(
            &ca.key,
            &ca.name,
            &name(&hex::encode(self.key_id_raw())),
            self.key.public_key().as_ref(),
            P256,
            false,
            vec![nonce_extension],
        );
        let x5c = [cbor_head(4, 2), cbor_bytes(&leaf), cbor_bytes(&ca.der)].concat();
        let object = cbor_map(&[
            (
                "fmt",
                [cbor_head(3, 15), b"apple-appattest".to_vec()].concat(),
            ),
            (
                "attStmt",
                cbor_map(&[("x5c", x5c), ("receipt", cbor_bytes(b"receipt"))]),
            ),
            ("authData", cbor_bytes(&auth_data)),
        ]);
        STANDARD.encode(object)
    }

    /// An assertion over the login client data for `phone` and `challenge`, with the next
    /// counter.
    fn assert_login(&mut self, phone: &str, challenge: &str) -> String {
        self.counter += 1;
        self.assertion(
            APP_ID,
            &format!("otpgate-login:{phone}:{challenge}"),
            self.counter,
        )
    }

    fn assertion(&self, app_id: &str, client_data: &str, counter: u32) -> String {
        let mut auth_data = Sha256::digest(app_id.as_bytes()).to_vec();
        auth_data.push(0);
        auth_data.extend(counter.to_be_bytes());
        let nonce = Sha256::new()
            .chain_update(&auth_data)
            .chain_update(Sha256::digest(client_data.as_bytes()))
            .finalize();
        let signature = self.key.sign(&SystemRandom::new(), &nonce).unwrap();
        STANDARD.encode(cbor_map(&[
            ("signature", cbor_bytes(signature.as_ref())),
            ("authenticatorData", cbor_bytes(&auth_data)),
        ]))
    }
}

const PRODUCTION: &[u8; 16] = b"appattest\0\0\0\0\0\0\0";
const DEVELOPMENT: &[u8; 16] = b"appattestdevelop";

// ---- the service ----

/// Apple's stand-in: a root (whose PEM the server trusts) and its intermediate.
struct Apple {
    intermediate: Ca,
    root_file: std::path::PathBuf,
}

impl Apple {
    fn new() -> Apple {
        let root = Ca::root("Test App Attestation Root CA");
        let intermediate = root.intermediate("Test App Attestation CA 1");
        let root_file = std::env::temp_dir().join(format!(
            "otpgate-app-attest-root-{}.pem",
            hex::encode(rand_bytes::<8>())
        ));
        std::fs::write(&root_file, root.pem()).unwrap();
        Apple {
            intermediate,
            root_file,
        }
    }
}

impl Drop for Apple {
    fn drop(&mut self) {
        std::fs::remove_file(&self.root_file).ok();
    }
}

async fn app_with(backend: Backend, apple: &Apple, extra: &[(&str, &str)]) -> TestApp {
    let root = apple.root_file.to_str().unwrap().to_string();
    let mut settings = vec![
        ("APP_ATTEST_APP_ID", APP_ID),
        ("APP_ATTEST_ROOT_CA_FILE", root.as_str()),
    ];
    settings.extend_from_slice(extra);
    spawn_app_with(backend, &settings).await
}

async fn challenge(app: &TestApp) -> String {
    let reply = app
        .post(&app.a, "/api/auth/app-attest/challenge", json!({}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["expires_in"], json!(300));
    field(&reply.body, "challenge").to_string()
}

async fn attest(
    app: &TestApp,
    base: &str,
    key_id: &str,
    attestation: &str,
    challenge: &str,
) -> Reply {
    app.post(
        base,
        "/api/auth/app-attest/keys",
        json!({ "key_id": key_id, "attestation": attestation, "challenge": challenge }),
    )
    .await
}

/// Attests `device`'s key on `app` (201).
async fn attested(app: &TestApp, apple: &Apple, device: &Device) {
    let challenge = challenge(app).await;
    let attestation = device.attestation(&apple.intermediate, APP_ID, &challenge, PRODUCTION);
    let reply = attest(app, &app.a, &device.key_id(), &attestation, &challenge).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
}

/// A code request of `device`, with a fresh challenge and assertion for `phone`.
async fn device_login(app: &TestApp, base: &str, device: &mut Device, phone: &str) -> Reply {
    let challenge = challenge(app).await;
    let assertion = device.assert_login(phone, &challenge);
    login(app, base, phone, &device.key_id(), &assertion, &challenge).await
}

async fn login(
    app: &TestApp,
    base: &str,
    phone: &str,
    key_id: &str,
    assertion: &str,
    challenge: &str,
) -> Reply {
    app.post(
        base,
        "/api/auth/login",
        json!({
            "phone": phone,
            "app_attest_key_id": key_id,
            "app_attest_assertion": assertion,
            "app_attest_challenge": challenge,
        }),
    )
    .await
}

/// The App Attest verdicts counted, on every replica of `app`.
async fn verdicts(app: &TestApp, verdict: &str, mode: &str) -> f64 {
    let series = format!(
        "otpgate_integrity_verdicts_total{{mode=\"{mode}\",provider=\"app_attest\",verdict=\"{verdict}\"}}"
    );
    let mut total = sample(&metrics_text(app, &app.a).await, &series);
    if app.b != app.a {
        total += sample(&metrics_text(app, &app.b).await, &series);
    }
    total
}

/// Play Integrity checks Google could not answer, on instance A of `app`.
async fn integrity_unavailable(app: &TestApp) -> f64 {
    sample(
        &metrics_text(app, &app.a).await,
        "otpgate_integrity_verdicts_total{mode=\"enforce\",provider=\"play_integrity\",verdict=\"unavailable\"}",
    )
}

const ADMIN_KEY: &str = "admin-key-0123456789abcdef0123456789";

/// An admin API call on instance A.
async fn admin(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Reply {
    app.call(&app.a, method, path, body, Some(ADMIN_KEY)).await
}

async fn an_attested_key_sends_a_code_once_per_assertion(backend: Backend) {
    let apple = Apple::new();
    let app = app_with(backend, &apple, &[("ADMIN_API_KEYS", ADMIN_KEY)]).await;
    // A key id with a `+` (half of them have one): operators paste such ids into query strings.
    let mut device = loop {
        let device = Device::new();
        if device.key_id().contains('+') {
            break device;
        }
    };
    let challenge = challenge(&app).await;
    let attestation = device.attestation(&apple.intermediate, APP_ID, &challenge, PRODUCTION);
    let reply = attest(&app, &app.a, &device.key_id(), &attestation, &challenge).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(
        reply.body,
        json!({ "key_id": device.key_id(), "environment": "production" })
    );
    // A challenge works once, on every replica.
    attest(&app, &app.b, &device.key_id(), &attestation, &challenge)
        .await
        .assert_problem(403, "attestation_failed");
    // The same key attested again, with a new challenge: 200, nothing changes.
    let again = crate::app_attest::challenge(&app).await;
    let attestation = device.attestation(&apple.intermediate, APP_ID, &again, PRODUCTION);
    let reply = attest(&app, &app.b, &device.key_id(), &attestation, &again).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // A fresh assertion over this login's number sends a code, and needs no captcha.
    let phone = unique_phone();
    let c = crate::app_attest::challenge(&app).await;
    let assertion = device.assert_login(&phone, &c);
    let reply = login(&app, &app.a, &phone, &device.key_id(), &assertion, &c).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let code = field(&reply.body, "otp_code").to_string();
    let tokens = app.verify(&app.a, &phone, &code).await;
    assert_eq!(tokens.status, 200, "{}", tokens.body);
    // The same assertion again, on the other replica: refused (the gate comes before the
    // resend cooldown); on another number its signature does not verify.
    let before = verdicts(&app, "replayed", "enforce").await;
    login(&app, &app.b, &phone, &device.key_id(), &assertion, &c)
        .await
        .assert_problem(403, "integrity_failed");
    assert_eq!(verdicts(&app, "replayed", "enforce").await, before + 1.0);
    let other = unique_phone();
    let before = verdicts(&app, "fail", "enforce").await;
    login(&app, &app.b, &other, &device.key_id(), &assertion, &c)
        .await
        .assert_problem(403, "integrity_failed");
    assert_eq!(verdicts(&app, "fail", "enforce").await, before + 1.0);
    // A new assertion (a higher counter) over a challenge used before: refused.
    let again = device.assert_login(&other, &c);
    login(&app, &app.a, &other, &device.key_id(), &again, &c)
        .await
        .assert_problem(403, "integrity_failed");
    assert_eq!(verdicts(&app, "replayed", "enforce").await, 2.0);
    // A challenge we never issued (or one too old: its MAC covers its time).
    let invented = format!(
        "{}.AAAAAAAAAAAAAAAAAAAAAA.{}",
        chrono::Utc::now().timestamp(),
        "0".repeat(32)
    );
    let forged = device.assert_login(&other, &invented);
    login(&app, &app.a, &other, &device.key_id(), &forged, &invented)
        .await
        .assert_problem(403, "integrity_failed");
    assert_eq!(verdicts(&app, "stale", "enforce").await, 1.0);
    // An assertion made for another number.
    let c = crate::app_attest::challenge(&app).await;
    let stolen = device.assert_login(&unique_phone(), &c);
    login(&app, &app.a, &other, &device.key_id(), &stolen, &c)
        .await
        .assert_problem(403, "integrity_failed");
    // For another app of the same team.
    let c = crate::app_attest::challenge(&app).await;
    device.counter += 1;
    let wrong_app = device.assertion(
        "ABCDE12345.com.acme.other",
        &format!("otpgate-login:{other}:{c}"),
        device.counter,
    );
    login(&app, &app.a, &other, &device.key_id(), &wrong_app, &c)
        .await
        .assert_problem(403, "integrity_failed");
    // The next assertion still works (the counter only went up).
    let reply = device_login(&app, &app.b, &mut device, &other).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // A replica reads a key once: the next assertion there is one statement (the counter's).
    let reads = "otpgate_db_query_duration_seconds_count{query=\"find_app_attest_key\"}";
    let moves = "otpgate_db_query_duration_seconds_count{query=\"advance_app_attest_counter\"}";
    let before = metrics_text(&app, &app.b).await;
    let reply = device_login(&app, &app.b, &mut device, &unique_phone()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let after = metrics_text(&app, &app.b).await;
    assert_eq!(sample(&after, reads), sample(&before, reads));
    assert_eq!(sample(&after, moves), sample(&before, moves) + 1.0);

    // A key this server never attested: the app must attest a new one.
    let mut stranger = Device::new();
    let fresh = unique_phone();
    let before = verdicts(&app, "unknown_key", "enforce").await;
    device_login(&app, &app.a, &mut stranger, &fresh)
        .await
        .assert_problem(403, "attestation_failed");
    assert_eq!(verdicts(&app, "unknown_key", "enforce").await, before + 1.0);
    // Nothing at all (web, Android without a gate), or empty fields: no captcha gate to fall
    // back to.
    let before = verdicts(&app, "missing", "enforce").await;
    app.post(&app.a, "/api/auth/login", json!({ "phone": fresh }))
        .await
        .assert_problem(403, "integrity_failed");
    app.post(
        &app.a,
        "/api/auth/login",
        json!({ "phone": fresh, "app_attest_key_id": "", "app_attest_assertion": "" }),
    )
    .await
    .assert_problem(403, "integrity_failed");
    assert_eq!(verdicts(&app, "missing", "enforce").await, before + 2.0);
    // Only one of the fields, or fields that are not base64.
    let reply = app
        .post(
            &app.a,
            "/api/auth/login",
            json!({ "phone": fresh, "app_attest_key_id": device.key_id() }),
        )
        .await;
    reply.assert_problem(403, "integrity_failed");
    let reply = app
        .post(
            &app.a,
            "/api/auth/login",
            json!({ "phone": fresh, "app_attest_key_id": "not base64!", "app_attest_assertion": "x" }),
        )
        .await;
    reply.assert_problem(422, "invalid_field");
    assert_eq!(verdicts(&app, "pass", "enforce").await, 3.0);

    // Operators list keys and revoke one: its next assertion is refused on every replica.
    let listed = admin(
        &app,
        reqwest::Method::GET,
        "/admin/v1/app-attest/keys",
        None,
    )
    .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let keys = listed.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "the stranger's key was never stored");
    assert_eq!(keys[0]["key_id"], json!(device.key_id()));
    assert_eq!(keys[0]["app_id"], json!(APP_ID));
    assert_eq!(keys[0]["counter"], json!(device.counter));
    let url_safe = device.key_id().replace('+', "-").replace('/', "_");
    let one = admin(
        &app,
        reqwest::Method::GET,
        &format!(
            "/admin/v1/app-attest/keys?key_id={}",
            url_safe.trim_end_matches('=')
        ),
        None,
    )
    .await;
    assert_eq!(
        one.body["keys"].as_array().map(Vec::len),
        Some(1),
        "{}",
        one.body
    );
    // The standard alphabet pasted unencoded (`+` arrives as a space), and bad requests.
    let pasted = admin(
        &app,
        reqwest::Method::GET,
        &format!(
            "/admin/v1/app-attest/keys?key_id={}",
            device.key_id().replace('=', "%3D")
        ),
        None,
    )
    .await;
    assert_eq!(
        pasted.body["keys"].as_array().map(Vec::len),
        Some(1),
        "{}",
        pasted.body
    );
    admin(
        &app,
        reqwest::Method::GET,
        "/admin/v1/app-attest/keys?limit=0",
        None,
    )
    .await
    .assert_problem(400, "invalid_request");
    app.call(
        &app.a,
        reqwest::Method::GET,
        "/admin/v1/app-attest/keys",
        None,
        Some("wrong-key"),
    )
    .await
    .assert_problem(401, "unauthorized");
    let revoke = json!({ "key_id": device.key_id() });
    let reply = admin(
        &app,
        reqwest::Method::POST,
        "/admin/v1/app-attest/keys/revoke",
        Some(revoke.clone()),
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    // Both replicas had read the key: neither lets it through.
    for base in [&app.b, &app.a] {
        device_login(&app, base, &mut device, &unique_phone())
            .await
            .assert_problem(403, "attestation_failed");
    }
    admin(
        &app,
        reqwest::Method::POST,
        "/admin/v1/app-attest/keys/revoke",
        Some(revoke.clone()),
    )
    .await
    .assert_problem(404, "not_found");
    app.call(
        &app.a,
        reqwest::Method::POST,
        "/admin/v1/app-attest/keys/revoke",
        Some(revoke),
        Some("wrong-key"),
    )
    .await
    .assert_problem(401, "unauthorized");
}

async fn attestations_that_do_not_verify_are_refused(backend: Backend) {
    let apple = Apple::new();
    let app = app_with(backend, &apple, &[]).await;
    let device = Device::new();
    let key_id = device.key_id();
    let refused = |reply: Reply| reply.assert_problem(403, "attestation_failed");

    // For another app.
    let c = crate::app_attest::challenge(&app).await;
    let other_app = device.attestation(
        &apple.intermediate,
        "ABCDE12345.com.acme.other",
        &c,
        PRODUCTION,
    );
    refused(attest(&app, &app.a, &key_id, &other_app, &c).await);
    // Issued by a CA that does not chain to the trusted root.
    let c = crate::app_attest::challenge(&app).await;
    let impostor =
        Ca::root("Test App Attestation Root CA").intermediate("Test App Attestation CA 1");
    let forged = device.attestation(&impostor, APP_ID, &c, PRODUCTION);
    refused(attest(&app, &app.a, &key_id, &forged, &c).await);
    // Made with another challenge than the one sent, or a challenge we never issued.
    let c = crate::app_attest::challenge(&app).await;
    let made_with = challenge(&app).await;
    let other_challenge = device.attestation(&apple.intermediate, APP_ID, &made_with, PRODUCTION);
    refused(attest(&app, &app.a, &key_id, &other_challenge, &c).await);
    let invented = format!(
        "{}.AAAAAAAAAAAAAAAAAAAAAA.{}",
        chrono::Utc::now().timestamp(),
        "0".repeat(32)
    );
    let attestation = device.attestation(&apple.intermediate, APP_ID, &invented, PRODUCTION);
    refused(attest(&app, &app.a, &key_id, &attestation, &invented).await);
    // Another key's id; the certified key's id but another credential id in the
    // authenticator data.
    let c = crate::app_attest::challenge(&app).await;
    let attestation = device.attestation(&apple.intermediate, APP_ID, &c, PRODUCTION);
    refused(attest(&app, &app.a, &Device::new().key_id(), &attestation, &c).await);
    let c = crate::app_attest::challenge(&app).await;
    let other_credential =
        device.attestation_for(&apple.intermediate, APP_ID, &c, PRODUCTION, &[7u8; 32]);
    refused(attest(&app, &app.a, &key_id, &other_credential, &c).await);
    // A development build where production is required; accepted once development is allowed.
    let c = crate::app_attest::challenge(&app).await;
    let development = device.attestation(&apple.intermediate, APP_ID, &c, DEVELOPMENT);
    refused(attest(&app, &app.a, &key_id, &development, &c).await);
    let dev_app = app_with(
        backend,
        &apple,
        &[("APP_ATTEST_ENVIRONMENT", "development")],
    )
    .await;
    let c = challenge(&dev_app).await;
    let development = device.attestation(&apple.intermediate, APP_ID, &c, DEVELOPMENT);
    let reply = attest(&dev_app, &dev_app.a, &key_id, &development, &c).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["environment"], json!("development"));
    // Garbage that is base64: refused, never a 500.
    let c = crate::app_attest::challenge(&app).await;
    refused(attest(&app, &app.a, &key_id, &STANDARD.encode(b"garbage"), &c).await);
    // The key was never stored: its assertions are for an unknown key.
    let mut device = device;
    device_login(&app, &app.a, &mut device, &unique_phone())
        .await
        .assert_problem(403, "attestation_failed");
    let failed = verdicts(&app, "attestation_failed", "enforce").await;
    assert_eq!(failed, 8.0, "every refused attestation is counted");

    // Without the gate, the endpoints do not exist.
    let plain = spawn_app_with(backend, &[]).await;
    plain
        .post(&plain.a, "/api/auth/app-attest/challenge", json!({}))
        .await
        .assert_problem(404, "not_found");
}

async fn shadow_refuses_nothing_and_opens_no_way_around_another_gate(backend: Backend) {
    let apple = Apple::new();
    let app = app_with(backend, &apple, &[("APP_ATTEST_MODE", "shadow")]).await;
    let mut device = Device::new();
    attested(&app, &apple, &device).await;
    // A failing assertion is recorded, the code goes out.
    let phone = unique_phone();
    let c = crate::app_attest::challenge(&app).await;
    let stolen = device.assert_login(&unique_phone(), &c);
    let before = verdicts(&app, "fail", "shadow").await;
    let reply = login(&app, &app.a, &phone, &device.key_id(), &stolen, &c).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(verdicts(&app, "fail", "shadow").await, before + 1.0);
    // A passing one too, and a request without any.
    let reply = device_login(&app, &app.a, &mut device, &unique_phone()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(verdicts(&app, "pass", "shadow").await, 1.0);
    let reply = app
        .post(
            &app.a,
            "/api/auth/login",
            json!({ "phone": unique_phone() }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // With Play Integrity enforced beside it, an assertion the shadow gate merely records
    // proves nothing: refused like a request without a device proof.
    let standin = crate::standin::StandIn::start().await;
    let owned: Vec<(&str, String)> = standin
        .integrity_settings("enforce")
        .into_iter()
        .chain(standin.settings())
        .collect();
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut settings: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        settings.extend_from_slice(extra);
        settings
    };
    let both = app_with(backend, &apple, &with(&[("APP_ATTEST_MODE", "shadow")])).await;
    attested(&both, &apple, &device).await;
    device_login(&both, &both.a, &mut device, &unique_phone())
        .await
        .assert_problem(403, "integrity_failed");
    // Enforced App Attest beside enforced Play Integrity: the assertion alone is enough.
    let both = app_with(backend, &apple, &with(&[("APP_ATTEST_MODE", "enforce")])).await;
    let mut device = Device::new();
    attested(&both, &apple, &device).await;
    let reply = device_login(&both, &both.a, &mut device, &unique_phone()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Google down and Play Integrity failing open: a made-up integrity token does not get
    // around the enforced App Attest gate (the outage is a 503, as without fail-open). With
    // Play Integrity alone, the same request goes on, and a shadow captcha still records.
    let open = app_with(
        backend,
        &apple,
        &with(&[("PLAY_INTEGRITY_FAIL_OPEN", "true")]),
    )
    .await;
    let captcha_owned: Vec<(&str, String)> = owned
        .iter()
        .cloned()
        .chain(standin.captcha_settings("turnstile", "shadow"))
        .chain([("PLAY_INTEGRITY_FAIL_OPEN", "true".to_string())])
        .collect();
    let settings: Vec<(&str, &str)> = captcha_owned
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let android_only = spawn_app_with(backend, &settings).await;
    standin.set_mode("google-decode", crate::standin::Mode::Status(503));
    let made_up = |phone: String| json!({ "phone": phone, "integrity_token": "made-up" });
    open.post(&open.a, "/api/auth/login", made_up(unique_phone()))
        .await
        .assert_problem(503, "integrity_unavailable");
    assert_eq!(
        integrity_unavailable(&open).await,
        1.0,
        "Google was asked and failed"
    );
    assert_eq!(verdicts(&open, "missing", "enforce").await, 0.0);
    let reply = android_only
        .post(&android_only.a, "/api/auth/login", made_up(unique_phone()))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(integrity_unavailable(&android_only).await, 1.0);
    let shadow_captcha = sample(
        &metrics_text(&android_only, &android_only.a).await,
        "otpgate_captcha_verdicts_total{mode=\"shadow\",provider=\"turnstile\",verdict=\"missing\"}",
    );
    assert_eq!(shadow_captcha, 1.0, "the shadow captcha still records");
    standin.set_mode("google-decode", crate::standin::Mode::Ok);

    // With an enforced captcha: a request without an assertion solves it; a failing
    // assertion is refused whatever the captcha says.
    let owned: Vec<(&str, String)> = standin
        .captcha_settings("turnstile", "enforce")
        .into_iter()
        .chain(standin.settings())
        .collect();
    let settings: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let captcha = app_with(backend, &apple, &settings).await;
    let mut device = Device::new();
    attested(&captcha, &apple, &device).await;
    let reply = captcha
        .post(
            &captcha.a,
            "/api/auth/login",
            json!({ "phone": unique_phone(), "captcha_token": "pass" }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    captcha
        .post(
            &captcha.a,
            "/api/auth/login",
            json!({ "phone": unique_phone() }),
        )
        .await
        .assert_problem(403, "captcha_failed");
    let c = challenge(&captcha).await;
    let stolen = device.assert_login(&unique_phone(), &c);
    let reply = captcha
        .post(
            &captcha.a,
            "/api/auth/login",
            json!({
                "phone": unique_phone(),
                "captcha_token": "pass",
                "app_attest_key_id": device.key_id(),
                "app_attest_assertion": stolen,
                "app_attest_challenge": c,
            }),
        )
        .await;
    reply.assert_problem(403, "integrity_failed");
    // A passing assertion needs no captcha.
    let reply = device_login(&captcha, &captcha.a, &mut device, &unique_phone()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}
