//! The HTTP edge of [`Error`]: RFC 9457 `application/problem+json` documents, the
//! `Retry-After` / `RateLimit-Policy` / `RateLimit` headers, `WWW-Authenticate`, and the OpenAPI
//! description of every problem response. Errors raised by the framework itself (malformed JSON,
//! unknown routes, a missing bearer token) are converted by [`problem_response`] into the same
//! shape.

use std::fmt::Write as _;

use poem::Response;
use poem::http::{HeaderValue, StatusCode, header};
use poem_openapi::ApiResponse;
use poem_openapi::Object;
use poem_openapi::registry::{
    MetaHeader, MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry,
};
use poem_openapi::types::Type;

use crate::domain::quota::{Quota, QuotaState};
use crate::domain::secret::redact_credentials;
use crate::error::Error;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct Problem {
    /// A URI naming the problem type (`urn:otpgate:problem:<code>`).
    #[oai(rename = "type")]
    pub type_: String,
    /// A short summary of the problem type (the same for every problem of one `code`).
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
    /// `invalid_field` only: the body field at fault (`(body)` for the body as a whole).
    #[oai(skip_serializing_if_is_none)]
    pub field: Option<String>,
}

/// Every problem type: its `code`, status, `title` and an example `detail` (for the docs).
/// The title is the same for every problem of one code; the detail says what happened.
pub const PROBLEM_TYPES: &[(&str, u16, &str, &str)] = &[
    (
        "invalid_request",
        400,
        "Malformed request",
        "The body is not valid JSON: EOF while parsing an object at line 1 column 1.",
    ),
    (
        "invalid_otp",
        400,
        "Wrong code",
        "The code is not correct; 4 attempt(s) left.",
    ),
    (
        "otp_expired",
        400,
        "No valid code",
        "No valid code for this phone number; request a new one.",
    ),
    (
        "unauthorized",
        401,
        "Authentication required",
        "A valid bearer token is required.",
    ),
    (
        "invalid_token",
        401,
        "Invalid token",
        "The token is invalid, expired or revoked.",
    ),
    (
        "token_reused",
        401,
        "Refresh token reused",
        "This refresh token was already used; the session has been revoked.",
    ),
    (
        "invalid_telegram_auth",
        401,
        "Invalid Telegram login",
        "The Telegram login data is not valid.",
    ),
    (
        "telegram_auth_expired",
        401,
        "Telegram login expired",
        "The Telegram login data is too old; log in again.",
    ),
    (
        "forbidden",
        403,
        "Forbidden",
        "This request is not allowed.",
    ),
    (
        "invalid_signature",
        403,
        "Invalid webhook signature",
        "The request is not signed by the messaging platform.",
    ),
    (
        "reauthentication_required",
        403,
        "Re-authentication required",
        "Confirm with a new code first: log in again and retry with the new access token.",
    ),
    (
        "user_blocked",
        403,
        "Account blocked",
        "This account is blocked.",
    ),
    (
        "captcha_failed",
        403,
        "Captcha failed",
        "The captcha check failed; solve the captcha again and retry with its new token.",
    ),
    (
        "integrity_failed",
        403,
        "Integrity check failed",
        "The app's integrity check failed; request a new integrity token and retry.",
    ),
    (
        "attestation_failed",
        403,
        "App Attest key not attested",
        "The App Attest key is not attested; attest a new key and retry.",
    ),
    (
        "invalid_poll_token",
        403,
        "Wrong poll token",
        "The poll token does not match this login intent.",
    ),
    ("not_found", 404, "Not found", "No such resource."),
    (
        "method_not_allowed",
        405,
        "Method not allowed",
        "This resource does not support that method.",
    ),
    (
        "request_timeout",
        408,
        "Request too slow",
        "The request body was not received in time.",
    ),
    (
        "phone_taken",
        409,
        "Number in use",
        "This phone number already belongs to another account.",
    ),
    (
        "intent_expired",
        410,
        "Login intent expired",
        "This login intent has expired; create a new one.",
    ),
    (
        "intent_consumed",
        410,
        "Login intent already used",
        "This login intent was already used.",
    ),
    (
        "payload_too_large",
        413,
        "Body too large",
        "The request body is larger than the server accepts.",
    ),
    (
        "uri_too_long",
        414,
        "URI too long",
        "The request URI is too long.",
    ),
    (
        "unsupported_media_type",
        415,
        "Unsupported media type",
        "Send the body as application/json (Content-Type: application/json).",
    ),
    (
        "invalid_field",
        422,
        "Invalid field",
        "`otp_code` must be a string of 4 to 10 digits (for example \"012345\")",
    ),
    (
        "invalid_phone",
        422,
        "Invalid phone number",
        "Not a valid phone number: add the country code, e.g. +919876543210.",
    ),
    (
        "country_not_allowed",
        422,
        "Country not allowed",
        "Codes are not sent to numbers of this country.",
    ),
    (
        "unsupported_number",
        422,
        "Unsupported number",
        "This kind of number cannot receive a code; use a mobile number.",
    ),
    (
        "channel_unavailable",
        422,
        "Channel unavailable",
        "The channel \"telegram\" is not available here (not configured, or not linked to this number).",
    ),
    (
        "rate_limited",
        429,
        "Too many requests",
        "Too many requests (otp-resend); retry in 42 s.",
    ),
    (
        "sends_paused",
        429,
        "Sends paused",
        "Codes to this number cannot be sent right now after unusual traffic; retry in 1800 s.",
    ),
    (
        "too_many_attempts",
        429,
        "Too many wrong codes",
        "Too many wrong codes; this code no longer works. Request a new one.",
    ),
    (
        "headers_too_large",
        431,
        "Headers too large",
        "The request headers are too large.",
    ),
    (
        "internal_error",
        500,
        "Internal error",
        "Internal server error.",
    ),
    (
        "store_unavailable",
        503,
        "Session store unavailable",
        "The session store is unavailable; retry shortly.",
    ),
    (
        "database_unavailable",
        503,
        "Database unavailable",
        "The database is unavailable; retry shortly.",
    ),
    (
        "delivery_failed",
        503,
        "Code not delivered",
        "The code could not be delivered; retry shortly.",
    ),
    (
        "verifier_unavailable",
        503,
        "Code check unavailable",
        "The code could not be checked; retry shortly.",
    ),
    (
        "captcha_unavailable",
        503,
        "Captcha unavailable",
        "The captcha could not be checked; retry shortly.",
    ),
    (
        "integrity_unavailable",
        503,
        "Integrity check unavailable",
        "The app's integrity could not be checked; retry shortly.",
    ),
    (
        "overloaded",
        503,
        "Server busy",
        "The server is busy; retry shortly.",
    ),
    (
        "http_version_not_supported",
        505,
        "HTTP version not supported",
        "Use HTTP/1.1 or HTTP/2.",
    ),
];

