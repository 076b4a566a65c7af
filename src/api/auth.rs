//! `/api/auth/*`: login by code, token refresh, the current user, logout.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::auth::Bearer;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Form, Json};
use poem_openapi::types::Example;
use poem_openapi::{ApiRequest, ApiResponse, Enum, Object, OpenApi, SecurityScheme};
use uuid::Uuid;

use super::ApiTags;
use super::body::Body;
use super::oauth::OAuthFails;
use super::problem::{Fails, failures, headers};
use super::text::{
    AppAttestText, AttestChallengeText, CaptchaTokenText, DeviceNameText, IntegrityTokenText,
    LocaleText, OtpText, PhoneText, Text, TokenText,
};
use crate::auth::captcha::CaptchaInput;
use crate::auth::sessions::{ClientInfo, LogoutScope, SessionView};
use crate::auth::{AuthService, LoggedIn};
use crate::db::{identity, user};
use crate::domain::channel::Channel;
use crate::domain::net::ClientIp;

/// Phone login endpoints.
pub struct AuthApi {
    pub(crate) auth: Arc<AuthService>,
}

/// `Authorization: Bearer <access token>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT")]
pub struct BearerAuth(Bearer);

/// A channel a client may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum RequestedChannel {
    /// Text message.
    Sms,
    /// WhatsApp message.
    Whatsapp,
    /// Telegram message (needs a linked Telegram account).
    Telegram,
}

impl From<RequestedChannel> for Channel {
    fn from(c: RequestedChannel) -> Self {
        match c {
            RequestedChannel::Sms => Channel::Sms,
            RequestedChannel::Whatsapp => Channel::Whatsapp,
            RequestedChannel::Telegram => Channel::Telegram,
        }
    }
}

/// The channel that delivered a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum DeliveredChannel {
    /// Text message.
    Sms,
    /// WhatsApp message.
    Whatsapp,
    /// Telegram message.
    Telegram,
    /// Development only: the code was written to the server log.
    Log,
}

impl From<Channel> for DeliveredChannel {
    fn from(c: Channel) -> Self {
        match c {
            Channel::Sms => DeliveredChannel::Sms,
            Channel::Whatsapp => DeliveredChannel::Whatsapp,
            Channel::Telegram => DeliveredChannel::Telegram,
            Channel::Log => DeliveredChannel::Log,
        }
    }
}

/// Ask for a one-time code.
#[derive(Debug, Object)]
#[oai(example)]
pub struct LoginRequest {
    /// Phone number with country code: `+919876543210`, `919876543210`, `+91 98765 43210` or
    /// `0091…` (national numbers only when the server sets `DEFAULT_REGION`).
    pub phone: PhoneText,
    /// Delivery channel; the server's default when absent or null.
    #[oai(nullable)]
    pub channel: Option<RequestedChannel>,
    /// The token of the captcha the user solved (Cloudflare Turnstile, hCaptcha or reCAPTCHA,
    /// as the server's `CAPTCHA_PROVIDER`): required when the server enforces a captcha
    /// (otherwise 403 `captcha_failed`), ignored when it has none. Single-use: solve the
    /// captcha again for each request. Absent or null: no token.
    #[oai(nullable, skip_serializing_if_is_none)]
    pub captcha_token: Option<CaptchaTokenText>,
    /// Android apps: a Google Play Integrity token requested with `requestHash` (or `nonce`)
    /// set to base64url, without padding, of SHA-256 of `otpgate-login:` followed by the number
    /// in E.164 (`otpgate-login:+919876543210`). With the server's `PLAY_INTEGRITY_MODE=enforce`,
    /// a passing token needs no captcha and a failing one is 403 `integrity_failed`.
    /// Single-use. Absent or null: no token (the captcha gate decides, if the server has one).
    #[oai(nullable, skip_serializing_if_is_none)]
    pub integrity_token: Option<IntegrityTokenText>,
    /// iOS apps: the App Attest key id (base64, as `DCAppAttestService.generateKey` gave
    /// it) of a key attested at `POST /api/auth/app-attest/keys`, with `app_attest_assertion`.
    #[oai(nullable, skip_serializing_if_is_none)]
    pub app_attest_key_id: Option<AppAttestText>,
    /// iOS apps: an App Attest assertion (base64) made by that key with `clientDataHash` =
    /// SHA-256 of `otpgate-login:`, the number in E.164, `:` and `app_attest_challenge`
    /// (`otpgate-login:+919876543210:1796025600.q8XG…`). With the server's
    /// `APP_ATTEST_MODE=enforce`, a passing assertion needs no captcha, a failing one is 403
    /// `integrity_failed` and a key the server does not know 403 `attestation_failed`. Each
    /// assertion works once.
    #[oai(nullable, skip_serializing_if_is_none)]
    pub app_attest_assertion: Option<AppAttestText>,
    /// iOS apps: a challenge from `POST /api/auth/app-attest/challenge` (at most 5 minutes
    /// old, used once), the end of the assertion's client data.
    #[oai(nullable, skip_serializing_if_is_none)]
    pub app_attest_challenge: Option<AttestChallengeText>,
    /// The language of the code message, a BCP 47 tag such as `es`, `pt-BR` or `hi`. Without it
    /// (or when the server has no template for it) the request's `Accept-Language`, then the
    /// number's country, then the server's default decide. Never an error.
    #[oai(nullable, skip_serializing_if_is_none)]
    pub locale: Option<LocaleText>,
}

