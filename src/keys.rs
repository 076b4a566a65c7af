//! Token signing keys: HS256 with a shared secret, or ES256 / EdDSA with a private key whose
//! public half is published at `/.well-known/jwks.json` so other services can verify tokens.
//!
//! Every asymmetric key has a `kid`: its RFC 7638 JWK thumbprint. Rotation: the new private key
//! signs; the previous public keys (`JWT_PREVIOUS_PUBLIC_KEY_FILES`) still verify until their
//! tokens expire, and stay in the JWKS meanwhile.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The algorithms otpgate signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlgorithm {
    /// HMAC-SHA256 with `JWT_SECRET_KEY` (the seed's choice; nothing to publish).
    Hs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl SigningAlgorithm {
    /// Parses `HS256`, `ES256` or `EdDSA` (any case).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "HS256" => Some(Self::Hs256),
            "ES256" => Some(Self::Es256),
            "EDDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }

    /// The JOSE algorithm.
    pub fn jose(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Es256 => Algorithm::ES256,
            Self::EdDsa => Algorithm::EdDSA,
        }
    }

    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

/// A key that verifies tokens, with its public JWK when it has one.
pub struct VerifyKey {
    /// Key id (`None` for the HS256 secret).
    pub kid: Option<String>,
    /// The verifying key.
    pub decoding: DecodingKey,
    /// The public JWK (asymmetric keys only).
    pub jwk: Option<Value>,
}

/// The signing key and every key tokens are verified with.
pub struct KeySet {
    /// The algorithm of every token (the only one accepted).
    pub algorithm: SigningAlgorithm,
    /// Signs new tokens.
    pub encoding: EncodingKey,
    /// The `kid` of new tokens.
    pub kid: Option<String>,
    /// The current key first, then the previous ones.
    pub verify: Vec<VerifyKey>,
}

impl KeySet {
    /// HS256 keyed by a shared secret.
    pub fn hmac(secret: &[u8]) -> Self {
        Self {
            algorithm: SigningAlgorithm::Hs256,
            encoding: EncodingKey::from_secret(secret),
            kid: None,
            verify: vec![VerifyKey {
                kid: None,
                decoding: DecodingKey::from_secret(secret),
                jwk: None,
            }],
        }
    }

    /// An asymmetric key set from a PKCS#8 private key PEM and previous public key PEMs.
    pub fn asymmetric(
        algorithm: SigningAlgorithm,
        private_pem: &str,
        previous_public_pems: &[String],
    ) -> Result<Self, String> {
        let der = pem_body(private_pem, "PRIVATE KEY")?;
        let public = public_key_of(algorithm, &der)?;
        let current = verify_key(algorithm, &public)?;
        let encoding = match algorithm {
            SigningAlgorithm::Es256 => EncodingKey::from_ec_der(&der),
            SigningAlgorithm::EdDsa => EncodingKey::from_ed_der(&der),
            SigningAlgorithm::Hs256 => return Err("HS256 has no private key".into()),
        };
        let mut verify = vec![current];
        for pem in previous_public_pems {
            let spki = pem_body(pem, "PUBLIC KEY")?;
            let key = verify_key(algorithm, &public_key_of_spki(algorithm, &spki)?)?;
            if verify.iter().all(|k| k.kid != key.kid) {
                verify.push(key);
            }
        }
        Ok(Self {
            algorithm,
            encoding,
            kid: verify[0].kid.clone(),
            verify,
        })
    }

    /// The JWKS document: every public key that verifies tokens.
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.verify.iter().filter_map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    /// The key for a token's `kid`: HS256 tokens need none; asymmetric tokens must name one.
    pub fn key_for(&self, kid: Option<&str>) -> Option<&DecodingKey> {
        match self.algorithm {
            SigningAlgorithm::Hs256 => self.verify.first().map(|k| &k.decoding),
            _ => {
                let kid = kid?;
                self.verify
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .map(|k| &k.decoding)
            }
        }
    }
}

