//! API keys (`pixart serve --api-key`, or `PIXART_API_KEY`): every `/v1/…` route then needs
//! `Authorization: Bearer KEY`, as OpenAI's API and OpenAI-compatible servers do, or the cookie
//! `pixart_api_key=KEY` that the web page sets once the key is typed in (a browser cannot add
//! headers to an `EventSource` or an `<img>`). The page, `/health`, `/metrics` and
//! `/openapi.json` stay open: they hold no generated content.
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The cookie the web page sets (`SameSite=Strict`: another site's page does not send it).
pub const COOKIE: &str = "pixart_api_key";

/// A key clients must present.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(…)")
    }
}

impl ApiKey {
    /// Checks that `key` can travel in a header and a cookie unchanged: 8 to 256 characters of
    /// `A–Z a–z 0–9 - . _ ~ + / =` (RFC 6750's token68, which OpenAI-style `sk-…` keys are).
    pub fn new(key: &str) -> Result<Self, String> {
        let ok = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
        if let Some(c) = key.chars().find(|&c| !ok(c)) {
            return Err(format!(
                "the API key holds {c:?}; use letters, digits and - . _ ~ + / = only"
            ));
        }
        if !(8..=256).contains(&key.len()) {
            return Err(format!("the API key has {} characters; use 8 to 256", key.len()));
        }
        Ok(Self(key.to_string()))
    }

    /// Whether `headers` carry some key (a bearer token or the page's cookie), right or not.
    pub fn offered(headers: &HeaderMap) -> bool {
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split_once(' ').is_some_and(|(s, _)| s.eq_ignore_ascii_case("bearer")));
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .any(|c| c.trim().split_once('=').is_some_and(|(n, _)| n == COOKIE));
        bearer || cookie
    }

    /// Whether `headers` carry this key, as a bearer token or in the page's cookie.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .filter(|(name, _)| *name == COOKIE)
            .map(|(_, value)| value.trim());
        // Every candidate is compared in full, so the time taken does not tell how much of a
        // guess was right.
        bearer
            .chain(cookies)
            .fold(false, |found, given| found | same(given, &self.0))
    }
}

/// Equality whose time depends on the lengths only.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let diff = a
        .iter()
        .zip(b)
        .fold(u8::from(a.len() != b.len()), |d, (x, y)| d | (x ^ y));
    diff == 0
}

/// Middleware of the `/v1/…` routes: 401 in OpenAI's shape unless the request carries the key.
pub async fn require(State(key): State<Option<ApiKey>>, request: Request, next: Next) -> Response {
    match &key {
        Some(k) if !k.admits(request.headers()) => {
            let mut resp = ApiError::unauthorized(ApiKey::offered(request.headers())).into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
        _ => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn keys_are_checked_when_made() {
        assert!(ApiKey::new("sk-abc_123.XYZ~+/=").is_ok());
        assert!(ApiKey::new("short").unwrap_err().contains("5 characters"));
        assert!(ApiKey::new("has space here").unwrap_err().contains("' '"));
        assert!(ApiKey::new("semi;colon-key").unwrap_err().contains("';'"));
        assert!(ApiKey::new(&"k".repeat(257)).is_err());
    }

    #[test]
    fn bearer_or_cookie_admits_and_nothing_else_does() {
        let k = ApiKey::new("sk-test-key-1").unwrap();
        assert!(k.admits(&headers(&[(header::AUTHORIZATION, "Bearer sk-test-key-1")])));
        assert!(k.admits(&headers(&[(header::AUTHORIZATION, "bearer  sk-test-key-1 ")])));
        assert!(k.admits(&headers(&[(header::COOKIE, "a=b; pixart_api_key=sk-test-key-1")])));
        assert!(k.admits(&headers(&[
            (header::AUTHORIZATION, "Bearer wrong"),
            (header::COOKIE, "pixart_api_key=sk-test-key-1"),
        ])));
        for bad in [
            vec![],
            vec![(header::AUTHORIZATION, "Bearer sk-test-key-2")],
            vec![(header::AUTHORIZATION, "Bearer sk-test-key-1x")],
            vec![(header::AUTHORIZATION, "Bearer sk-test-key-")],
            vec![(header::AUTHORIZATION, "Basic sk-test-key-1")],
            vec![(header::AUTHORIZATION, "sk-test-key-1")],
            vec![(header::COOKIE, "other_key=sk-test-key-1")],
        ] {
            assert!(!k.admits(&headers(&bad)), "{bad:?}");
        }
    }

    #[test]
    fn equality_needs_the_same_bytes_and_length() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "a"));
    }
}