/// A code is on its way.
#[derive(Debug, Object)]
#[oai(example)]
pub struct LoginResponse {
    /// Human-readable confirmation.
    pub message: String,
    /// The phone number in E.164.
    pub phone: String,
    /// The channel that delivered the code.
    pub channel: DeliveredChannel,
    /// Seconds until the code expires.
    pub expires_in: u64,
    /// Seconds until another code may be requested.
    pub resend_after: u64,
    /// The code itself: only when the server runs with `EXPOSE_OTP=true` (development, tests).
    #[oai(skip_serializing_if_is_none)]
    pub otp_code: Option<String>,
}

/// Login answer, with the quota state in IETF ratelimit-headers fields.
#[derive(ApiResponse)]
pub enum LoginReply {
    /// The code is on its way.
    #[oai(status = 200)]
    Sent(
        Json<LoginResponse>,
        /// The quotas this send counts against: `"otp-phone";q=5;w=3600, …`.
        #[oai(header = "RateLimit-Policy")]
        Option<String>,
        /// What is left of each: `"otp-phone";r=4;t=720, …`.
        #[oai(header = "RateLimit")]
        Option<String>,
    ),
}

impl LoginReply {
    /// The answer to a code on its way (a login, or the start of a number change).
    fn sent(started: crate::auth::LoginStarted) -> Self {
        debug_assert!(
            started.early_receipt.is_none(),
            "AuthService::spawn_fallback first"
        );
        let (policy, current) = headers(&started.quotas.0, &started.quotas.1).unzip();
        LoginReply::Sent(
            Json(LoginResponse {
                message: "OTP sent successfully".into(),
                phone: started.phone.as_str().to_string(),
                channel: started.channel.into(),
                expires_in: started.expires_in,
                resend_after: started.resend_after,
                otp_code: started.exposed_code,
            }),
            policy,
            current,
        )
    }
}

impl Example for LoginRequest {
    fn example() -> Self {
        LoginRequest {
            phone: PhoneText("+919876543210".into()),
            channel: Some(RequestedChannel::Sms),
            captcha_token: None,
            integrity_token: None,
            app_attest_key_id: None,
            app_attest_assertion: None,
            app_attest_challenge: None,
            locale: Some(LocaleText("en".into())),
        }
    }
}

impl Example for LoginResponse {
    fn example() -> Self {
        LoginResponse {
            message: "OTP sent successfully".into(),
            phone: "+919876543210".into(),
            channel: DeliveredChannel::Sms,
            expires_in: 300,
            resend_after: 60,
            otp_code: None,
        }
    }
}

impl Example for VerifyRequest {
    fn example() -> Self {
        VerifyRequest {
            phone: PhoneText("+919876543210".into()),
            otp_code: OtpText("123456".into()),
            device_name: Some(DeviceNameText("Asha's Pixel 8".into())),
        }
    }
}

impl Example for RefreshRequest {
    fn example() -> Self {
        RefreshRequest {
            refresh_token: TokenText(
                "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl".into(),
            ),
        }
    }
}

impl Example for LogoutResponse {
    fn example() -> Self {
        LogoutResponse {
            status: "logged_out".into(),
        }
    }
}

fn client_ip(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions().get::<ClientIp>().map(|c| c.0)
}

/// What a request tells about the client that opens a session.
pub(crate) fn client_info(req: &Request, device_name: Option<String>) -> ClientInfo {
    ClientInfo {
        ip: client_ip(req),
        user_agent: req
            .headers()
            .get(poem::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        device_name,
        locale: None,
        accept_language: None,
        admission: None,
    }
}

/// [`client_info`] of a request that sends a code: with the language it asks the message in
/// (its `locale` field, its `Accept-Language`).
fn sender_info(req: &Request, locale: Option<&LocaleText>) -> ClientInfo {
    ClientInfo {
        locale: locale.map(|l| l.0.clone()),
        accept_language: req
            .headers()
            .get(poem::http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        admission: req
            .extensions()
            .get::<crate::domain::admission::Admission>()
            .cloned(),
        ..client_info(req, None)
    }
}

/// Exchange a code for tokens.
#[derive(Debug, Object)]
#[oai(example)]
pub struct VerifyRequest {
    /// The phone number the code was sent to (any accepted form).
    pub phone: PhoneText,
    /// The digits received.
    pub otp_code: OtpText,
    /// A name for this device, shown in the session list (`GET /api/auth/sessions`).
    #[oai(skip_serializing_if_is_none)]
    pub device_name: Option<DeviceNameText>,
}

/// Exchange a refresh token for a new pair.
#[derive(Debug, Object)]
#[oai(example)]
pub struct RefreshRequest {
    /// The refresh token; it is spent by this call.
    pub refresh_token: TokenText,
}

/// An OAuth 2.0 refresh request (RFC 6749 §6), as AppAuth and other OAuth clients send it.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct TokenGrant {
    /// Must be `refresh_token` (the only grant this endpoint serves; codes are verified at
    /// `/api/auth/verify-otp`).
    pub grant_type: Text,
    /// The refresh token; it is spent by this call.
    pub refresh_token: TokenText,
    /// Ignored (sessions carry no scopes).
    #[serde(default)]
    pub scope: Option<Text>,
    /// Ignored (public clients; there is no client authentication).
    #[serde(default)]
    pub client_id: Option<Text>,
}

impl Example for TokenGrant {
    fn example() -> Self {
        TokenGrant {
            grant_type: Text("refresh_token".into()),
            refresh_token: RefreshRequest::example().refresh_token,
            scope: None,
            client_id: None,
        }
    }
}

/// The token endpoint's body: form-encoded (RFC 6749) or JSON.
#[derive(Debug, ApiRequest)]
pub enum TokenRequest {
    /// `grant_type=refresh_token&refresh_token=…`
    Form(Form<TokenGrant>),
    /// The same fields as a JSON object.
    Json(Body<TokenGrant>),
}

/// A user as the API shows it.
#[derive(Debug, Object)]
#[oai(example)]
pub struct User {
    /// User id (UUID v7).
    pub id: Uuid,
    /// Phone number in E.164, when the user has one.
    pub phone: Option<String>,
    /// First login.
    pub created_at: DateTime<Utc>,
    /// Latest login.
    pub last_login_at: Option<DateTime<Utc>>,
}

impl From<user::Model> for User {
    fn from(u: user::Model) -> Self {
        User {
            id: u.id,
            phone: u.phone,
            created_at: u.created_at,
            last_login_at: u.last_login_at,
        }
    }
}

/// An external account linked to the user.
#[derive(Debug, Object)]
pub struct Identity {
    /// `telegram` or `whatsapp`.
    pub provider: String,
    /// The provider's account id.
    pub subject: String,
    /// When it was linked.
    pub created_at: DateTime<Utc>,
}

impl From<identity::Model> for Identity {
    fn from(i: identity::Model) -> Self {
        Identity {
            provider: i.provider,
            subject: i.subject,
            created_at: i.created_at,
        }
    }
}

/// The current user with linked identities.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Me {
    /// User id (UUID v7).
    pub id: Uuid,
    /// Phone number in E.164, when the user has one.
    pub phone: Option<String>,
    /// First login.
    pub created_at: DateTime<Utc>,
    /// Latest login.
    pub last_login_at: Option<DateTime<Utc>>,
    /// Linked external accounts.
    pub identities: Vec<Identity>,
}