/// The title of problem type `code`.
pub fn title_of(code: &str) -> &'static str {
    PROBLEM_TYPES
        .iter()
        .find(|(c, ..)| *c == code)
        .map_or("Error", |(_, _, title, _)| title)
}

impl poem_openapi::types::Example for Problem {
    fn example() -> Self {
        Problem {
            type_: "urn:otpgate:problem:rate_limited".into(),
            title: "Too many requests".into(),
            status: 429,
            detail: "Too many requests (otp-resend); retry in 42 s.".into(),
            code: "rate_limited".into(),
            request_id: Some("0d3f6c1e9a7b4d2c8e5f1a2b3c4d5e6f".into()),
            field: None,
        }
    }
}

impl Problem {
    /// A problem document for `status` with the given code and detail.
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self {
            type_: format!("urn:otpgate:problem:{code}"),
            title: title_of(code).to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_string(),
            request_id: crate::telemetry::current_request_id(),
            field: None,
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
        if let Some(field) = self.field {
            body["field"] = serde_json::Value::String(field);
        }
        Response::builder()
            .status(status)
            .content_type(PROBLEM_JSON)
            .body(body.to_string())
    }
}

/// One quota in the `RateLimit-Policy` / `RateLimit` fields (IETF httpapi ratelimit-headers
/// draft): its policy, limit and window, and what is left of it.
pub struct RateLimitField<'a> {
    /// Policy name.
    pub policy: &'a str,
    /// Events per window.
    pub limit: u32,
    /// The window in seconds.
    pub window: u64,
    /// Events still allowed.
    pub remaining: u32,
    /// Seconds until the bucket is empty (or, when refused, until one event fits).
    pub reset: u64,
}

/// The `RateLimit-Policy` and `RateLimit` header values for `fields` (none when empty).
pub fn ratelimit_headers<'a>(
    fields: impl IntoIterator<Item = RateLimitField<'a>>,
) -> Option<(HeaderValue, HeaderValue)> {
    let mut policy = String::new();
    let mut current = String::new();
    for f in fields {
        let sep = if policy.is_empty() { "" } else { ", " };
        let _ = write!(policy, "{sep}\"{}\";q={};w={}", f.policy, f.limit, f.window);
        let _ = write!(
            current,
            "{sep}\"{}\";r={};t={}",
            f.policy, f.remaining, f.reset
        );
    }
    if policy.is_empty() {
        return None;
    }
    Some((
        HeaderValue::from_str(&policy).ok()?,
        HeaderValue::from_str(&current).ok()?,
    ))
}

