//! Extractors whose rejections are [`ApiError`]s (JSON bodies), not axum's
//! plain text, and [`Listing`]: the one paging contract of every list endpoint.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use fabric_core::api::{PAGE_DEFAULT_LIMIT, PAGE_MAX_LIMIT};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::response::Response;
use fabric_core::TokenKind;

use crate::error::ApiError;
use crate::services::auth::Principal;
use crate::services::limits::Quota;
use crate::state::AppState;

/// `axum::Json` with JSON errors: 400 bad JSON, 413 too large, 415 wrong content type.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // axum checks the content type and the size; the body is read the
        // way every API body is (an object; `63.0` is an integer).
        let body =
            match axum::Json::<Box<serde_json::value::RawValue>>::from_request(req, state).await {
                Ok(axum::Json(raw)) => raw,
                Err(rejection) => return Err(json_rejection(rejection)),
            };
        fabric_core::api::parse_json_body::<T>(body.get().as_bytes())
            .map(Self)
            .map_err(ApiError::bad_request)
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            status,
            "payload_too_large",
            format!(
                "request body is larger than the server accepts ({} bytes); send less, e.g. fewer or smaller files",
                crate::api::MAX_BODY_BYTES
            ),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            status,
            "unsupported_media_type",
            "send the body as JSON with 'Content-Type: application/json'",
        ),
        _ => ApiError::bad_request(format!("invalid JSON body: {}", rejection.body_text())),
    }
}

/// `axum::extract::Query` with JSON errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request(format!("invalid query string: {}", e.body_text()))
            })
    }
}

/// A list endpoint's query string: the paging contract ([`Page`]: `limit`
/// and `cursor`, checked here the same way for every list) and the
/// endpoint's own filters `F`, which must name every other parameter
/// (`F` denies unknown fields, so a misspelt filter is a 400, not ignored).
#[derive(Debug)]
pub struct Listing<F> {
    pub page: Page,
    pub filters: F,
}

/// `?limit=&cursor=` of a list request (see [`fabric_core::api::PAGE_DEFAULT_LIMIT`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// 1..=[`PAGE_MAX_LIMIT`]; [`PAGE_DEFAULT_LIMIT`] when not given.
    pub limit: usize,
    cursor: Option<String>,
}

/// The paging parameters of a list whose cursor is a name (an agent id, a
/// policy id, ...), for the OpenAPI document; [`Listing`] parses them.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[expect(dead_code, reason = "describes what Listing parses; never built")]
pub struct PageParams {
    /// Page size: 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page; leave out for the first page.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
}

/// [`PageParams`] of a list whose cursor is a UUID (tasks, approvals, audit
/// and usage records).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[expect(dead_code, reason = "describes what Listing parses; never built")]
pub struct UuidPageParams {
    /// Page size: 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page; leave out for the first page.
    #[param(format = Uuid)]
    pub cursor: Option<String>,
}

/// [`PageParams`] of a list whose cursor is a number (a task's events by
/// sequence number, an agent's sessions).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[expect(dead_code, reason = "describes what Listing parses; never built")]
pub struct NumberPageParams {
    /// Page size: 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page; leave out for the first page.
    #[param(pattern = "^[0-9]{1,9}$")]
    pub cursor: Option<String>,
}

/// The filters of a list endpoint that has none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoFilters {}

impl Page {
    /// The cursor as the endpoint's key (a task id, a sequence number, ...);
    /// one that does not parse is a 400.
    pub fn cursor<K: std::str::FromStr>(&self) -> Result<Option<K>, ApiError> {
        self.cursor
            .as_deref()
            .map(|raw| raw.parse::<K>().map_err(|_| bad_cursor(raw)))
            .transpose()
    }

    /// `next_cursor` of a page of `items` from the store: the key of its last
    /// item when the page is full (there may be more), else none.
    pub fn next<T, K: std::fmt::Display>(
        &self,
        items: &[T],
        key: impl Fn(&T) -> K,
    ) -> Option<String> {
        (items.len() >= self.limit)
            .then(|| items.last().map(|item| key(item).to_string()))
            .flatten()
    }

