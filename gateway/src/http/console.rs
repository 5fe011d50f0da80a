//! The web console at `/console`: its files compiled into the binary (`gateway/console/`: a page,
//! ES modules, a style sheet), no build step, nothing fetched from elsewhere. It has no routes of
//! its own: the page calls the public API with the key a person signs in with, so what it does, a
//! script can do.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../../console/index.html");

const SCRIPT: &str = "text/javascript; charset=utf-8";

/// The page's files, by name under `/console/`: the entry module, its modules, the style.
const FILES: [(&str, &str, &str); 7] = [
    ("console.js", include_str!("../../console/console.js"), SCRIPT),
    ("api.js", include_str!("../../console/api.js"), SCRIPT),
    ("page.js", include_str!("../../console/page.js"), SCRIPT),
    ("tenant.js", include_str!("../../console/tenant.js"), SCRIPT),
    ("operator.js", include_str!("../../console/operator.js"), SCRIPT),
    ("metrics.js", include_str!("../../console/metrics.js"), SCRIPT),
    (
        "console.css",
        include_str!("../../console/console.css"),
        "text/css; charset=utf-8",
    ),
];

/// Scripts and styles from this origin only, no inline code, no frames: a document's text shown
/// in the page can never run.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let pages = Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route(
            "/console",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route("/console/", get(|| async { Redirect::to("/console") }));
    FILES.iter().fold(pages, |pages, &(name, body, kind)| {
        pages.route(
            &format!("/console/{name}"),
            get(move || async move { asset(body, kind) }),
        )
    })
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}
