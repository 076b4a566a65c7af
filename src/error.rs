//! The one error type of the service, with the HTTP status and stable machine `code` of every
//! variant. Rendering it (RFC 9457 problem documents, headers) is the HTTP edge's job:
//! [`crate::api::problem`]. Lower layers' errors convert into it with `From`.

use crate::domain::phone::InvalidPhone;
use crate::domain::quota::{Refusal, whole_seconds};
use crate::store::StoreError;

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400 `invalid_request`: the body or a parameter could not be read.
    #[error("{0}")]
    InvalidRequest(String),
    /// 422 `invalid_field`: a field of the body has the wrong type or breaks its rule.
    #[error("`{field}` {problem}")]
    InvalidField {
        /// The field's name (`(body)` for the body as a whole).
        field: String,
        /// What is wrong, in plain words: `must be a string of 4 to 10 digits`.
        problem: String,
    },
    /// 422 `invalid_phone`: not a valid phone number.
    #[error("{0}")]
    InvalidPhone(String),
    /// 400 `invalid_otp`: the code is wrong; `remaining` tries are left.
    #[error("The code is not correct; {remaining} attempt(s) left.")]
    InvalidOtp {
        /// Wrong tries left before the code is burned.
        remaining: u32,
    },
    /// 400 `otp_expired`: no live code for this phone (expired, used, or never sent).
    #[error("No valid code for this phone number; request a new one.")]
    OtpExpired,
    /// 429 `too_many_attempts`: too many wrong tries; the code is burned.
    #[error("Too many wrong codes; this code no longer works. Request a new one.")]
    TooManyAttempts,
    /// 429 `rate_limited`: policy `policy` refused; retry after `retry_after` seconds (sent as
    /// `Retry-After`, with `RateLimit-Policy` and `RateLimit` naming the policy).
    #[error("Too many requests ({policy}); retry in {retry_after} s.")]
    RateLimited {
        /// Whole seconds until a retry can succeed.
        retry_after: u64,
        /// The policy that refused (`otp-resend`, `otp-phone`, `otp-ip`, …).
        policy: &'static str,
        /// Its limit per window.
        limit: u32,
        /// Its window in seconds.
        window: u64,
    },
    /// 429 `sends_paused`: the pumping defence paused codes to this number's country or
    /// prefix, or from this client's network; retry after `retry_after` seconds.
    #[error(
        "Codes to this number cannot be sent right now after unusual traffic; retry in {retry_after} s."
    )]
    SendsPaused {
        /// Whole seconds until a retry can succeed.
        retry_after: u64,
    },
    /// 422 `country_not_allowed`: codes are not sent to this country.
    #[error("Codes are not sent to numbers of this country.")]
    CountryNotAllowed,
    /// 422 `unsupported_number`: this kind of number cannot receive a code (premium-rate,
    /// shared-cost, toll-free, or a landline for SMS).
    #[error("This kind of number cannot receive a code; use a mobile number.")]
    UnsupportedNumber,
    /// 401 `invalid_token`: the token is malformed, expired, revoked or of the wrong kind.
    #[error("The token is invalid, expired or revoked.")]
    InvalidToken,
    /// 401 `token_reused`: a spent refresh token was presented again; its session is revoked.
    #[error("This refresh token was already used; the session has been revoked.")]
    TokenReused,
    /// 422 `channel_unavailable`: the requested delivery channel is not configured.
    #[error(
        "The channel {0:?} is not available here (not configured, or not linked to this number)."
    )]
    ChannelUnavailable(String),
    /// 403 `invalid_signature`: a webhook request without the platform's valid signature,
    /// secret token or verify token; nothing was processed.
    #[error("The request is not signed by the messaging platform.")]
    InvalidSignature,
    /// 401 `unauthorized`: missing or wrong credentials (an admin key); no hint which.
    #[error("A valid bearer token is required.")]
    Unauthorized,
    /// 403 `user_blocked`: an operator blocked this account.
    #[error("This account is blocked.")]
    UserBlocked,
    /// 403 `reauthentication_required`: the operation needs a session opened by a code within
    /// the last `REAUTH_MAX_AGE_SECONDS`; log in again and retry with the new token.
    #[error("Confirm with a new code first: log in again and retry with the new access token.")]
    ReauthenticationRequired,
    /// 409 `phone_taken`: the number belongs to another account (which is not said).
    #[error("This phone number already belongs to another account.")]
    PhoneTaken,
    /// 404 `not_found`: no such resource (or not the caller's: the same answer).
    #[error("No such resource.")]
    NotFound,
    /// 403 `invalid_poll_token`: the poll token does not belong to this login intent.
    #[error("The poll token does not match this login intent.")]
    InvalidPollToken,
    /// 410 `intent_expired`: no such login intent (expired or never created).
    #[error("This login intent has expired; create a new one.")]
    IntentExpired,
    /// 410 `intent_consumed`: the login intent's tokens were already handed out.
    #[error("This login intent was already used.")]
    IntentConsumed,
    /// 401 `invalid_telegram_auth`: the Telegram Login Widget data is not signed by our bot, or
    /// was already used.
    #[error("The Telegram login data is not valid.")]
    InvalidTelegramAuth,
    /// 401 `telegram_auth_expired`: the widget's `auth_date` is too old (or in the future).
    #[error("The Telegram login data is too old; log in again.")]
    TelegramAuthExpired,
    /// 403 `captcha_failed`: the captcha token is missing, invalid, replayed, expired or
    /// scored too low; no code was sent.
    #[error("The captcha check failed; solve the captcha again and retry with its new token.")]
    CaptchaFailed,
    /// 403 `integrity_failed`: the Play Integrity token is missing, forged, replayed, stale,
    /// for another request, or from an unrecognized app or a device below the required level;
    /// or the App Attest assertion is missing, forged or replayed; no code was sent.
    #[error("The app's integrity check failed; request a new integrity token and retry.")]
    IntegrityFailed,
    /// 403 `attestation_failed`: the App Attest key is not attested here, or its attestation
    /// (or the challenge it was made with) did not verify; attest a new key.
    #[error("The App Attest key is not attested; attest a new key and retry.")]
    AttestationFailed,
    /// 503 `integrity_unavailable`: Google's Play Integrity API did not answer (and the gate
    /// fails closed); no code was sent.
    #[error("The app's integrity could not be checked; retry shortly.")]
    IntegrityUnavailable,
    /// 503 `captcha_unavailable`: the captcha provider did not answer (and the gate fails
    /// closed); no code was sent.
    #[error("The captcha could not be checked; retry shortly.")]
    CaptchaUnavailable,
    /// 503 `verifier_unavailable`: the outside service that checks this code (Twilio Verify)
    /// did not answer; the code was not used and no attempt was counted.
    #[error("The code could not be checked; retry shortly.")]
    VerifierUnavailable,
    /// 503 `delivery_failed`: no channel could deliver the code; nothing was charged.
    #[error("The code could not be delivered; retry shortly.")]
    DeliveryFailed,
    /// 503 `overloaded`: this replica is serving `HTTP_MAX_IN_FLIGHT` requests already; nothing
    /// was done.
    #[error("The server is busy; retry shortly.")]
    Overloaded,
    /// 503 `store_unavailable`: Redis (or the store) did not answer.
    #[error("store unavailable: {0}")]
    Store(#[from] StoreError),
    /// 503 `database_unavailable` or 500 `internal_error`, depending on the database error.
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// 500 `internal_error`: a bug or an unexpected failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status of this error.
    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidRequest(_) | Error::InvalidOtp { .. } | Error::OtpExpired => 400,
            Error::InvalidPhone(_)
            | Error::InvalidField { .. }
            | Error::ChannelUnavailable(_)
            | Error::CountryNotAllowed
            | Error::UnsupportedNumber => 422,
            Error::TooManyAttempts | Error::RateLimited { .. } | Error::SendsPaused { .. } => 429,
            Error::InvalidToken
            | Error::TokenReused
            | Error::InvalidTelegramAuth
            | Error::TelegramAuthExpired
            | Error::Unauthorized => 401,
            Error::InvalidSignature
            | Error::InvalidPollToken
            | Error::UserBlocked
            | Error::CaptchaFailed
            | Error::IntegrityFailed
            | Error::AttestationFailed
            | Error::ReauthenticationRequired => 403,
            Error::PhoneTaken => 409,
            Error::NotFound => 404,
            Error::IntentExpired | Error::IntentConsumed => 410,
            Error::Store(_)
            | Error::DeliveryFailed
            | Error::CaptchaUnavailable
            | Error::IntegrityUnavailable
            | Error::VerifierUnavailable
            | Error::Overloaded => 503,
            Error::Database(e) if db_unavailable(e) => 503,
            Error::Database(_) | Error::Internal(_) => 500,
        }
    }

    /// The stable machine code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "invalid_request",
            Error::InvalidPhone(_) => "invalid_phone",
            Error::InvalidField { .. } => "invalid_field",
            Error::InvalidOtp { .. } => "invalid_otp",
            Error::OtpExpired => "otp_expired",
            Error::TooManyAttempts => "too_many_attempts",
            Error::RateLimited { .. } => "rate_limited",
            Error::SendsPaused { .. } => "sends_paused",
            Error::CountryNotAllowed => "country_not_allowed",
            Error::UnsupportedNumber => "unsupported_number",
            Error::InvalidToken => "invalid_token",
            Error::TokenReused => "token_reused",
            Error::ChannelUnavailable(_) => "channel_unavailable",
            Error::InvalidSignature => "invalid_signature",
            Error::InvalidPollToken => "invalid_poll_token",
            Error::Unauthorized => "unauthorized",
            Error::UserBlocked => "user_blocked",
            Error::ReauthenticationRequired => "reauthentication_required",
            Error::PhoneTaken => "phone_taken",
            Error::NotFound => "not_found",
            Error::IntentExpired => "intent_expired",
            Error::IntentConsumed => "intent_consumed",
            Error::InvalidTelegramAuth => "invalid_telegram_auth",
            Error::TelegramAuthExpired => "telegram_auth_expired",
            Error::CaptchaFailed => "captcha_failed",
            Error::CaptchaUnavailable => "captcha_unavailable",
            Error::IntegrityFailed => "integrity_failed",
            Error::AttestationFailed => "attestation_failed",
            Error::IntegrityUnavailable => "integrity_unavailable",
            Error::DeliveryFailed => "delivery_failed",
            Error::VerifierUnavailable => "verifier_unavailable",
            Error::Overloaded => "overloaded",
            Error::Store(_) => "store_unavailable",
            Error::Database(e) if db_unavailable(e) => "database_unavailable",
            Error::Database(_) | Error::Internal(_) => "internal_error",
        }
    }

    /// What the client may be told; server-side details stay out of it.
    pub fn public_detail(&self) -> String {
        let status = self.status();
        match self {
            Error::Store(_) => "The session store is unavailable; retry shortly.".to_string(),
            Error::Database(_) if status == 503 => {
                "The database is unavailable; retry shortly.".to_string()
            }
            Error::Database(_) | Error::Internal(_) => "Internal server error.".to_string(),
            other => other.to_string(),
        }
    }

    /// Whether this is the server's fault (5xx): logged with its cause, answered opaquely.
    pub fn is_server_error(&self) -> bool {
        self.status() >= 500
    }
}

/// Connection-level database failures are worth a retry (503); the rest are bugs (500).
fn db_unavailable(err: &sea_orm::DbErr) -> bool {
    matches!(
        err,
        sea_orm::DbErr::Conn(_) | sea_orm::DbErr::ConnectionAcquire(_)
    )
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        Error::RateLimited {
            retry_after: whole_seconds(refusal.retry_after),
            policy: refusal.policy,
            limit: refusal.limit,
            window: refusal.window.as_secs(),
        }
    }
}

impl From<InvalidPhone> for Error {
    fn from(err: InvalidPhone) -> Self {
        Error::InvalidPhone(err.0)
    }
}