    /// One page of a whole list held in memory and sorted by `key`
    /// (ascending): the items whose key comes after the cursor (so a cursor
    /// whose item was deleted meanwhile still works), at most `limit`, and
    /// the `next_cursor` of that page.
    pub fn slice<T, K: std::fmt::Display>(
        &self,
        items: Vec<T>,
        key: impl Fn(&T) -> K,
    ) -> (Vec<T>, Option<String>) {
        let mut after: Vec<T> = match self.cursor.as_deref() {
            None => items,
            Some(cursor) => items
                .into_iter()
                .filter(|item| key(item).to_string().as_str() > cursor)
                .collect(),
        };
        let more = after.len() > self.limit;
        after.truncate(self.limit);
        let next = more
            .then(|| after.last().map(|item| key(item).to_string()))
            .flatten();
        (after, next)
    }
}

fn bad_cursor(raw: &str) -> ApiError {
    ApiError::bad_request(format!(
        "invalid cursor {raw:?}: pass the next_cursor of the previous page, or leave it out for the first page"
    ))
}

impl<S: Send + Sync, F: DeserializeOwned> FromRequestParts<S> for Listing<F> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
        let (mut limit, mut cursor) = (None, None);
        let mut rest = Vec::new();
        for (name, value) in pairs {
            let slot = match name.as_str() {
                "limit" => &mut limit,
                "cursor" => &mut cursor,
                _ => {
                    rest.push((name, value));
                    continue;
                }
            };
            if slot.replace(value).is_some() {
                return Err(ApiError::bad_request(format!(
                    "'{name}' is given more than once: give it once"
                )));
            }
        }
        let limit = match limit {
            None => PAGE_DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=PAGE_MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "'limit' must be an integer from 1 to {PAGE_MAX_LIMIT} (got {raw:?})"
                    ))
                })?,
        };
        if cursor.as_deref() == Some("") {
            return Err(bad_cursor(""));
        }
        let rest = serde_urlencoded::to_string(&rest)
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
        let filters = serde_urlencoded::from_str::<F>(&rest)
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
        Ok(Self {
            page: Page { limit, cursor },
            filters,
        })
    }
}

/// The bearer token of a request: `Authorization: Bearer …`; `x-api-key`
/// (how Anthropic's clients send their key, for `/v1/messages`); or
/// `?token=` for WebSocket clients (browsers cannot set headers on them).
pub(crate) fn bearer(parts: &Parts) -> Option<String> {
    if let Some(value) = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    if let Some(key) = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim().to_owned());
    }
    parts
        .uri
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token=").map(str::to_owned))
}

/// The cookie holding a browser session's secret (`POST /v1/auth/session`).
pub(crate) const SESSION_COOKIE: &str = "fabric_session";
/// The header a browser session's state-changing requests carry.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// The session secret of a request's `Cookie` header(s), if any.
pub(crate) fn session_cookie(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|header| header.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE && !value.is_empty()).then(|| value.to_owned())
        })
}

/// The CSRF token of the session whose token hash is `token_hash`: derived,
/// so nothing is stored, and one-way, so it reveals nothing of the secret.
pub(crate) fn csrf_token(token_hash: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(format!("fabric-csrf:{token_hash}")))
}

/// What a request authenticated by the session cookie must also show: an
/// `Origin` (when the browser sends one) of this very host, and, unless it
/// only reads, the session's CSRF token. A bearer token cannot be sent by
/// another site's page, so bearer requests need neither.
fn check_browser_request(parts: &Parts, principal: &Principal) -> Result<(), ApiError> {
    let host = parts
        .headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok());
    if let Some(origin) = parts
        .headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    {
        let origin_host = origin.split_once("://").map(|(_, rest)| rest);
        if origin_host.is_none() || origin_host != host {
            return Err(ApiError::forbidden(format!(
                "a cross-site request with the session cookie is refused (Origin {origin}); use the dashboard on this server, or send a bearer token"
            )));
        }
    }
    let reads = matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let sent = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if !reads && sent != Some(csrf_token(&principal.token_hash).as_str()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "missing or wrong X-CSRF-Token: a browser session's changes must send the csrf_token that POST or GET /v1/auth/session answers",
        ));
    }
    Ok(())
}