/// A session's tokens: after a login, or after a refresh (the presented refresh token is then
/// spent).
#[derive(Debug, Object)]
#[oai(example)]
pub struct TokenResponse {
    /// JWT access token: send as `Authorization: Bearer …`.
    pub access_token: String,
    /// Refresh token: exchange once at `/api/auth/refresh-token` or `/api/auth/token`.
    pub refresh_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Access token lifetime in seconds.
    pub expires_in: u64,
    /// When the access token expires (Unix seconds).
    pub expires_at: u64,
    /// The logged-in user.
    pub user: User,
}

impl From<LoggedIn> for TokenResponse {
    fn from(session: LoggedIn) -> Self {
        TokenResponse {
            access_token: session.tokens.access_token,
            refresh_token: session.tokens.refresh_token,
            token_type: "bearer".into(),
            expires_in: session.tokens.expires_in,
            expires_at: session.tokens.expires_at,
            user: session.user.into(),
        }
    }
}

impl Example for User {
    fn example() -> Self {
        let at = DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default();
        User {
            id: Uuid::from_u128(0x0193_f3a0_7c1e_7d2a_9b4c_5e6f_7a8b_9c0d),
            phone: Some("+919876543210".into()),
            created_at: at,
            last_login_at: Some(at),
        }
    }
}

impl Example for Me {
    fn example() -> Self {
        let user = User::example();
        Me {
            id: user.id,
            phone: user.phone,
            created_at: user.created_at,
            last_login_at: user.last_login_at,
            identities: vec![Identity {
                provider: "telegram".into(),
                subject: "123456789".into(),
                created_at: user.created_at,
            }],
        }
    }
}

impl Example for TokenResponse {
    fn example() -> Self {
        TokenResponse {
            access_token: "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIwMTkzZjNhMC03YzFlLTdkMmEtOWI0Yy01ZTZmN2E4YjljMGQifQ.c2lnbmF0dXJl".into(),
            refresh_token: RefreshRequest::example().refresh_token.0,
            token_type: "bearer".into(),
            expires_in: 1800,
            expires_at: 1_767_227_400,
            user: User::example(),
        }
    }
}

/// The session is over.
#[derive(Debug, Object)]
#[oai(example)]
pub struct LogoutResponse {
    /// Always `logged_out`.
    pub status: String,
}

