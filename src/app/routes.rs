//! The routes of a replica and the middleware around them: request bodies bounded in size and
//! time, CORS, the front door, the docs' headers, `Allow` on 405, observation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use poem::endpoint::EitherEndpoint;
use poem::http::{StatusCode, header};
use poem::middleware::SetHeader;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use subtle::ConstantTimeEq;

use super::frontdoor::{ClientGate, FrontDoor, is_gated};
use super::listener::{ConnectionPolicy, Connections, TrackRequests};
use super::observe::Observe;
use super::state::AppState;
use crate::api::auth::{AuthApi, HotOperation};
use crate::api::oauth::{TOKEN_PATH, rewrite_problem};
use crate::api::problem::{problem_response, unauthorized};
use crate::config::Settings;
use crate::domain::admission::InFlight;
use crate::domain::secret::Secret;
use crate::telemetry::Metrics;

/// `GET /metrics`: Prometheus text, behind `METRICS_TOKEN` when one is set.
fn metrics_endpoint(metrics: Arc<Metrics>, token: Option<Secret>) -> impl Endpoint {
    poem::endpoint::make_sync(move |req: Request| -> Response {
        if let Some(token) = &token {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes())) {
                return unauthorized("A valid metrics token is required.");
            }
        }
        metrics
            .render()
            .with_content_type("text/plain; version=0.0.4; charset=utf-8")
            .into_response()
    })
}

/// How long a client may take to send a request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Buffers request bodies up to `max` bytes (413 beyond, whatever `Content-Length` says or
/// does not say) within [`BODY_READ_TIMEOUT`] (408 after), so a client can neither flood nor
/// trickle.
struct BodyLimit {
    max: usize,
}

impl<E: Endpoint> poem::Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        BodyLimitEndpoint {
            inner: ep,
            max: self.max,
        }
    }
}

struct BodyLimitEndpoint<E> {
    inner: E,
    max: usize,
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> poem::Result<Self::Output> {
        let too_large = || poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max as u64) {
            return Err(too_large());
        }
        if declared != Some(0) && req.method() != poem::http::Method::GET {
            // The body's frames as they came (a small body is one frame: kept, not copied),
            // refused as soon as they add up to more than `max`.
            let body = http_body_util::Limited::new(
                http_body_util::combinators::BoxBody::from(req.take_body()),
                self.max,
            );
            match tokio::time::timeout(BODY_READ_TIMEOUT, body.collect()).await {
                Err(_) => return Err(poem::Error::from_status(StatusCode::REQUEST_TIMEOUT)),
                Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
                    return Err(too_large());
                }
                Ok(Err(_)) => return Err(poem::Error::from_status(StatusCode::BAD_REQUEST)),
                Ok(Ok(collected)) => req.set_body(collected.to_bytes()),
            }
        }
        // Not boxed: the endpoint below ([`HotPaths`]) boxes its own large futures.
        self.inner.call(req).await
    }
}

/// `Cache-Control: no-store` and `Pragma: no-cache` on the API's answers (tokens, codes and
/// quotas are nobody's to keep).
fn no_store() -> SetHeader {
    SetHeader::new()
        .overriding(header::CACHE_CONTROL, NO_STORE.clone())
        .overriding(header::PRAGMA, NO_CACHE.clone())
}

/// The router, with the two operations every login makes ([`HotOperation`]) answered before
/// it: their handlers are called directly, not through the route tree and poem-openapi's
/// per-operation endpoint (which cost more CPU than the operations' own parsing and rendering,
/// measured in `loadtest/`). The answer is the router's: the same handler, the same
/// `no-store` headers on success, the same error passed up to be rendered. A body that does
/// not parse goes to the router, which says what is wrong with it.
///
/// Here too, once the body is in (a slow client holds no place), the bound on requests served
/// at once ([`InFlight`], `HTTP_MAX_IN_FLIGHT`): past it, 503 `overloaded` at once. A request
/// waiting on an outside provider steps out of it ([`crate::domain::admission::Admission`]).
struct HotPaths<E> {
    api: AuthApi,
    router: E,
    in_flight: Option<Arc<InFlight>>,
    metrics: Arc<Metrics>,
}