/// A new private key as PKCS#8 PEM (`otpgate keygen`, and development without a key file).
pub fn generate_pem(algorithm: SigningAlgorithm) -> Result<String, String> {
    let rng = SystemRandom::new();
    let der = match algorithm {
        SigningAlgorithm::Es256 => {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|e| e.to_string())?
                .as_ref()
                .to_vec()
        }
        SigningAlgorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|e| e.to_string())?
            .as_ref()
            .to_vec(),
        SigningAlgorithm::Hs256 => return Err("HS256 uses JWT_SECRET_KEY, not a key pair".into()),
    };
    Ok(to_pem(&der, "PRIVATE KEY"))
}

/// The public key of a private key, as SPKI PEM (to list in `JWT_PREVIOUS_PUBLIC_KEY_FILES`).
pub fn public_pem(algorithm: SigningAlgorithm, private_pem: &str) -> Result<String, String> {
    let raw = public_key_of(algorithm, &pem_body(private_pem, "PRIVATE KEY")?)?;
    let prefix: &[u8] = match algorithm {
        SigningAlgorithm::Es256 => &P256_SPKI_PREFIX,
        SigningAlgorithm::EdDsa => &ED25519_SPKI_PREFIX,
        SigningAlgorithm::Hs256 => return Err("HS256 has no public key".into()),
    };
    Ok(to_pem(&[prefix, &raw].concat(), "PUBLIC KEY"))
}

/// DER prefix of a P-256 SubjectPublicKeyInfo, followed by the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// DER prefix of an Ed25519 SubjectPublicKeyInfo, followed by the 32-byte key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn to_pem(der: &[u8], label: &str) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The DER inside a PEM block labelled `label`.
fn pem_body(pem: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem
        .find(&begin)
        .ok_or_else(|| format!("expected a PEM \"{label}\" block (PKCS#8 / SPKI)"))?
        + begin.len();
    let stop = pem[start..].find(&end).ok_or("unterminated PEM block")? + start;
    let b64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD
        .decode(b64)
        .map_err(|e| format!("bad PEM base64: {e}"))
}

/// The raw public key of a PKCS#8 private key (65-byte point for P-256, 32 bytes for Ed25519).
fn public_key_of(algorithm: SigningAlgorithm, pkcs8: &[u8]) -> Result<Vec<u8>, String> {
    match algorithm {
        SigningAlgorithm::Es256 => {
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                .map(|k| k.public_key().as_ref().to_vec())
                .map_err(|e| format!("not a PKCS#8 P-256 private key: {e}"))
        }
        SigningAlgorithm::EdDsa => Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map(|k| k.public_key().as_ref().to_vec())
            .map_err(|e| format!("not a PKCS#8 Ed25519 private key: {e}")),
        SigningAlgorithm::Hs256 => Err("HS256 has no key pair".into()),
    }
}

/// The raw public key inside an SPKI document.
fn public_key_of_spki(algorithm: SigningAlgorithm, spki: &[u8]) -> Result<Vec<u8>, String> {
    let (prefix, len): (&[u8], usize) = match algorithm {
        SigningAlgorithm::Es256 => (&P256_SPKI_PREFIX, 65),
        SigningAlgorithm::EdDsa => (&ED25519_SPKI_PREFIX, 32),
        SigningAlgorithm::Hs256 => return Err("HS256 has no public key".into()),
    };
    match spki.strip_prefix(prefix) {
        Some(raw) if raw.len() == len => Ok(raw.to_vec()),
        _ => Err(format!("not an SPKI {} public key", algorithm.name())),
    }
}