failures! {
    /// `POST /api/auth/login`.
    LoginFailures: [
        "invalid_phone",
        "country_not_allowed",
        "unsupported_number",
        "channel_unavailable",
        "captcha_failed",
        "integrity_failed",
        "attestation_failed",
        "sends_paused",
        "store_unavailable",
        "database_unavailable",
        "captcha_unavailable",
        "integrity_unavailable",
        "delivery_failed",
    ];
    /// `POST /api/auth/app-attest/challenge`.
    ChallengeFailures { BODY = false }: [
        "not_found",
    ];
    /// `POST /api/auth/app-attest/keys`.
    AttestKeyFailures: [
        "attestation_failed",
        "not_found",
        "store_unavailable",
        "database_unavailable",
    ];
    /// `POST /api/auth/verify-otp`.
    VerifyFailures: [
        "invalid_otp",
        "otp_expired",
        "invalid_phone",
        "too_many_attempts",
        "user_blocked",
        "store_unavailable",
        "database_unavailable",
        "verifier_unavailable",
    ];
    /// `POST /api/auth/refresh-token`.
    RefreshFailures: [
        "invalid_token",
        "token_reused",
        "user_blocked",
        "store_unavailable",
        "database_unavailable",
    ];
    /// `GET /api/auth/me`.
    MeFailures { BODY = false }: [
        "unauthorized",
        "invalid_token",
        "store_unavailable",
        "database_unavailable",
    ];
    /// `POST /api/auth/logout`.
    LogoutFailures { BODY = false }: [
        "invalid_request",
        "unauthorized",
        "invalid_token",
        "store_unavailable",
        "payload_too_large",
        "request_timeout",
    ];
    /// `DELETE /api/auth/me`.
    DeleteMeFailures { BODY = false }: [
        "unauthorized",
        "invalid_token",
        "reauthentication_required",
        "store_unavailable",
        "database_unavailable",
    ];
    /// `POST /api/auth/phone`.
    PhoneChangeFailures: [
        "unauthorized",
        "invalid_token",
        "reauthentication_required",
        "invalid_phone",
        "country_not_allowed",
        "unsupported_number",
        "channel_unavailable",
        "captcha_failed",
        "integrity_failed",
        "attestation_failed",
        "sends_paused",
        "store_unavailable",
        "database_unavailable",
        "captcha_unavailable",
        "integrity_unavailable",
        "delivery_failed",
    ];
    /// `POST /api/auth/phone/verify`.
    PhoneVerifyFailures: [
        "unauthorized",
        "invalid_token",
        "reauthentication_required",
        "invalid_otp",
        "otp_expired",
        "invalid_phone",
        "too_many_attempts",
        "phone_taken",
        "store_unavailable",
        "database_unavailable",
        "verifier_unavailable",
    ];
    /// `GET /api/auth/sessions`.
    SessionsFailures { BODY = false }: [
        "unauthorized",
        "invalid_token",
        "store_unavailable",
    ];
    /// `DELETE /api/auth/sessions/{id}`.
    RevokeSessionFailures { BODY = false }: [
        "unauthorized",
        "invalid_token",
        "not_found",
        "store_unavailable",
    ];
}

