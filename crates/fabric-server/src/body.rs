//! Reading a request body up to a limit without losing the answer to it.
//!
//! A server that answers 413 and closes while the client is still sending
//! makes the client's kernel see a reset, which throws away the unread 413
//! (the client reports "connection reset", not why). So a body somewhat over
//! the limit is read to its end and thrown away before the 413 goes out;
//! only one far over it (declared, or once that much has arrived) is cut at
//! once. Used by the gateway's routes and agents' inference endpoints
//! (`crate::services::llm`) and by the container sidecar's forwarding hop (`crate::proxy`).

use axum::body::Body;
use axum::http::{HeaderMap, header};
use futures_util::StreamExt as _;

/// How far past the limit a body is still read (and thrown away).
pub(crate) const DRAIN_SLACK: usize = 16 << 20;

/// Why [`read_limited`] returned no body.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("cannot read the request body: {0}")]
    Unreadable(#[source] axum::Error),
}

/// The body, if it is at most `limit` bytes.
pub(crate) async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, BodyError> {
    let too_large = BodyError::TooLarge { limit };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit.saturating_add(DRAIN_SLACK)) {
        return Err(too_large);
    }
    let mut stream = body.into_data_stream();
    let mut kept = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyError::Unreadable)?;
        total = total.saturating_add(chunk.len());
        if total <= limit {
            kept.extend_from_slice(&chunk);
        } else if total > limit.saturating_add(DRAIN_SLACK) {
            return Err(too_large);
        }
    }
    if total > limit {
        return Err(too_large);
    }
    Ok(kept.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_up_to_the_limit_pass_and_larger_ones_are_refused_after_draining() {
        let headers = HeaderMap::new();
        let ok = read_limited(&headers, Body::from(vec![b'a'; 10]), 10).await;
        assert_eq!(ok.unwrap().len(), 10);
        let over = read_limited(&headers, Body::from(vec![b'a'; 11]), 10).await;
        assert!(matches!(over, Err(BodyError::TooLarge { limit: 10 })));
        let mut declared = HeaderMap::new();
        declared.insert(
            header::CONTENT_LENGTH,
            (10 + DRAIN_SLACK + 1).to_string().parse().unwrap(),
        );
        let cut = read_limited(&declared, Body::empty(), 10).await;
        assert!(
            matches!(cut, Err(BodyError::TooLarge { .. })),
            "refused at once"
        );
    }
}
