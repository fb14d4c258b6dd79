//! The layers every request passes, outermost first: a request id (the
//! client's own only if short and plain), one span and one log line per
//! request, the id echoed back, the id in scope for error bodies, a rate per
//! client address (`HTTP_RATE_LIMIT`, X-Forwarded-For believed only from
//! `HTTP_TRUSTED_PROXIES`; the sign-up routes have a lower one of their own,
//! `HTTP_SIGNUP_RATE_LIMIT`, see [`signup_rate`]), at most `HTTP_MAX_IN_FLIGHT` requests at once and
//! each within `HTTP_REQUEST_TIMEOUT`, a panic turned into the JSON 500, and
//! the body limit. Each refusal is the usual error JSON.

use std::{
    any::Any,
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderName, Response},
    middleware::{self, Next},
    response::IntoResponse,
};
use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};
use tokio::sync::Semaphore;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    timeout::RequestBodyTimeoutLayer,
    trace::TraceLayer,
};
use tracing::Span;
use utoipa_axum::router::OpenApiRouter;

use super::error::{ApiError, REQUEST_ID};
use crate::{
    config::HttpConfig,
    metrics::{self, Refusal},
    telemetry,
};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id a client may choose.
const MAX_CLIENT_REQUEST_ID: usize = 64;

/// Limits shared by every request.
#[derive(Clone)]
struct Limits {
    in_flight: Arc<Semaphore>,
    timeout: Duration,
    per_client: Option<Arc<PerClient>>,
}

/// The rate limit per client address.
struct PerClient {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    trusted_proxies: Vec<IpAddr>,
    /// Requests seen, to forget idle clients now and then.
    seen: AtomicU64,
}

/// An X-Forwarded-For entry: an address, with or without a port.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|a| a.to_canonical())
}

/// The key a client is counted under: its IPv4 address, or its IPv6 /64 (a
/// host usually has a whole /64 and could take a new address per request).
fn rate_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
    }
}

/// Every this many requests, clients whose allowance is full again are
/// forgotten, so the table holds only recent clients.
const FORGET_EVERY: u64 = 4096;

impl PerClient {
    fn new(quota: Quota, http: &HttpConfig) -> Self {
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            trusted_proxies: http
                .trusted_proxies
                .iter()
                .map(|a| a.to_canonical())
                .collect(),
            seen: AtomicU64::new(0),
        }
    }

    /// The client's address: the peer, or, when the peer is a trusted proxy,
    /// the last address in X-Forwarded-For that is not one (proxies append
    /// the address they received from; anything before can be forged).
    fn client(&self, req: &Request) -> Option<IpAddr> {
        // IPv4 peers of a dual-stack socket arrive as ::ffff:a.b.c.d.
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()?
            .0
            .ip()
            .to_canonical();
        if !self.trusted_proxies.contains(&peer) {
            return Some(peer);
        }
        let entries: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        // From the right: the entries our proxies appended, then the client.
        // An entry that does not read as an address ends the walk (it could
        // hide where the forged part begins): the proxy's own address counts.
        let mut client = peer;
        for entry in entries.iter().rev() {
            let Some(addr) = parse_forwarded(entry) else {
                break;
            };
            client = addr;
            if !self.trusted_proxies.contains(&addr) {
                break;
            }
        }
        Some(client)
    }

    /// `Err(wait)` when `req`'s client is over its rate.
    fn check(&self, req: &Request) -> Result<(), Duration> {
        if self.seen.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.limiter.retain_recent();
        }
        // Without the peer's address (a server not started with it), no
        // limit rather than one bucket for everybody.
        let Some(client) = self.client(req) else {
            return Ok(());
        };
        self.limiter
            .check_key(&rate_key(client))
            .map_err(|not_until| {
                not_until.wait_time_from(governor::clock::DefaultClock::default().now())
            })
    }
}

/// `router` behind the edge's layers.
pub fn layers<S: Clone + Send + Sync + 'static>(router: Router<S>, http: &HttpConfig) -> Router<S> {
    let per_client = NonZeroU32::new(http.rate_limit).map(|per_minute| {
        let burst = NonZeroU32::new(http.rate_burst).unwrap_or(NonZeroU32::MIN);
        Arc::new(PerClient::new(
            Quota::per_minute(per_minute).allow_burst(burst),
            http,
        ))
    });
    let limits = Limits {
        in_flight: Arc::new(Semaphore::new(http.max_in_flight)),
        timeout: http.request_timeout,
        per_client,
    };
    router
        .layer(DefaultBodyLimit::max(http.body_limit))
        // A body sent a byte at a time must not hold an in-flight slot for
        // the whole request timeout.
        .layer(RequestBodyTimeoutLayer::new(http.header_timeout))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(limits, limit))
        .layer(middleware::from_fn(count_request))
        .layer(middleware::from_fn(scope_request_id))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(|res: &Response<_>, took: Duration, span: &Span| {
                    if telemetry::context::enabled() {
                        let status = res.status().as_u16();
                        span.record("http.response.status_code", status);
                        if status >= 500 {
                            span.record("otel.status_code", "error");
                        }
                    }
                    tracing::info!(
                        status_code = res.status().as_u16(),
                        duration_ms = took.as_secs_f64() * 1000.0,
                        "received an HTTP request"
                    );
                })
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, RandomRequestId))
        .layer(middleware::from_fn(plain_request_id))
}

