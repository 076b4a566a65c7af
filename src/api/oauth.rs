//! The OAuth 2.0 shape of `POST /api/auth/token`: its errors are RFC 6749 §5.2 objects
//! (`{"error": "invalid_grant", "error_description": "…"}`), which OAuth client libraries read,
//! instead of the problem documents of every other endpoint. Each also carries otpgate's `code`.
//!
//! Errors raised by the operation render themselves ([`OAuthFails`]); those raised around it
//! (the front door, body limits, a wrong media type) are problem documents that
//! [`rewrite_problem`] turns into the same shape.

use poem::Response;
use poem::http::{StatusCode, header};
use poem_openapi::registry::{
    MetaHeader, MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry,
};
use poem_openapi::types::{Example, Type};
use poem_openapi::{ApiResponse, Object};

use crate::error::Error;

/// The path this module shapes.
pub const TOKEN_PATH: &str = "/api/auth/token";

/// An RFC 6749 §5.2 error response.
#[derive(Debug, Object)]
#[oai(example)]
pub struct OAuthError {
    /// `invalid_request`, `invalid_grant`, `unsupported_grant_type`,
    /// `temporarily_unavailable` or `server_error`.
    pub error: String,
    /// What went wrong, for the developer.
    pub error_description: String,
    /// otpgate's own code of the problem (`token_reused`, `invalid_field`, …).
    pub code: String,
}

impl Example for OAuthError {
    fn example() -> Self {
        OAuthError {
            error: "invalid_grant".into(),
            error_description: "This refresh token was already used; the session has been revoked."
                .into(),
            code: "token_reused".into(),
        }
    }
}

/// The RFC 6749 `error` and status for otpgate problem `code` (`field` for `invalid_field`).
pub fn oauth_error(code: &str, field: Option<&str>, status: u16) -> (&'static str, u16) {
    match code {
        "invalid_token" | "token_reused" => ("invalid_grant", 400),
        "invalid_field" if field == Some("grant_type") => ("unsupported_grant_type", 400),
        "invalid_request" | "invalid_field" | "unsupported_media_type" => ("invalid_request", 400),
        "payload_too_large" | "request_timeout" => ("invalid_request", status),
        "rate_limited" => ("temporarily_unavailable", 429),
        "store_unavailable" | "database_unavailable" | "overloaded" => {
            ("temporarily_unavailable", 503)
        }
        // Anything else around the operation (a wrong method, …) keeps its status.
        _ if (400..500).contains(&status) => ("invalid_request", status),
        _ => ("server_error", status.max(500)),
    }
}

fn response(status: u16, error: &str, description: &str, code: &str) -> Response {
    let body = serde_json::json!({
        "error": error,
        "error_description": description,
        "code": code,
    });
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST))
        .content_type("application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::PRAGMA, "no-cache")
        .body(body.to_string())
}

/// An [`Error`] of the token endpoint, answered the OAuth way.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OAuthFails(pub Error);

impl OAuthFails {
    /// A `grant_type` other than `refresh_token`.
    pub fn unsupported_grant_type(grant: &str) -> Self {
        Self(Error::InvalidField {
            field: "grant_type".into(),
            problem: format!("must be refresh_token, not {grant:?}"),
        })
    }
}

impl From<Error> for OAuthFails {
    fn from(err: Error) -> Self {
        Self(err)
    }
}

impl poem::error::ResponseError for OAuthFails {
    fn status(&self) -> StatusCode {
        let field = match &self.0 {
            Error::InvalidField { field, .. } => Some(field.as_str()),
            _ => None,
        };
        let (_, status) = oauth_error(self.0.code(), field, self.0.status());
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST)
    }

    fn as_response(&self) -> Response {
        // The problem rendering logs server errors and knows the retry headers.
        let problem = self.0.as_response();
        let field = match &self.0 {
            Error::InvalidField { field, .. } => Some(field.as_str()),
            _ => None,
        };
        let (error, status) = oauth_error(self.0.code(), field, self.0.status());
        let mut resp = response(status, error, &self.0.public_detail(), self.0.code());
        if let Some(retry) = problem.headers().get(header::RETRY_AFTER) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, retry.clone());
        }
        resp
    }
}

impl ApiResponse for OAuthFails {
    fn meta() -> MetaResponses {
        let documented = [
            (
                400,
                "`invalid_grant`: the refresh token is invalid, expired, revoked or was reused \
                 (the session is then revoked). `invalid_request`: the body is malformed or a \
                 field is missing. `unsupported_grant_type`: `grant_type` is not \
                 `refresh_token`.",
            ),
            (408, "`invalid_request`: the body was not received in time."),
            (413, "`invalid_request`: the body is too large."),
            (
                429,
                "`temporarily_unavailable`: too many requests; see `Retry-After`.",
            ),
            (500, "`server_error`: an internal error."),
            (
                503,
                "`temporarily_unavailable`: Redis or the database is unavailable, or the \
                 server is busy (`HTTP_MAX_IN_FLIGHT`); nothing was spent.",
            ),
        ];
        MetaResponses {
            responses: documented
                .into_iter()
                .map(|(status, description)| MetaResponse {
                    description,
                    status: Some(status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: "application/json",
                        schema: MetaSchemaRef::Reference(OAuthError::name().into_owned()),
                    }],
                    headers: if status == 429 || status == 503 {
                        vec![MetaHeader {
                            name: "Retry-After".into(),
                            description: Some("Seconds to wait before retrying.".into()),
                            required: false,
                            deprecated: false,
                            schema: u64::schema_ref(),
                        }]
                    } else {
                        vec![]
                    },
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        OAuthError::register(registry);
    }
}

/// A problem document produced around the token endpoint, as an OAuth error; any other
/// response unchanged.
pub async fn rewrite_problem(resp: Response) -> Response {
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !is_problem {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let status = parts.status.as_u16();
    let body = body.into_bytes().await.unwrap_or_default();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let code = problem["code"].as_str().unwrap_or("internal_error");
    let (error, status) = oauth_error(code, problem["field"].as_str(), status);
    let detail = match code {
        "unsupported_media_type" => {
            "Send grant_type and refresh_token form-encoded (application/x-www-form-urlencoded) \
             or as JSON (application/json)."
        }
        _ => problem["detail"].as_str().unwrap_or(""),
    };
    let mut out = response(status, error, detail, code);
    // Every other header stays: CORS, Retry-After, RateLimit, WWW-Authenticate, the request id.
    let own = [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CACHE_CONTROL,
        header::PRAGMA,
    ];
    for (name, value) in &parts.headers {
        if !own.contains(name) {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}
