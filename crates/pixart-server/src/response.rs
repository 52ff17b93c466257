//! Plain JSON responses (the error bodies too); it depends on no other module here.
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// A JSON response.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}
