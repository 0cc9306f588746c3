//! The dashboard's static files (`static/`: vendored htmx and its SSE extension with their
//! licences, the page's CSS and JS), embedded in the binary and served under `/admin/static/`.
//!
//! Each file's ETag is its SHA-256, and `If-None-Match` is answered with `304`. Pages link files
//! with `?v=<hash prefix>`: a request naming the current version may be cached for a year; any
//! other request must revalidate, so a new build is picked up at once.

use std::sync::OnceLock;

use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use rust_embed::RustEmbed;
use serde::Deserialize;

#[derive(RustEmbed)]
#[folder = "static/"]
struct StaticFiles;

/// The versioned URLs the pages link.
#[derive(Debug)]
pub(crate) struct AssetUrls {
    pub css: String,
    pub htmx: String,
    pub sse: String,
    pub js: String,
}

/// The versioned URLs, computed once.
pub(crate) fn urls() -> &'static AssetUrls {
    static URLS: OnceLock<AssetUrls> = OnceLock::new();
    URLS.get_or_init(|| AssetUrls {
        css: versioned("dashboard.css"),
        htmx: versioned("htmx.min.js"),
        sse: versioned("htmx-ext-sse.min.js"),
        js: versioned("dashboard.js"),
    })
}

fn versioned(name: &str) -> String {
    let version = StaticFiles::get(name)
        .map(|file| hex(&file.metadata.sha256_hash())[..12].to_owned())
        .unwrap_or_default();
    format!("/admin/static/{name}?v={version}")
}

#[derive(Deserialize)]
pub(crate) struct VersionQuery {
    v: Option<String>,
}

/// `GET /admin/static/{*path}`: a file, its ETag and caching headers, or `304`.
pub(crate) async fn serve_static(
    Path(path): Path<String>,
    Query(query): Query<VersionQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(file) = StaticFiles::get(&path) else {
        return (StatusCode::NOT_FOUND, "No such file").into_response();
    };
    let hash = hex(&file.metadata.sha256_hash());
    let etag = format!("\"{hash}\"");
    let current = query
        .v
        .is_some_and(|version| hash.starts_with(&version) && !version.is_empty());
    let cache_control = match current {
        true => "public, max-age=31536000, immutable",
        false => "no-cache",
    };
    let common = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, cache_control.to_owned()),
    ];

    if matches_etag(&headers, &etag) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let content_type = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&path)),
    )];
    (common, content_type, file.data.into_owned()).into_response()
}

/// Whether `If-None-Match` names this ETag (or `*`).
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|candidate| candidate.trim().trim_start_matches("W/"))
        .any(|candidate| candidate == etag || candidate == "*")
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, extension)| extension) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("md") => "text/markdown; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_linked_file_and_licence_is_embedded() {
        for name in [
            "htmx.min.js",
            "htmx-ext-sse.min.js",
            "htmx.LICENSE.txt",
            "htmx-ext-sse.LICENSE.txt",
            "dashboard.css",
            "dashboard.js",
        ] {
            assert!(StaticFiles::get(name).is_some(), "{name}");
        }
        assert!(urls().js.starts_with("/admin/static/dashboard.js?v="));
    }

    #[test]
    fn if_none_match_accepts_lists_and_weak_tags() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"old\", W/\"abc\""),
        );

        assert!(matches_etag(&headers, "\"abc\""));
        assert!(!matches_etag(&headers, "\"new\""));
    }
}
