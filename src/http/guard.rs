//! Who may call the peer and membership routes, and how much any route may take.
//!
//! `/raft/*` and `/cluster/*` change the cluster itself (append to logs, install snapshots,
//! add and remove members), so with `--cluster-token` every request to them must carry
//! `Authorization: Bearer <token>`, and with `--tls-ca` it must arrive on a connection that
//! presented a client certificate from that CA. Anything else gets 401 before a handler runs.
//! The token is compared in constant time, so response timing does not leak it.
//!
//! Limits: each group of routes has its own cap on requests in flight (an overload of client
//! traffic cannot starve Raft's own messages), and peer requests have a deadline.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::listener::Remote;

/// Requests in flight on the client routes (`/files`, `/status`, `/log`) before 503.
pub(crate) const MAX_CLIENT_REQUESTS: usize = 1024;
/// Requests in flight on the peer and membership routes before 503.
pub(crate) const MAX_PEER_REQUESTS: usize = 256;

/// What a peer or operator must show.
pub(crate) struct PeerGuard {
    token: Option<Vec<u8>>,
    require_client_cert: bool,
}

impl PeerGuard {
    /// A guard for the given token and mutual-TLS requirement.
    pub(crate) fn new(token: Option<&str>, require_client_cert: bool) -> Self {
        PeerGuard {
            token: token.map(|t| t.as_bytes().to_vec()),
            require_client_cert,
        }
    }

    fn admits(&self, req: &Request) -> Result<(), &'static str> {
        if self.require_client_cert {
            let verified = req
                .extensions()
                .get::<ConnectInfo<Remote>>()
                .is_some_and(|c| c.0.verified_client);
            if !verified {
                return Err("peer and membership routes need a client certificate from the cluster's CA");
            }
        }
        if let Some(token) = &self.token {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
                .unwrap_or_default();
            if !constant_time_eq(given, token) {
                return Err("missing or wrong cluster token (send Authorization: Bearer <token>)");
            }
        }
        Ok(())
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Middleware: refuses with 401 whatever the guard does not admit.
pub(crate) async fn require_member(
    State(guard): State<Arc<PeerGuard>>,
    req: Request,
    next: Next,
) -> Response {
    match guard.admits(&req) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            let from = req.extensions().get::<ConnectInfo<Remote>>().map(|c| c.0.addr);
            tracing::debug!(path = %req.uri().path(), ?from, why, "refused an unauthenticated peer request");
            (StatusCode::UNAUTHORIZED, format!("{why}\n")).into_response()
        }
    }
}

/// A cap on requests in flight, an optional deadline for each, and an optional body size
/// that a declared `Content-Length` may not exceed.
#[derive(Clone)]
pub(crate) struct Limits {
    permits: Arc<Semaphore>,
    deadline: Option<Duration>,
    max_body: Option<usize>,
}

impl Limits {
    /// At most `max` requests at once, each given at most `deadline` if set.
    pub(crate) fn new(max: usize, deadline: Option<Duration>) -> Self {
        Limits {
            permits: Arc::new(Semaphore::new(max)),
            deadline,
            max_body: None,
        }
    }

    /// Also refuse, before reading any of it, a body declared larger than `bytes`. (Bodies
    /// without a length are still cut off at the limit by the extractors.)
    pub(crate) fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = Some(bytes);
        self
    }
}

/// Middleware: 413 for a declared body over the limit, 503 when too many requests are in
/// flight, 503 when one overruns its deadline.
pub(crate) async fn limit(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let (Some(max), Some(len)) = (limits.max_body, declared) {
        if len > max as u64 {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body exceeds the limit of {max} bytes\n"),
            )
                .into_response();
        }
    }
    let Ok(_permit) = limits.permits.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in flight; retry later\n",
        )
            .into_response();
    };
    match limits.deadline {
        None => next.run(req).await,
        Some(deadline) => match tokio::time::timeout(deadline, next.run(req)).await {
            Ok(response) => response,
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no answer within {deadline:?}\n"),
            )
                .into_response(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::middleware::from_fn_with_state;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    fn request(path: &str, headers: &[(&str, &str)]) -> Request {
        let mut req = axum::http::Request::post(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn limits_refuse_overload_overrun_and_big_bodies() {
        let limits = Limits::new(1, Some(Duration::from_millis(200))).max_body(10);
        let app = Router::new()
            .route(
                "/slow",
                post(|| async { tokio::time::sleep(Duration::from_secs(30)).await }),
            )
            .route("/fast", post(|| async { "ok" }))
            .layer(from_fn_with_state(limits, limit));
        assert_eq!(
            app.clone().oneshot(request("/fast", &[])).await.unwrap().status(),
            StatusCode::OK
        );
        let big = app
            .clone()
            .oneshot(request("/fast", &[("content-length", "11")]))
            .await
            .unwrap();
        assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // One slow request holds the only permit: the next is refused at once, then the slow
        // one is cut off at its deadline and the permit comes back.
        let slow = tokio::spawn(app.clone().oneshot(request("/slow", &[])));
        tokio::task::yield_now().await;
        let mut busy = StatusCode::OK;
        for _ in 0..100 {
            busy = app.clone().oneshot(request("/fast", &[])).await.unwrap().status();
            if busy != StatusCode::OK {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(busy, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            slow.await.unwrap().unwrap().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            app.oneshot(request("/fast", &[])).await.unwrap().status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn the_guard_wants_the_exact_token() {
        let guard = Arc::new(PeerGuard::new(Some("s3cret"), false));
        let app = Router::new()
            .route("/raft/x", post(|| async { "ok" }))
            .layer(from_fn_with_state(guard, require_member));
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("s3cret"),
            Some("Bearer s3cret "),
            Some("bearer s3cret"),
        ] {
            let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
            let status = app
                .clone()
                .oneshot(request("/raft/x", &headers))
                .await
                .unwrap()
                .status();
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        }
        let ok = app
            .oneshot(request("/raft/x", &[("authorization", "Bearer s3cret")]))
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
