//! The one error type, rendered as RFC 9457 `application/problem+json`.
//!
//! Every variant documents its HTTP status and its stable machine `code`. Server-side failures
//! (5xx) are logged with their cause and answered with an opaque body. Errors raised by the
//! framework itself (malformed JSON, unknown routes, a missing bearer token) are converted by
//! [`problem_response`] into the same shape.

use poem::Response;
use poem::http::{HeaderValue, StatusCode, header};
use poem_openapi::ApiResponse;
use poem_openapi::Object;
use poem_openapi::registry::{
    MetaHeader, MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry,
};
use poem_openapi::types::Type;

use crate::store::StoreError;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct Problem {
    /// A URI naming the problem type (`urn:otpgate:problem:<code>`).
    #[oai(rename = "type")]
    pub type_: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Stable machine-readable code, e.g. `invalid_phone`, `rate_limited`.
    pub code: String,
    /// The request id (also in the `X-Request-Id` response header), to quote in bug reports.
    #[oai(skip_serializing_if_is_none)]
    pub request_id: Option<String>,
}

impl poem_openapi::types::Example for Problem {
    fn example() -> Self {
        Problem {
            type_: "urn:otpgate:problem:rate_limited".into(),
            title: "Too Many Requests".into(),
            status: 429,
            detail: "Too many requests (otp-resend); retry in 42 s.".into(),
            code: "rate_limited".into(),
            request_id: Some("0d3f6c1e9a7b4d2c8e5f1a2b3c4d5e6f".into()),
        }
    }
}

impl Problem {
    /// A problem document for `status` with the given code and detail.
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self {
            type_: format!("urn:otpgate:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_string(),
            request_id: crate::telemetry::current_request_id(),
        }
    }

    /// Renders the document as a response with the problem media type.
    pub fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = serde_json::json!({
            "type": self.type_,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        });
        if let Some(id) = self.request_id {
            body["request_id"] = serde_json::Value::String(id);
        }
        Response::builder()
            .status(status)
            .content_type(PROBLEM_JSON)
            .body(body.to_string())
    }
}

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400 `invalid_request`: the body or a parameter could not be read.
    #[error("{0}")]
    InvalidRequest(String),
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
    /// 503 `delivery_failed`: no channel could deliver the code; nothing was charged.
    #[error("The code could not be delivered; retry shortly.")]
    DeliveryFailed,
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
    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidRequest(_) | Error::InvalidOtp { .. } | Error::OtpExpired => {
                StatusCode::BAD_REQUEST
            }
            Error::InvalidPhone(_)
            | Error::ChannelUnavailable(_)
            | Error::CountryNotAllowed
            | Error::UnsupportedNumber => StatusCode::UNPROCESSABLE_ENTITY,
            Error::TooManyAttempts | Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::InvalidToken
            | Error::TokenReused
            | Error::InvalidTelegramAuth
            | Error::TelegramAuthExpired => StatusCode::UNAUTHORIZED,
            Error::InvalidSignature | Error::InvalidPollToken => StatusCode::FORBIDDEN,
            Error::IntentExpired | Error::IntentConsumed => StatusCode::GONE,
            Error::Store(_) | Error::DeliveryFailed => StatusCode::SERVICE_UNAVAILABLE,
            Error::Database(e) if db_unavailable(e) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Database(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "invalid_request",
            Error::InvalidPhone(_) => "invalid_phone",
            Error::InvalidOtp { .. } => "invalid_otp",
            Error::OtpExpired => "otp_expired",
            Error::TooManyAttempts => "too_many_attempts",
            Error::RateLimited { .. } => "rate_limited",
            Error::CountryNotAllowed => "country_not_allowed",
            Error::UnsupportedNumber => "unsupported_number",
            Error::InvalidToken => "invalid_token",
            Error::TokenReused => "token_reused",
            Error::ChannelUnavailable(_) => "channel_unavailable",
            Error::InvalidSignature => "invalid_signature",
            Error::InvalidPollToken => "invalid_poll_token",
            Error::IntentExpired => "intent_expired",
            Error::IntentConsumed => "intent_consumed",
            Error::InvalidTelegramAuth => "invalid_telegram_auth",
            Error::TelegramAuthExpired => "telegram_auth_expired",
            Error::DeliveryFailed => "delivery_failed",
            Error::Store(_) => "store_unavailable",
            Error::Database(e) if db_unavailable(e) => "database_unavailable",
            Error::Database(_) | Error::Internal(_) => "internal_error",
        }
    }

    /// The problem document of this error; server-side details stay out of it.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        let detail = match self {
            Error::Store(_) => "The session store is unavailable; retry shortly.".to_string(),
            Error::Database(_) if status == StatusCode::SERVICE_UNAVAILABLE => {
                "The database is unavailable; retry shortly.".to_string()
            }
            Error::Database(_) | Error::Internal(_) => "Internal server error.".to_string(),
            other => other.to_string(),
        };
        Problem::new(status, self.code(), detail)
    }
}

