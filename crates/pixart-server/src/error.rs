//! Errors as clients see them: a status code and a JSON body in the OpenAI error shape,
//! `{"error": {"message", "type", "param", "code"}}`, where `param` names the request field at
//! fault. Messages pass through [`scrub`], so no file path reaches a client.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error response.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    /// `invalid_request_error`, `not_found_error`, `rate_limit_error`, `server_error`, ...
    pub kind: &'static str,
    pub message: String,
    /// The request field at fault (`size`, `steps`, `body`, ...).
    pub param: Option<String>,
    /// A short machine-readable code (`queue_full`, `unknown_field`, ...).
    pub code: &'static str,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            param: None,
            code,
            retry_after: None,
        }
    }

    /// 400: the body is not JSON, or not an object.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "malformed_json",
            message,
        )
        .param("body")
    }

    /// 400: a field this API does not know.
    pub fn unknown_field(field: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "unknown_field",
            format!("unknown field `{field}`"),
        )
        .param(field)
    }

    /// 422: a field of the wrong type or out of range.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            "invalid_value",
            message,
        )
        .param(field)
    }

    /// 400: the body is over the limit (issue #9 asks for 400/422 with the field named; the
    /// field is `body`).
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "body_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
        .param("body")
    }

    /// 415: not `application/json`.
    pub fn content_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            "the request body must be JSON with `Content-Type: application/json`",
        )
        .param("content-type")
    }

    /// 415: not `multipart/form-data` (the edits route).
    pub fn not_multipart() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            "the request body must be `multipart/form-data` (image, prompt, optional mask, ...)",
        )
        .param("content-type")
    }

    /// 403: a browser page of another origin posting a form (the multipart route takes no
    /// JSON content type that would force a CORS preflight).
    pub fn cross_origin() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "cross_origin",
            "requests from another origin's web page are refused",
        )
        .param("origin")
    }

    /// 401: `--api-key` is set and the request does not carry it (OpenAI's `invalid_api_key`);
    /// `given`: it carried another key.
    pub fn unauthorized(given: bool) -> Self {
        let message = if given {
            "incorrect API key"
        } else {
            "this server needs an API key: send `Authorization: Bearer KEY`"
        };
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            message,
        )
        .param("authorization")
    }

    /// 429 with `Retry-After`.
    pub fn queue_full(capacity: usize, retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "queue_full",
            format!("the queue is full ({capacity} waiting jobs); retry in {retry_after} s"),
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 503: shutting down.
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "shutting_down",
            "the server is shutting down",
        )
    }

    /// 404.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", "not_found", what)
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            "method not allowed on this route (see /openapi.json)",
        )
    }

    /// 500 for a generation that failed; the details are in the server log only.
    pub fn generation_failed() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "generation_failed",
            "generation failed (internal error; details are in the server log)",
        )
    }

    /// 409: e.g. the images of a job that has not finished.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_request_error", "conflict", message)
    }

    fn param(mut self, p: &str) -> Self {
        self.param = Some(p.to_string());
        self
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": scrub(&self.message),
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = crate::response::json_response(self.status, &self.body());
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// Replaces anything in `msg` that looks like a file path (a word starting with `/`, `~/`,
/// `./`, `../` or a drive letter) by `<path>`: messages from the libraries name files, and a
/// client must never see the server's file system. Punctuation around a word (`(`, `)`, `:`,
/// quotes, ...) is kept, and so are this server's own routes (`/openapi.json`, `/v1/jobs/{id}`),
/// which messages name as hints.
pub fn scrub(msg: &str) -> String {
    const LEAD: [char; 5] = ['(', '[', '"', '\'', '`'];
    const TRAIL: [char; 9] = [')', ']', '"', '\'', '`', ',', ';', ':', '.'];
    let looks_like_path = |w: &str| {
        let b = w.as_bytes();
        w.starts_with('/')
            || w.starts_with("~/")
            || w.starts_with("./")
            || w.starts_with("../")
            || (b.len() > 2 && b[0].is_ascii_alphabetic() && b[1] == b':' && (b[2] == b'\\' || b[2] == b'/'))
    };
    let mut out = String::with_capacity(msg.len());
    for (i, word) in msg.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let core = word.trim_start_matches(LEAD);
        let lead = &word[..word.len() - core.len()];
        // A path's own trailing `.` (`./`, `../`) belongs to it; strip trailing punctuation
        // only to find the word's end.
        let core_end = core.trim_end_matches(TRAIL);
        let core_end = if core_end.is_empty() { core } else { core_end };
        let trail = &core[core_end.len()..];
        if looks_like_path(core_end) && !is_route(core_end) {
            out.push_str(lead);
            out.push_str("<path>");
            out.push_str(trail);
        } else {
            out.push_str(word);
        }
    }
    out
}

/// Whether `w` is one of this server's routes (`{id}`-style segments match any segment).
fn is_route(w: &str) -> bool {
    let w = w.split(['?', '#']).next().unwrap_or(w);
    crate::route_table::ROUTES.iter().any(|(_, route)| {
        let (mut a, mut b) = (route.split('/'), w.split('/'));
        loop {
            match (a.next(), b.next()) {
                (None, None) => return true,
                (Some(r), Some(s)) if r == s => {}
                (Some(r), Some(s)) if r.starts_with('{') && !s.is_empty() && !s.contains(['\\', '.']) => {}
                _ => return false,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_paths_only() {
        assert_eq!(
            scrub("/work/models/x/config.json: missing key `a`"),
            "<path>: missing key `a`"
        );
        assert_eq!(
            scrub("cannot read (/tmp/a) or C:\\m\\b"),
            "cannot read (<path>) or <path>"
        );
        assert_eq!(scrub("size 64x64 must be 1/2"), "size 64x64 must be 1/2");
        assert_eq!(scrub("see ./x and ~/y"), "see <path> and <path>");
        assert_eq!(scrub("\"/etc/passwd\", [/a/b]."), "\"<path>\", [<path>].");
        assert_eq!(scrub("see /v1/jobs/../../etc"), "see <path>");
        assert_eq!(scrub("see /health.txt or /v1/jobsx"), "see <path> or <path>");
    }

    #[test]
    fn scrub_keeps_route_hints() {
        for msg in [
            "no such route (see /openapi.json)",
            "method not allowed on this route (see /openapi.json)",
            "`response_format` \"url\" gives URLs such as /v1/jobs/job-1/images/0",
            "poll /v1/jobs/job-12ab/images/0, then GET /health; see /",
        ] {
            assert_eq!(scrub(msg), msg);
        }
        assert_eq!(
            ApiError::not_found("no such route (see /openapi.json)").body()["error"]["message"],
            "no such route (see /openapi.json)"
        );
        assert_eq!(
            ApiError::method_not_allowed().body()["error"]["message"],
            "method not allowed on this route (see /openapi.json)"
        );
    }

    #[test]
    fn body_has_the_openai_shape() {
        let e = ApiError::invalid("steps", "`steps` must be at least 1");
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        let b = e.body();
        assert_eq!(b["error"]["param"], "steps");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["message"], "`steps` must be at least 1");
    }
}
