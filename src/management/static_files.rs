//! Every GET outside `/api/` lands here: the web console's assets. Until the console
//! module is wired in, nothing is served and the answer is 404.

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// Serves the asset at `uri`'s path, or 404.
pub async fn serve(uri: Uri) -> Response {
    let _ = uri.path();
    (StatusCode::NOT_FOUND, "Not Found").into_response()
}