/// Connection-level database failures are worth a retry (503); the rest are bugs (500).
fn db_unavailable(err: &sea_orm::DbErr) -> bool {
    matches!(
        err,
        sea_orm::DbErr::Conn(_) | sea_orm::DbErr::ConnectionAcquire(_)
    )
}

impl poem::error::ResponseError for Error {
    fn status(&self) -> StatusCode {
        Error::status(self)
    }

    fn as_response(&self) -> Response {
        if self.status().is_server_error() {
            let error = crate::config::redact_credentials(&self.to_string());
            tracing::error!(code = self.code(), error, "request failed");
        }
        let mut resp = self.problem().into_response();
        match self {
            Error::RateLimited {
                retry_after,
                policy,
                limit,
                window,
            } => {
                let headers = resp.headers_mut();
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
                let ratelimit_policy = format!("\"{policy}\";q={limit};w={window}");
                let ratelimit = format!("\"{policy}\";r=0;t={retry_after}");
                if let (Ok(p), Ok(r)) = (
                    HeaderValue::from_str(&ratelimit_policy),
                    HeaderValue::from_str(&ratelimit),
                ) {
                    headers.insert("ratelimit-policy", p);
                    headers.insert("ratelimit", r);
                }
            }
            Error::Store(_) | Error::DeliveryFailed => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
            }
            Error::InvalidToken | Error::TokenReused => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            _ => {}
        }
        resp
    }
}

/// Declares the problem responses in the OpenAPI document.
impl ApiResponse for Error {
    fn meta() -> MetaResponses {
        let problem =
            |status: u16, description: &'static str, headers: Vec<MetaHeader>| MetaResponse {
                description,
                status: Some(status),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: PROBLEM_JSON,
                    schema: MetaSchemaRef::Reference(Problem::name().into_owned()),
                }],
                headers,
            };
        let text_header = |name: &str| MetaHeader {
            name: name.into(),
            description: Some("IETF httpapi ratelimit-headers field.".into()),
            required: false,
            deprecated: false,
            schema: String::schema_ref(),
        };
        let retry_after = || MetaHeader {
            name: "Retry-After".into(),
            description: Some("Seconds to wait before retrying.".into()),
            required: false,
            deprecated: false,
            schema: u64::schema_ref(),
        };
        MetaResponses {
            responses: vec![
                problem(
                    400,
                    "Malformed request, wrong or expired code (`invalid_request`, `invalid_otp`, `otp_expired`).",
                    vec![],
                ),
                problem(
                    401,
                    "Missing, invalid, expired, revoked or reused token, or invalid Telegram login data (`unauthorized`, `invalid_token`, `token_reused`, `invalid_telegram_auth`, `telegram_auth_expired`).",
                    vec![],
                ),
                problem(
                    403,
                    "Unsigned webhook call or wrong poll token (`invalid_signature`, `invalid_poll_token`).",
                    vec![],
                ),
                problem(
                    410,
                    "The login intent expired or was already used (`intent_expired`, `intent_consumed`).",
                    vec![],
                ),
                problem(
                    415,
                    "The body is not `application/json` (`unsupported_media_type`).",
                    vec![],
                ),
                problem(
                    422,
                    "Invalid, refused or unsupported phone number, or unavailable channel (`invalid_phone`, `country_not_allowed`, `unsupported_number`, `channel_unavailable`).",
                    vec![],
                ),
                problem(
                    429,
                    "Too many requests or wrong codes (`rate_limited`, `too_many_attempts`); `RateLimit-Policy` and `RateLimit` name the policy that refused.",
                    vec![
                        retry_after(),
                        text_header("RateLimit-Policy"),
                        text_header("RateLimit"),
                    ],
                ),
                problem(
                    500,
                    "Internal error; the body carries no details (`internal_error`).",
                    vec![],
                ),
                problem(
                    503,
                    "Redis, the database or every delivery channel is unavailable; nothing was changed (`store_unavailable`, `database_unavailable`, `delivery_failed`).",
                    vec![retry_after()],
                ),
            ],
        }
    }

    fn register(registry: &mut Registry) {
        Problem::register(registry);
    }
}

/// Converts any error that reaches the top of the app into a problem response.
///
/// Our own [`Error`] renders itself; framework errors (unknown route, wrong method, malformed
/// JSON, missing bearer token, validator failures) keep their status and get a stable code.
pub fn problem_response(err: poem::Error) -> Response {
    if err.is::<Error>() {
        return err.into_response();
    }
    let status = err.status();
    let code = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        s if s.is_server_error() => "internal_error",
        _ => "error",
    };
    let detail = if status.is_server_error() {
        let error = crate::config::redact_credentials(&err.to_string());
        tracing::error!(status = status.as_u16(), error, "request failed");
        "Internal server error.".to_string()
    } else if status == StatusCode::UNAUTHORIZED {
        "A valid bearer token is required.".to_string()
    } else if status == StatusCode::NOT_FOUND {
        "No such resource.".to_string()
    } else {
        err.to_string()
    };
    let mut resp = Problem::new(status, code, detail).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}
