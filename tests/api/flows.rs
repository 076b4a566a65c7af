//! The seed's client flow and the security rules of codes, tokens and sessions, checked from
//! outside over HTTP on both backends (two replicas on the cluster backend).

use std::time::Duration;

use serde_json::json;

use crate::helpers::{
    Backend, field, spawn_app, spawn_app_with, statuses_in_parallel, unique_phone,
};

crate::on_both_backends!(
    full_flow_login_verify_me_refresh_logout,
    phone_forms_map_to_one_user,
    code_from_a_verifies_on_b_once,
    parallel_verifies_give_exactly_one_success,
    five_wrong_codes_burn_the_code,
    resend_cooldown_and_its_reset_by_verify,
    a_new_login_replaces_the_old_code,
    refresh_rotates_and_grace_allows_concurrent_refresh,
    refresh_reuse_after_grace_revokes_the_family,
    access_and_refresh_tokens_are_not_interchangeable,
    logout_on_a_revokes_on_b,
    answers_do_not_reveal_known_numbers,
);

async fn full_flow_login_verify_me_refresh_logout(backend: Backend) {
    let app = spawn_app(backend).await;
    let phone = unique_phone();

    let login = app.login(&app.a, &phone).await;
    assert_eq!(login.status, 200, "{}", login.body);
    assert_eq!(login.body["phone"], json!(phone));
    assert_eq!(login.body["channel"], json!("log"));
    assert_eq!(login.body["expires_in"], json!(300));
    assert_eq!(login.body["resend_after"], json!(60));
    assert!(login.body["message"].is_string());
    let code = field(&login.body, "otp_code").to_string();
    assert_eq!(code.len(), 6);

    let session = app.verify(&app.b, &phone, &code).await;
    assert_eq!(session.status, 200, "{}", session.body);
    assert_eq!(session.body["token_type"], json!("bearer"));
    assert_eq!(session.body["expires_in"], json!(1800));
    assert_eq!(session.body["user"]["phone"], json!(phone));
    assert!(session.body["user"]["created_at"].is_string());
    assert!(session.body["user"]["last_login_at"].is_string());
    assert_eq!(session.header("cache-control"), Some("no-store"));
    let access = field(&session.body, "access_token");
    let refresh = field(&session.body, "refresh_token");
    let user_id = session.body["user"]["id"].clone();

    let me = app.me(&app.a, access).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["id"], user_id);
    assert_eq!(me.body["phone"], json!(phone));
    assert_eq!(me.body["identities"], json!([]));

    let rotated = app.refresh(&app.b, refresh).await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    assert_eq!(rotated.body["token_type"], json!("bearer"));
    let new_access = field(&rotated.body, "access_token");
    assert_ne!(new_access, access);
    assert_eq!(app.me(&app.a, new_access).await.body["id"], user_id);

    let out = app.logout(&app.a, new_access).await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(out.body, json!({ "status": "logged_out" }));
    app.me(&app.b, new_access)
        .await
        .assert_problem(401, "invalid_token");
    // The first access token belongs to the same session: dead too.
    app.me(&app.b, access)
        .await
        .assert_problem(401, "invalid_token");
}

async fn phone_forms_map_to_one_user(backend: Backend) {
    let app = spawn_app_with(backend, &[("OTP_RESEND_SECONDS", "0")]).await;
    let e164 = unique_phone();
    let digits = e164.trim_start_matches('+').to_string();
    let spaced = format!("+91 {} {}", &e164[3..8], &e164[8..]);
    let zeros = format!("00{digits}");
    let mut ids = Vec::new();
    let forms = [&digits, &spaced, &zeros, &e164];
    for (i, form) in forms.iter().enumerate() {
        let login = app.login(&app.a, form).await;
        assert_eq!(login.status, 200, "{form}: {}", login.body);
        assert_eq!(login.body["phone"], json!(e164), "{form}");
        let code = field(&login.body, "otp_code").to_string();
        // Verify with a different form than the login used: the next one in the list, so each
        // form is used for a login and for a verify.
        let other = forms[(i + 1) % forms.len()];
        assert_ne!(other, *form);
        let reply = app.verify(&app.b, other, &code).await;
        assert_eq!(
            reply.status, 200,
            "login {form}, verify {other}: {}",
            reply.body
        );
        assert_eq!(reply.body["user"]["phone"], json!(e164));
        ids.push(reply.body["user"]["id"].clone());
    }
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one user for every form: {ids:?}"
    );
}

