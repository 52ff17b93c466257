//! The server's routes as (method, path) pairs: the router's list, which the error scrubber
//! (a route in a message is not a path) and the OpenAPI document's test read too.

/// Every route, for the router and the OpenAPI document's test.
pub const ROUTES: [(&str, &str); 17] = [
    ("get", "/"),
    ("get", "/app.js"),
    ("get", "/style.css"),
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/v1/models"),
    ("get", "/v1/models/{model}"),
    ("post", "/v1/images/generations"),
    ("post", "/v1/images/edits"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{id}"),
    ("delete", "/v1/jobs/{id}"),
    ("get", "/v1/jobs/{id}/events"),
    ("get", "/v1/jobs/{id}/images/{index}"),
    ("get", "/v1/jobs/{id}/preview"),
];