#[OpenApi(prefix_path = "/api/auth", tag = "ApiTags::Auth")]
impl AuthApi {
    /// Send a one-time code
    ///
    /// Sends a code to the phone over the requested channel. A second request for the same
    /// phone within the resend window gets 429 with `Retry-After`. The answer is the same for
    /// known and new numbers. When the server has a captcha gate (`CAPTCHA_PROVIDER`), send the
    /// solved captcha's `captcha_token`: a missing or failed one is 403 `captcha_failed`, and a
    /// captcha provider that does not answer is 503 `captcha_unavailable` (unless the server
    /// lets logins through then); either way no code is sent.
    #[oai(path = "/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        req: &Request,
        body: Body<LoginRequest>,
    ) -> Result<LoginReply, Fails<LoginFailures>> {
        // Boxed here, once: the service's future (kilobytes: the store's and the database's
        // futures inside) would otherwise be copied into every boxed layer of the router.
        let client = sender_info(req, body.locale.as_ref());
        let mut started = Box::pin(self.auth.login(
            &body.phone,
            body.channel.map(Channel::from),
            &client,
            CaptchaInput::Token {
                captcha: body.captcha_token.as_deref(),
                integrity: body.integrity_token.as_deref(),
                app_attest: app_assertion(
                    body.app_attest_key_id.as_deref(),
                    body.app_attest_assertion.as_deref(),
                    body.app_attest_challenge.as_deref(),
                ),
            },
        ))
        .await?;
        self.auth.spawn_fallback(&mut started);
        Ok(LoginReply::sent(started))
    }

    /// Verify a code and log in
    ///
    /// A right code works once and opens a session; the user is created on first login.
    /// After too many wrong codes the code is burned and a new one must be requested.
    #[oai(path = "/verify-otp", method = "post", operation_id = "verifyOtp")]
    async fn verify_otp(
        &self,
        req: &Request,
        body: Body<VerifyRequest>,
    ) -> Result<Tokens, Fails<VerifyFailures>> {
        // Boxed once here, as in `login`.
        let client = client_info(req, body.device_name.as_ref().map(|d| d.0.clone()));
        let session = Box::pin(self.auth.verify(&body.phone, &body.otp_code, &client)).await?;
        Ok(Tokens::Issued(Json(session.into())))
    }

    /// Rotate a refresh token
    ///
    /// Spends the refresh token and returns a new pair with the user. Presenting a spent token
    /// again after the short grace window revokes the whole session (`token_reused`). Errors
    /// are problem documents; `/api/auth/token` does the same for OAuth 2.0 clients.
    #[oai(
        path = "/refresh-token",
        method = "post",
        operation_id = "refreshToken"
    )]
    async fn refresh_token(
        &self,
        req: &Request,
        body: Body<RefreshRequest>,
    ) -> Result<Tokens, Fails<RefreshFailures>> {
        let client = client_info(req, None);
        let session = Box::pin(self.auth.refresh(&body.refresh_token, &client)).await?;
        Ok(Tokens::Issued(Json(session.into())))
    }

    /// OAuth 2.0 token endpoint (refresh)
    ///
    /// RFC 6749 §6 for OAuth clients (AppAuth and the like): `grant_type=refresh_token` with
    /// the refresh token, form-encoded or as JSON. The answer is that of `/refresh-token`;
    /// errors are RFC 6749 §5.2 objects (`{"error": "invalid_grant", "error_description": …}`)
    /// rather than problem documents.
    #[oai(path = "/token", method = "post", operation_id = "token")]
    async fn token(&self, req: &Request, body: TokenRequest) -> Result<Tokens, OAuthFails> {
        let grant = match body {
            TokenRequest::Form(Form(grant)) | TokenRequest::Json(Body(grant)) => grant,
        };
        if grant.grant_type.0 != "refresh_token" {
            return Err(OAuthFails::unsupported_grant_type(&grant.grant_type));
        }
        let client = client_info(req, None);
        let session = Box::pin(self.auth.refresh(&grant.refresh_token, &client)).await?;
        Ok(Tokens::Issued(Json(session.into())))
    }

    /// The current user
    #[oai(path = "/me", method = "get", operation_id = "me")]
    async fn me(&self, auth: BearerAuth) -> Result<MeReply, Fails<MeFailures>> {
        let claims = self.auth.authenticate(&auth.0.token).await?;
        let (user, identities) = self.auth.me(&claims).await?;
        Ok(MeReply::Found(Json(Me {
            id: user.id,
            phone: user.phone,
            created_at: user.created_at,
            last_login_at: user.last_login_at,
            identities: identities.into_iter().map(Identity::from).collect(),
        })))
    }

    /// Log out
    ///
    /// Revokes the session: its access and refresh tokens are refused by every replica from
    /// the next request on.
    #[oai(path = "/logout", method = "post", operation_id = "logout")]
    async fn logout(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// `local` (default): this session; `others`: every other session of the user;
        /// `global`: all of them, this one included.
        scope: Query<Option<Scope>>,
    ) -> Result<LogoutReply, Fails<LogoutFailures>> {
        let claims = self.auth.authenticate(&auth.0.token).await?;
        let scope = match scope.0.unwrap_or(Scope::Local) {
            Scope::Local => LogoutScope::Local,
            Scope::Others => LogoutScope::Others,
            Scope::Global => LogoutScope::Global,
        };
        self.auth
            .logout(&claims, scope, &client_info(req, None))
            .await?;
        Ok(LogoutReply::LoggedOut(Json(LogoutResponse {
            status: "logged_out".into(),
        })))
    }

    /// Delete the caller's account
    ///
    /// Removes the user and their identities and revokes every session. Needs a session
    /// opened by a code within `REAUTH_MAX_AGE_SECONDS` (default 5 min): otherwise 403
    /// `reauthentication_required` — have the user log in again, then retry with the new token.
    #[oai(path = "/me", method = "delete", operation_id = "deleteMe")]
    async fn delete_me(
        &self,
        req: &Request,
        auth: BearerAuth,
    ) -> Result<RevokedReply, Fails<DeleteMeFailures>> {
        let claims = self.auth.authenticate(&auth.0.token).await?;
        self.auth
            .delete_me(&claims, &client_info(req, None))
            .await?;
        Ok(RevokedReply::Revoked)
    }

    /// Get an App Attest challenge
    ///
    /// iOS apps: a one-time challenge, valid `expires_in` seconds, to attest an App Attest key
    /// with (`attestKey` with `clientDataHash` = SHA-256 of the challenge's UTF-8 bytes) or to
    /// make the assertion of a code request with (see `app_attest_assertion` of `/login`). 404
    /// when the server has no App Attest gate (`APP_ATTEST_APP_ID`).
    #[oai(
        path = "/app-attest/challenge",
        method = "post",
        operation_id = "appAttestChallenge"
    )]
    async fn app_attest_challenge(&self) -> Result<ChallengeReply, Fails<ChallengeFailures>> {
        let challenge = self.auth.app_attest_challenge()?;
        Ok(ChallengeReply::Issued(Json(AttestChallengeResponse {
            challenge: challenge.challenge,
            expires_in: challenge.expires_in,
        })))
    }

    /// Attest an App Attest key
    ///
    /// iOS apps, once per key: the attestation Apple made for the key with a challenge from
    /// `/app-attest/challenge`. The certificate chain to Apple's App Attestation Root CA, the
    /// app id, the key id and the challenge (usable once) are checked, and the key is kept:
    /// 201, or 200 when it was attested before. Anything that does not verify is 403
    /// `attestation_failed`. Limited per client address like the Play Integrity checks.
    #[oai(
        path = "/app-attest/keys",
        method = "post",
        operation_id = "appAttestKey"
    )]
    async fn app_attest_key(
        &self,
        req: &Request,
        body: Body<AttestKeyRequest>,
    ) -> Result<AttestKeyReply, Fails<AttestKeyFailures>> {
        let client = client_info(req, None);
        let key = Box::pin(self.auth.attest_app_key(
            &body.key_id,
            &body.attestation,
            &body.challenge,
            &client,
        ))
        .await?;
        let answer = Json(AttestKeyResponse {
            key_id: key.key_id,
            environment: key.environment.to_string(),
        });
        Ok(if key.created {
            AttestKeyReply::Created(answer)
        } else {
            AttestKeyReply::Known(answer)
        })
    }

    /// Start a phone number change
    ///
    /// Sends a code to the new number (the answer is that of `/login`, the same whether or not
    /// the number has an account; with a captcha gate, `captcha_token` as for `/login`). Needs a
    /// recent login, as `DELETE /me` does.
    #[oai(path = "/phone", method = "post", operation_id = "changePhone")]
    async fn change_phone(
        &self,
        req: &Request,
        auth: BearerAuth,
        body: Body<PhoneChangeRequest>,
    ) -> Result<LoginReply, Fails<PhoneChangeFailures>> {
        let claims = self.auth.authenticate(&auth.0.token).await?;
        let client = sender_info(req, body.locale.as_ref());
        let mut started = Box::pin(self.auth.start_phone_change(
            &claims,
            &body.phone,
            body.channel.map(Channel::from),
            &client,
            CaptchaInput::Token {
                captcha: body.captcha_token.as_deref(),
                integrity: body.integrity_token.as_deref(),
                app_attest: app_assertion(
                    body.app_attest_key_id.as_deref(),
                    body.app_attest_assertion.as_deref(),
                    body.app_attest_challenge.as_deref(),
                ),
            },
        ))
        .await?;
        self.auth.spawn_fallback(&mut started);
        Ok(LoginReply::sent(started))
    }

    /// Confirm a phone number change
    ///
    /// With the code sent to the new number, the account moves there: its number and WhatsApp
    /// identity change, the old number is told by SMS (when SMS is configured), and with
    /// `revoke_other_sessions` every other session is signed out. A number that belongs to
    /// another account is 409 `phone_taken` (which account is not said).
    #[oai(
        path = "/phone/verify",
        method = "post",
        operation_id = "verifyPhoneChange"
    )]
    async fn verify_phone_change(
        &self,
        req: &Request,
        auth: BearerAuth,
        body: Body<PhoneVerifyRequest>,
    ) -> Result<MeReply, Fails<PhoneVerifyFailures>> {
        let claims = self.auth.authenticate(&auth.0.token).await?;
        let (user, identities) = Box::pin(self.auth.finish_phone_change(
            &claims,
            &body.phone,
            &body.otp_code,
            body.revoke_other_sessions,
            &client_info(req, None),
        ))
        .await?;
        Ok(MeReply::Found(Json(Me {
            id: user.id,
            phone: user.phone,
            created_at: user.created_at,
            last_login_at: user.last_login_at,
            identities: identities.into_iter().map(Identity::from).collect(),
        })))
    }

    /// The caller's sessions
    ///
    /// One entry per login (device) whose refresh token still works, newest first; `current`
    /// marks the session of the token making this request.
    #[oai(path = "/sessions", method = "get", operation_id = "listSessions")]
    async fn sessions(&self, auth: BearerAuth) -> Result<SessionsReply, Fails<SessionsFailures>> {
        let claims = self.auth.authenticate(&auth.0.token).await?;
        let sessions = self.auth.my_sessions(&claims).await?;
        Ok(SessionsReply::Found(Json(SessionList {
            sessions: sessions.into_iter().map(Session::from).collect(),
        })))
    }

    /// Revoke one of the caller's sessions
    ///
    /// Signs that device out: its access and refresh tokens are refused by every replica from
    /// the next request on. An id that is not one of the caller's standing sessions is 404.
    #[oai(
        path = "/sessions/:id",
        method = "delete",
        operation_id = "revokeSession"
    )]
    async fn revoke_session(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// The session id, from `GET /api/auth/sessions`.
        id: Path<String>,
    ) -> Result<RevokedReply, Fails<RevokeSessionFailures>> {
        let claims = self.auth.authenticate(&auth.0.token).await?;
        self.auth
            .revoke_my_session(&claims, &id.0, &client_info(req, None))
            .await?;
        Ok(RevokedReply::Revoked)
    }
}

