//! `/.well-known/jwks.json`: the public keys other services verify access tokens with.

use std::sync::Arc;

use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::ApiTags;
use super::problem::{Fails, failures};
use crate::auth::AuthService;

/// Token verification keys.
pub struct KeysApi {
    pub(crate) auth: Arc<AuthService>,
}

/// A public JSON Web Key (RFC 7517).
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct Jwk {
    /// Key type: `EC` (ES256) or `OKP` (EdDSA).
    pub kty: String,
    /// Curve: `P-256` or `Ed25519`.
    pub crv: String,
    /// Public key (x coordinate for EC), base64url.
    pub x: String,
    /// y coordinate (EC only), base64url.
    #[oai(skip_serializing_if_is_none)]
    pub y: Option<String>,
    /// Key id, carried in the `kid` header of every token signed with this key (its RFC 7638
    /// thumbprint).
    pub kid: String,
    /// `ES256` or `EdDSA`.
    pub alg: String,
    /// Always `sig`.
    #[oai(rename = "use")]
    #[serde(rename = "use")]
    pub use_: String,
}

/// A JWK set.
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct Jwks {
    /// The signing key and any previous keys whose tokens may still be valid. Empty with HS256.
    pub keys: Vec<Jwk>,
}

impl Example for Jwk {
    fn example() -> Self {
        Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU".into(),
            y: Some("x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0".into()),
            kid: "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs".into(),
            alg: "ES256".into(),
            use_: "sig".into(),
        }
    }
}

impl Example for Jwks {
    fn example() -> Self {
        Jwks {
            keys: vec![Jwk::example()],
        }
    }
}

/// The JWK set.
#[derive(ApiResponse)]
pub enum KeySet {
    /// The current and previous public keys (cacheable for a few minutes).
    #[oai(status = 200)]
    Keys(Json<Jwks>),
}

failures! {
    /// `GET /.well-known/jwks.json`.
    JwksFailures { BODY = false }: [];
}

#[OpenApi(tag = "ApiTags::Auth")]
impl KeysApi {
    /// Public keys for verifying access tokens (JWKS)
    ///
    /// With `JWT_ALGORITHM` ES256 or EdDSA, other services verify otpgate's tokens with these
    /// keys (match the token's `kid`; check `iss`, `aud`, `exp` and `typ: "access"`). Empty with
    /// HS256, whose secret is never published.
    #[oai(path = "/.well-known/jwks.json", method = "get", operation_id = "jwks")]
    async fn jwks(&self) -> Result<KeySet, Fails<JwksFailures>> {
        let keys = serde_json::from_value(self.auth.jwks()).unwrap_or(Jwks { keys: Vec::new() });
        Ok(KeySet::Keys(Json(keys)))
    }
}
