//! Sessions and devices (list, revoke one, logout scopes) and the admin API (search, block,
//! unblock, delete, revoke all), on every backend: with two replicas, what one revokes the
//! other refuses on the very next request.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, Reply, TestApp, field, spawn_app, spawn_app_with, unique_phone};

crate::on_both_backends!(
    sessions_are_listed_and_revoked_one_by_one,
    logout_scopes_end_this_other_or_all_sessions,
    admin_api_takes_only_its_own_keys,
    blocking_stops_codes_logins_and_every_session,
    deleting_a_user_ends_them_and_frees_the_number,
    admin_revokes_all_sessions_and_the_user_logs_in_again,
    users_are_searched_and_paged,
    deleting_ones_own_account_needs_a_recent_login,
    a_phone_change_moves_the_account_to_the_new_number,
);

const KEY: &str = "admin-key-0123456789abcdef0123456789";

/// Many sign-ins per number here: the per-number quota is raised, the resend cooldown short.
const LIMITS: [(&str, &str); 2] = [
    ("RATE_LIMIT_PHONE_PER_HOUR", "100"),
    ("OTP_RESEND_SECONDS", "1"),
];

async fn app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &LIMITS).await
}

async fn admin_app(backend: Backend) -> TestApp {
    let keys = format!("other-key-000000000000000000,{KEY}");
    let mut vars = LIMITS.to_vec();
    vars.push(("ADMIN_API_KEYS", &keys));
    spawn_app_with(backend, &vars).await
}

async fn admin(app: &TestApp, base: &str, method: Method, path: &str) -> Reply {
    app.call(base, method, path, None, Some(KEY)).await
}

/// Login on A, verify on B with a device name and user agent; the token response.
async fn sign_in_as(app: &TestApp, phone: &str, device: &str) -> Value {
    let code = app.login_code(&app.a, phone).await;
    let resp = app
        .client
        .post(format!("{}/api/auth/verify-otp", app.b))
        .header("User-Agent", format!("TestApp/1.0 ({device})"))
        .json(&json!({ "phone": phone, "otp_code": code, "device_name": device }))
        .send()
        .await
        .expect("verify sent");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("token json")
}

async fn sessions(app: &TestApp, base: &str, access: &str) -> Reply {
    app.call(base, Method::GET, "/api/auth/sessions", None, Some(access))
        .await
}