/// The client address of a request (absent in tests that call the router directly).
pub(crate) fn client_ip(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(client)| client.ip())
}

/// A refused authentication (401: a bad token, credential or join token, or
/// none) counts against the client's address: guessing, or flooding
/// without credentials, is held to a rate per address, and past it the
/// answer is 429.
pub(crate) fn count_refusal(
    state: &AppState,
    client: Option<std::net::IpAddr>,
    refused: ApiError,
) -> ApiError {
    if refused.status == StatusCode::UNAUTHORIZED
        && let Some(ip) = client
        && let Err(throttled) = state.limits.unauthenticated(ip)
    {
        return ApiError::address_throttled(&throttled);
    }
    refused
}

/// The caller of a request, from its bearer token (or a browser session's
/// cookie); 401 without one, 429 when a person's token is over its user's
/// request rate (agents' tokens are not throttled here).
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let bearer = bearer(parts);
        let from_cookie = bearer.is_none();
        let authenticated = match bearer.or_else(|| session_cookie(parts)) {
            Some(secret) => state
                .auth
                .authenticate(&secret)
                .await
                .map_err(ApiError::from),
            None => Err(ApiError::unauthorized(
                "missing bearer token: log in with 'reactor-fabric auth login' or send 'Authorization: Bearer <token>'",
            )),
        };
        let principal = match authenticated {
            Ok(principal) => principal,
            Err(refused) => return Err(count_refusal(state, client_ip(parts), refused)),
        };
        if from_cookie {
            check_browser_request(parts, &principal)?;
        }
        if principal.kind == TokenKind::Agent && !agent_may_use(parts.uri.path()) {
            return Err(ApiError::forbidden(
                "an agent token works only on the agent protocol (/v1/agent/...), the inference API, its own budget and usage, and /v1/auth/whoami (docs/AGENT_PROTOCOL.md)",
            ));
        }
        if principal.kind != TokenKind::Agent {
            let counted = state.limits.request(&principal.user);
            let quota = match &counted {
                Ok(quota) => *quota,
                Err(throttled) => Some(throttled.quota),
            };
            if let (Some(quota), Some(slot)) = (quota, parts.extensions.get::<QuotaSlot>()) {
                *slot.0.lock() = Some(quota);
            }
            counted.map_err(|t| ApiError::rate_limited(&t))?;
        }
        Ok(principal)
    }
}

/// The routes an agent token is accepted on (docs/AGENT_PROTOCOL.md lists
/// them); the handlers further hold it to its own agent.
fn agent_may_use(path: &str) -> bool {
    // Every route that calls a model, and these.
    const EXACT: [&str; 3] = ["/v1/models", "/v1/llm/usage", "/v1/auth/whoami"];
    const UNDER: [&str; 5] = [
        "/v1/agent/",
        "/v1/models/",
        "/v1/ollama",
        "/v1/budgets/agent:",
        "/v1/usage/agent:",
    ];
    crate::api::GATEWAY_CALLS.contains(&path)
        || EXACT.contains(&path)
        || UNDER.iter().any(|prefix| path.starts_with(prefix))
}

/// Where the extractor leaves the caller's [`Quota`] for [`rate_limit_headers`].
#[derive(Clone, Default)]
struct QuotaSlot(Arc<parking_lot::Mutex<Option<Quota>>>);