async fn code_from_a_verifies_on_b_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let phone = unique_phone();
    let code = app.login_code(&app.a, &phone).await;
    assert_eq!(app.verify(&app.b, &phone, &code).await.status, 200);
    app.verify(&app.a, &phone, &code)
        .await
        .assert_problem(400, "otp_expired");
    app.verify(&app.b, &phone, &code)
        .await
        .assert_problem(400, "otp_expired");
}

async fn parallel_verifies_give_exactly_one_success(backend: Backend) {
    let app = spawn_app(backend).await;
    let phone = unique_phone();
    let code = app.login_code(&app.a, &phone).await;
    let app = std::sync::Arc::new(app);
    let statuses = statuses_in_parallel(&app, 40, |app, base| {
        let (phone, code) = (phone.clone(), code.clone());
        async move { app.verify(&base, &phone, &code).await }
    })
    .await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 400),
        "{statuses:?}"
    );
}

async fn five_wrong_codes_burn_the_code(backend: Backend) {
    let app = spawn_app(backend).await;
    let phone = unique_phone();
    let code = app.login_code(&app.a, &phone).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for remaining in (1..=4).rev() {
        let base = if remaining % 2 == 0 { &app.a } else { &app.b };
        let reply = app.verify(base, &phone, wrong).await;
        reply.assert_problem(400, "invalid_otp");
        assert!(field(&reply.body, "detail").contains(&format!("{remaining} attempt")));
    }
    app.verify(&app.a, &phone, wrong)
        .await
        .assert_problem(429, "too_many_attempts");
    // Burned: the right code no longer works either.
    app.verify(&app.b, &phone, &code)
        .await
        .assert_problem(429, "too_many_attempts");
    // A malformed code is refused without counting as an attempt.
    app.verify(&app.a, &phone, "12ab56")
        .await
        .assert_problem(422, "invalid_field");
}

async fn resend_cooldown_and_its_reset_by_verify(backend: Backend) {
    let app = spawn_app(backend).await;
    let phone = unique_phone();
    let code = app.login_code(&app.a, &phone).await;
    let again = app.login(&app.b, &phone).await;
    again.assert_problem(429, "rate_limited");
    let retry: u64 = again
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // The refused request did not replace the code.
    assert_eq!(app.verify(&app.b, &phone, &code).await.status, 200);
    // A successful verification clears the cooldown.
    assert_eq!(app.login(&app.a, &phone).await.status, 200);
}

async fn a_new_login_replaces_the_old_code(backend: Backend) {
    let app = spawn_app_with(backend, &[("OTP_RESEND_SECONDS", "0")]).await;
    let phone = unique_phone();
    let first = app.login_code(&app.a, &phone).await;
    let mut second = app.login_code(&app.b, &phone).await;
    while second == first {
        second = app.login_code(&app.b, &phone).await;
    }
    app.verify(&app.a, &phone, &first)
        .await
        .assert_problem(400, "invalid_otp");
    assert_eq!(app.verify(&app.b, &phone, &second).await.status, 200);
}