async fn session_ids(app: &TestApp, base: &str, access: &str) -> Vec<String> {
    let reply = sessions(app, base, access).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

/// Whether the access token of `tokens` still works on both replicas (asserted the same).
async fn works(app: &TestApp, tokens: &Value) -> bool {
    let on_a = app.me(&app.a, field(tokens, "access_token")).await.status;
    let on_b = app.me(&app.b, field(tokens, "access_token")).await.status;
    assert_eq!(on_a, on_b, "the replicas disagree");
    assert!(on_a == 200 || on_a == 401, "{on_a}");
    on_a == 200
}

async fn sessions_are_listed_and_revoked_one_by_one(backend: Backend) {
    let app = app(backend).await;
    let phone = unique_phone();
    let phone_tokens = sign_in_as(&app, &phone, "Pixel 8").await;
    let tablet = sign_in_as(&app, &phone, "Tab S9").await;
    let access = field(&phone_tokens, "access_token");

    let reply = sessions(&app, &app.a, access).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let list = reply.body["sessions"].as_array().expect("sessions");
    assert_eq!(list.len(), 2, "{}", reply.body);
    // Newest first: the tablet, then this phone (current).
    assert_eq!(list[0]["device_name"], "Tab S9");
    assert_eq!(list[0]["current"], false);
    assert_eq!(list[1]["device_name"], "Pixel 8");
    assert_eq!(list[1]["current"], true);
    assert_eq!(list[1]["user_agent"], "TestApp/1.0 (Pixel 8)");
    // The client address is kept as its /24.
    assert_eq!(list[1]["ip"], "127.0.0.0/24");
    for s in list {
        assert!(s["created_at"].is_string() && s["last_used_at"].is_string());
    }
    let tablet_sid = list[0]["id"].as_str().unwrap().to_string();

    // A refresh keeps the session (same id) and moves its last use.
    let refreshed = app.refresh(&app.b, field(&tablet, "refresh_token")).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    assert_eq!(session_ids(&app, &app.b, access).await.len(), 2);

    // Another user cannot see or revoke these sessions: 404, and the session still works.
    let stranger = app.sign_in(&unique_phone()).await;
    let path = format!("/api/auth/sessions/{tablet_sid}");
    app.call(
        &app.a,
        Method::DELETE,
        &path,
        None,
        Some(field(&stranger, "access_token")),
    )
    .await
    .assert_problem(404, "not_found");
    assert!(works(&app, &refreshed.body).await);
    assert_eq!(
        session_ids(&app, &app.a, field(&stranger, "access_token"))
            .await
            .len(),
        1
    );

    // The owner revokes the tablet on A; B refuses its tokens at once.
    let revoked = app
        .call(&app.a, Method::DELETE, &path, None, Some(access))
        .await;
    assert_eq!(revoked.status, 204, "{}", revoked.body);
    assert!(!works(&app, &refreshed.body).await);
    app.refresh(&app.b, field(&refreshed.body, "refresh_token"))
        .await
        .assert_problem(401, "invalid_token");
    assert_eq!(session_ids(&app, &app.b, access).await.len(), 1);
    assert!(works(&app, &phone_tokens).await);

    // Unknown or already revoked ids: 404.
    app.call(&app.b, Method::DELETE, &path, None, Some(access))
        .await
        .assert_problem(404, "not_found");
    app.call(
        &app.b,
        Method::DELETE,
        "/api/auth/sessions/nope",
        None,
        Some(access),
    )
    .await
    .assert_problem(404, "not_found");
    // A method the route does not serve: 405 naming the ones it does (a route with a parameter).
    let wrong = app
        .call(&app.a, Method::PUT, &path, None, Some(access))
        .await;
    wrong.assert_problem(405, "method_not_allowed");
    assert_eq!(wrong.header("allow"), Some("DELETE"));
    // No token: 401.
    app.call(&app.a, Method::GET, "/api/auth/sessions", None, None)
        .await
        .assert_problem(401, "unauthorized");
    // A device name with a control character: 422, no session.
    let code = app.login_code(&app.a, &phone).await;
    app.post(
        &app.a,
        "/api/auth/verify-otp",
        json!({ "phone": phone, "otp_code": code, "device_name": "bad\nname" }),
    )
    .await
    .assert_problem(422, "invalid_field");
    assert_eq!(session_ids(&app, &app.a, access).await.len(), 1);
}

async fn logout_scopes_end_this_other_or_all_sessions(backend: Backend) {
    let app = app(backend).await;
    let phone = unique_phone();
    let one = sign_in_as(&app, &phone, "one").await;
    let two = sign_in_as(&app, &phone, "two").await;
    let three = sign_in_as(&app, &phone, "three").await;

    let logout = |tokens: Value, scope: &'static str| {
        let app = &app;
        async move {
            app.call(
                &app.a,
                Method::POST,
                &format!("/api/auth/logout{scope}"),
                None,
                Some(field(&tokens, "access_token")),
            )
            .await
        }
    };
    logout(one.clone(), "?scope=bogus")
        .await
        .assert_problem(400, "invalid_request");

    // Default: this session only.
    let reply = logout(three.clone(), "").await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &json!({"status": "logged_out"}))
    );
    assert!(!works(&app, &three).await);
    assert!(works(&app, &one).await && works(&app, &two).await);

    // Others: every session but this one.
    let four = sign_in_as(&app, &phone, "four").await;
    assert_eq!(logout(one.clone(), "?scope=others").await.status, 200);
    assert!(works(&app, &one).await);
    assert!(!works(&app, &two).await && !works(&app, &four).await);
    app.refresh(&app.b, field(&two, "refresh_token"))
        .await
        .assert_problem(401, "invalid_token");
    assert_eq!(
        session_ids(&app, &app.b, field(&one, "access_token"))
            .await
            .len(),
        1
    );

    // Global: all of them; a login right after (the same second) works.
    let five = sign_in_as(&app, &phone, "five").await;
    assert_eq!(logout(five.clone(), "?scope=global").await.status, 200);
    assert!(!works(&app, &one).await && !works(&app, &five).await);
    app.refresh(&app.a, field(&one, "refresh_token"))
        .await
        .assert_problem(401, "invalid_token");
    let six = sign_in_as(&app, &phone, "six").await;
    assert!(works(&app, &six).await);
    assert_eq!(
        session_ids(&app, &app.a, field(&six, "access_token"))
            .await
            .len(),
        1
    );
    let refreshed = app.refresh(&app.b, field(&six, "refresh_token")).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
}

