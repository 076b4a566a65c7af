//! `/.well-known/jwks.json`: the public keys other services verify access tokens with.

use std::sync::Arc;

use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde::Deserialize;

use super::ApiTags;
use crate::auth::AuthService;

/// Token verification keys.
pub struct KeysApi {
    pub(crate) auth: Arc<AuthService>,
}

/// A public JSON Web Key (RFC 7517).
#[derive(Debug, Object, Deserialize)]
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
pub struct Jwks {
    /// The signing key and any previous keys whose tokens may still be valid. Empty with HS256.
    pub keys: Vec<Jwk>,
}

#[OpenApi(tag = "ApiTags::Auth")]
impl KeysApi {
    /// Public keys for verifying access tokens (JWKS)
    ///
    /// With `JWT_ALGORITHM` ES256 or EdDSA, other services verify otpgate's tokens with these
    /// keys (match the token's `kid`; check `iss`, `aud`, `exp` and `typ: "access"`). Empty with
    /// HS256, whose secret is never published.
    #[oai(path = "/.well-known/jwks.json", method = "get")]
    async fn jwks(&self) -> Json<Jwks> {
        let keys = serde_json::from_value(self.auth.jwks()).unwrap_or(Jwks { keys: Vec::new() });
        Json(keys)
    }
}