async fn refresh_rotates_and_grace_allows_concurrent_refresh(backend: Backend) {
    let app = spawn_app(backend).await;
    let session = app.sign_in(&unique_phone()).await;
    let access = field(&session, "access_token");
    let refresh = field(&session, "refresh_token");
    // Two refreshes of the same token at the same time, one per replica (a mobile app retrying
    // on a flaky network): both succeed, with the same successor.
    let (first, second) = tokio::join!(app.refresh(&app.a, refresh), app.refresh(&app.b, refresh));
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(second.status, 200, "{}", second.body);
    let successor = field(&first.body, "refresh_token");
    assert_ne!(successor, refresh, "the refresh token rotates");
    assert_ne!(
        field(&first.body, "access_token"),
        access,
        "a new access token"
    );
    assert_eq!(
        field(&second.body, "refresh_token"),
        successor,
        "both get the one successor, not two branches of the session"
    );
    assert_eq!(
        app.me(&app.a, field(&second.body, "access_token"))
            .await
            .status,
        200
    );
    // The successor rotates in turn, to yet another token.
    let next = app.refresh(&app.b, successor).await;
    assert_eq!(next.status, 200, "{}", next.body);
    let next_refresh = field(&next.body, "refresh_token");
    assert!(next_refresh != successor && next_refresh != refresh);
    assert_eq!(
        app.me(&app.a, field(&next.body, "access_token"))
            .await
            .status,
        200
    );
}

async fn refresh_reuse_after_grace_revokes_the_family(backend: Backend) {
    let app = spawn_app_with(backend, &[("REFRESH_REUSE_GRACE_SECONDS", "1")]).await;
    let session = app.sign_in(&unique_phone()).await;
    let old = field(&session, "refresh_token");
    let rotated = app.refresh(&app.a, old).await;
    assert_eq!(rotated.status, 200);
    let newest_refresh = field(&rotated.body, "refresh_token");
    let newest_access = field(&rotated.body, "access_token");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    app.refresh(&app.b, old)
        .await
        .assert_problem(401, "token_reused");
    // The whole family is dead: the newest refresh token and the access tokens too.
    app.refresh(&app.a, newest_refresh)
        .await
        .assert_problem(401, "invalid_token");
    app.me(&app.b, newest_access)
        .await
        .assert_problem(401, "invalid_token");
    app.me(&app.a, field(&session, "access_token"))
        .await
        .assert_problem(401, "invalid_token");
}

async fn access_and_refresh_tokens_are_not_interchangeable(backend: Backend) {
    let app = spawn_app(backend).await;
    let session = app.sign_in(&unique_phone()).await;
    app.refresh(&app.a, field(&session, "access_token"))
        .await
        .assert_problem(401, "invalid_token");
    app.me(&app.a, field(&session, "refresh_token"))
        .await
        .assert_problem(401, "invalid_token");
    app.refresh(&app.a, "garbage")
        .await
        .assert_problem(401, "invalid_token");
    app.me(&app.a, "garbage")
        .await
        .assert_problem(401, "invalid_token");
    // The session still works after those refusals.
    assert_eq!(
        app.me(&app.b, field(&session, "access_token")).await.status,
        200
    );
}

async fn logout_on_a_revokes_on_b(backend: Backend) {
    let app = spawn_app(backend).await;
    let session = app.sign_in(&unique_phone()).await;
    let access = field(&session, "access_token");
    let refresh = field(&session, "refresh_token");
    assert_eq!(app.me(&app.b, access).await.status, 200);
    assert_eq!(app.logout(&app.a, access).await.status, 200);
    app.me(&app.b, access)
        .await
        .assert_problem(401, "invalid_token");
    app.refresh(&app.b, refresh)
        .await
        .assert_problem(401, "invalid_token");
    app.logout(&app.b, access)
        .await
        .assert_problem(401, "invalid_token");
    // Another session of the same user is untouched.
    let phone = session["user"]["phone"]
        .as_str()
        .expect("phone")
        .to_string();
    let other = app.sign_in(&phone).await;
    assert_eq!(
        app.me(&app.b, field(&other, "access_token")).await.status,
        200
    );
}

async fn answers_do_not_reveal_known_numbers(backend: Backend) {
    let app = spawn_app(backend).await;
    let known = unique_phone();
    app.sign_in(&known).await;
    let fresh = unique_phone();
    let a = app.login(&app.a, &known).await;
    let b = app.login(&app.a, &fresh).await;
    assert_eq!(a.status, b.status);
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&a.body), keys(&b.body));
    assert_eq!(a.body["message"], b.body["message"]);
    assert_eq!(a.body["expires_in"], b.body["expires_in"]);
}
