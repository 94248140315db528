//! Every GET outside `/api/` lands here: the web console's assets
//! ([`super::console::asset`]), or 404.

use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// The page may load only what the binary embeds and talk only to this listener.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

/// Serves the asset at `uri`'s path, or 404.
pub async fn serve(uri: Uri) -> Response {
    match super::console::asset(uri.path()) {
        Some((content_type, body)) => {
            let mut resp = body.into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            // Revalidate on each load, so a new binary's console replaces the old one.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
            resp
        }
        None => (StatusCode::NOT_FOUND, "Not Found").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_their_types() {
        for (path, ty) in [
            ("/", "text/html; charset=utf-8"),
            ("/js/app.js", "text/javascript; charset=utf-8"),
            ("/css/console.css", "text/css; charset=utf-8"),
        ] {
            let resp = serve(Uri::from_static(path)).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            let h = resp.headers();
            assert_eq!(h[header::CONTENT_TYPE], ty, "{path}");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP);
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }

    #[tokio::test]
    async fn other_paths_are_404() {
        let resp = serve(Uri::from_static("/nope?x=1")).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}