impl<E: Endpoint> Endpoint for HotPaths<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        // The place is held until this call returns (a clone rides in the request, so a login
        // can step out of it while a provider answers).
        let _admitted = match &self.in_flight {
            Some(bound) if is_gated(req.uri().path()) => match bound.enter() {
                Some(admitted) => {
                    req.extensions_mut().insert(admitted.clone());
                    Some(admitted)
                }
                None => {
                    self.metrics.requests_shed.inc();
                    return Err(crate::error::Error::Overloaded.into());
                }
            },
            _ => None,
        };
        if let Some(op) = HotOperation::of(&req) {
            // `BodyLimit` below has read the body into memory already.
            let data = req.take_body().into_bytes().await?;
            match Box::pin(self.api.call_hot(op, &req, &data)).await {
                Some(Ok(mut resp)) => {
                    let headers = resp.headers_mut();
                    headers.insert(header::CACHE_CONTROL, NO_STORE.clone());
                    headers.insert(header::PRAGMA, NO_CACHE.clone());
                    return Ok(resp);
                }
                Some(Err(err)) => return Err(err),
                None => req.set_body(data),
            }
        }
        Box::pin(self.router.call(req))
            .await
            .map(IntoResponse::into_response)
    }
}

/// The outermost answer-shaping layer: every error becomes a problem document; a 405 names the
/// methods its path supports (RFC 9110 `Allow`); the OAuth token endpoint's errors take the RFC
/// 6749 form; every answer says `X-Content-Type-Options: nosniff`. One layer, not four: each
/// layer costs a future and its copies on every request.
struct Edge<E> {
    inner: E,
    /// The methods of each path (and path template).
    allow: Arc<HashMap<String, String>>,
}

impl<E: Endpoint> Endpoint for Edge<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let uri = req.uri().clone();
        // Boxed, as in `ObserveEndpoint`: the layers above stay small.
        let mut resp = match Box::pin(self.inner.call(req)).await {
            Ok(resp) => resp.into_response(),
            Err(err) => problem_response(err),
        };
        let path = uri.path();
        if path == TOKEN_PATH && !resp.status().is_success() {
            resp = rewrite_problem(resp).await;
        }
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
            let methods = self.allow.get(path).or_else(|| {
                self.allow
                    .iter()
                    .find(|(t, _)| super::observe::template_matches(t, path))
                    .map(|(_, m)| m)
            });
            if let Some(value) = methods.and_then(|m| header::HeaderValue::from_str(m).ok()) {
                resp.headers_mut().insert(header::ALLOW, value);
            }
        }
        resp.headers_mut()
            .insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF.clone());
        Ok(resp)
    }
}

static NOSNIFF: header::HeaderValue = header::HeaderValue::from_static("nosniff");
static NO_STORE: header::HeaderValue = header::HeaderValue::from_static("no-store");
static NO_CACHE: header::HeaderValue = header::HeaderValue::from_static("no-cache");

/// CORS for browser clients: the origins of `CORS_ORIGINS` (`*` = any, development only).
fn cors(origins: &[String]) -> Option<poem::middleware::Cors> {
    if origins.is_empty() {
        return None;
    }
    let cors = poem::middleware::Cors::new()
        .allow_methods([poem::http::Method::GET, poem::http::Method::POST])
        .allow_headers(["authorization", "content-type", "x-request-id"])
        .expose_headers([
            "retry-after",
            "ratelimit",
            "ratelimit-policy",
            "x-request-id",
        ])
        .max_age(600);
    Some(if origins.iter().any(|o| o == "*") {
        cors
    } else {
        cors.allow_origins(origins)
    })
}

