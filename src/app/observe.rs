//! Middleware: request id, span, access log and HTTP metrics for every request.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use poem::http::HeaderValue;
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use tracing::Instrument;

use crate::telemetry::{Metrics, UNMATCHED_ROUTE, sane_request_id, with_request_id};

/// The `method` label: the standard methods by name, anything else as `other` (any token is a
/// valid HTTP method, so labelling raw methods would let a client mint series without bound).
pub fn method_label(method: &poem::http::Method) -> &'static str {
    use poem::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Middleware: request id, span, access log and HTTP metrics for every request.
pub struct Observe {
    /// Where the HTTP metrics go.
    pub metrics: Arc<Metrics>,
    /// The route templates that get their own label.
    pub routes: Arc<HashSet<String>>,
}

impl<E: Endpoint> Middleware<E> for Observe {
    type Output = ObserveEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        ObserveEndpoint {
            inner: ep,
            metrics: self.metrics.clone(),
            routes: self.routes.clone(),
        }
    }
}

/// The endpoint [`Observe`] wraps.
pub struct ObserveEndpoint<E> {
    inner: E,
    metrics: Arc<Metrics>,
    routes: Arc<HashSet<String>>,
}

impl<E: Endpoint> Endpoint for ObserveEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Self::Output> {
        let started = Instant::now();
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| sane_request_id(v))
            .map_or_else(
                || crate::domain::ids::random_uuid().simple().to_string(),
                str::to_string,
            );
        let method = method_label(req.method());
        let path = req.uri().path();
        let route: &str = if let Some(known) = self.routes.get(path) {
            known
        } else if let Some(template) = self.routes.iter().find(|t| template_matches(t, path)) {
            template
        } else {
            UNMATCHED_ROUTE
        };
        let span = tracing::info_span!("request", request_id = %request_id, method, route = %route);

        let result = with_request_id(
            request_id.clone(),
            // Boxed: the layers below hold kilobytes of futures, which would otherwise be
            // copied into each layer above (and once more per layer on the way in).
            Box::pin(self.inner.call(req)).instrument(span.clone()),
        )
        .await;
        // Errors that escaped every handler still become a response, so they are measured.
        let mut resp = match result {
            Ok(resp) => resp.into_response(),
            Err(err) => with_request_id(request_id.clone(), async { err.into_response() }).await,
        };
        let status = resp.status().as_u16();
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert("x-request-id", value);
        }
        let elapsed = started.elapsed();
        self.metrics
            .http_requests
            .with_label_values(&[method, route, resp.status().as_str()])
            .inc();
        self.metrics
            .http_duration
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
        span.in_scope(|| {
            tracing::info!(
                status,
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                "request"
            );
        });
        Ok(resp)
    }
}

/// Whether request `path` is an instance of route `template` with parameters
/// (`/api/auth/sessions/{id}`): the same segments, each `{name}` matching one non-empty segment.
pub(super) fn template_matches(template: &str, path: &str) -> bool {
    if !template.contains('{') {
        return false;
    }
    let mut wanted = template.split('/');
    let mut given = path.split('/');
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') && !g.is_empty() => {}
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod template_tests {
    use super::template_matches;

    #[test]
    fn parameters_match_one_segment() {
        let t = "/admin/v1/users/{id}/block";
        assert!(template_matches(t, "/admin/v1/users/0193/block"));
        assert!(!template_matches(t, "/admin/v1/users//block"));
        assert!(!template_matches(t, "/admin/v1/users/a/b/block"));
        assert!(!template_matches(t, "/admin/v1/users/0193/unblock"));
        assert!(!template_matches("/api/auth/login", "/api/auth/login"));
    }
}
