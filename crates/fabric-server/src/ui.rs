//! The dashboard: a single-page app (plain ES modules and CSS under
//! `crates/fabric-server/ui/`, embedded by `build.rs`) served at `/` and at
//! each of its views' paths, its files under `/ui/`. It uses the public API
//! only, signed in with a browser session (`/v1/auth/session`).
//!
//! Files are compressed once, on first use, and answered with an ETag and
//! `Cache-Control: no-cache` (the browser revalidates: a 304 costs no
//! body, and a new binary's files are never stale). The HTML carries a
//! Content-Security-Policy without inline scripts or styles, and nothing
//! is fetched from elsewhere.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use sha2::Digest as _;

use crate::error::ApiError;
use crate::state::AppState;

include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// The paths that answer the app itself (each view's own path, so a view
/// survives a reload and can be shared).
pub const VIEW_PATHS: [&str; 13] = [
    "/",
    "/login",
    "/tasks",
    "/tasks/{id}",
    "/agents",
    "/agents/{id}",
    "/approvals",
    "/policies",
    "/budgets",
    "/audit",
    "/gateway",
    "/tools",
    "/alerts",
];

/// The app's page.
const INDEX: &str = "index.html";

/// Scripts and styles from this server only, no inline ones; connections to
/// this server only (the API and its WebSocket); no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

struct Asset {
    body: Bytes,
    /// The gzip form, when it is smaller.
    gzip: Option<Bytes>,
    etag: HeaderValue,
    content_type: &'static str,
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn gzip(data: &[u8]) -> Option<Bytes> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).ok()?;
    let compressed = encoder.finish().ok()?;
    (compressed.len() < data.len()).then(|| Bytes::from(compressed))
}

static FILES: LazyLock<HashMap<&'static str, Asset>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|(name, data)| {
            let hash = hex::encode(&sha2::Sha256::digest(data)[..12]);
            let asset = Asset {
                body: Bytes::from_static(data),
                gzip: gzip(data),
                etag: HeaderValue::from_str(&format!("\"{hash}\""))
                    .unwrap_or_else(|_| HeaderValue::from_static("\"0\"")),
                content_type: content_type(name),
            };
            (*name, asset)
        })
        .collect()
});

/// The dashboard's routes.
pub fn routes() -> Router<AppState> {
    VIEW_PATHS
        .iter()
        .fold(Router::new(), |router, path| router.route(path, get(app)))
        .route("/ui/{*path}", get(file))
}

async fn app(headers: HeaderMap) -> Response {
    serve(INDEX, &headers)
}

async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(asset) = FILES.get(name) else {
        return ApiError::not_found(format!(
            "no dashboard file /ui/{name}: the dashboard is at /"
        ))
        .into_response();
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, asset.etag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == asset.etag));
    if unchanged {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    let accepts_gzip = request
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let body = match (&asset.gzip, accepts_gzip) {
        (Some(gz), true) => {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            gz.clone()
        }
        _ => asset.body.clone(),
    };
    (StatusCode::OK, headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_a_type_and_the_page_exists() {
        assert!(FILES.contains_key(INDEX), "ui/index.html is embedded");
        for name in FILES.keys() {
            assert_ne!(
                content_type(name),
                "application/octet-stream",
                "{name}: serve it with its type"
            );
        }
    }

    #[test]
    fn everything_a_first_visit_can_load_is_under_300_kb_compressed() {
        // Every file, not only the first page's: an upper bound.
        let total: usize = FILES
            .values()
            .map(|a| a.gzip.as_ref().map_or(a.body.len(), Bytes::len))
            .sum();
        assert!(total < 300 * 1024, "{total} bytes compressed");
    }
}