/// The header values for quotas that allowed an event, as text (for typed response headers).
pub fn headers(quotas: &[Quota], states: &[QuotaState]) -> Option<(String, String)> {
    let fields = quotas.iter().zip(states).map(|(q, s)| RateLimitField {
        policy: q.policy,
        limit: q.limit,
        window: q.window.as_secs(),
        remaining: s.remaining,
        reset: s.reset.as_secs_f64().ceil() as u64,
    });
    let (policy, current) = ratelimit_headers(fields)?;
    Some((
        policy.to_str().ok()?.to_string(),
        current.to_str().ok()?.to_string(),
    ))
}

impl poem::error::ResponseError for Error {
    fn status(&self) -> StatusCode {
        StatusCode::from_u16(Error::status(self)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn as_response(&self) -> Response {
        // Shed requests are not failures: they are counted (`otpgate_requests_shed_total`), and
        // an error line each would cost most when the replica has least to spare.
        if self.is_server_error() && !matches!(self, Error::Overloaded) {
            let error = redact_credentials(&self.to_string());
            tracing::error!(code = self.code(), error, "request failed");
        }
        let status = poem::error::ResponseError::status(self);
        let mut problem = Problem::new(status, self.code(), self.public_detail());
        if let Error::InvalidField { field, .. } = self {
            problem.field = Some(field.clone());
        }
        let mut resp = problem.into_response();
        match self {
            Error::RateLimited {
                retry_after,
                policy,
                limit,
                window,
            } => {
                let headers = resp.headers_mut();
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
                let refused = RateLimitField {
                    policy,
                    limit: *limit,
                    window: *window,
                    remaining: 0,
                    reset: *retry_after,
                };
                if let Some((p, r)) = ratelimit_headers([refused]) {
                    headers.insert("ratelimit-policy", p);
                    headers.insert("ratelimit", r);
                }
            }
            Error::SendsPaused { retry_after } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            Error::Store(_)
            | Error::DeliveryFailed
            | Error::Overloaded
            | Error::CaptchaUnavailable
            | Error::VerifierUnavailable
            | Error::IntegrityUnavailable => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
            }
            Error::InvalidToken | Error::TokenReused => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            Error::Unauthorized => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}

/// The problems one operation can answer with, for its OpenAPI description: the codes of
/// [`PROBLEM_TYPES`] it may return itself, plus those of the layers around every operation.
pub trait Failures: Send + Sync + 'static {
    /// The codes the operation itself returns.
    const CODES: &'static [&'static str];
    /// Whether it takes a JSON body (malformed, too large, too slow, wrong media type, a bad
    /// field).
    const BODY: bool = true;
    /// Whether the front door (`RATE_LIMIT_FRONTDOOR_PER_SECOND`) and the in-flight bound
    /// (`HTTP_MAX_IN_FLIGHT`) stand before it.
    const FRONT_DOOR: bool = true;

    /// Every code, in status order.
    fn codes() -> Vec<&'static str> {
        let mut codes: Vec<&'static str> = Self::CODES.to_vec();
        if Self::BODY {
            codes.extend([
                "invalid_request",
                "invalid_field",
                "unsupported_media_type",
                "payload_too_large",
                "request_timeout",
            ]);
        }
        if Self::FRONT_DOOR {
            codes.extend(["rate_limited", "overloaded"]);
        }
        codes.push("internal_error");
        codes.sort_by_key(|c| (status_of(c), *c));
        codes.dedup();
        codes
    }
}

/// The status of problem type `code`.
pub fn status_of(code: &str) -> u16 {
    PROBLEM_TYPES
        .iter()
        .find(|(c, ..)| *c == code)
        .map_or(500, |(_, status, ..)| *status)
}

