//! Metrics, request ids and access logs, checked from outside.

use std::io::Write;
use std::process::{Command, Stdio};

use reqwest::Method;

use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with, unique_phone};

crate::on_both_backends!(
    metrics_count_the_login_funnel,
    unknown_paths_share_one_route_label,
    request_ids_are_kept_or_made_and_echoed,
    metrics_listener_and_token,
);

/// The value of one sample line (`name{labels} value`) in a Prometheus text body, 0 if absent.
pub(crate) fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

pub(crate) async fn metrics_text(app: &TestApp, base: &str) -> String {
    let resp = app
        .client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    resp.text().await.expect("text")
}

/// `promtool check metrics` and the official Python client's parser must accept the body.
/// Both are required under `OTPGATE_REQUIRE_BACKENDS` or `CI` (`scripts/test.sh` installs them);
/// elsewhere they run when present.
fn check_with_official_tools(body: &str) {
    let required = crate::helpers::backends_required();
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(body.as_bytes())
                .expect("write");
            let out = child.wait_with_output().expect("promtool");
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(err) => assert!(!required, "promtool is required here: {err}"),
    }
    match std::env::var("METRICS_PARSER_PYTHON") {
        Ok(python) => {
            let mut child = Command::new(python)
                .args([
                    "-c",
                    "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n\
                     fams = list(p(sys.stdin.read()))\nassert len(fams) > 10, len(fams)\nprint(len(fams))",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("python");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(body.as_bytes())
                .expect("write");
            let out = child.wait_with_output().expect("python parser");
            assert!(
                out.status.success(),
                "parser: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) => assert!(!required, "METRICS_PARSER_PYTHON is required here"),
    }
}

async fn metrics_count_the_login_funnel(backend: Backend) {
    let app = spawn_app(backend).await;
    let success = "otpgate_otp_verifications_total{outcome=\"success\"}";
    let before = metrics_text(&app, &app.b).await;
    for _ in 0..3 {
        // Login on A, verify on B: B's counters see the verifications.
        app.sign_in(&unique_phone()).await;
    }
    let phone = unique_phone();
    app.login_code(&app.a, &phone).await;
    app.login(&app.a, &phone).await; // refused by the resend cooldown
    let after = metrics_text(&app, &app.b).await;
    assert_eq!(
        sample(&after, success) - sample(&before, success),
        3.0,
        "{after}"
    );
    assert!(after.contains("# TYPE otpgate_http_request_duration_seconds histogram"));
    assert!(after.contains("otpgate_http_request_duration_seconds_bucket{method=\"POST\",route=\"/api/auth/verify-otp\",le="));
    assert!(after.contains("otpgate_build_info{version=\""));
    assert!(after.contains("otpgate_sessions_total{event=\"issued\"}"));
    assert!(after.contains("otpgate_store_operation_duration_seconds_bucket{op=\"verify_code\""));
    assert!(after.contains("otpgate_db_query_duration_seconds_bucket{query=\"complete_login\""));
    assert!(after.contains("process_resident_memory_bytes"));
    let on_a = metrics_text(&app, &app.a).await;
    assert!(
        sample(
            &on_a,
            "otpgate_otp_sent_total{channel=\"log\",outcome=\"sent\"}"
        ) >= 1.0
    );
    assert_eq!(
        sample(&on_a, "otpgate_rate_limited_total{policy=\"otp-resend\"}"),
        1.0,
        "{on_a}"
    );
    check_with_official_tools(&after);
}

async fn unknown_paths_share_one_route_label(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app
        .call(&app.a, Method::GET, "/api/does-not-exist-12345", None, None)
        .await;
    reply.assert_problem(404, "not_found");
    let body = metrics_text(&app, &app.a).await;
    assert!(!body.contains("12345"), "{body}");
    assert!(
        body.contains("route=\"unmatched\",status=\"404\""),
        "{body}"
    );
}

async fn request_ids_are_kept_or_made_and_echoed(backend: Backend) {
    let app = spawn_app(backend).await;
    let resp = app
        .client
        .get(format!("{}/health", app.a))
        .header("x-request-id", "abc")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.headers()["x-request-id"], "abc");
    // Made up when absent or not sane.
    for header in [
        None,
        Some("has space"),
        Some("x".repeat(200).leak() as &str),
    ] {
        let mut req = app.client.get(format!("{}/health", app.a));
        if let Some(value) = header {
            req = req.header("x-request-id", value);
        }
        let resp = req.send().await.expect("sent");
        let id = resp.headers()["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    // Problem bodies quote it.
    let resp = app
        .client
        .post(format!("{}/api/auth/login", app.a))
        .header("x-request-id", "req-42")
        .json(&serde_json::json!({ "phone": "12" }))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.headers()["x-request-id"], "req-42");
    let problem: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(problem["request_id"], "req-42");
}

async fn metrics_listener_and_token(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[("METRICS_PORT", "0"), ("METRICS_TOKEN", "s3cret")],
    )
    .await;
    let metrics = app.metrics.clone().expect("a metrics listener");
    // Not on the public port any more.
    let public = app.call(&app.a, Method::GET, "/metrics", None, None).await;
    public.assert_problem(404, "not_found");
    let denied = app
        .client
        .get(format!("{metrics}/metrics"))
        .send()
        .await
        .expect("sent");
    assert_eq!(denied.status(), 401);
    let wrong = app
        .client
        .get(format!("{metrics}/metrics"))
        .bearer_auth("s3cre")
        .send()
        .await
        .expect("sent");
    assert_eq!(wrong.status(), 401);
    let ok = app
        .client
        .get(format!("{metrics}/metrics"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("sent");
    assert_eq!(ok.status(), 200);
    assert!(
        ok.text()
            .await
            .expect("text")
            .contains("otpgate_http_requests_total")
    );
}
