//! What client developers build against: the OAuth 2.0 token endpoint (RFC 6749 §5–6), the
//! token response (`expires_at`, `user` on refresh too, no caching), and an OpenAPI document
//! that generators can use: valid 3.0, an `operationId` everywhere, described and exemplified
//! answers, per-operation error lists, and self-contained docs pages.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with};

crate::on_both_backends!(
    oauth_token_endpoint_speaks_rfc_6749,
    token_responses_carry_expiry_and_user_and_are_not_cached,
    login_and_verify_answer_alike_with_and_without_the_router
);

async fn form(
    app: &TestApp,
    base: &str,
    body: &str,
    content_type: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let resp = app
        .client
        .post(format!("{base}/api/auth/token"))
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .expect("sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.json().await.unwrap_or(Value::Null), headers)
}

async fn oauth_token_endpoint_speaks_rfc_6749(backend: Backend) {
    let app = spawn_app_with(backend, &[("REFRESH_REUSE_GRACE_SECONDS", "1")]).await;
    let session = app.sign_in("+919812340001").await;
    let refresh = session["refresh_token"].as_str().unwrap().to_string();
    let urlencoded = "application/x-www-form-urlencoded";
    // Form-encoded, as AppAuth sends it (the token is base64url and dots: no escaping needed).
    let (status, body, headers) = form(
        &app,
        &app.b,
        &format!("grant_type=refresh_token&refresh_token={refresh}&client_id=app"),
        urlencoded,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], json!("bearer"));
    assert_eq!(body["user"]["phone"], json!("+919812340001"));
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["pragma"], "no-cache");
    let next = body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(next, refresh);
    // JSON works too.
    let (status, body, _) = form(
        &app,
        &app.a,
        &json!({ "grant_type": "refresh_token", "refresh_token": next }).to_string(),
        "application/json",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Errors are RFC 6749 §5.2 objects, with otpgate's code beside them.
    let cases = [
        (
            "grant_type=password&refresh_token=x".to_string(),
            urlencoded,
            400,
            "unsupported_grant_type",
        ),
        (
            "refresh_token=x".to_string(),
            urlencoded,
            400,
            "invalid_request",
        ),
        (
            "grant_type=refresh_token&refresh_token=not-a-token".to_string(),
            urlencoded,
            400,
            "invalid_grant",
        ),
        ("{".to_string(), "application/json", 400, "invalid_request"),
        ("x".to_string(), "text/plain", 400, "invalid_request"),
    ];
    for (body, content_type, status, error) in cases {
        let (got, reply, headers) = form(&app, &app.a, &body, content_type).await;
        assert_eq!(
            (got, reply["error"].as_str()),
            (status, Some(error)),
            "{body}: {reply}"
        );
        assert!(
            reply["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{reply}"
        );
        assert!(reply.get("type").is_none(), "a problem document: {reply}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        assert_eq!(headers["cache-control"], "no-store");
    }
    // The refresh token spent above, presented again after the grace window: invalid_grant
    // (the session is revoked), with `token_reused` as the code.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, reply, _) = form(
        &app,
        &app.b,
        &format!("grant_type=refresh_token&refresh_token={refresh}"),
        urlencoded,
    )
    .await;
    assert_eq!(
        (status, &reply["error"]),
        (400, &json!("invalid_grant")),
        "{reply}"
    );
    assert_eq!(reply["code"], json!("token_reused"));
    // A wrong method keeps its 405, in the OAuth shape.
    let resp = app
        .client
        .request(Method::TRACE, format!("{}/api/auth/token", app.a))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let reply: Value = resp.json().await.unwrap();
    assert_eq!(reply["error"], json!("invalid_request"), "{reply}");
    // Every other endpoint still answers problem documents.
    let me = app.me(&app.a, "not-a-token").await;
    me.assert_problem(401, "invalid_token");
}

async fn token_responses_carry_expiry_and_user_and_are_not_cached(backend: Backend) {
    let app = spawn_app(backend).await;
    let code = app.login_code(&app.a, "+919812340002").await;
    let verified = app.verify(&app.b, "+919812340002", &code).await;
    let now = chrono::Utc::now().timestamp() as u64;
    let expires_in = verified.body["expires_in"].as_u64().unwrap();
    let expires_at = verified.body["expires_at"].as_u64().unwrap();
    assert!(
        expires_at.abs_diff(now + expires_in) <= 2,
        "{}",
        verified.body
    );
    assert_eq!(verified.headers["cache-control"], "no-store");
    assert_eq!(verified.headers["pragma"], "no-cache");
    let refreshed = app
        .refresh(&app.a, verified.body["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    assert_eq!(refreshed.body["user"], verified.body["user"]);
    assert!(refreshed.body["expires_at"].as_u64().unwrap() >= expires_at);
    assert_eq!(refreshed.headers["pragma"], "no-cache");
}

/// The spec is valid for generators: `operationId`s, described and exemplified responses, and
/// per-operation error lists (`GET /me` never documents a wrong code).
#[tokio::test]
async fn the_openapi_document_serves_code_generators() {
    let app = spawn_app(Backend::Embedded).await;
    let spec = app
        .call(&app.a, Method::GET, "/openapi.json", None, None)
        .await
        .body;
    assert_eq!(spec["openapi"], json!("3.0.0"));
    assert!(
        spec["info"].get("summary").is_none(),
        "info.summary is OpenAPI 3.1 only"
    );
    let schemas = &spec["components"]["schemas"];
    let mut ids = Vec::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let id = op["operationId"].as_str();
            assert!(id.is_some(), "{method} {path} has no operationId");
            ids.push(id.unwrap().to_string());
            for (status, response) in op["responses"].as_object().unwrap() {
                let description = response["description"].as_str().unwrap_or("");
                assert!(
                    !description.is_empty(),
                    "{method} {path} {status}: no description"
                );
                assert!(
                    !response.get("content").is_some_and(Value::is_null),
                    "{method} {path} {status}: `content: null` is not OpenAPI"
                );
                let Some(content) = response["content"].as_object() else {
                    continue;
                };
                for (media, body) in content {
                    if media == "application/problem+json" {
                        let examples = body["examples"].as_object().expect("problem examples");
                        let codes: Vec<&str> = description.split('`').skip(1).step_by(2).collect();
                        assert!(!codes.is_empty(), "{method} {path} {status}: no codes");
                        for code in codes {
                            let example = &examples[code]["value"];
                            assert_eq!(example["code"], json!(code), "{method} {path} {status}");
                            assert_eq!(example["status"].as_u64(), status.parse().ok());
                        }
                    } else if status.starts_with('2') {
                        let named = body["schema"]["$ref"]
                            .as_str()
                            .and_then(|r| r.rsplit('/').next())
                            .map(|name| &schemas[name]);
                        let has_example = body.get("example").is_some()
                            || named.is_some_and(|s| s.get("example").is_some())
                            || media.starts_with("text/plain");
                        assert!(has_example, "{method} {path} {status} {media}: no example");
                    }
                }
            }
        }
    }
    validate_with_openapi_spec_validator(&spec);
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "duplicate operationIds: {ids:?}");
    let documented = |path: &str, method: &str| -> String {
        spec["paths"][path][method]["responses"]
            .as_object()
            .unwrap()
            .values()
            .map(|r| r["description"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let me = documented("/api/auth/me", "get");
    for absent in [
        "invalid_otp",
        "otp_expired",
        "invalid_phone",
        "intent_expired",
        "invalid_signature",
    ] {
        assert!(!me.contains(absent), "GET /me documents {absent}: {me}");
    }
    assert!(
        me.contains("`invalid_token`") && me.contains("`rate_limited`"),
        "{me}"
    );
    let verify = documented("/api/auth/verify-otp", "post");
    assert!(
        verify.contains("`invalid_otp`") && !verify.contains("`token_reused`"),
        "{verify}"
    );
    let token = &spec["paths"]["/api/auth/token"]["post"];
    assert!(token["requestBody"]["content"]["application/x-www-form-urlencoded"].is_object());
    assert_eq!(
        token["responses"]["400"]["content"]["application/json"]["schema"]["$ref"],
        json!("#/components/schemas/OAuthError")
    );
}

/// Swagger UI and Redoc load nothing from another origin: the docs work offline.
#[tokio::test]
async fn the_docs_pages_are_self_contained() {
    let app = spawn_app(Backend::Embedded).await;
    for path in ["/docs", "/redoc"] {
        let resp = app
            .client
            .get(format!("{}{path}", app.a))
            .send()
            .await
            .unwrap();
        let csp = resp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            !csp.contains("http"),
            "{path}: the CSP allows another origin: {csp}"
        );
        let html = resp.text().await.unwrap();
        for tag in ["<link", "<script src", "<img src"] {
            for found in html.match_indices(tag) {
                let rest = &html[found.0..(found.0 + 200).min(html.len())];
                assert!(
                    !rest.contains("http"),
                    "{path}: an external resource: {rest}"
                );
            }
        }
        assert!(
            !html.contains("fonts.googleapis.com"),
            "{path} fetches fonts"
        );
        // The page carries the served document, examples included.
        assert!(html.contains("urn:otpgate:problem:invalid_field"), "{path}");
    }
}

/// `openapi-spec-validator` (PyPI) accepts the served document. Required in CI
/// (`scripts/test.sh` installs it and sets `OPENAPI_SPEC_VALIDATOR`); elsewhere it runs when
/// that variable names it.
fn validate_with_openapi_spec_validator(spec: &Value) {
    let required = std::env::var("OTPGATE_REQUIRE_BACKENDS").is_ok() || std::env::var("CI").is_ok();
    let Ok(validator) = std::env::var("OPENAPI_SPEC_VALIDATOR") else {
        assert!(!required, "OPENAPI_SPEC_VALIDATOR is required here");
        return;
    };
    let file = std::env::temp_dir().join(format!("otpgate-openapi-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, spec.to_string()).unwrap();
    let out = std::process::Command::new(validator)
        .arg(&file)
        .output()
        .expect("openapi-spec-validator runs");
    std::fs::remove_file(&file).ok();
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With `CORS_ORIGINS` set, errors keep their shape and carry the CORS headers, so a browser
/// client can read them: problem documents everywhere, the OAuth shape at the token endpoint.
#[tokio::test]
async fn errors_reach_browsers_with_cors_headers() {
    let app = spawn_app_with(
        Backend::Embedded,
        &[("CORS_ORIGINS", "https://app.example")],
    )
    .await;
    let send = |path: &str, content_type: &str, body: &str| {
        app.client
            .post(format!("{}{path}", app.a))
            .header("origin", "https://app.example")
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
    };
    for (path, content_type, body, media, status) in [
        (
            "/api/auth/login",
            "text/plain",
            "x",
            "application/problem+json",
            415,
        ),
        (
            "/api/auth/login",
            "application/json",
            "{",
            "application/problem+json",
            400,
        ),
        (
            "/api/auth/token",
            "text/plain",
            "x",
            "application/json",
            400,
        ),
        (
            "/api/auth/token",
            "application/x-www-form-urlencoded",
            "grant_type=refresh_token&refresh_token=x.y.z",
            "application/json",
            400,
        ),
    ] {
        let resp = send(path, content_type, body).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{path} {body}");
        let headers = resp.headers().clone();
        assert_eq!(
            headers["access-control-allow-origin"], "https://app.example",
            "{path} {body}: {headers:?}"
        );
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(media),
            "{path} {body}: {headers:?}"
        );
        let reply: Value = resp.json().await.unwrap();
        if path.ends_with("/token") {
            assert!(reply["error"].is_string(), "{reply}");
        } else {
            assert!(
                reply["code"].is_string() && reply["type"].is_string(),
                "{reply}"
            );
        }
    }
}

/// What a reply shows a client, with what differs between two requests of the same kind taken
/// out: the request id and date, the phone number and the per-request values in the body.
fn shape(reply: &crate::helpers::Reply) -> (u16, Vec<(String, String)>, Value) {
    let mut headers: Vec<(String, String)> = reply
        .headers
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "date" | "x-request-id" | "content-length" | "retry-after"
            )
        })
        .map(|(name, value)| {
            let value = value.to_str().unwrap_or("?");
            // The quota fields name the same policies; what is left of the IP's differs by one.
            let value = if name.as_str() == "ratelimit" {
                value
                    .split(", ")
                    .map(|f| f.split(';').next().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                value.to_string()
            };
            (name.to_string(), value)
        })
        .collect();
    headers.sort();
    let mut body = reply.body.clone();
    if let Some(object) = body.as_object_mut() {
        for (key, value) in object.iter_mut() {
            if !matches!(
                key.as_str(),
                "code"
                    | "status"
                    | "type"
                    | "title"
                    | "channel"
                    | "message"
                    | "token_type"
                    | "field"
            ) {
                *value = if key == "detail" {
                    // The text itself, with its numbers (seconds left, attempts) masked.
                    json!(
                        value
                            .as_str()
                            .unwrap_or("")
                            .replace(|c: char| c.is_ascii_digit(), "#")
                    )
                } else {
                    json!(type_name(value))
                };
            }
        }
    }
    (reply.status, headers, body)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `POST /api/auth/login` and `/api/auth/verify-otp` are answered before the router (the hot
/// path of `src/app/routes.rs`); a query string sends the same request through the router and
/// poem-openapi's operation endpoint. Both must answer alike: successes, the resend window's
/// 429, a wrong code's 400 (these three take the hot path), and what the hot path leaves to the
/// router (bodies that do not parse, another media type). That the hot path is taken at all is
/// `app::routes::tests`.
async fn login_and_verify_answer_alike_with_and_without_the_router(backend: Backend) {
    let app = spawn_app(backend).await;
    // The hot path's paths are the operations' own.
    let spec: Value = app
        .client
        .get(format!("{}/openapi.json", app.a))
        .send()
        .await
        .expect("spec")
        .json()
        .await
        .expect("spec JSON");
    use otpgate::api::auth::HotOperation;
    for path in [HotOperation::LOGIN_PATH, HotOperation::VERIFY_PATH] {
        assert!(
            spec["paths"][path]["post"].is_object(),
            "{path} in the spec"
        );
    }
    let both = |path: &'static str| [path.to_string(), format!("{path}?via=router")];
    let raw = |path: String, content_type: &'static str, body: &'static str| {
        let app = &app;
        async move {
            let mut req = app.client.post(format!("{}{path}", app.a)).body(body);
            // "" sends no Content-Type at all.
            if !content_type.is_empty() {
                req = req.header("content-type", content_type);
            }
            let resp = req.send().await.expect("sent");
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.json().await.unwrap_or(Value::Null);
            crate::helpers::Reply {
                status,
                headers,
                body,
            }
        }
    };
    let mut shapes = Vec::new();
    for (i, login) in both("/api/auth/login").into_iter().enumerate() {
        let phone = format!("+91981234{:04}", 7100 + i);
        let sent = app.post(&app.a, &login, json!({ "phone": phone })).await;
        assert_eq!(sent.status, 200, "{login}: {}", sent.body);
        // Again at once: 429 in the resend window, with Retry-After and the RateLimit fields.
        let again = app.post(&app.a, &login, json!({ "phone": phone })).await;
        let code = sent.body["otp_code"].as_str().unwrap().to_string();
        let verify = login.replace("/login", "/verify-otp");
        let wrong = if code == "000000" { "111111" } else { "000000" };
        let refused = app
            .post(
                &app.a,
                &verify,
                json!({ "phone": phone, "otp_code": wrong }),
            )
            .await;
        let verified = app
            .post(&app.b, &verify, json!({ "phone": phone, "otp_code": code }))
            .await;
        assert_eq!(verified.status, 200, "{verify}: {}", verified.body);
        assert_eq!(verified.headers["cache-control"], "no-store");
        let unparsed = raw(verify.clone(), "application/json", r#"{"phone": 5}"#).await;
        let not_json = raw(login.clone(), "application/json", "{").await;
        let wrong_type = raw(login.clone(), "text/plain", "phone=+919812347100").await;
        let no_type = raw(verify.clone(), "", "").await;
        shapes.push(
            [
                sent, again, refused, verified, unparsed, not_json, wrong_type, no_type,
            ]
            .iter()
            .map(shape)
            .collect::<Vec<_>>(),
        );
    }
    assert!(
        shapes[0][1].0 == 429 && shapes[0][2].0 == 400 && shapes[0][4].0 == 422,
        "{:?}",
        shapes[0]
    );
    for (hot, routed) in shapes[0].iter().zip(&shapes[1]) {
        assert_eq!(hot, routed);
    }
}