/// Declares the failures of an operation: `failures! { LoginFailures: ["invalid_phone", …]; }`.
macro_rules! failures {
    ($($(#[$doc:meta])* $name:ident $({ $($flag:ident = $value:expr),* })? : [$($code:literal),* $(,)?];)*) => {
        $(
            $(#[$doc])*
            pub struct $name;

            impl $crate::api::problem::Failures for $name {
                const CODES: &'static [&'static str] = &[$($code),*];
                $($(const $flag: bool = $value;)*)?
            }
        )*
    };
}
pub(crate) use failures;

/// An [`Error`] returned by an operation whose possible failures are `S`: renders like the
/// error itself, and documents exactly `S`'s problems (with an example of each code).
pub struct Fails<S>(pub Error, std::marker::PhantomData<S>);

impl<S> From<Error> for Fails<S> {
    fn from(err: Error) -> Self {
        Self(err, std::marker::PhantomData)
    }
}

/// The error itself travels on: [`problem_response`] renders every [`Error`] the same way.
impl<S> From<Fails<S>> for poem::Error {
    fn from(fails: Fails<S>) -> Self {
        fails.0.into()
    }
}

/// A description that lives as long as the process: the docs are built a few times at start.
fn leak(text: String) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static TEXTS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut texts = TEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(known) = texts.get(text.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(text.into_boxed_str());
    texts.insert(leaked);
    leaked
}

/// The problem responses of `codes`, one per status, each description listing its codes as
/// "`code`: title." (the OpenAPI document adds an example of each).
pub fn problem_responses(codes: &[&'static str]) -> MetaResponses {
    let header = |name: &str, description: &str, schema: MetaSchemaRef| MetaHeader {
        name: name.into(),
        description: Some(description.into()),
        required: false,
        deprecated: false,
        schema,
    };
    let mut statuses: Vec<u16> = codes.iter().map(|c| status_of(c)).collect();
    statuses.dedup();
    let responses = statuses
        .into_iter()
        .map(|status| {
            let listed: Vec<String> = codes
                .iter()
                .filter(|c| status_of(c) == status)
                .map(|c| format!("`{c}`: {}.", title_of(c)))
                .collect();
            let mut headers = Vec::new();
            if status == 429 || status == 503 {
                headers.push(header(
                    "Retry-After",
                    "Seconds to wait before retrying.",
                    u64::schema_ref(),
                ));
            }
            if status == 429 {
                for name in ["RateLimit-Policy", "RateLimit"] {
                    headers.push(header(
                        name,
                        "IETF httpapi ratelimit-headers field naming the policy that refused.",
                        String::schema_ref(),
                    ));
                }
            }
            if status == 401 {
                headers.push(header(
                    "WWW-Authenticate",
                    "`Bearer` (no token) or `Bearer error=\"invalid_token\"`.",
                    String::schema_ref(),
                ));
            }
            MetaResponse {
                description: leak(listed.join(" ")),
                status: Some(status),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: PROBLEM_JSON,
                    schema: MetaSchemaRef::Reference(Problem::name().into_owned()),
                }],
                headers,
            }
        })
        .collect();
    MetaResponses { responses }
}

impl<S: Failures> ApiResponse for Fails<S> {
    fn meta() -> MetaResponses {
        problem_responses(&S::codes())
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
    if err.is::<Error>() || err.is::<crate::api::oauth::OAuthFails>() {
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
    let detail =
        if let Some(e) = err.downcast_ref::<poem_openapi::error::ParseRequestPayloadError>() {
            format!("The body could not be read: {}", e.reason)
        } else if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            "Send the body as application/json (Content-Type: application/json).".to_string()
        } else if status == StatusCode::PAYLOAD_TOO_LARGE {
            "The request body is larger than the server accepts (BODY_LIMIT_BYTES).".to_string()
        } else if status == StatusCode::REQUEST_TIMEOUT {
            "The request body was not received in time.".to_string()
        } else if status.is_server_error() {
            let error = redact_credentials(&err.to_string());
            tracing::error!(status = status.as_u16(), error, "request failed");
            "Internal server error.".to_string()
        } else if status == StatusCode::UNAUTHORIZED {
            "A valid bearer token is required.".to_string()
        } else if status == StatusCode::NOT_FOUND {
            "No such resource.".to_string()
        } else {
            err.to_string()
        };
    if status == StatusCode::UNAUTHORIZED {
        return unauthorized(&detail);
    }
    Problem::new(status, code, detail).into_response()
}

/// 401 `unauthorized` with `WWW-Authenticate: Bearer`: no (or no usable) credentials.
pub fn unauthorized(detail: &str) -> Response {
    let mut resp = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn header_values() {
        let quotas = vec![
            Quota {
                policy: "otp-phone",
                key: "p".into(),
                limit: 5,
                window: HOUR,
                with_phone: true,
            },
            Quota {
                policy: "otp-ip",
                key: "i".into(),
                limit: 30,
                window: HOUR,
                with_phone: false,
            },
        ];
        let states = vec![
            QuotaState {
                remaining: 4,
                reset: Duration::from_millis(720_000),
            },
            QuotaState {
                remaining: 29,
                reset: Duration::from_millis(119_500),
            },
        ];
        let (policy, current) = headers(&quotas, &states).unwrap();
        assert_eq!(policy, "\"otp-phone\";q=5;w=3600, \"otp-ip\";q=30;w=3600");
        assert_eq!(current, "\"otp-phone\";r=4;t=720, \"otp-ip\";r=29;t=120");
        assert!(headers(&[], &[]).is_none());
    }
}
