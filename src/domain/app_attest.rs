//! Apple App Attest, verified here as Apple documents it ("Validating apps that connect to your
//! server"), without a call to Apple.
//!
//! An iOS app makes a key pair in the Secure Enclave and has Apple certify it once
//! (**attestation**): a CBOR object whose certificate chain ends at Apple's App Attestation Root
//! CA and whose leaf certifies the key, this app (`rpIdHash` = SHA-256 of `TEAMID.bundle.id`) and
//! the server's one-time challenge (a nonce extension). The server keeps the public key. Each
//! later request carries an **assertion**: a signature by that key over the request's client
//! data, with a counter that only goes up, so an assertion works once.
//!
//! Parsing is the few parts of CBOR (RFC 8949, definite lengths) and DER that these objects
//! use; the certificate chain is checked by `rustls-webpki`, signatures by `aws-lc-rs`.

use std::time::Duration;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use sha2::{Digest, Sha256};

/// Apple App Attestation Root CA, as Apple publishes it at
/// <https://www.apple.com/certificateauthority/Apple_App_Attestation_Root_CA.pem>
/// (SHA-256 of the DER: `1cb9823b…6242c932`, checked by a test).
pub const APPLE_ROOT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICITCCAaegAwIBAgIQC/O+DvHN0uD7jG5yH2IXmDAKBggqhkjOPQQDAzBSMSYw
JAYDVQQDDB1BcHBsZSBBcHAgQXR0ZXN0YXRpb24gUm9vdCBDQTETMBEGA1UECgwK
QXBwbGUgSW5jLjETMBEGA1UECAwKQ2FsaWZvcm5pYTAeFw0yMDAzMTgxODMyNTNa
Fw00NTAzMTUwMDAwMDBaMFIxJjAkBgNVBAMMHUFwcGxlIEFwcCBBdHRlc3RhdGlv
biBSb290IENBMRMwEQYDVQQKDApBcHBsZSBJbmMuMRMwEQYDVQQIDApDYWxpZm9y
bmlhMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAERTHhmLW07ATaFQIEVwTtT4dyctdh
NbJhFs/Ii2FdCgAHGbpphY3+d8qjuDngIN3WVhQUBHAoMeQ/cLiP1sOUtgjqK9au
Yen1mMEvRq9Sk3Jm5X8U62H+xTD3FE9TgS41o0IwQDAPBgNVHRMBAf8EBTADAQH/
MB0GA1UdDgQWBBSskRBTM72+aEH/pwyp5frq5eWKoTAOBgNVHQ8BAf8EBAMCAQYw
CgYIKoZIzj0EAwMDaAAwZQIwQgFGnByvsiVbpTKwSga0kP0e8EeDS4+sQmTvb7vn
53O5+FRXgeLhpJ06ysC5PrOyAjEAp5U4xDgEgllF7En3VcE3iexZZtKeYnpqtijV
oyFraWVIyd/dganmrduC1bmTBGwD
-----END CERTIFICATE-----
";

/// The OID of Apple's nonce extension, 1.2.840.113635.100.8.2, DER-encoded.
const NONCE_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x63, 0x64, 0x08, 0x02];
const AAGUID_PRODUCTION: &[u8; 16] = b"appattest\0\0\0\0\0\0\0";
const AAGUID_DEVELOPMENT: &[u8; 16] = b"appattestdevelop";

/// The signature algorithms of Apple's chain: P-384 CAs, a P-256 leaf.
static CHAIN_ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::aws_lc_rs::ECDSA_P256_SHA256,
    webpki::aws_lc_rs::ECDSA_P256_SHA384,
    webpki::aws_lc_rs::ECDSA_P384_SHA256,
    webpki::aws_lc_rs::ECDSA_P384_SHA384,
];

/// Which App Attest environment certified a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttestEnvironment {
    /// Apps from the App Store, TestFlight or an enterprise distribution.
    Production,
    /// Apps built with the development entitlement (from Xcode).
    Development,
}

