//! Routes for operators and their tools: `/metrics`, `/healthz`, `/readyz`, `/backup`, and
//! `POST /cluster/snapshot`; plus the middleware that logs and counts every request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::metrics::{self, HttpRequest, Route};
use crate::node::Node;

/// The header carrying a request's id: taken from the client if it sent one, else made up;
/// echoed in the answer and written in the access log.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// Bytes per piece of a streamed backup.
const BACKUP_PIECE: usize = 256 << 10;

/// `GET /metrics`: Prometheus text.
pub(crate) async fn metrics(State(node): State<Arc<Node>>) -> Result<Response> {
    let text = tokio::task::spawn_blocking(move || node.metrics_text())
        .await
        .map_err(|e| Error::io("collect metrics", std::io::Error::other(e)))?;
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, kind)], text).into_response())
}

/// `GET /healthz`: 200 while the Raft core runs, else 503 and why.
pub(crate) async fn healthz(State(node): State<Arc<Node>>) -> Response {
    match node.health() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// `GET /readyz`: 200 when the node can serve without catching up first, else 503 and why.
pub(crate) async fn readyz(State(node): State<Arc<Node>>) -> Response {
    match node.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

/// `GET /backup`: the tree at one applied index as a tar archive, streamed. The index and
/// term are in the suggested file name, in the `raftd-backup.json` entry, and in headers.
pub(crate) async fn backup(State(node): State<Arc<Node>>) -> Result<Response> {
    let source = node.clone();
    let backup = tokio::task::spawn_blocking(move || source.state().backup(&source.name))
        .await
        .map_err(|e| Error::io("take backup", std::io::Error::other(e)))?
        .map_err(|e| Error::io("take backup", e))?;
    let info = backup.info().clone();
    metrics::events().backups.inc();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(BACKUP_PIECE),
        };
        let written = backup.write_tar(&mut out).and_then(|()| out.send_buf());
        if let Err(e) = written {
            tracing::warn!(cause = %e, "backup stream stopped");
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|piece| (piece, rx)) },
        );
    let disposition = format!("attachment; filename=\"{}\"", info.file_name());
    let headers = [
        (header::CONTENT_TYPE, "application/x-tar".to_string()),
        (header::CONTENT_DISPOSITION, disposition),
        (
            header::HeaderName::from_static("raftd-backup-index"),
            info.index.to_string(),
        ),
        (
            header::HeaderName::from_static("raftd-backup-term"),
            info.term.to_string(),
        ),
        (
            header::HeaderName::from_static("raftd-backup-bytes"),
            info.bytes.to_string(),
        ),
    ];
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// Feeds a blocking writer's bytes to the response stream in pieces.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send_buf(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(BACKUP_PIECE)));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BACKUP_PIECE {
            self.send_buf()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buf()
    }
}

/// What `POST /cluster/snapshot` answers.
#[derive(Debug, Serialize)]
pub(crate) struct SnapshotTaken {
    /// This node's name.
    name: String,
    /// The index its newest snapshot covers now.
    snapshot_index: Option<u64>,
}

/// `POST /cluster/snapshot`: this node builds a snapshot of everything it has applied and
/// compacts its log; answers once the snapshot is in place.
pub(crate) async fn snapshot(State(node): State<Arc<Node>>) -> Result<Json<SnapshotTaken>> {
    let snapshot_index = node.snapshot_now(SNAPSHOT_WAIT).await?;
    Ok(Json(SnapshotTaken {
        name: node.name.clone(),
        snapshot_index,
    }))
}

/// Middleware: gives each request an id, counts it by route and status, times it, and logs
/// it (target `raftd::access`, at debug level: `-v` shows it).
pub(crate) async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().to_string();
    // The path only for the access log, and only when that log is on: this runs per request.
    let path = tracing::enabled!(target: "raftd::access", tracing::Level::DEBUG)
        .then(|| req.uri().path().to_string());
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| format!("{:016x}", rand::random::<u64>()), str::to_string);
    let mut response = next.run(req).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let events = metrics::events();
    events
        .http_requests
        .get_or_create(&HttpRequest {
            route: route.clone(),
            method: method.clone(),
            status,
        })
        .inc();
    events
        .http_seconds
        .get_or_create(&Route { route })
        .observe(metrics::secs(elapsed));
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    if let Some(path) = path {
        tracing::debug!(target: "raftd::access", request_id = %id, %method, %path, status, micros = elapsed.as_micros() as u64, "request");
    }
    response
}

/// How long `POST /cluster/snapshot` waits for the snapshot.
pub(crate) const SNAPSHOT_WAIT: Duration = Duration::from_secs(120);
