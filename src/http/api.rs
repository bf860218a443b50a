//! The client API: `/files/<path>`, `/status`, `/log`.
//!
//! Reads are linearizable by default on every node (a read-index barrier through the leader,
//! then the local replica); `?consistency=stale` reads the local replica at once. A GET on a
//! directory lists it, one name per line, directories with a trailing `/`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::names;
use crate::node::{MemberStatus, Node, Status};

/// `?consistency=` values.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Consistency {
    /// Sees every write acknowledged before the read began (default).
    #[default]
    Linearizable,
    /// The local replica as it is; may lag on followers and during partitions.
    Stale,
}

/// Query parameters of a read.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ReadParams {
    #[serde(default)]
    consistency: Consistency,
    /// `json`: a directory listing as JSON entries with sizes and mtimes.
    format: Option<String>,
}

/// One entry of a JSON directory listing.
#[derive(Debug, Serialize)]
struct ListEntry {
    name: String,
    dir: bool,
    size: u64,
    /// Milliseconds since the epoch.
    mtime_ms: u64,
}

/// `GET /files/<path>`: a file's bytes, or a directory listing.
pub(crate) async fn get_file(
    State(node): State<Arc<Node>>,
    path: Option<Path<String>>,
    Query(params): Query<ReadParams>,
) -> Result<Response> {
    let name = path.map(|Path(p)| p).unwrap_or_default();
    if !name.is_empty() {
        names::validate(&name)?;
    }
    if params.consistency == Consistency::Linearizable {
        node.read_barrier().await?;
    }
    let store = node.store();
    if store.stat(&name)?.is_dir {
        if params.format.as_deref() == Some("json") {
            let entries: Vec<ListEntry> = store
                .list(&name)?
                .into_iter()
                .map(|(name, stat)| ListEntry {
                    name,
                    dir: stat.is_dir,
                    size: stat.size,
                    mtime_ms: stat
                        .mtime
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                })
                .collect();
            return Ok(Json(entries).into_response());
        }
        let mut listing = String::new();
        for (child, stat) in store.list(&name)? {
            listing.push_str(&child);
            listing.push_str(if stat.is_dir { "/\n" } else { "\n" });
        }
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], listing).into_response());
    }
    let bytes = store.read(&name)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// `POST`/`PUT /files/<path>`: replace the file with the body; answers once committed.
pub(crate) async fn put_file(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode> {
    names::validate(&name)?;
    let bytes = read_body(&node, &headers, body).await?;
    node.write_file_with(&name, bytes, idempotency_key(&headers)?)
        .await?;
    Ok(StatusCode::OK)
}

/// `DELETE /files/<path>`: remove a file or an empty directory.
pub(crate) async fn delete_file(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode> {
    node.delete_with(&name, idempotency_key(&headers)?).await?;
    Ok(StatusCode::OK)
}

/// `GET /status`.
pub(crate) async fn status(State(node): State<Arc<Node>>) -> Json<Status> {
    Json(node.status())
}

/// `GET /status/all`: every member's status, gathered by this node (for the cluster page
/// and `raftd ctl status`).
pub(crate) async fn status_all(State(node): State<Arc<Node>>) -> Json<Vec<MemberStatus>> {
    Json(node.cluster_status().await)
}

/// `GET /log`: the log file's text.
pub(crate) async fn log(State(node): State<Arc<Node>>) -> Result<Response> {
    let text = node.log_text().await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// The request header by which a client makes a retry safe: the same key, on any node, is
/// the same request, answered with its first outcome if it committed.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The request id for an `Idempotency-Key` (printable ASCII, 1 to 255 bytes): its FNV-1a
/// hash, the same on every node.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<u64>> {
    let Some(key) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = key.as_bytes();
    if key.is_empty() || key.len() > 255 || !key.iter().all(|b| b.is_ascii_graphic()) {
        return Err(Error::BadRequest(
            "Idempotency-Key must be 1 to 255 printable ASCII characters".into(),
        ));
    }
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    Ok(Some(hash))
}

/// Reads the whole body, refusing more than the configured limit with 413.
async fn read_body(node: &Node, headers: &HeaderMap, body: Body) -> Result<Bytes> {
    let limit = node.config().max_body;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(Error::TooLarge { limit });
    }
    axum::body::to_bytes(body, limit as usize).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            Error::TooLarge { limit }
        } else {
            Error::BadRequest(format!("reading body: {e}"))
        }
    })
}