impl AttestEnvironment {
    /// `production` or `development`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttestEnvironment::Production => "production",
            AttestEnvironment::Development => "development",
        }
    }
}

/// Why an attestation or assertion does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    /// Not the CBOR, certificate or authenticator data App Attest makes.
    #[error("not a well-formed App Attest object")]
    Malformed,
    /// The certificates do not chain to the App Attest root, or are not valid now.
    #[error("the certificate chain does not lead to the App Attest root")]
    Chain,
    /// The certificate certifies another challenge or other authenticator data.
    #[error("the attestation is for another challenge")]
    Nonce,
    /// The key id is not the certified key's.
    #[error("the key id is not the certified key's")]
    KeyId,
    /// Made for another app than the configured ones.
    #[error("the attestation is for another app")]
    AppId,
    /// A development key where only production keys are accepted.
    #[error("a key of the development environment")]
    Environment,
    /// An attestation whose counter is not 0, or an assertion whose counter did not go up.
    #[error("the counter did not go up")]
    Counter,
    /// The assertion's signature is not the key's over this client data.
    #[error("the signature does not verify")]
    Signature,
}

/// A key Apple certified for one of our apps.
#[derive(Debug, Clone)]
pub struct AttestedKey {
    /// The public key: an uncompressed P-256 point (65 bytes).
    pub public_key: Vec<u8>,
    /// The app id (`TEAMID.bundle.id`) it was made for.
    pub app_id: String,
    /// Which environment certified it.
    pub environment: AttestEnvironment,
    /// Apple's receipt (for its fraud-metric service), as sent (not stored by otpgate).
    pub receipt: Vec<u8>,
}

/// Verifies attestations and assertions for the configured apps.
pub struct Verifier {
    root: CertificateDer<'static>,
    apps: Vec<(String, [u8; 32])>,
    allow_development: bool,
}

impl Verifier {
    /// A verifier trusting `root_pem` (one certificate) for `app_ids` (`TEAMID.bundle.id`),
    /// accepting development keys when `allow_development`.
    pub fn new(
        root_pem: &str,
        app_ids: &[String],
        allow_development: bool,
    ) -> Result<Self, String> {
        let root = pem_certificate(root_pem).ok_or("is not one PEM certificate")?;
        let root = CertificateDer::from(root);
        webpki::anchor_from_trusted_cert(&root)
            .map_err(|e| format!("is not a usable root certificate ({e:?})"))?;
        Ok(Self {
            root,
            apps: app_ids
                .iter()
                .map(|id| (id.clone(), Sha256::digest(id.as_bytes()).into()))
                .collect(),
            allow_development,
        })
    }