async fn admin_api_takes_only_its_own_keys(backend: Backend) {
    // Off without ADMIN_API_KEYS: 404 with or without a key.
    let off = spawn_app(backend).await;
    for key in [None, Some(KEY)] {
        off.call(&off.a, Method::GET, "/admin/v1/users", None, key)
            .await
            .assert_problem(404, "not_found");
    }

    let app = admin_app(backend).await;
    let user = app.sign_in(&unique_phone()).await;
    let user_access = field(&user, "access_token");
    // Missing, wrong, or a user's access token: the same 401, no hint which.
    let mut details = Vec::new();
    for key in [
        None,
        Some("admin-key-0123456789abcdef012345678X"),
        Some(user_access),
    ] {
        let reply = app
            .call(&app.b, Method::GET, "/admin/v1/users", None, key)
            .await;
        reply.assert_problem(401, "unauthorized");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        details.push(reply.body["detail"].clone());
    }
    assert!(details.windows(2).all(|w| w[0] == w[1]), "{details:?}");
    // Both configured keys work; an admin key is no user token.
    let listed = admin(&app, &app.a, Method::GET, "/admin/v1/users").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let other = app
        .call(
            &app.a,
            Method::GET,
            "/admin/v1/users",
            None,
            Some("other-key-000000000000000000"),
        )
        .await;
    assert_eq!(other.status, 200);
    app.me(&app.a, KEY)
        .await
        .assert_problem(401, "invalid_token");
    // Unknown or malformed user ids: 404.
    for id in ["0193f3a0-7c1e-7d2a-9b4c-5e6f7a8b9c0d", "not-a-uuid"] {
        admin(&app, &app.a, Method::GET, &format!("/admin/v1/users/{id}"))
            .await
            .assert_problem(404, "not_found");
        admin(
            &app,
            &app.a,
            Method::POST,
            &format!("/admin/v1/users/{id}/block"),
        )
        .await
        .assert_problem(404, "not_found");
    }
}

