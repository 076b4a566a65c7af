//! Tokens other services can verify (ES256/EdDSA + JWKS + rotation), forged tokens, and HTTP
//! hardening (body limit, CORS, cache headers).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, field, spawn_app, spawn_app_with, unique_phone};

crate::on_both_backends!(
    es256_and_eddsa_tokens_verify_with_the_published_jwks,
    rotation_keeps_old_tokens_valid_and_signs_with_the_new_key,
    forged_and_foreign_tokens_are_401,
    big_bodies_are_413_problems,
    cors_grants_only_listed_origins,
);

const BIN: &str = env!("CARGO_BIN_EXE_otpgate");

/// A new private key from `otpgate keygen`, written to a file; (path, PEM).
fn keygen(alg: &str) -> (PathBuf, String) {
    let out = std::process::Command::new(BIN)
        .args(["keygen", "--alg", alg])
        .output()
        .expect("keygen");
    assert!(out.status.success());
    let pem = String::from_utf8(out.stdout).expect("pem");
    let path = std::env::temp_dir().join(format!("otpgate-key-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&path, &pem).expect("write key");
    (path, pem)
}

fn public_key_file(alg: &str, private: &PathBuf) -> PathBuf {
    let out = std::process::Command::new(BIN)
        .args(["keygen", "--alg", alg, "--public"])
        .arg(private)
        .output()
        .expect("keygen --public");
    assert!(out.status.success());
    let path = std::env::temp_dir().join(format!("otpgate-pub-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&path, out.stdout).expect("write public key");
    path
}

async fn jwks(app: &TestApp, base: &str) -> JwkSet {
    let reply = app
        .call(base, Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(reply.status, 200);
    serde_json::from_value(reply.body).expect("a JWK set")
}

/// Verifies `token` the way a downstream service would: a stock JWT library and the JWKS.
fn verify_with_jwks(set: &JwkSet, token: &str, alg: Algorithm) -> Value {
    let kid = jsonwebtoken::decode_header(token)
        .expect("header")
        .kid
        .expect("kid");
    let jwk = set.find(&kid).expect("the token's kid is published");
    let key = DecodingKey::from_jwk(jwk).expect("decoding key");
    let mut validation = Validation::new(alg);
    validation.set_issuer(&["otpgate"]);
    validation.set_audience(&["otpgate"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("verifies")
        .claims
}

async fn es256_and_eddsa_tokens_verify_with_the_published_jwks(backend: Backend) {
    for (name, alg) in [("ES256", Algorithm::ES256), ("EdDSA", Algorithm::EdDSA)] {
        let (key, _) = keygen(name);
        let key = key.to_string_lossy().to_string();
        let app = spawn_app_with(
            backend,
            &[
                ("JWT_ALGORITHM", name),
                ("JWT_PRIVATE_KEY_FILE", key.as_str()),
            ],
        )
        .await;
        let session = app.sign_in(&unique_phone()).await;
        let token = field(&session, "access_token");
        let set = jwks(&app, &app.b).await;
        assert_eq!(set.keys.len(), 1);
        let claims = verify_with_jwks(&set, token, alg);
        assert_eq!(claims["typ"], json!("access"));
        assert_eq!(claims["sub"], session["user"]["id"]);
        // And otpgate itself accepts it on the other replica.
        assert_eq!(app.me(&app.b, token).await.status, 200);
    }
    // HS256 publishes nothing.
    let app = spawn_app(backend).await;
    assert!(jwks(&app, &app.a).await.keys.is_empty());
}

async fn rotation_keeps_old_tokens_valid_and_signs_with_the_new_key(backend: Backend) {
    let (old_key, _) = keygen("ES256");
    let old = old_key.to_string_lossy().to_string();
    let before = spawn_app_with(
        backend,
        &[
            ("JWT_ALGORITHM", "ES256"),
            ("JWT_PRIVATE_KEY_FILE", old.as_str()),
        ],
    )
    .await;
    let session = before.sign_in(&unique_phone()).await;
    let old_token = field(&session, "access_token").to_string();
    let old_kid = jsonwebtoken::decode_header(&old_token).expect("header").kid;

    // Rotate: a new key signs, the old public key only verifies. Same database.
    let (new_key, _) = keygen("ES256");
    let new = new_key.to_string_lossy().to_string();
    let previous = public_key_file("ES256", &old_key)
        .to_string_lossy()
        .to_string();
    let after = spawn_app_with(
        backend,
        &[
            ("JWT_ALGORITHM", "ES256"),
            ("JWT_PRIVATE_KEY_FILE", new.as_str()),
            ("JWT_PREVIOUS_PUBLIC_KEY_FILES", previous.as_str()),
            ("DATABASE_URL", before.database_url.as_str()),
        ],
    )
    .await;
    assert_eq!(
        after.me(&after.a, &old_token).await.status,
        200,
        "old tokens still verify"
    );
    let set = jwks(&after, &after.a).await;
    assert_eq!(set.keys.len(), 2);
    verify_with_jwks(&set, &old_token, Algorithm::ES256);
    let fresh = after.sign_in(&unique_phone()).await;
    let new_token = field(&fresh, "access_token");
    let new_kid = jsonwebtoken::decode_header(new_token).expect("header").kid;
    assert_ne!(new_kid, old_kid, "new tokens carry the new kid");
    assert_eq!(set.keys[0].common.key_id, new_kid);
    verify_with_jwks(&set, new_token, Algorithm::ES256);
    // Without the previous key listed, old tokens are refused.
    let strict = spawn_app_with(
        backend,
        &[
            ("JWT_ALGORITHM", "ES256"),
            ("JWT_PRIVATE_KEY_FILE", new.as_str()),
        ],
    )
    .await;
    strict
        .me(&strict.a, &old_token)
        .await
        .assert_problem(401, "invalid_token");
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

async fn forged_and_foreign_tokens_are_401(backend: Backend) {
    let (key, private_pem) = keygen("ES256");
    let key = key.to_string_lossy().to_string();
    let app = spawn_app_with(
        backend,
        &[
            ("JWT_ALGORITHM", "ES256"),
            ("JWT_PRIVATE_KEY_FILE", key.as_str()),
        ],
    )
    .await;
    let session = app.sign_in(&unique_phone()).await;
    let genuine = field(&session, "access_token");
    assert_eq!(app.me(&app.a, genuine).await.status, 200);
    let kid = jsonwebtoken::decode_header(genuine).expect("header").kid;
    let payload = genuine.split('.').nth(1).expect("payload");
    let claims: Value = serde_json::from_slice(&base64_url_decode(payload)).expect("claims");

    let signer = EncodingKey::from_ec_pem(private_pem.as_bytes()).expect("our private key");
    let sign_es = |claims: &Value| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.clone();
        jsonwebtoken::encode(&header, claims, &signer).expect("sign")
    };
    // Sanity: re-signing the same claims with the right key is accepted.
    assert_eq!(app.me(&app.a, &sign_es(&claims)).await.status, 200);

    let mut forged = Vec::new();
    // alg: none.
    forged.push(format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}."));
    // HS/ES confusion: HS256 keyed with the public key.
    let public_pem =
        std::fs::read_to_string(public_key_file("ES256", &PathBuf::from(&key))).expect("pem");
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = kid.clone();
    forged.push(
        jsonwebtoken::encode(
            &hs,
            &claims,
            &EncodingKey::from_secret(public_pem.as_bytes()),
        )
        .expect("hs"),
    );
    // Right key, wrong audience / issuer / kind, expired, not yet valid.
    for (name, value) in [
        ("aud", json!("another-app")),
        ("iss", json!("someone-else")),
        ("typ", json!("refresh")),
        ("exp", json!(unix_now() - 120)),
        ("nbf", json!(unix_now() + 600)),
    ] {
        let mut c = claims.clone();
        c[name] = value;
        forged.push(sign_es(&c));
    }
    // Another key with the same kid.
    let (_, other_pem) = keygen("ES256");
    let other = EncodingKey::from_ec_pem(other_pem.as_bytes()).expect("key");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.clone();
    forged.push(jsonwebtoken::encode(&header, &claims, &other).expect("sign"));
    for token in forged {
        app.me(&app.b, &token)
            .await
            .assert_problem(401, "invalid_token");
    }
}

fn base64_url_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .expect("base64url")
}

async fn big_bodies_are_413_problems(backend: Backend) {
    let app = spawn_app(backend).await;
    // Answers that carry a code or token are never cached.
    let login = app.login(&app.a, &unique_phone()).await;
    assert_eq!(login.header("cache-control"), Some("no-store"));
    assert_eq!(login.header("x-content-type-options"), Some("nosniff"));
    let big = format!("{{\"phone\":\"{}\"}}", "9".repeat(1024 * 1024));
    let resp = app
        .client
        .post(format!("{}/api/auth/login", app.a))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.expect("json");
    assert_eq!(problem["code"], json!("payload_too_large"));
    // The same without Content-Length (chunked).
    assert_eq!(
        chunked_post(&app.a, "/api/auth/login", big.as_bytes()).await,
        413
    );
}

/// POSTs `body` with `Transfer-Encoding: chunked` (no `Content-Length`) over a raw socket;
/// returns the status code.
async fn chunked_post(base: &str, path: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let mut wire = head.into_bytes();
    for chunk in body.chunks(64 * 1024) {
        wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    // The server may answer 413 and close before reading everything: ignore write errors.
    let _ = socket.write_all(&wire).await;
    let mut response = Vec::new();
    let _ = socket.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn cors_grants_only_listed_origins(backend: Backend) {
    let app = spawn_app_with(backend, &[("CORS_ORIGINS", "https://app.example")]).await;
    let ask = |origin: &'static str| {
        app.client
            .post(format!("{}/api/auth/login", app.a))
            .header("origin", origin)
            .json(&json!({ "phone": unique_phone() }))
            .send()
    };
    let allowed = ask("https://app.example").await.expect("sent");
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let denied = ask("https://evil.example").await.expect("sent");
    assert!(
        denied
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    // Preflight from the allowed origin.
    let preflight = app
        .client
        .request(Method::OPTIONS, format!("{}/api/auth/login", app.a))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .expect("sent");
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    // Without CORS_ORIGINS nobody gets a grant.
    let plain = spawn_app(backend).await;
    let resp = plain
        .client
        .get(format!("{}/health", plain.a))
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("sent");
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}