/// The App Attest fields of a code request, when the app sent a key id or an assertion (empty
/// ones count as absent, as an empty `integrity_token` does).
fn app_assertion<'a>(
    key_id: Option<&'a str>,
    assertion: Option<&'a str>,
    challenge: Option<&'a str>,
) -> Option<crate::auth::app_attest::AppAssertion<'a>> {
    let key_id = key_id.filter(|t| !t.is_empty());
    let assertion = assertion.filter(|t| !t.is_empty());
    (key_id.is_some() || assertion.is_some()).then(|| crate::auth::app_attest::AppAssertion {
        key_id: key_id.unwrap_or_default(),
        assertion: assertion.unwrap_or_default(),
        challenge: challenge.unwrap_or_default(),
    })
}

/// A challenge for an App Attest key.
#[derive(ApiResponse)]
pub enum ChallengeReply {
    /// The challenge, usable once within `expires_in` seconds.
    #[oai(status = 200)]
    Issued(Json<AttestChallengeResponse>),
}

/// A challenge to attest an App Attest key with.
#[derive(Debug, Object)]
#[oai(example)]
pub struct AttestChallengeResponse {
    /// The challenge: attest with `clientDataHash` = SHA-256 of its UTF-8 bytes, then send it
    /// back unchanged with the attestation.
    pub challenge: String,
    /// Seconds it can be used (once).
    pub expires_in: u64,
}

/// An App Attest key and Apple's attestation of it.
#[derive(Debug, Object)]
#[oai(example)]
pub struct AttestKeyRequest {
    /// The key id (base64), as `DCAppAttestService.generateKey` gave it.
    pub key_id: AppAttestText,
    /// The attestation object (base64), as `attestKey` gave it.
    pub attestation: AppAttestText,
    /// The challenge from `POST /api/auth/app-attest/challenge` the attestation was made with.
    pub challenge: AttestChallengeText,
}

/// An attested key.
#[derive(Debug, Object)]
#[oai(example)]
pub struct AttestKeyResponse {
    /// The key id (standard base64).
    pub key_id: String,
    /// `production`, or `development` (a build run from Xcode; accepted only with the server's
    /// `APP_ATTEST_ENVIRONMENT=development`).
    pub environment: String,
}