async fn blocking_stops_codes_logins_and_every_session(backend: Backend) {
    let app = admin_app(backend).await;
    let phone = unique_phone();
    let first = sign_in_as(&app, &phone, "one").await;
    let second = sign_in_as(&app, &phone, "two").await;
    let id = first["user"]["id"].as_str().unwrap().to_string();
    // A code requested before the block.
    let pending = app.login_code(&app.a, &phone).await;

    let blocked = admin(
        &app,
        &app.a,
        Method::POST,
        &format!("/admin/v1/users/{id}/block"),
    )
    .await;
    assert_eq!(blocked.status, 200, "{}", blocked.body);
    assert!(blocked.body["blocked_at"].is_string());

    // Every session died on both replicas at once.
    assert!(!works(&app, &first).await && !works(&app, &second).await);
    app.refresh(&app.b, field(&second, "refresh_token"))
        .await
        .assert_problem(403, "user_blocked");
    // The code sent before the block opens no session.
    app.verify(&app.b, &phone, &pending)
        .await
        .assert_problem(403, "user_blocked");
    // A login is answered as usual, but no code is stored or sent.
    let login = app.login(&app.b, &phone).await;
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(login.body.get("otp_code").is_none(), "{}", login.body);
    assert_eq!(login.body["phone"], phone.as_str());
    // The same channel as for any number.
    let other = app.login(&app.a, &unique_phone()).await;
    assert_eq!(login.body["channel"], other.body["channel"]);

    let detail = admin(&app, &app.b, Method::GET, &format!("/admin/v1/users/{id}")).await;
    assert_eq!(detail.status, 200);
    assert!(detail.body["user"]["blocked_at"].is_string());
    assert_eq!(detail.body["sessions"], json!([]));

    // Unblocked: codes and logins work again; the old sessions stay revoked.
    let unblocked = admin(
        &app,
        &app.b,
        Method::POST,
        &format!("/admin/v1/users/{id}/unblock"),
    )
    .await;
    assert_eq!(unblocked.status, 200);
    assert!(unblocked.body["blocked_at"].is_null());
    let code = loop {
        // The login above started a resend cooldown; wait it out only if there is one.
        let reply = app.login(&app.a, &phone).await;
        if reply.status == 200 {
            break reply.body["otp_code"]
                .as_str()
                .expect("a code again")
                .to_string();
        }
        reply.assert_problem(429, "rate_limited");
        let wait: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(wait.min(120))).await;
    };
    let again = app.verify(&app.b, &phone, &code).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["user"]["id"], id.as_str());
    assert!(works(&app, &again.body).await);
    assert!(!works(&app, &first).await);
}