    /// Verifies an attestation `object` of key `key_id` (the raw 32 bytes) made with
    /// `client_data_hash` (SHA-256 of the server's one-time challenge), at `now` (seconds since
    /// the Unix epoch), in the order of Apple's steps 1 to 9.
    pub fn attestation(
        &self,
        object: &[u8],
        key_id: &[u8],
        client_data_hash: &[u8; 32],
        now: u64,
    ) -> Result<AttestedKey, AttestError> {
        let object = cbor(object)?;
        if object.get("fmt").and_then(Cbor::text) != Some("apple-appattest") {
            return Err(AttestError::Malformed);
        }
        let statement = object.get("attStmt").ok_or(AttestError::Malformed)?;
        let certificates: Vec<&[u8]> = match statement.get("x5c") {
            Some(Cbor::Array(items)) => items.iter().filter_map(Cbor::bytes).collect(),
            _ => return Err(AttestError::Malformed),
        };
        let receipt = statement
            .get("receipt")
            .and_then(Cbor::bytes)
            .ok_or(AttestError::Malformed)?;
        let auth_data = object
            .get("authData")
            .and_then(Cbor::bytes)
            .ok_or(AttestError::Malformed)?;
        let [leaf, intermediates @ ..] = certificates.as_slice() else {
            return Err(AttestError::Malformed);
        };
        if intermediates.is_empty() {
            return Err(AttestError::Malformed);
        }
        // 1. The chain: leaf, intermediates, Apple's root, valid now.
        self.check_chain(leaf, intermediates, now)?;
        let (public_key, nonce) = leaf_key_and_nonce(leaf)?;
        // 2–4. nonce = SHA-256(authData ‖ clientDataHash) is the leaf's nonce extension.
        let expected = Sha256::new()
            .chain_update(auth_data)
            .chain_update(client_data_hash)
            .finalize();
        if nonce != expected.as_slice() {
            return Err(AttestError::Nonce);
        }
        // 5. The key id is SHA-256 of the certified public key.
        if key_id.len() != 32 || Sha256::digest(public_key).as_slice() != key_id {
            return Err(AttestError::KeyId);
        }
        let data = AuthData::parse(auth_data)?;
        // 6. Made for one of our apps.
        let app_id = self.app_for(data.rp_id_hash)?;
        // 7. A new key has signed nothing yet.
        if data.counter != 0 {
            return Err(AttestError::Counter);
        }
        // 8. The environment.
        let environment = match data.aaguid.ok_or(AttestError::Malformed)? {
            a if a == AAGUID_PRODUCTION => AttestEnvironment::Production,
            a if a == AAGUID_DEVELOPMENT => AttestEnvironment::Development,
            _ => return Err(AttestError::Malformed),
        };
        if environment == AttestEnvironment::Development && !self.allow_development {
            return Err(AttestError::Environment);
        }
        // 9. The credential id is the key id.
        if data.credential_id != Some(key_id) {
            return Err(AttestError::KeyId);
        }
        Ok(AttestedKey {
            public_key: public_key.to_vec(),
            app_id: app_id.to_string(),
            environment,
            receipt: receipt.to_vec(),
        })
    }

    /// Verifies an assertion `object` over `client_data` by the key `public_key` attested for
    /// `app_id`, whose last accepted counter is `previous`; the assertion's counter on success.
    pub fn assertion(
        &self,
        object: &[u8],
        public_key: &[u8],
        app_id: &str,
        client_data: &[u8],
        previous: u32,
    ) -> Result<u32, AttestError> {
        let object = cbor(object)?;
        let signature = object
            .get("signature")
            .and_then(Cbor::bytes)
            .ok_or(AttestError::Malformed)?;
        let auth_data = object
            .get("authenticatorData")
            .and_then(Cbor::bytes)
            .ok_or(AttestError::Malformed)?;
        let data = AuthData::parse(auth_data)?;
        // 1–3. The key signed nonce = SHA-256(authenticatorData ‖ SHA-256(clientData)).
        let nonce = Sha256::new()
            .chain_update(auth_data)
            .chain_update(Sha256::digest(client_data))
            .finalize();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_key)
            .verify(&nonce, signature)
            .map_err(|_| AttestError::Signature)?;
        // 4. For the app the key was attested for (and still one of ours).
        if self.app_for(data.rp_id_hash)? != app_id {
            return Err(AttestError::AppId);
        }
        // 5. The counter went up.
        if data.counter <= previous {
            return Err(AttestError::Counter);
        }
        Ok(data.counter)
    }

    fn app_for(&self, rp_id_hash: &[u8]) -> Result<&str, AttestError> {
        self.apps
            .iter()
            .find(|(_, hash)| hash.as_slice() == rp_id_hash)
            .map(|(id, _)| id.as_str())
            .ok_or(AttestError::AppId)
    }

    fn check_chain(
        &self,
        leaf: &[u8],
        intermediates: &[&[u8]],
        now: u64,
    ) -> Result<(), AttestError> {
        let anchor =
            webpki::anchor_from_trusted_cert(&self.root).map_err(|_| AttestError::Chain)?;
        let leaf = CertificateDer::from(leaf);
        let leaf = webpki::EndEntityCert::try_from(&leaf).map_err(|_| AttestError::Malformed)?;
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|c| CertificateDer::from(*c))
            .collect();
        leaf.verify_for_usage(
            CHAIN_ALGORITHMS,
            &[anchor],
            &intermediates,
            UnixTime::since_unix_epoch(Duration::from_secs(now)),
            AnyKeyUsage,
            None,
            None,
        )
        .map(|_| ())
        .map_err(|_| AttestError::Chain)
    }
}

