//! `GET /watch/<prefix>` (and `/watch`): committed changes as Server-Sent Events.
//!
//! Each event is one applied entry touching the prefix: `id:` its log index (so a browser's
//! `EventSource` resumes with `Last-Event-ID` after a reconnect, without gaps or repeats),
//! `event:` the command, `data:` `{"index","term","op","paths"}`. The stream ends with an
//! `event: gone` when the next index was compacted away, or `event: cutoff` when the client
//! stopped reading.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::names;
use crate::node::{Node, WatchEvent};

/// A comment line sent when nothing else was, so proxies keep the stream open and a closed
/// client is noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// `?from=INDEX`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WatchParams {
    from: Option<u64>,
}

/// `GET /watch/<prefix>`.
pub(crate) async fn watch(
    State(node): State<Arc<Node>>,
    prefix: Option<Path<String>>,
    Query(params): Query<WatchParams>,
    headers: HeaderMap,
) -> Result<Response> {
    let prefix = prefix.map(|Path(p)| p).unwrap_or_default();
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        names::validate(prefix)?;
    }
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| Error::BadRequest("Last-Event-ID must be a log index".into()))?
                + 1,
        ),
        None => None,
    };
    let events = node.watch(prefix, resume.or(params.from))?;
    // Dropping the body (the client went away) drops the receiver, which ends the watcher.
    let stream = futures_util::stream::unfold((events, false), |(mut events, ended)| async move {
        if ended {
            return None;
        }
        let piece = match tokio::time::timeout(KEEPALIVE, events.recv()).await {
            Ok(Some(event)) => {
                let (text, last) = format_event(&event);
                return Some((Ok::<_, Infallible>(Bytes::from(text)), (events, last)));
            }
            Ok(None) => return None,
            Err(_) => Bytes::from_static(b": keepalive\n\n"),
        };
        Some((Ok(piece), (events, false)))
    });
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// One event in the SSE wire format, and whether it is the last.
fn format_event(event: &WatchEvent) -> (String, bool) {
    match event {
        WatchEvent::Change(change) => {
            let data = serde_json::to_string(change).expect("a change serializes");
            (
                format!("id: {}\nevent: {}\ndata: {data}\n\n", change.index, change.op),
                false,
            )
        }
        WatchEvent::End { kind, message } => {
            let data = serde_json::json!({ "error": message }).to_string();
            (format!("event: {kind}\ndata: {data}\n\n"), true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::WatchChange;

    #[test]
    fn events_are_server_sent_events_with_the_index_as_id() {
        let change = WatchChange {
            index: 42,
            term: 3,
            op: "file:write",
            paths: vec!["a/b".into()],
        };
        let (text, last) = format_event(&WatchEvent::Change(change));
        assert_eq!(
            text,
            "id: 42\nevent: file:write\ndata: {\"index\":42,\"term\":3,\"op\":\"file:write\",\"paths\":[\"a/b\"]}\n\n"
        );
        assert!(!last);
        let (text, last) = format_event(&WatchEvent::End {
            kind: "gone",
            message: "410 Gone".into(),
        });
        assert_eq!(text, "event: gone\ndata: {\"error\":\"410 Gone\"}\n\n");
        assert!(last);
    }
}