/// The verifying key, JWK and RFC 7638 thumbprint `kid` of a raw public key.
fn verify_key(algorithm: SigningAlgorithm, public: &[u8]) -> Result<VerifyKey, String> {
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let (decoding, mut jwk, thumbprint_input) = match algorithm {
        SigningAlgorithm::Es256 => {
            if public.len() != 65 || public[0] != 4 {
                return Err("expected an uncompressed P-256 point".into());
            }
            let (x, y) = (b64(&public[1..33]), b64(&public[33..]));
            let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
            let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
            (
                decoding,
                json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y }),
                canonical,
            )
        }
        SigningAlgorithm::EdDsa => {
            let x = b64(public);
            let decoding = DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?;
            let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
            (
                decoding,
                json!({ "kty": "OKP", "crv": "Ed25519", "x": x }),
                canonical,
            )
        }
        SigningAlgorithm::Hs256 => return Err("HS256 has no public key".into()),
    };
    let kid = b64(&Sha256::digest(thumbprint_input.as_bytes()));
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(algorithm.name());
    jwk["use"] = json!("sig");
    Ok(VerifyKey {
        kid: Some(kid),
        decoding,
        jwk: Some(jwk),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_with_stable_kids() {
        for alg in [SigningAlgorithm::Es256, SigningAlgorithm::EdDsa] {
            let pem = generate_pem(alg).unwrap();
            let a = KeySet::asymmetric(alg, &pem, &[]).unwrap();
            let b = KeySet::asymmetric(alg, &pem, &[]).unwrap();
            assert_eq!(a.kid, b.kid, "the kid is stable for one key");
            let jwks = a.jwks();
            assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
            assert_eq!(jwks["keys"][0]["alg"], alg.name());
            assert_eq!(jwks["keys"][0]["use"], "sig");
            // The published public key is the one derived again from its SPKI PEM.
            let public = public_pem(alg, &pem).unwrap();
            let other = generate_pem(alg).unwrap();
            let rotated = KeySet::asymmetric(alg, &other, &[public]).unwrap();
            assert_eq!(rotated.verify.len(), 2);
            assert_eq!(rotated.verify[1].kid, a.kid);
            assert!(rotated.key_for(a.kid.as_deref()).is_some());
            assert!(rotated.key_for(None).is_none());
        }
    }

    /// The RFC 7638 thumbprint of a published JWK, computed here apart from the code under
    /// test: SHA-256 over the JSON object of the key type's required members only, in
    /// lexicographic order, without whitespace; base64url without padding.
    fn rfc7638_thumbprint(jwk: &Value) -> String {
        let required: &[&str] = match jwk["kty"].as_str() {
            Some("EC") => &["crv", "kty", "x", "y"],
            Some("OKP") => &["crv", "kty", "x"],
            other => panic!("unexpected kty {other:?}"),
        };
        let members: std::collections::BTreeMap<&str, &str> = required
            .iter()
            .map(|name| (*name, jwk[*name].as_str().expect("a string member")))
            .collect();
        let canonical = serde_json::to_string(&members).unwrap();
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    #[test]
    fn kids_are_rfc7638_thumbprints_of_the_published_keys() {
        for alg in [SigningAlgorithm::Es256, SigningAlgorithm::EdDsa] {
            let keys = KeySet::asymmetric(alg, &generate_pem(alg).unwrap(), &[]).unwrap();
            let jwks = keys.jwks();
            let jwk = &jwks["keys"][0];
            let thumbprint = rfc7638_thumbprint(jwk);
            assert_eq!(jwk["kid"].as_str(), Some(thumbprint.as_str()), "{jwk}");
            assert_eq!(keys.kid.as_deref(), Some(thumbprint.as_str()));
        }
        // A published vector: the Ed25519 key of RFC 8037 appendix A.1 (private key d =
        // nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A, here as PKCS#8) has the thumbprint
        // given in its appendix A.3.
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n\
                   -----END PRIVATE KEY-----\n";
        let keys = KeySet::asymmetric(SigningAlgorithm::EdDsa, pem, &[]).unwrap();
        let jwks = keys.jwks();
        assert_eq!(
            jwks["keys"][0]["x"],
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        assert_eq!(
            keys.kid.as_deref(),
            Some("kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k")
        );
    }

    #[test]
    fn wrong_key_material_is_refused() {
        let ed = generate_pem(SigningAlgorithm::EdDsa).unwrap();
        assert!(KeySet::asymmetric(SigningAlgorithm::Es256, &ed, &[]).is_err());
        assert!(KeySet::asymmetric(SigningAlgorithm::Es256, "garbage", &[]).is_err());
        let es = generate_pem(SigningAlgorithm::Es256).unwrap();
        let ed_public = public_pem(SigningAlgorithm::EdDsa, &ed).unwrap();
        assert!(KeySet::asymmetric(SigningAlgorithm::Es256, &es, &[ed_public]).is_err());
    }
}
