//! A small pooled HTTP/1 client for peer RPC, leader forwarding and joining.
//!
//! One client (one connection pool) per node, cloned cheaply into every user: openraft calls
//! `new_client` inside its core loop, so handing out a connection must never dial. Every
//! request carries the cluster token, if there is one, and uses the cluster's scheme (HTTPS
//! with `--tls-cert`); a response body larger than the limit is cut off as an error, so a
//! misbehaving peer cannot make this node buffer without bound.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{de::DeserializeOwned, Serialize};

use crate::config::Config;
use crate::error::Result;

/// Request header carrying how many milliseconds the caller will still wait for the answer:
/// a leader serving a forwarded request never waits longer than its caller.
pub const DEADLINE_HEADER: &str = "raftd-deadline-ms";

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
#[derive(Debug)]
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

/// Peers this node must not reach: a test's way to cut network links between nodes that run
/// in one process. Empty in a real node.
#[derive(Clone, Default)]
pub struct Links(Arc<Mutex<HashSet<String>>>);

impl Links {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().expect("links lock poisoned")
    }

    /// From now on, requests to `addr` fail as if it were unreachable.
    pub fn cut(&self, addr: &str) {
        self.set().insert(addr.to_string());
    }

    /// Requests to `addr` go through again.
    pub fn heal(&self, addr: &str) {
        self.set().remove(addr);
    }

    fn is_cut(&self, addr: &str) -> bool {
        self.set().contains(addr)
    }
}

/// Pooled client; clone freely.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    scheme: &'static str,
    auth: Option<HeaderValue>,
    max_response: usize,
    links: Links,
}

impl HttpClient {
    /// A client for talking to the members of this node's cluster: its scheme, TLS trust and
    /// token; responses up to the peer body limit.
    pub fn for_cluster(config: &Config) -> Result<Self> {
        let tls = match &config.tls {
            Some(tls) => crate::tls::client_config(tls)?,
            None => crate::tls::unused_client_config(),
        };
        let auth = match &config.cluster_token {
            Some(token) => Some(
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| crate::Error::Config("the cluster token must be printable ASCII".into()))?,
            ),
            None => None,
        };
        Ok(Self::new(tls, config.scheme(), auth, config.peer_body_limit()))
    }

    /// A plain-HTTP client without a token (benchmarks, tools), reading answers up to 64 MiB.
    pub fn plain() -> Self {
        Self::new(crate::tls::unused_client_config(), "http", None, 64 << 20)
    }

    /// A plain-HTTP client for the operator's tools, sending the cluster token if given.
    pub fn for_tool(token: Option<&str>) -> Result<Self> {
        let auth = match token {
            Some(token) => Some(
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| crate::Error::Config("the cluster token must be printable ASCII".into()))?,
            ),
            None => None,
        };
        Ok(Self::new(
            crate::tls::unused_client_config(),
            "http",
            auth,
            64 << 20,
        ))
    }

    /// A client with keep-alive pooling and `TCP_NODELAY` (RPCs are small and latency-bound).
    pub fn new(
        tls: rustls::ClientConfig,
        scheme: &'static str,
        auth: Option<HeaderValue>,
        max_response: usize,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        HttpClient {
            inner,
            scheme,
            auth,
            max_response,
            links: Links::default(),
        }
    }

    /// The same client, refusing to reach the peers `links` cuts off.
    pub fn with_links(mut self, links: Links) -> Self {
        self.links = links;
        self
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
        self.send_with(method, addr, path, body, timeout, None).await
    }

    /// [`send`](Self::send), optionally telling the peer the caller's deadline.
    async fn send_with(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        body: impl Into<Bytes>,
        timeout: Duration,
        deadline_header: Option<Duration>,
    ) -> Result<Response, SendError> {
        if self.links.is_cut(addr) {
            return Err(SendError::Connect(
                addr.to_string(),
                "the link to it is cut".into(),
            ));
        }
        let uri = format!("{}://{addr}{path}", self.scheme);
        let mut request = Request::builder()
            .method(method)
            .uri(&uri)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(auth) = &self.auth {
            request = request.header(hyper::header::AUTHORIZATION, auth.clone());
        }
        if let Some(left) = deadline_header {
            request = request.header(DEADLINE_HEADER, left.as_millis().to_string());
        }
        let request = request
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
            let body = Limited::new(response.into_body(), self.max_response)
                .collect()
                .await
                .map_err(|e| SendError::Other(addr.to_string(), format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Response { status, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| SendError::Timeout(addr.to_string(), timeout))?
    }

    /// Sends a request with extra headers and returns the response as soon as its head
    /// arrives (within `timeout`), its body unread: for large or endless answers (downloads,
    /// followed logs), read at the caller's pace and without the size limit.
    pub async fn open(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<hyper::Response<hyper::body::Incoming>, SendError> {
        let uri = format!("{}://{addr}{path}", self.scheme);
        let mut request = Request::builder().method(method).uri(&uri);
        if let Some(auth) = &self.auth {
            request = request.header(hyper::header::AUTHORIZATION, auth.clone());
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| SendError::Other(addr.to_string(), e.to_string()))?;
        let response = tokio::time::timeout(timeout, self.inner.request(request))
            .await
            .map_err(|_| SendError::Timeout(addr.to_string(), timeout))?;
        response.map_err(|e| {
            if e.is_connect() {
                SendError::Connect(addr.to_string(), source_text(&e))
            } else {
                SendError::Other(addr.to_string(), source_text(&e))
            }
        })
    }

    /// POSTs `value` as JSON.
    pub async fn post_json<T: Serialize + ?Sized>(
        &self,
        addr: &str,
        path: &str,
        value: &T,
        timeout: Duration,
    ) -> Result<Response, SendError> {
        self.post(addr, path, value, timeout, None).await
    }

    /// POSTs `value` as JSON to a peer that should give up when the caller does: the request
    /// carries `timeout` in [`DEADLINE_HEADER`].
    pub async fn post_json_within<T: Serialize + ?Sized>(
        &self,
        addr: &str,
        path: &str,
        value: &T,
        timeout: Duration,
    ) -> Result<Response, SendError> {
        self.post(addr, path, value, timeout, Some(timeout)).await
    }

    async fn post<T: Serialize + ?Sized>(
        &self,
        addr: &str,
        path: &str,
        value: &T,
        timeout: Duration,
        deadline_header: Option<Duration>,
    ) -> Result<Response, SendError> {
        let body =
            serde_json::to_vec(value).map_err(|e| SendError::Other(addr.to_string(), e.to_string()))?;
        self.send_with(Method::POST, addr, path, body, timeout, deadline_header)
            .await
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer that answers any request with a 200 and `len` bytes.
    async fn peer_answering(len: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request).await;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&vec![b'x'; len]).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn answers_over_the_limit_are_cut_off() {
        let client = HttpClient::new(crate::tls::unused_client_config(), "http", None, 1024);
        let small = peer_answering(1000).await;
        let answer = client
            .post_json(&small, "/", &(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.body.len(), 1000);
        let big = peer_answering(1 << 20).await;
        let err = client
            .post_json(&big, "/", &(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("reading the answer"), "{err}");
    }

    #[tokio::test]
    async fn a_cut_link_is_unreachable() {
        let links = Links::default();
        let client = HttpClient::plain().with_links(links.clone());
        let addr = peer_answering(2).await;
        links.cut(&addr);
        let err = client
            .post_json(&addr, "/", &(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, SendError::Connect(..)), "{err}");
        links.heal(&addr);
        client
            .post_json(&addr, "/", &(), Duration::from_secs(5))
            .await
            .unwrap();
    }
}