/// `routes` (sign-up and the request for a new link) behind a rate of
/// their own per client address, HTTP_SIGNUP_RATE_LIMIT an hour: each
/// request there can send an email to an address the client chose, so
/// the general rate would let one client send thousands.
pub fn signup_rate<S: Clone + Send + Sync + 'static>(
    routes: OpenApiRouter<S>,
    http: &HttpConfig,
) -> OpenApiRouter<S> {
    let Some(per_hour) = NonZeroU32::new(http.signup_rate_limit) else {
        return routes;
    };
    let burst = NonZeroU32::new(http.signup_rate_burst).unwrap_or(NonZeroU32::MIN);
    let per_client = Arc::new(PerClient::new(
        Quota::per_hour(per_hour).allow_burst(burst),
        http,
    ));
    routes.route_layer(middleware::from_fn_with_state(per_client, limit_signups))
}

async fn limit_signups(
    State(per_client): State<Arc<PerClient>>,
    req: Request,
    next: Next,
) -> axum::response::Response {
    if let Err(wait) = per_client.check(&req) {
        metrics::edge_refused(Refusal::SignupRate);
        return ApiError::TooManyRequests {
            message: "too many sign-ups and link requests from this address; try again later"
                .into(),
            retry_after: wait,
        }
        .into_response();
    }
    next.run(req).await
}

/// The span of one request, every line it logs carries its id. With tracing
/// on, an HTTP server span (OpenTelemetry's conventions) that continues the
/// client's trace when it sent a `traceparent`.
fn request_span(req: &Request) -> Span {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !telemetry::context::enabled() {
        return tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    // OpenTelemetry's HTTP conventions: a method outside the known set is
    // _OTHER (a client may send any token), and a request no route matched
    // is named by its method alone.
    let method = match req.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE"
        | "PATCH") => m,
        _ => "_OTHER",
    };
    let span = tracing::info_span!(
        "request",
        otel.name = match route {
            Some(route) => format!("{method} {route}"),
            None => method.to_owned(),
        },
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        url.scheme = "http",
        url.path = %req.uri().path(),
        http.response.status_code = tracing::field::Empty,
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    telemetry::context::adopt_client_context(&span, req.headers());
    span
}

/// A random (v4) UUID per request, from the thread's CSPRNG: `Uuid::new_v4`
/// would make a getrandom system call for every request.
#[derive(Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::Rng::random(&mut rand::rng())).into_uuid();
        Some(RequestId::new(id.to_string().parse().ok()?))
    }
}

/// A client's `x-request-id` is kept only if short and plain (letters,
/// digits, `-`, `_`, `.`): it goes into every log line of the request, where
/// anything else could forge or break lines. Otherwise a new one is made.
async fn plain_request_id(mut req: Request, next: Next) -> axum::response::Response {
    let plain = req.headers().get(&X_REQUEST_ID).is_none_or(|v| {
        v.len() <= MAX_CLIENT_REQUEST_ID
            && !v.is_empty()
            && v.as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    if !plain {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
    next.run(req).await
}

/// Over its rate, a client gets 429 with Retry-After. At most
/// `HTTP_MAX_IN_FLIGHT` requests are worked on at once; one more is
/// refused at once (503 with Retry-After) instead of waiting, so a crowd
/// costs a fast answer each, not memory and time for all of them. Each
/// request gets `HTTP_REQUEST_TIMEOUT`.
async fn limit(State(limits): State<Limits>, req: Request, next: Next) -> axum::response::Response {
    // Probes pass: an orchestrator must not restart a busy process for it.
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    if let Some(per_client) = &limits.per_client
        && let Err(wait) = per_client.check(&req)
    {
        metrics::edge_refused(Refusal::RateLimit);
        return ApiError::TooManyRequests {
            message: "too many requests from this address; try again later".into(),
            retry_after: wait,
        }
        .into_response();
    }
    let Ok(_permit) = limits.in_flight.try_acquire_owned() else {
        metrics::edge_refused(Refusal::InFlight);
        return ApiError::Busy {
            message: "too many requests at once; try again shortly".into(),
            retry_after: Duration::from_secs(1),
        }
        .into_response();
    };
    match tokio::time::timeout(limits.timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::edge_refused(Refusal::Timeout);
            ApiError::Busy {
                message: "the request took too long; try again shortly".into(),
                retry_after: Duration::from_secs(1),
            }
            .into_response()
        }
    }
}

/// Counts every answered request by route (the pattern, so a client making
/// up paths adds no series), method and status, with its duration. Inside
/// the routing, outside the limits: refusals are counted too.
async fn count_request(req: Request, next: Next) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    // Methods outside the usual few (any token is valid) share one label.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_owned(),
        _ => "other".to_owned(),
    };
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    metrics::http_request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Makes the request id available to [`ApiError`]'s response body.
async fn scope_request_id(req: Request, next: Next) -> axum::response::Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    REQUEST_ID.scope(id, next.run(req)).await
}

/// A handler that panicked answers the usual JSON 500 (the panic is logged
/// with the request id, not returned).
fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<axum::body::Body> {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    ApiError::Internal(anyhow::anyhow!("handler panicked: {message}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_entries_and_rate_keys() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(parse_forwarded("10.0.0.1"), Some(ip("10.0.0.1")));
        assert_eq!(parse_forwarded("10.0.0.1:4711"), Some(ip("10.0.0.1")));
        assert_eq!(
            parse_forwarded("[2001:db8::1]:443"),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(parse_forwarded("::ffff:10.0.0.1"), Some(ip("10.0.0.1")));
        assert_eq!(parse_forwarded("unknown"), None);
        assert_eq!(rate_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(rate_key(ip("2001:db8:1:2:aaaa::9")), ip("2001:db8:1:2::"));
    }
}
