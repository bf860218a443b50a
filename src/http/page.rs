//! `GET /`: the cluster page. One HTML file with its styles and script inline, embedded in
//! the binary: no CDN, no build step. It uses only the public API (`/status/all`, `/readyz`,
//! `/watch`, `/files`), so it works the same from any node.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("../../web/index.html");

/// `GET /`.
pub(crate) async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}