impl Example for AttestChallengeResponse {
    fn example() -> Self {
        AttestChallengeResponse {
            challenge: "1796025600.q8XG0rJt3lQm2d1iS8n0Zw.4f1c2a9e3b4d4e5f8a7b9c0d1e2f3a4b".into(),
            expires_in: 300,
        }
    }
}

impl Example for AttestKeyRequest {
    fn example() -> Self {
        AttestKeyRequest {
            key_id: AppAttestText("SC86LZmoFbL/KxWfezr7ihgEdLHK8ZrDbTwMtAkBCbM=".into()),
            attestation: AppAttestText(
                "o2NmbXRvYXBwbGUtYXBwYXR0ZXN0Z2F0dFN0bXSiY3g1Y4JZAzgw".into(),
            ),
            challenge: AttestChallengeText(AttestChallengeResponse::example().challenge),
        }
    }
}

impl Example for AttestKeyResponse {
    fn example() -> Self {
        AttestKeyResponse {
            key_id: "SC86LZmoFbL/KxWfezr7ihgEdLHK8ZrDbTwMtAkBCbM=".into(),
            environment: "production".into(),
        }
    }
}

/// The key is kept.
#[derive(ApiResponse)]
pub enum AttestKeyReply {
    /// Attested now.
    #[oai(status = 201)]
    Created(Json<AttestKeyResponse>),
    /// Attested before; nothing changed.
    #[oai(status = 200)]
    Known(Json<AttestKeyResponse>),
}

/// Move the account to another number: a code is sent there.
#[derive(Debug, Object)]
#[oai(example)]
pub struct PhoneChangeRequest {
    /// The new number (any accepted form).
    pub phone: PhoneText,
    /// Delivery channel; the server's default when absent or null.
    #[oai(nullable)]
    pub channel: Option<RequestedChannel>,
    /// The solved captcha's token, as for `/login` (required when the server enforces one);
    /// absent or null: no token.
    #[oai(nullable, skip_serializing_if_is_none)]
    pub captcha_token: Option<CaptchaTokenText>,
    /// An Android app's Play Integrity token, as for `/login` (bound to the new number).
    #[oai(nullable, skip_serializing_if_is_none)]
    pub integrity_token: Option<IntegrityTokenText>,
    /// An iOS app's App Attest key id, as for `/login`.
    #[oai(nullable, skip_serializing_if_is_none)]
    pub app_attest_key_id: Option<AppAttestText>,
    /// An iOS app's App Attest assertion, as for `/login` (over the new number).
    #[oai(nullable, skip_serializing_if_is_none)]
    pub app_attest_assertion: Option<AppAttestText>,
    /// The challenge the assertion carries, as for `/login`.
    #[oai(nullable, skip_serializing_if_is_none)]
    pub app_attest_challenge: Option<AttestChallengeText>,
    /// The language of the code message, as for `/login`.
    #[oai(nullable, skip_serializing_if_is_none)]
    pub locale: Option<LocaleText>,
}

impl Example for PhoneChangeRequest {
    fn example() -> Self {
        PhoneChangeRequest {
            phone: PhoneText("+919812345678".into()),
            channel: None,
            captcha_token: None,
            integrity_token: None,
            app_attest_key_id: None,
            app_attest_assertion: None,
            app_attest_challenge: None,
            locale: None,
        }
    }
}

/// Confirm the new number with the code sent there.
#[derive(Debug, Object)]
#[oai(example)]
pub struct PhoneVerifyRequest {
    /// The new number, as sent to `/api/auth/phone`.
    pub phone: PhoneText,
    /// The digits received on the new number.
    pub otp_code: OtpText,
    /// Also sign out every other session of the account (default false).
    #[oai(default)]
    pub revoke_other_sessions: bool,
}

impl Example for PhoneVerifyRequest {
    fn example() -> Self {
        PhoneVerifyRequest {
            phone: PhoneText("+919812345678".into()),
            otp_code: OtpText("123456".into()),
            revoke_other_sessions: true,
        }
    }
}

/// Which sessions a logout ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum Scope {
    /// This session only.
    Local,
    /// Every other session of the user.
    Others,
    /// Every session of the user.
    Global,
}

/// One session (a refresh-token family: one device's login).
#[derive(Debug, Object)]
pub struct Session {
    /// Session id (the tokens' `sid`).
    pub id: String,
    /// When it was opened (the login).
    pub created_at: DateTime<Utc>,
    /// When its refresh token was last used (or its opening).
    pub last_used_at: DateTime<Utc>,
    /// The `User-Agent` it was opened with (absent when none was sent).
    #[oai(skip_serializing_if_is_none)]
    pub user_agent: Option<String>,
    /// The client's network at login (`203.0.113.0/24`, `2001:db8:1::/48`), or its address
    /// when the server keeps whole addresses (`SESSION_IP=full`); absent with `SESSION_IP=off`.
    #[oai(skip_serializing_if_is_none)]
    pub ip: Option<String>,
    /// The name the app gave the device at verify (absent when none was given).
    #[oai(skip_serializing_if_is_none)]
    pub device_name: Option<String>,
    /// Whether this is the session of the token making the request.
    pub current: bool,
}

impl From<SessionView> for Session {
    fn from(s: SessionView) -> Self {
        Session {
            id: s.id,
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            user_agent: s.user_agent,
            ip: s.ip,
            device_name: s.device_name,
            current: s.current,
        }
    }
}