/// Middleware: `X-RateLimit-Limit`, `-Remaining` and `-Reset` (seconds until
/// the allowance is whole again) on every answer to a rate-limited caller.
pub async fn rate_limit_headers(mut request: Request, next: axum::middleware::Next) -> Response {
    let slot = QuotaSlot::default();
    request.extensions_mut().insert(slot.clone());
    let mut response = next.run(request).await;
    if let Some(quota) = *slot.0.lock() {
        let headers = response.headers_mut();
        headers.insert("x-ratelimit-limit", quota.limit.into());
        headers.insert("x-ratelimit-remaining", quota.remaining.into());
        headers.insert("x-ratelimit-reset", quota.reset_secs.into());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Filters {
        status: Option<String>,
    }

    async fn listing(query: &str) -> Result<Listing<Filters>, ApiError> {
        let request = axum::http::Request::builder()
            .uri(format!("/v1/things?{query}"))
            .body(())
            .unwrap();
        let (mut parts, ()) = request.into_parts();
        Listing::<Filters>::from_request_parts(&mut parts, &()).await
    }

    #[test]
    fn agent_tokens_reach_only_the_routes_the_protocol_names() {
        for allowed in [
            "/v1/agent/lease",
            "/v1/chat/completions",
            "/v1/responses",
            "/v1/messages",
            "/v1/models/llama3",
            "/v1/ollama/api/chat",
            "/v1/budgets/agent:coder",
            "/v1/auth/whoami",
        ] {
            assert!(agent_may_use(allowed), "{allowed}");
        }
        for refused in [
            "/v1/tasks",
            "/v1/agents",
            "/v1/auth/tokens",
            "/v1/users",
            "/v1/budgets/user:admin",
            "/v1/agentx",
            "/v1/policies",
        ] {
            assert!(!agent_may_use(refused), "{refused}");
        }
    }

    #[tokio::test]
    async fn paging_parameters_are_checked_and_the_rest_are_the_filters() {
        let l = listing("").await.unwrap();
        assert_eq!(
            (l.page.limit, l.page.cursor.clone()),
            (PAGE_DEFAULT_LIMIT, None)
        );
        assert_eq!(l.filters, Filters { status: None });
        let l = listing("limit=1000&cursor=abc&status=queued")
            .await
            .unwrap();
        assert_eq!(l.page.limit, 1000);
        assert_eq!(l.page.cursor.as_deref(), Some("abc"));
        assert_eq!(l.filters.status.as_deref(), Some("queued"));
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=-1",
            "limit=ten",
            "limit=",
            "limit=1&limit=2",
        ] {
            let e = listing(bad).await.unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "invalid_request"),
                "{bad}"
            );
            assert!(e.message.contains("'limit'"), "{bad}: {e}");
        }
        let e = listing("cursor=").await.unwrap_err();
        assert!(e.message.contains("invalid cursor"), "{e}");
        let e = listing("colour=red").await.unwrap_err();
        assert!(
            e.message.contains("colour"),
            "unknown filters are refused: {e}"
        );
    }

    #[test]
    fn a_cursor_is_parsed_as_the_endpoints_key() {
        let page = Page {
            limit: 2,
            cursor: Some("7".into()),
        };
        assert_eq!(page.cursor::<u64>().unwrap(), Some(7));
        let e = page.cursor::<uuid::Uuid>().unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn next_cursor_only_on_a_full_page() {
        let page = Page {
            limit: 2,
            cursor: None,
        };
        assert_eq!(page.next(&[1, 2], |n| *n), Some("2".to_owned()));
        assert_eq!(page.next(&[1], |n| *n), None);
        assert_eq!(page.next::<u32, u32>(&[], |n| *n), None);
    }

    #[test]
    fn in_memory_lists_page_after_the_cursor() {
        let all = || vec!["a", "b", "c", "d", "e"];
        let first = Page {
            limit: 2,
            cursor: None,
        };
        assert_eq!(
            first.slice(all(), |s| *s),
            (vec!["a", "b"], Some("b".into()))
        );
        let next = Page {
            limit: 2,
            cursor: Some("b".into()),
        };
        assert_eq!(
            next.slice(all(), |s| *s),
            (vec!["c", "d"], Some("d".into()))
        );
        let last = Page {
            limit: 2,
            cursor: Some("d".into()),
        };
        assert_eq!(last.slice(all(), |s| *s), (vec!["e"], None));
        let exact = Page {
            limit: 5,
            cursor: None,
        };
        assert_eq!(
            exact.slice(all(), |s| *s).1,
            None,
            "no next page when all fit"
        );
        let deleted = Page {
            limit: 2,
            cursor: Some("bb".into()),
        };
        assert_eq!(
            deleted.slice(all(), |s| *s),
            (vec!["c", "d"], Some("d".into()))
        );
    }
}
