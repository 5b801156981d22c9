//! `GET /console`: the operator console, served by the binary itself. Its HTML, JS and
//! CSS (`api/console/`, plain files, no build step) are compiled in; the page needs no
//! token (it is static), every call it makes does. A content security policy allows
//! this origin only, so the console never loads or sends anything elsewhere.

use crate::run::state::AppState;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../../console/index.html");
const APP_JS: &str = include_str!("../../console/app.js");
const APP_CSS: &str = include_str!("../../console/app.css");

/// Only this origin, for everything; no framing.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<AppState> {
    Router::new().route("/console", get(index)).route("/console/{asset}", get(asset))
}

fn serve(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[utoipa::path(
    get,
    path = "/console",
    operation_id = "console",
    tag = "infrastructure",
    summary = "The operator console",
    description = "A web app served by the binary (no token needed for the page itself; every call it makes \
        needs one). See docs/CONSOLE.md.",
    responses((status = 200, description = "The console's page.", content_type = "text/html"))
)]
async fn index() -> Response {
    serve("text/html; charset=utf-8", INDEX)
}

#[utoipa::path(
    get,
    path = "/console/{asset}",
    operation_id = "console_asset",
    tag = "infrastructure",
    summary = "The console's script and style sheet",
    params(("asset" = String, Path, description = "`app.js` or `app.css`.")),
    responses(
        (status = 200, description = "The asset.", content(("text/javascript"), ("text/css"))),
        (status = 404, description = "`not_found`: no such asset."),
    )
)]
async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => serve("text/javascript; charset=utf-8", APP_JS),
        "app.css" => serve("text/css; charset=utf-8", APP_CSS),
        _ => crate::http::error::ApiError::not_found("no such console asset").into_response(),
    }
}