/// The caller's sessions, newest first.
#[derive(Debug, Object)]
#[oai(example)]
pub struct SessionList {
    /// Sessions standing now.
    pub sessions: Vec<Session>,
}

impl Example for SessionList {
    fn example() -> Self {
        let at = DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default();
        SessionList {
            sessions: vec![Session {
                id: "0193f3a0-7c1e-4d2a-9b4c-5e6f7a8b9c0d".into(),
                created_at: at,
                last_used_at: at,
                user_agent: Some("MyApp/2.3 (Android 15)".into()),
                ip: Some("203.0.113.0/24".into()),
                device_name: Some("Asha's Pixel 8".into()),
                current: true,
            }],
        }
    }
}

/// The caller's sessions.
#[derive(ApiResponse)]
pub enum SessionsReply {
    /// Sessions standing now, newest first.
    #[oai(status = 200)]
    Found(Json<SessionList>),
}

/// Done: a session revoked, or the account deleted.
#[derive(ApiResponse)]
pub enum RevokedReply {
    /// Done on every replica: the tokens involved are refused from now on.
    #[oai(status = 204)]
    Revoked,
}

/// The current user.
#[derive(ApiResponse)]
pub enum MeReply {
    /// The user of the access token, with linked identities.
    #[oai(status = 200)]
    Found(Json<Me>),
}

/// Logout answer.
#[derive(ApiResponse)]
pub enum LogoutReply {
    /// The session is revoked on every replica.
    #[oai(status = 200)]
    LoggedOut(Json<LogoutResponse>),
}

/// A new or rotated session.
#[derive(ApiResponse)]
pub enum Tokens {
    /// The session's tokens and its user. Sent with `Cache-Control: no-store` and
    /// `Pragma: no-cache`.
    #[oai(status = 200)]
    Issued(Json<TokenResponse>),
}

/// The two operations every login makes, which [`crate::app`] calls without the router (its
/// layers cost more CPU than the operations' own parsing and rendering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotOperation {
    /// `POST /api/auth/login`.
    Login,
    /// `POST /api/auth/verify-otp`.
    Verify,
}

impl HotOperation {
    /// The paths, as the operations above declare them under the API's prefix.
    pub const LOGIN_PATH: &'static str = "/api/auth/login";
    /// See [`HotOperation::LOGIN_PATH`].
    pub const VERIFY_PATH: &'static str = "/api/auth/verify-otp";

    /// The operation `req` calls, when it is one of the two with a JSON body: `POST`, the exact
    /// path (no query string), a `Content-Type` the operation accepts. Anything else (including
    /// what the router would refuse) is left to the router.
    pub fn of(req: &Request) -> Option<Self> {
        if req.method() != poem::http::Method::POST || req.uri().query().is_some() {
            return None;
        }
        let op = match req.uri().path() {
            Self::LOGIN_PATH => Self::Login,
            Self::VERIFY_PATH => Self::Verify,
            _ => return None,
        };
        let json = req.content_type().is_some_and(
            <Body<LoginRequest> as poem_openapi::payload::Payload>::check_content_type,
        );
        json.then_some(op)
    }
}

impl AuthApi {
    /// Answers `op` for a request whose body is `data`, as its operation endpoint does: the
    /// same handler, the same response or error (rendered further up, as the router's are).
    /// `None` when the body does not parse: the router answers it then, with the error that
    /// says what is wrong.
    pub async fn call_hot(
        &self,
        op: HotOperation,
        req: &Request,
        data: &[u8],
    ) -> Option<poem::Result<poem::Response>> {
        use poem::IntoResponse;
        Some(match op {
            HotOperation::Login => {
                let body = super::body::parse::<LoginRequest>(data).ok()?;
                self.login(req, Body(body))
                    .await
                    .map(IntoResponse::into_response)
                    .map_err(Into::into)
            }
            HotOperation::Verify => {
                let body = super::body::parse::<VerifyRequest>(data).ok()?;
                self.verify_otp(req, Body(body))
                    .await
                    .map(IntoResponse::into_response)
                    .map_err(Into::into)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::HotOperation;

    fn request(method: poem::http::Method, uri: &str, content_type: Option<&str>) -> poem::Request {
        let mut builder = poem::Request::builder().method(method).uri_str(uri);
        if let Some(value) = content_type {
            builder = builder.content_type(value);
        }
        builder.finish()
    }

    #[test]
    fn only_the_two_json_posts_take_the_hot_path() {
        use poem::http::Method;
        let json = Some("application/json");
        let hot = |m, uri, ct| HotOperation::of(&request(m, uri, ct));
        assert_eq!(
            hot(Method::POST, "/api/auth/login", json),
            Some(HotOperation::Login)
        );
        assert_eq!(
            hot(
                Method::POST,
                "/api/auth/verify-otp",
                Some("application/json; charset=utf-8")
            ),
            Some(HotOperation::Verify)
        );
        assert_eq!(hot(Method::POST, "/api/auth/login?x=1", json), None);
        assert_eq!(hot(Method::POST, "/api/auth/login/", json), None);
        assert_eq!(hot(Method::GET, "/api/auth/login", json), None);
        assert_eq!(
            hot(Method::POST, "/api/auth/login", Some("text/plain")),
            None
        );
        assert_eq!(hot(Method::POST, "/api/auth/login", None), None);
        assert_eq!(hot(Method::POST, "/api/auth/refresh-token", json), None);
    }
}