/// Apple's leaf certificates name no TLS purpose; whatever extended key usage they carry is
/// theirs, so any (well-formed) one is accepted.
struct AnyKeyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyKeyUsage {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for purpose in iter {
            purpose?;
        }
        Ok(())
    }
}

/// The authenticator data: `rpIdHash` (32), flags (1), counter (4, big-endian), then for an
/// attestation the AAGUID (16), the credential id's length (2) and the credential id.
struct AuthData<'a> {
    rp_id_hash: &'a [u8],
    counter: u32,
    aaguid: Option<&'a [u8]>,
    credential_id: Option<&'a [u8]>,
}

impl<'a> AuthData<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, AttestError> {
        if data.len() < 37 {
            return Err(AttestError::Malformed);
        }
        let counter = u32::from_be_bytes([data[33], data[34], data[35], data[36]]);
        let (aaguid, credential_id) = match data.get(37..55) {
            Some(rest) => {
                let len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
                (
                    Some(&rest[..16]),
                    Some(data.get(55..55 + len).ok_or(AttestError::Malformed)?),
                )
            }
            None => (None, None),
        };
        Ok(Self {
            rp_id_hash: &data[..32],
            counter,
            aaguid,
            credential_id,
        })
    }
}

/// The DER of the one certificate in `pem`.
pub fn pem_certificate(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let body = pem
        .trim()
        .strip_prefix("-----BEGIN CERTIFICATE-----")?
        .strip_suffix("-----END CERTIFICATE-----")?;
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

// ---- DER: the few parts of a certificate read here ----

/// One DER element of `input`: (tag, contents, what follows). Low tag numbers only, lengths
/// of at most four bytes.
fn der(input: &[u8]) -> Result<(u8, &[u8], &[u8]), AttestError> {
    let malformed = AttestError::Malformed;
    let (&tag, rest) = input.split_first().ok_or(malformed)?;
    if tag & 0x1f == 0x1f {
        return Err(malformed);
    }
    let (&first, rest) = rest.split_first().ok_or(malformed)?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            let bytes = rest.get(..n).ok_or(malformed)?;
            let len = bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        }
        _ => return Err(malformed),
    };
    let body = rest.get(..len).ok_or(malformed)?;
    Ok((tag, body, &rest[len..]))
}

/// The elements of a constructed DER value's `contents`.
fn der_items(mut contents: &[u8]) -> Result<Vec<(u8, &[u8])>, AttestError> {
    let mut items = Vec::new();
    while !contents.is_empty() {
        let (tag, body, rest) = der(contents)?;
        items.push((tag, body));
        contents = rest;
    }
    Ok(items)
}

/// The leaf's public key (an uncompressed P-256 point) and its nonce extension's 32 bytes.
fn leaf_key_and_nonce(certificate: &[u8]) -> Result<(&[u8], &[u8]), AttestError> {
    let malformed = AttestError::Malformed;
    let (0x30, cert, _) = der(certificate)? else {
        return Err(malformed);
    };
    let (0x30, tbs, _) = der(cert)? else {
        return Err(malformed);
    };
    let fields = der_items(tbs)?;
    // version [0] (optional), serial, signature, issuer, validity, subject, key, …
    let skip = usize::from(fields.first().map(|f| f.0) == Some(0xa0));
    let &(0x30, key_info) = fields.get(skip + 5).ok_or(malformed)? else {
        return Err(malformed);
    };
    let [_, (0x03, bits)] = der_items(key_info)?[..] else {
        return Err(malformed);
    };
    let point = match bits.split_first() {
        Some((0, point)) if point.len() == 65 && point[0] == 0x04 => point,
        _ => return Err(malformed),
    };
    let &(_, extensions) = fields.iter().find(|f| f.0 == 0xa3).ok_or(malformed)?;
    let (0x30, extensions, _) = der(extensions)? else {
        return Err(malformed);
    };
    for (tag, extension) in der_items(extensions)? {
        let items = der_items(extension)?;
        let (Some(&(0x06, oid)), Some(&(0x04, value))) = (items.first(), items.last()) else {
            continue;
        };
        if tag != 0x30 || oid != NONCE_OID {
            continue;
        }
        // SEQUENCE { [1] EXPLICIT OCTET STRING nonce }
        let (0x30, sequence, _) = der(value)? else {
            return Err(malformed);
        };
        let (0xa1, tagged, _) = der(sequence)? else {
            return Err(malformed);
        };
        let (0x04, nonce, _) = der(tagged)? else {
            return Err(malformed);
        };
        return Ok((point, nonce));
    }
    Err(AttestError::Nonce)
}

