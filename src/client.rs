//! A small pooled HTTP/1 client for peer RPC, leader forwarding and joining.
//!
//! One client (one connection pool) per node, cloned cheaply into every user: openraft calls
//! `new_client` inside its core loop, so handing out a connection must never dial.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{de::DeserializeOwned, Serialize};

/// How long an idle pooled connection to a peer is kept.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Why a request produced no HTTP response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: the peer is down or unreachable (nothing was sent).
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    /// No response within the deadline (the request may or may not have been processed).
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// The connection failed mid-request.
    #[error("request to {0} failed: {1}")]
    Other(String, String),
}

/// An HTTP response: status and whole body.
pub struct Response {
    /// HTTP status.
    pub status: StatusCode,
    /// Response body.
    pub body: Bytes,
}

impl Response {
    /// Decodes a JSON body.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The body as text, for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

/// Pooled client; clone freely.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    /// A client with keep-alive pooling and `TCP_NODELAY` (RPCs are small and latency-bound).
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let inner = Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build(connector);
        HttpClient { inner }
    }

    /// Sends one request to `addr` (`host:port`) and reads the whole response.
    pub async fn send(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        body: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Response, SendError> {
        let uri = format!("http://{addr}{path}");
        let request = Request::builder()
            .method(method)
            .uri(&uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.into()))
            .map_err(|e| SendError::Other(addr.to_string(), e.to_string()))?;
        let exchange = async {
            let response = self.inner.request(request).await.map_err(|e| {
                if e.is_connect() {
                    SendError::Connect(addr.to_string(), source_text(&e))
                } else {
                    SendError::Other(addr.to_string(), source_text(&e))
                }
            })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| SendError::Other(addr.to_string(), e.to_string()))?
                .to_bytes();
            Ok(Response { status, body })
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| SendError::Timeout(addr.to_string(), timeout))?
    }

    /// POSTs `value` as JSON.
    pub async fn post_json<T: Serialize + ?Sized>(
        &self,
        addr: &str,
        path: &str,
        value: &T,
        timeout: Duration,
    ) -> Result<Response, SendError> {
        let body = serde_json::to_vec(value).map_err(|e| SendError::Other(addr.to_string(), e.to_string()))?;
        self.send(Method::POST, addr, path, body, timeout).await
    }
}

/// The innermost cause, which is what a person needs ("Connection refused").
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
