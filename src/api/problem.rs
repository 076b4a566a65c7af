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
        if self.is_server_error() {
            let error = redact_credentials(&self.to_string());
            tracing::error!(code = self.code(), error, "request failed");
        }
        let status = poem::error::ResponseError::status(self);
        let mut resp = Problem::new(status, self.code(), self.public_detail()).into_response();
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