async fn deleting_a_user_ends_them_and_frees_the_number(backend: Backend) {
    let app = admin_app(backend).await;
    let phone = unique_phone();
    let tokens = app.sign_in(&phone).await;
    let id = tokens["user"]["id"].as_str().unwrap().to_string();
    let path = format!("/admin/v1/users/{id}");
    let deleted = admin(&app, &app.a, Method::DELETE, &path).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    assert!(!works(&app, &tokens).await);
    app.refresh(&app.b, field(&tokens, "refresh_token"))
        .await
        .assert_problem(401, "invalid_token");
    admin(&app, &app.b, Method::GET, &path)
        .await
        .assert_problem(404, "not_found");
    admin(&app, &app.b, Method::DELETE, &path)
        .await
        .assert_problem(404, "not_found");
    // The number signs up again as a new user.
    let code = loop {
        let reply = app.login(&app.a, &phone).await;
        if reply.status == 200 {
            break reply.body["otp_code"].as_str().unwrap().to_string();
        }
        reply.assert_problem(429, "rate_limited");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    let again = app.verify(&app.b, &phone, &code).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_ne!(again.body["user"]["id"], id.as_str());
}

async fn admin_revokes_all_sessions_and_the_user_logs_in_again(backend: Backend) {
    let app = admin_app(backend).await;
    let phone = unique_phone();
    let one = sign_in_as(&app, &phone, "one").await;
    let two = sign_in_as(&app, &phone, "two").await;
    let id = one["user"]["id"].as_str().unwrap().to_string();
    let detail = admin(&app, &app.a, Method::GET, &format!("/admin/v1/users/{id}")).await;
    assert_eq!(
        detail.body["sessions"].as_array().map(Vec::len),
        Some(2),
        "{}",
        detail.body
    );
    let path = format!("/admin/v1/users/{id}/sessions");
    assert_eq!(admin(&app, &app.a, Method::DELETE, &path).await.status, 204);
    assert!(!works(&app, &one).await && !works(&app, &two).await);
    let three = sign_in_as(&app, &phone, "three").await;
    assert!(works(&app, &three).await);
    let detail = admin(&app, &app.b, Method::GET, &format!("/admin/v1/users/{id}")).await;
    let sessions = detail.body["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["device_name"], "three");
}

async fn users_are_searched_and_paged(backend: Backend) {
    let app = admin_app(backend).await;
    // Five numbers sharing a prefix no other test uses in this (fresh) database.
    let mut ids = Vec::new();
    for i in 0..5 {
        let tokens = app.sign_in(&format!("+9198765{:05}", 10 + i)).await;
        ids.push(tokens["user"]["id"].as_str().unwrap().to_string());
    }
    let other = app.sign_in("+14155552671").await;
    // Newest first, two per page, through every page.
    let mut seen = Vec::new();
    let mut path = "/admin/v1/users?phone=%2B9198765&limit=2".to_string();
    loop {
        let page = admin(&app, &app.a, Method::GET, &path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let users = page.body["users"].as_array().unwrap();
        assert!(users.len() <= 2);
        seen.extend(users.iter().map(|u| u["id"].as_str().unwrap().to_string()));
        match page.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/admin/v1/users?phone=9198765&limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    // Blocked filter.
    let blocked_id = &ids[2];
    admin(
        &app,
        &app.a,
        Method::POST,
        &format!("/admin/v1/users/{blocked_id}/block"),
    )
    .await;
    let only = admin(&app, &app.b, Method::GET, "/admin/v1/users?blocked=true").await;
    let only: Vec<&str> = only.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(only, vec![blocked_id.as_str()]);
    let unblocked = admin(
        &app,
        &app.b,
        Method::GET,
        "/admin/v1/users?blocked=false&limit=100",
    )
    .await;
    assert_eq!(unblocked.body["users"].as_array().unwrap().len(), 5);
    assert_eq!(unblocked.body["users"][0]["id"], other["user"]["id"]);

    // Time ranges: nobody was created in the future; everybody logged in before it.
    let future = "2099-01-01T00:00:00Z";
    let none = admin(
        &app,
        &app.a,
        Method::GET,
        &format!("/admin/v1/users?created_after={future}"),
    )
    .await;
    assert_eq!(none.body["users"], json!([]));
    let all = admin(
        &app,
        &app.a,
        Method::GET,
        &format!("/admin/v1/users?last_login_before={future}&limit=100"),
    )
    .await;
    assert_eq!(all.body["users"].as_array().unwrap().len(), 6);

    // Bad parameters: 400.
    for bad in [
        "/admin/v1/users?cursor=not-a-cursor",
        "/admin/v1/users?limit=0",
        "/admin/v1/users?limit=101",
        "/admin/v1/users?phone=%2B91%25",
        "/admin/v1/users?created_after=yesterday",
        "/admin/v1/users?blocked=maybe",
    ] {
        let reply = admin(&app, &app.a, Method::GET, bad).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json"),
            "{bad}"
        );
    }
}

async fn deleting_ones_own_account_needs_a_recent_login(backend: Backend) {
    let keys = format!("other-key-000000000000000000,{KEY}");
    let mut vars = LIMITS.to_vec();
    vars.push(("ADMIN_API_KEYS", &keys));
    vars.push(("REAUTH_MAX_AGE_SECONDS", "2"));
    let app = spawn_app_with(backend, &vars).await;
    let phone = unique_phone();
    let old = app.sign_in(&phone).await;
    let id = old["user"]["id"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let delete = |tokens: Value| {
        let app = &app;
        async move {
            app.call(
                &app.b,
                Method::DELETE,
                "/api/auth/me",
                None,
                Some(field(&tokens, "access_token")),
            )
            .await
        }
    };
    // The login is too old, and a refresh does not make it new.
    delete(old.clone())
        .await
        .assert_problem(403, "reauthentication_required");
    let refreshed = app.refresh(&app.a, field(&old, "refresh_token")).await;
    assert_eq!(refreshed.status, 200);
    delete(refreshed.body.clone())
        .await
        .assert_problem(403, "reauthentication_required");
    // A fresh code: deleted, everywhere.
    let fresh = app.sign_in(&phone).await;
    let deleted = delete(fresh.clone()).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    assert!(!works(&app, &fresh).await && !works(&app, &refreshed.body).await);
    admin(&app, &app.a, Method::GET, &format!("/admin/v1/users/{id}"))
        .await
        .assert_problem(404, "not_found");
    let again = app.sign_in(&phone).await;
    assert_ne!(again["user"]["id"], id.as_str());
}

async fn a_phone_change_moves_the_account_to_the_new_number(backend: Backend) {
    let app = app(backend).await;
    let (old_phone, new_phone) = (unique_phone(), unique_phone());
    let other = app.sign_in(&unique_phone()).await;
    let first = sign_in_as(&app, &old_phone, "phone").await;
    let second = sign_in_as(&app, &old_phone, "tablet").await;
    let id = first["user"]["id"].as_str().unwrap().to_string();
    let access = field(&second, "access_token").to_string();
    let call = |path: &'static str, body: Value| {
        let (app, access) = (&app, access.clone());
        async move {
            app.call(&app.a, Method::POST, path, Some(body), Some(&access))
                .await
        }
    };

    // Unauthenticated: 401. The account's own number: 422 after the code.
    app.call(
        &app.a,
        Method::POST,
        "/api/auth/phone",
        Some(json!({"phone": new_phone})),
        None,
    )
    .await
    .assert_problem(401, "unauthorized");
    let sent = call("/api/auth/phone", json!({ "phone": old_phone })).await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let code = sent.body["otp_code"].as_str().unwrap().to_string();
    call(
        "/api/auth/phone/verify",
        json!({ "phone": old_phone, "otp_code": code }),
    )
    .await
    .assert_problem(422, "invalid_field");

    // The number of another account: 409, which account is not said; nothing moved.
    let taken_phone = other["user"]["phone"].as_str().unwrap().to_string();
    let sent = call("/api/auth/phone", json!({ "phone": taken_phone })).await;
    let code = sent.body["otp_code"].as_str().unwrap().to_string();
    let taken = call(
        "/api/auth/phone/verify",
        json!({ "phone": taken_phone, "otp_code": code }),
    )
    .await;
    taken.assert_problem(409, "phone_taken");
    assert!(
        !taken
            .body
            .to_string()
            .contains(other["user"]["id"].as_str().unwrap())
    );

    // A wrong code counts as one; the right one moves the account and, on request, signs the
    // other sessions out.
    let sent = call("/api/auth/phone", json!({ "phone": new_phone })).await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let code = sent.body["otp_code"].as_str().unwrap().to_string();
    let wrong = if code == "000000" { "000001" } else { "000000" };
    call(
        "/api/auth/phone/verify",
        json!({ "phone": new_phone, "otp_code": wrong }),
    )
    .await
    .assert_problem(400, "invalid_otp");
    let moved = call(
        "/api/auth/phone/verify",
        json!({ "phone": new_phone, "otp_code": code, "revoke_other_sessions": true }),
    )
    .await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(moved.body["phone"], new_phone.as_str());
    assert_eq!(moved.body["id"], id.as_str());
    assert!(works(&app, &second).await);
    assert!(!works(&app, &first).await);
    let me = app.me(&app.b, &access).await;
    assert_eq!(me.body["phone"], new_phone.as_str());
    // The code was used once.
    call(
        "/api/auth/phone/verify",
        json!({ "phone": new_phone, "otp_code": code }),
    )
    .await
    .assert_problem(400, "otp_expired");

    // The new number logs into the account; the old one is a new user now.
    let again = app.sign_in(&new_phone).await;
    assert_eq!(again["user"]["id"], id.as_str());
    let fresh = app.sign_in(&old_phone).await;
    assert_ne!(fresh["user"]["id"], id.as_str());
}
