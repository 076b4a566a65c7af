//! Bad input gets a 4xx problem+json with a stable code, never a 5xx; docs and probes answer.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, spawn_app};

crate::on_both_backends!(
    bad_input_is_a_problem_never_a_5xx,
    probes_docs_and_spec_answer
);

async fn bad_input_is_a_problem_never_a_5xx(backend: Backend) {
    let app = spawn_app(backend).await;
    // Not shaped like a phone number at all: the schema refuses it (422, naming the field).
    for phone in [
        "",
        "abc",
        "9+19876543210",
        "+91 98765 43210 ext 5",
        "١٢٣٤٥٦٧٨٩٠",
    ] {
        let reply = app.login(&app.a, phone).await;
        reply.assert_problem(422, "invalid_field");
        assert_eq!(reply.body["field"], json!("phone"), "{phone}");
        assert_eq!(reply.body["title"], json!("Invalid field"));
    }
    // Shaped like one, but not a valid number: 422.
    for phone in [
        "12",
        "+91 98765",
        "+999 123456789",
        "0987654321",
        "+0000000000",
    ] {
        app.login(&app.a, phone)
            .await
            .assert_problem(422, "invalid_phone");
    }
    // Wrong types, missing fields, unknown channels: 422 naming the field and the rule, in
    // plain words (no framework type names).
    for (body, field, words) in [
        (json!({}), "phone", "is required"),
        (
            json!({ "phone": { "number": "+919876543210" } }),
            "phone",
            "must be a string, not an object",
        ),
        (json!({ "phone": null }), "phone", "is required"),
        (
            json!({ "phone": "+919876543210", "channel": "pigeon" }),
            "channel",
            "must be one of: sms, whatsapp, telegram",
        ),
        (
            json!({ "phone": "+919876543210", "channel": 3 }),
            "channel",
            "must be a string, not a number",
        ),
        (
            json!([1, 2, 3]),
            "(body)",
            "must be a JSON object, not an array",
        ),
        (
            json!("+919876543210"),
            "(body)",
            "must be a JSON object, not a string",
        ),
        // A JSON number where a string is expected: refused (it cannot carry a `+` or a
        // leading zero), and the detail says to quote it.
        (
            json!({ "phone": 14155552671u64 }),
            "phone",
            "must be a string, not a number (put it in quotes)",
        ),
    ] {
        let reply = app.post(&app.a, "/api/auth/login", body.clone()).await;
        reply.assert_problem(422, "invalid_field");
        assert_eq!(reply.body["field"], json!(field), "{body}");
        let detail = reply.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(words), "{body}: {detail}");
        assert!(
            !detail.contains("parse") && !detail.contains("optional_"),
            "framework words in {detail}"
        );
    }
    // Channels that are not configured in this deployment.
    for channel in ["whatsapp", "telegram"] {
        app.post(
            &app.a,
            "/api/auth/login",
            json!({ "phone": "+919876543210", "channel": channel }),
        )
        .await
        .assert_problem(422, "channel_unavailable");
    }
    for (body, field) in [
        (json!({ "phone": "+919876543210" }), "otp_code"),
        (json!({ "otp_code": "123456" }), "phone"),
        (
            json!({ "phone": "+919876543210", "otp_code": "" }),
            "otp_code",
        ),
        (
            json!({ "phone": "+919876543210", "otp_code": "12345" }),
            "otp_code",
        ),
        (
            json!({ "phone": "+919876543210", "otp_code": "１２３４５６" }),
            "otp_code",
        ),
        (
            json!({ "phone": "+919876543210", "otp_code": 123456 }),
            "otp_code",
        ),
    ] {
        let reply = app.post(&app.a, "/api/auth/verify-otp", body.clone()).await;
        reply.assert_problem(422, "invalid_field");
        assert_eq!(reply.body["field"], json!(field), "{body}");
    }
    app.post(
        &app.a,
        "/api/auth/verify-otp",
        json!({ "phone": "12", "otp_code": "123456" }),
    )
    .await
    .assert_problem(422, "invalid_phone");
    app.post(&app.a, "/api/auth/refresh-token", json!({}))
        .await
        .assert_problem(422, "invalid_field");
    // Every string field is strict, not only the phone and the code.
    for body in [
        json!({ "refresh_token": 123 }),
        json!({ "refresh_token": true }),
    ] {
        let reply = app.post(&app.a, "/api/auth/refresh-token", body).await;
        reply.assert_problem(422, "invalid_field");
        assert_eq!(reply.body["field"], json!("refresh_token"));
    }

    // Malformed JSON, a wrong content type, a huge phone.
    let raw = |body: &'static str, content_type: &'static str| {
        app.client
            .post(format!("{}/api/auth/login", app.a))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (body, content_type, status, code) in [
        ("{\"phone\":", "application/json", 400, "invalid_request"),
        ("not json", "application/json", 400, "invalid_request"),
        (
            "phone=1",
            "application/x-www-form-urlencoded",
            415,
            "unsupported_media_type",
        ),
    ] {
        let resp = raw(body, content_type).await.expect("sent");
        assert_eq!(resp.status().as_u16(), status, "{body}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem: Value = resp.json().await.expect("json");
        assert_eq!(problem["code"], json!(code));
    }
    app.login(&app.a, &"9".repeat(5000))
        .await
        .assert_problem(422, "invalid_field");

    // Unknown routes and wrong methods.
    let reply = app
        .call(&app.a, Method::GET, "/api/does-not-exist", None, None)
        .await;
    reply.assert_problem(404, "not_found");
    let reply = app
        .call(&app.a, Method::GET, "/api/auth/login", None, None)
        .await;
    reply.assert_problem(405, "method_not_allowed");
    let reply = app
        .call(&app.a, Method::GET, "/api/auth/me", None, None)
        .await;
    reply.assert_problem(401, "unauthorized");
    assert!(
        reply
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer"))
    );
}

async fn probes_docs_and_spec_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    for base in [&app.a, &app.b] {
        let health = app.call(base, Method::GET, "/health", None, None).await;
        assert_eq!(health.status, 200);
        assert_eq!(health.body, json!({ "status": "ok" }));
        let ready = app.call(base, Method::GET, "/ready", None, None).await;
        assert_eq!(ready.status, 200, "{}", ready.body);
        assert_eq!(ready.body["store"], json!("ok"));
        assert_eq!(ready.body["database"], json!("ok"));
    }
    for path in ["/docs", "/redoc"] {
        let resp = app
            .client
            .get(format!("{}{path}", app.a))
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), 200, "{path}");
        assert!(
            resp.text()
                .await
                .expect("html")
                .to_lowercase()
                .contains("<html"),
            "{path}"
        );
    }
    let spec = app
        .call(&app.a, Method::GET, "/openapi.json", None, None)
        .await;
    assert_eq!(spec.status, 200);
    assert!(
        spec.body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    let schemes = &spec.body["components"]["securitySchemes"];
    let bearer = schemes
        .as_object()
        .and_then(|s| s.values().next())
        .expect("a security scheme");
    assert_eq!(bearer["type"], json!("http"));
    assert_eq!(bearer["scheme"], json!("bearer"));
    for path in [
        "/api/auth/login",
        "/api/auth/verify-otp",
        "/api/auth/refresh-token",
        "/api/auth/me",
        "/api/auth/logout",
        "/health",
        "/ready",
    ] {
        assert!(
            spec.body["paths"][path].is_object(),
            "{path} missing from the spec"
        );
    }
    let login_errors = &spec.body["paths"]["/api/auth/login"]["post"]["responses"];
    assert!(login_errors["429"]["content"]["application/problem+json"].is_object());
    assert!(spec.body["paths"]["/api/auth/me"]["get"]["security"].is_array());
}
