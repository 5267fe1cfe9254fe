//! Cross-origin requests (`serve --cors-origin`): a browser frontend on one
//! of the listed origins may call the API. None are allowed by default.
//! Tokens travel in the `Authorization` header, never in cookies, so no
//! credentialed mode is offered, and `*` is refused: an allow-list only.

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Why an origin was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error(
        "'*' is not allowed: list each origin a frontend runs on, e.g. --cors-origin https://app.example.com"
    )]
    Wildcard,
    #[error(
        "{0:?} is not an origin: give scheme://host[:port] with no path, e.g. http://localhost:3000"
    )]
    NotAnOrigin(String),
}

/// One allowed origin, checked by [`parse_origin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin(HeaderValue);

impl std::str::FromStr for Origin {
    type Err = OriginError;

    fn from_str(value: &str) -> Result<Self, OriginError> {
        parse_origin(value).map(Origin)
    }
}

/// Parses one `--cors-origin` value (`http(s)://host[:port]`, no path).
pub fn parse_origin(value: &str) -> Result<HeaderValue, OriginError> {
    let value = value.trim();
    if value == "*" {
        return Err(OriginError::Wildcard);
    }
    let not_an_origin = || OriginError::NotAnOrigin(value.to_owned());
    let rest = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"))
        .ok_or_else(not_an_origin)?;
    let host_ok = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !host_ok {
        return Err(not_an_origin());
    }
    HeaderValue::from_str(value).map_err(|_| not_an_origin())
}

/// The layer answering preflights and marking responses for `origins`;
/// `None` when there are none (no CORS headers at all).
pub fn layer(origins: &[Origin]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().map(|o| o.0.clone())))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-fabric-policy"),
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("traceparent"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("x-fabric-provider"),
                HeaderName::from_static("x-fabric-model"),
            ])
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        assert!(parse_origin("http://localhost:3000").is_ok());
        assert!(parse_origin("https://app.example.com").is_ok());
        assert!(parse_origin("http://[::1]:8080").is_ok());
        assert_eq!(parse_origin("*"), Err(OriginError::Wildcard));
        for bad in [
            "localhost:3000",
            "http://",
            "https://app.example.com/",
            "http://a.example/path",
            "ftp://a.example",
            "http://a b",
        ] {
            assert!(
                matches!(parse_origin(bad), Err(OriginError::NotAnOrigin(_))),
                "{bad}"
            );
        }
    }
}