// ---- CBOR: the few parts of RFC 8949 App Attest objects use ----

/// A decoded CBOR item (definite lengths only; tags are skipped).
#[derive(Debug)]
enum Cbor<'a> {
    Int,
    Bytes(&'a [u8]),
    Text(&'a str),
    Array(Vec<Cbor<'a>>),
    Map(Vec<(Cbor<'a>, Cbor<'a>)>),
    Simple,
}

impl<'a> Cbor<'a> {
    fn get(&self, key: &str) -> Option<&Cbor<'a>> {
        match self {
            Cbor::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.text() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn text(&self) -> Option<&'a str> {
        match self {
            Cbor::Text(t) => Some(t),
            _ => None,
        }
    }

    fn bytes(&self) -> Option<&'a [u8]> {
        match self {
            Cbor::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

/// Decodes `input` as exactly one CBOR item.
fn cbor(input: &[u8]) -> Result<Cbor<'_>, AttestError> {
    match cbor_item(input, 0)? {
        (item, []) => Ok(item),
        _ => Err(AttestError::Malformed),
    }
}

fn cbor_item(input: &[u8], depth: u8) -> Result<(Cbor<'_>, &[u8]), AttestError> {
    let malformed = AttestError::Malformed;
    if depth > 8 {
        return Err(malformed);
    }
    let (&first, rest) = input.split_first().ok_or(malformed)?;
    let (major, info) = (first >> 5, first & 0x1f);
    let (arg, rest) = match info {
        0..=23 => (u64::from(info), rest),
        24..=27 => {
            let n = 1usize << (info - 24);
            let bytes = rest.get(..n).ok_or(malformed)?;
            let arg = bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            (arg, &rest[n..])
        }
        _ => return Err(malformed),
    };
    // Every length is bounded by what is left of the input (each item takes a byte at least).
    let len = usize::try_from(arg).ok().filter(|len| *len <= rest.len());
    match major {
        0 | 1 => Ok((Cbor::Int, rest)),
        2 | 3 => {
            let len = len.ok_or(malformed)?;
            let (body, rest) = rest.split_at(len);
            if major == 2 {
                Ok((Cbor::Bytes(body), rest))
            } else {
                let text = std::str::from_utf8(body).map_err(|_| malformed)?;
                Ok((Cbor::Text(text), rest))
            }
        }
        4 => {
            let mut rest = rest;
            let count = len.ok_or(malformed)?;
            // The count is bounded by the input, not by what it claims: reserve little.
            let mut items = Vec::with_capacity(count.min(16));
            for _ in 0..count {
                let (item, after) = cbor_item(rest, depth + 1)?;
                items.push(item);
                rest = after;
            }
            Ok((Cbor::Array(items), rest))
        }
        5 => {
            let pairs = len
                .filter(|n| n.saturating_mul(2) <= rest.len())
                .ok_or(malformed)?;
            let mut rest = rest;
            let mut entries = Vec::with_capacity(pairs.min(16));
            for _ in 0..pairs {
                let (key, after) = cbor_item(rest, depth + 1)?;
                let (value, after) = cbor_item(after, depth + 1)?;
                entries.push((key, value));
                rest = after;
            }
            Ok((Cbor::Map(entries), rest))
        }
        6 => cbor_item(rest, depth + 1),
        _ => Ok((Cbor::Simple, rest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::Value;

    const APP: &str = "V8H6LQ9448.io.uebelacker.AppAttestExample";
    /// 2024-06-01, inside both sample leaves' validity.
    const JUNE_2024: u64 = 1_717_200_000;

    fn sample(name: &str) -> (Vec<u8>, Vec<u8>, [u8; 32]) {
        let text = match name {
            "production" => include_str!("../../tests/api/fixtures/app-attest/production.json"),
            _ => include_str!("../../tests/api/fixtures/app-attest/development.json"),
        };
        let v: Value = serde_json::from_str(text).unwrap();
        let field = |k: &str| STANDARD.decode(v[k].as_str().unwrap()).unwrap();
        let hash = Sha256::digest(field("challenge")).into();
        (field("attestation"), field("keyId"), hash)
    }

    fn verifier(development: bool) -> Verifier {
        Verifier::new(APPLE_ROOT_PEM, &[APP.to_string()], development).unwrap()
    }

    #[test]
    fn the_root_is_apples() {
        let der = pem_certificate(APPLE_ROOT_PEM).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&der)),
            "1cb9823ba28ba6ad2d33a006941de2ae4f513ef1d4e831b9f7e0fa7b6242c932"
        );
    }

    #[test]
    fn a_real_production_attestation_verifies() {
        let (object, key_id, hash) = sample("production");
        let key = verifier(false)
            .attestation(&object, &key_id, &hash, JUNE_2024)
            .unwrap();
        assert_eq!(key.environment, AttestEnvironment::Production);
        assert_eq!(key.app_id, APP);
        assert_eq!(key.public_key.len(), 65);
        assert_eq!(Sha256::digest(&key.public_key).as_slice(), key_id);
        assert!(!key.receipt.is_empty());
    }

    #[test]
    fn a_real_attestation_fails_each_check_it_should() {
        let (object, key_id, hash) = sample("production");
        let v = verifier(false);
        let check = |object: &[u8], key_id: &[u8], hash: &[u8; 32], now| {
            v.attestation(object, key_id, hash, now).unwrap_err()
        };
        // Another challenge.
        let other: [u8; 32] = Sha256::digest(b"another challenge").into();
        assert_eq!(
            check(&object, &key_id, &other, JUNE_2024),
            AttestError::Nonce
        );
        // After the leaf expired (2024-12-21), and before it was issued.
        assert_eq!(
            check(&object, &key_id, &hash, 1_735_689_600),
            AttestError::Chain
        );
        assert_eq!(
            check(&object, &key_id, &hash, 1_700_000_000),
            AttestError::Chain
        );
        // Another key id.
        let mut wrong = key_id.clone();
        wrong[0] ^= 1;
        assert_eq!(check(&object, &wrong, &hash, JUNE_2024), AttestError::KeyId);
        // Another app.
        let other_app =
            Verifier::new(APPLE_ROOT_PEM, &["V8H6LQ9448.com.acme.app".into()], true).unwrap();
        assert_eq!(
            other_app
                .attestation(&object, &key_id, &hash, JUNE_2024)
                .unwrap_err(),
            AttestError::AppId
        );
        // A byte changed anywhere but in Apple's receipt (opaque to us, for Apple's fraud
        // service): never a pass, never a panic.
        let receipt = receipt_range(&object);
        for i in (0..object.len())
            .step_by(7)
            .filter(|i| !receipt.contains(i))
        {
            let mut bad = object.clone();
            bad[i] ^= 0x55;
            assert!(
                v.attestation(&bad, &key_id, &hash, JUNE_2024).is_err(),
                "byte {i}"
            );
        }
        for len in (0..object.len()).step_by(13) {
            assert!(
                v.attestation(&object[..len], &key_id, &hash, JUNE_2024)
                    .is_err()
            );
        }
        // Another root (here the sample's own leaf): no path to it.
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            STANDARD.encode(certificate_of(&object, 0))
        );
        let untrusting = Verifier::new(&pem, &[APP.to_string()], true).unwrap();
        assert_eq!(
            untrusting
                .attestation(&object, &key_id, &hash, JUNE_2024)
                .unwrap_err(),
            AttestError::Chain
        );
    }

    fn receipt_range(object: &[u8]) -> std::ops::Range<usize> {
        let parsed = cbor(object).unwrap();
        let receipt = parsed
            .get("attStmt")
            .and_then(|s| s.get("receipt"))
            .and_then(Cbor::bytes)
            .unwrap();
        let start = receipt.as_ptr() as usize - object.as_ptr() as usize;
        start..start + receipt.len()
    }

    fn certificate_of(object: &[u8], index: usize) -> Vec<u8> {
        let object = cbor(object).unwrap();
        match object.get("attStmt").and_then(|s| s.get("x5c")) {
            Some(Cbor::Array(items)) => items[index].bytes().unwrap().to_vec(),
            _ => panic!("no x5c"),
        }
    }

    #[test]
    fn development_keys_only_when_allowed() {
        let (object, key_id, hash) = sample("development");
        assert_eq!(
            verifier(false)
                .attestation(&object, &key_id, &hash, JUNE_2024)
                .unwrap_err(),
            AttestError::Environment
        );
        let key = verifier(true)
            .attestation(&object, &key_id, &hash, JUNE_2024)
            .unwrap();
        assert_eq!(key.environment, AttestEnvironment::Development);
    }

    #[test]
    fn a_real_assertion_verifies_once() {
        let v: Value = serde_json::from_str(include_str!(
            "../../tests/api/fixtures/app-attest/assertion.json"
        ))
        .unwrap();
        let assertion = STANDARD.decode(v["assertion"].as_str().unwrap()).unwrap();
        // The SubjectPublicKeyInfo's last 65 bytes are the point.
        let spki = STANDARD
            .decode(
                v["publicKey"]
                    .as_str()
                    .unwrap()
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap();
        let key = &spki[spki.len() - 65..];
        let payload = v["payload"].as_str().unwrap().as_bytes();
        let verifier = verifier(false);
        assert_eq!(verifier.assertion(&assertion, key, APP, payload, 0), Ok(1));
        assert_eq!(
            verifier.assertion(&assertion, key, APP, payload, 1),
            Err(AttestError::Counter)
        );
        assert_eq!(
            verifier.assertion(&assertion, key, APP, b"other client data", 0),
            Err(AttestError::Signature)
        );
        assert_eq!(
            verifier.assertion(&assertion, key, "V8H6LQ9448.other.app", payload, 0),
            Err(AttestError::AppId)
        );
        let mut other_key = key.to_vec();
        other_key[10] ^= 1;
        assert!(
            verifier
                .assertion(&assertion, &other_key, APP, payload, 0)
                .is_err()
        );
        for len in 0..assertion.len() {
            assert!(
                verifier
                    .assertion(&assertion[..len], key, APP, payload, 0)
                    .is_err()
            );
        }
    }

    #[test]
    fn cbor_refuses_what_it_cannot_bound() {
        // An array claiming 2^32 items in 5 bytes, a map nested past the depth limit, an
        // indefinite length, text that is not UTF-8, trailing bytes.
        for bad in [
            &[0x9a, 0xff, 0xff, 0xff, 0xff][..],
            &[[0x81; 20].as_slice(), &[0x00]].concat()[..],
            &[0x9f, 0x01, 0xff][..],
            &[0x62, 0xff, 0xfe][..],
            &[0x01, 0x02][..],
            &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        ] {
            assert!(cbor(bad).is_err(), "{bad:02x?}");
        }
        assert!(matches!(cbor(&[0x43, 1, 2, 3]), Ok(Cbor::Bytes([1, 2, 3]))));
    }
}
