//! The web page: static files embedded in the binary (no build step).

use super::http::AppState;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const MARKDOWN_JS: &str = include_str!("../../web/markdown.js");
const STYLE: &str = include_str!("../../web/style.css");

/// No remote loads, no inline script: a model answer rendered by mistake still cannot fetch.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/markdown.js", get(markdown_js))
        .route("/style.css", get(style_css))
}

/// The web page: upload, search and ask in a browser.
#[utoipa::path(get, path = "/", tag = "web", responses((status = 200, description = "The page", body = String, content_type = "text/html; charset=utf-8")))]
pub(super) async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        INDEX,
    )
        .into_response()
}

/// The page's script.
#[utoipa::path(get, path = "/app.js", tag = "web", responses((status = 200, description = "JavaScript", body = String, content_type = "text/javascript; charset=utf-8")))]
pub(super) async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

/// The page's Markdown renderer.
#[utoipa::path(get, path = "/markdown.js", tag = "web", responses((status = 200, description = "JavaScript", body = String, content_type = "text/javascript; charset=utf-8")))]
pub(super) async fn markdown_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        MARKDOWN_JS,
    )
        .into_response()
}

/// The page's style sheet.
#[utoipa::path(get, path = "/style.css", tag = "web", responses((status = 200, description = "CSS", body = String, content_type = "text/css; charset=utf-8")))]
pub(super) async fn style_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}