/// The methods of every path in the spec (`/api/auth/login` → `POST`), for `Allow` headers and
/// the `route` label of metrics.
fn spec_methods(spec_json: &str) -> HashMap<String, String> {
    let spec: serde_json::Value = serde_json::from_str(spec_json).unwrap_or_default();
    spec["paths"]
        .as_object()
        .map(|paths| {
            paths
                .iter()
                .map(|(path, ops)| {
                    let methods: Vec<String> = ops
                        .as_object()
                        .map(|o| o.keys().map(|m| m.to_ascii_uppercase()).collect())
                        .unwrap_or_default();
                    (path.clone(), methods.join(", "))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The Content-Security-Policy of the documentation pages: their scripts and styles are
/// inline (Swagger UI and Redoc ship as one self-contained page); nothing is fetched from
/// another origin (they work offline), and nothing may frame them.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; \
     style-src 'self' 'unsafe-inline'; font-src 'self' data:; img-src 'self' data:; \
     connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'none'";

/// The documentation pages with `document` embedded, and nothing fetched from a CDN (Redoc's
/// page links Google Fonts; it falls back to the system fonts).
fn docs_pages(api: &crate::api::Api, document: &str) -> (String, String) {
    let raw = api.spec();
    let embed = |html: String| html.replacen(&raw, document, 1);
    let redoc = embed(api.redoc_html())
        .lines()
        .filter(|line| !line.contains("fonts.googleapis.com"))
        .collect::<Vec<_>>()
        .join("\n");
    (embed(api.swagger_ui_html()), redoc)
}

/// A page of HTML.
fn html_page(html: String) -> impl Endpoint {
    poem::endpoint::make_sync(move |_| poem::web::Html(html.clone()))
}

/// All routes: the API, its docs and spec (when `DOCS_ENABLED`) and `/metrics` (unless it has
/// its own port), with every error rendered as problem+json, every request observed, and the
/// front door on every path but the probes and webhooks.
pub fn routes(state: Arc<AppState>) -> impl Endpoint {
    routes_with(state, None)
}

pub(super) fn routes_with(
    state: Arc<AppState>,
    connections: Option<Arc<Connections>>,
) -> impl Endpoint {
    let door = FrontDoor::new(
        state.settings.limits.frontdoor_per_second,
        state.settings.limits.frontdoor_burst,
    );
    if let Some(door) = &door {
        door.spawn_sweeper();
    }
    let gate = ClientGate {
        trusted: Arc::new(state.settings.limits.trusted_proxies.clone()),
        door,
        metrics: state.metrics.clone(),
        v6_prefix: state.settings.limits.ipv6_prefix,
    };
    let metrics = state.metrics.clone();
    let settings = state.settings.clone();
    let metrics_here = settings.server.metrics_port.is_none();
    let token = settings.server.metrics_token.clone();
    let api = crate::api::service(crate::api::Deps {
        auth: state.auth.clone(),
        messaging: state.messaging.clone(),
        store: state.store.clone(),
        db: state.db.clone(),
    });
    let mut allow = spec_methods(&api.spec());
    let mut extra = vec!["/metrics"];
    if settings.server.docs_enabled {
        extra.extend(["/docs", "/redoc", "/openapi.json"]);
    }
    for path in extra {
        allow.insert(path.to_string(), "GET".to_string());
    }
    let observed = Observe {
        metrics: metrics.clone(),
        routes: Arc::new(
            allow
                .keys()
                .cloned()
                .chain(["/docs/".to_string(), "/redoc/".to_string()])
                .collect(),
        ),
    };
    let allow = Arc::new(allow);
    let mut route = Route::new();
    if settings.server.docs_enabled {
        let docs_headers = || {
            SetHeader::new()
                .overriding(header::CONTENT_SECURITY_POLICY, DOCS_CSP)
                .overriding(header::X_FRAME_OPTIONS, "DENY")
                .overriding(header::REFERRER_POLICY, "no-referrer")
        };
        let document = crate::api::document(&api);
        let (swagger, redoc) = docs_pages(&api, &document);
        route = route
            .nest("/docs", html_page(swagger).with(docs_headers()))
            .nest("/redoc", html_page(redoc).with(docs_headers()))
            .at(
                "/openapi.json",
                poem::endpoint::make_sync(move |_| {
                    document
                        .clone()
                        .with_content_type("application/json; charset=utf-8")
                }),
            );
    }
    if metrics_here {
        route = route.at("/metrics", metrics_endpoint(metrics.clone(), token));
    }
    if !state.auth.admin_enabled() {
        // No ADMIN_API_KEYS: the admin API does not exist here (404, with or without a key).
        route = route.nest(
            "/admin",
            poem::endpoint::make(|_| async {
                Err::<(), poem::Error>(poem::error::NotFoundError.into())
            }),
        );
    }
    let tracked = connections.is_some();
    let gated = HotPaths {
        api: AuthApi {
            auth: state.auth.clone(),
        },
        router: route.nest("/", api.with(no_store())),
        in_flight: InFlight::new(settings.server.http_max_in_flight),
        metrics: metrics.clone(),
    }
    .with(BodyLimit {
        max: settings.server.body_limit_bytes,
    })
    .with(gate);
    let below = match cors(&settings.server.cors_origins) {
        // Errors become problem documents inside the CORS layer (which would otherwise render
        // framework errors as text/plain), so browsers get them with the CORS headers; the CORS
        // answer depends on `Origin`, so caches must keep one per origin.
        Some(cors) => EitherEndpoint::B(
            gated
                .catch_all_error(|err| async move { problem_response(err) })
                .with(cors)
                .with(SetHeader::new().appending(header::VARY, "Origin")),
        ),
        None => EitherEndpoint::A(gated),
    };
    Edge {
        inner: below,
        allow,
    }
    .with(observed)
    .with_if(
        tracked,
        TrackRequests {
            connections: connections
                .unwrap_or_else(|| Connections::new(connection_policy(&settings), metrics, false)),
        },
    )
}

pub(super) fn connection_policy(settings: &Settings) -> ConnectionPolicy {
    ConnectionPolicy {
        header_timeout: settings.server.http_header_timeout,
        max_total: settings.server.http_max_connections,
        max_per_ip: settings.server.http_max_connections_per_ip,
        trusted: Arc::new(settings.limits.trusted_proxies.clone()),
        v6_prefix: settings.limits.ipv6_prefix,
        idle_timeout: settings.server.http_idle_timeout,
    }
}

/// The routes of the separate metrics listener (`METRICS_PORT`).
pub(super) fn metrics_routes(
    metrics: Arc<Metrics>,
    token: Option<Secret>,
    connections: Arc<Connections>,
) -> impl Endpoint {
    Route::new()
        .at("/metrics", metrics_endpoint(metrics, token))
        .catch_all_error(|err| async move { problem_response(err) })
        .with(TrackRequests { connections })
}

#[cfg(test)]
mod tests {
    use poem::http::{Method, StatusCode};
    use poem::{Endpoint, Request};

    use super::{AuthApi, HotPaths, InFlight};
    use crate::app::state::AppState;
    use crate::config::Settings;

    /// An embedded app (SQLite in memory, codes exposed, no limits) and [`HotPaths`] over a
    /// router that answers 418 (a 418 means the request went to it).
    async fn hot_paths(
        in_flight: Option<std::sync::Arc<InFlight>>,
    ) -> (std::sync::Arc<AppState>, HotPaths<impl poem::Endpoint>) {
        let env = [
            ("DATABASE_URL", "sqlite::memory:"),
            ("JWT_SECRET_KEY", "0123456789abcdef0123456789abcdef"),
            ("EXPOSE_OTP", "true"),
            ("RATE_LIMIT_ENABLED", "false"),
        ];
        let settings = Settings::from_lookup(|k| {
            env.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
        .expect("settings");
        let state = AppState::build(settings).await.expect("state");
        let hot = HotPaths {
            api: AuthApi {
                auth: state.auth.clone(),
            },
            router: poem::endpoint::make_sync(|_| StatusCode::IM_A_TEAPOT),
            in_flight,
            metrics: state.metrics.clone(),
        };
        (state, hot)
    }

    #[tokio::test]
    async fn login_and_verify_are_answered_before_the_router() {
        let (_state, hot) = hot_paths(None).await;
        let call = |uri: &str, content_type: Option<&str>, body: &str| {
            let mut req = Request::builder().method(Method::POST).uri_str(uri);
            if let Some(value) = content_type {
                req = req.content_type(value);
            }
            hot.call(req.body(body.to_string()))
        };
        let json = Some("application/json");
        let login = r#"{"phone": "+919812347200"}"#;
        let sent = call("/api/auth/login", json, login).await.expect("login");
        assert_eq!(sent.status(), StatusCode::OK);
        assert_eq!(sent.headers()["cache-control"], "no-store");
        assert_eq!(sent.headers()["pragma"], "no-cache");
        let body: serde_json::Value =
            serde_json::from_str(&sent.into_body().into_string().await.unwrap()).unwrap();
        let code = body["otp_code"].as_str().expect("exposed code").to_string();
        // A refusal by the service is an error passed up, as the operation endpoint passes it.
        let wrong = if code == "000000" { "111111" } else { "000000" };
        let refused = call(
            "/api/auth/verify-otp",
            Some("application/vnd.api+json"),
            &format!(r#"{{"phone": "+919812347200", "otp_code": "{wrong}"}}"#),
        )
        .await;
        let err = refused.expect_err("a wrong code is an error");
        assert!(err.is::<crate::error::Error>(), "{err}");
        let verified = call(
            "/api/auth/verify-otp",
            json,
            &format!(r#"{{"phone": "+919812347200", "otp_code": "{code}"}}"#),
        )
        .await
        .expect("verify");
        assert_eq!(verified.status(), StatusCode::OK);
        assert_eq!(verified.headers()["cache-control"], "no-store");
        // Everything else goes to the router.
        for (uri, content_type, body) in [
            ("/api/auth/login?", json, login),
            ("/api/auth/login/", json, login),
            ("/api/auth/login", None, login),
            ("/api/auth/login", Some("text/plain"), login),
            ("/api/auth/login", json, r#"{"phone": 5}"#),
            ("/api/auth/login", json, "{"),
            ("/api/auth/refresh-token", json, "{}"),
        ] {
            let resp = call(uri, content_type, body).await.expect("router");
            assert_eq!(
                resp.status(),
                StatusCode::IM_A_TEAPOT,
                "{uri} {content_type:?} {body}"
            );
        }
    }

    /// Past `HTTP_MAX_IN_FLIGHT`, gated paths get 503 `overloaded` before any work; the probes
    /// do not count and are never refused; a place given back is taken again.
    #[tokio::test]
    async fn requests_past_the_in_flight_bound_are_shed() {
        let bound = InFlight::new(2).expect("a bound");
        let (state, hot) = hot_paths(Some(bound.clone())).await;
        let call = |method: Method, uri: &str| {
            hot.call(
                Request::builder()
                    .method(method)
                    .uri_str(uri)
                    .content_type("application/json")
                    .body(r#"{"phone": "+919812347201"}"#),
            )
        };
        // Two requests being served: every place is taken.
        let first = bound.enter().expect("a first place");
        let second = bound.enter().expect("a second place");
        assert!(bound.enter().is_none(), "a third place past a bound of 2");
        assert_eq!(bound.current(), 2);
        for uri in ["/api/auth/login", "/api/auth/refresh", "/api/auth/me"] {
            let err = call(Method::POST, uri).await.expect_err(uri);
            let resp = crate::api::problem::problem_response(err);
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{uri}");
            assert_eq!(resp.headers()["retry-after"], "1", "{uri}");
            let body = resp.into_body().into_string().await.expect("body");
            assert!(body.contains(r#""code":"overloaded""#), "{uri}: {body}");
        }
        assert_eq!(state.metrics.requests_shed.get(), 3);
        assert_eq!(bound.current(), 2, "a refused request holds no place");
        // The probes and the webhooks are not bounded.
        for uri in [
            "/health",
            "/ready",
            "/metrics",
            "/api/whatsapp/webhook",
            "/api/telegram/webhook",
            "/api/twilio/status",
        ] {
            let resp = call(Method::GET, uri).await.expect(uri);
            assert_eq!(resp.status(), StatusCode::IM_A_TEAPOT, "{uri}");
        }
        // A place given back (the request ended) is taken by the next one.
        drop(first);
        let sent = call(Method::POST, "/api/auth/login").await.expect("login");
        assert_eq!(sent.status(), StatusCode::OK);
        assert_eq!(bound.current(), 1, "the login gave its place back");
        drop(second);
        assert_eq!(bound.current(), 0);
        assert!(InFlight::new(0).is_none(), "HTTP_MAX_IN_FLIGHT=0: no bound");
    }
}
