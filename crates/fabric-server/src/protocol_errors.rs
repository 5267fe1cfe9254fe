//! JSON bodies for the errors hyper answers by itself.
//!
//! A request hyper cannot parse (a malformed request line, headers past its
//! buffer, an unsupported version) never reaches the router: hyper writes
//! `400`, `414`, `431`, `501` or `505` with an empty body and closes the
//! connection. Every error of the API has the JSON error shape
//! (`{"error": {"code", "message", "request_id"}}`), so [`JsonErrors`], the
//! connection's IO, recognises those answers as hyper writes them and sends
//! the same status with a JSON body instead.
//!
//! What makes a write one of them: no response of the router is being
//! written ([`Answering`] counts those, from the request to the end of its
//! body), the bytes begin a response head (`HTTP/1.x NNN`) with one of
//! those statuses, and the head has no `x-request-id` (every answer of the
//! router has one).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::Bytes;
use fabric_core::api::{ErrorBody, ErrorDetail};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Responses of the router being written on one connection.
#[derive(Clone, Default)]
pub(crate) struct Answering(Arc<AtomicUsize>);

impl Answering {
    /// Counts a response from now until its body is done (or dropped).
    pub(crate) fn track(&self, response: axum::response::Response) -> axum::response::Response {
        self.0.fetch_add(1, Ordering::SeqCst);
        let guard = Guard(Arc::clone(&self.0));
        response.map(|body| {
            Body::new(Tracked {
                body,
                _guard: guard,
            })
        })
    }

    fn idle(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

struct Guard(Arc<AtomicUsize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its response counted while it lives.
struct Tracked {
    body: Body,
    _guard: Guard,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The code and message of an error hyper answers, by status.
fn explain(status: u16) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match status {
        400 => (
            "Bad Request",
            "bad_request",
            "the request is not well-formed HTTP/1.1 (request line or headers): send a well-formed request",
        ),
        414 => (
            "URI Too Long",
            "uri_too_long",
            "the request's URI is too long: send large values in the body",
        ),
        431 => (
            "Request Header Fields Too Large",
            "headers_too_large",
            "the request's headers are too large: send fewer or smaller headers",
        ),
        501 => (
            "Not Implemented",
            "not_implemented",
            "the request uses an HTTP feature this server does not implement (e.g. a transfer coding other than chunked)",
        ),
        505 => (
            "HTTP Version Not Supported",
            "http_version_not_supported",
            "this server speaks HTTP/1.0 and HTTP/1.1 (and WebSocket upgrades of those)",
        ),
        _ => return None,
    })
}

/// The JSON answer for a head hyper wrote by itself, if `bytes` is one.
fn replacement(bytes: &[u8]) -> Option<Vec<u8>> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = &bytes[..head_end];
    if !(head.starts_with(b"HTTP/1.1 ") || head.starts_with(b"HTTP/1.0 ")) || head.len() < 12 {
        return None;
    }
    let status: u16 = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
    let (reason, code, message) = explain(status)?;
    let lower = head.to_ascii_lowercase();
    if lower.windows(15).any(|w| w == b"\r\nx-request-id:") {
        return None;
    }
    let body = serde_json::to_vec(&ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message: message.to_owned(),
            request_id: crate::request_id::new_id(),
            provider: None,
            correlation_id: None,
            entity: None,
            limit: None,
            resets_at: None,
        },
    })
    .ok()?;
    let mut answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    Some(answer)
}

/// A connection's IO that gives hyper's own error answers a JSON body.
pub(crate) struct JsonErrors<S> {
    inner: S,
    answering: Answering,
    /// The JSON answer still to be written, and how much of it is.
    pending: Option<(Vec<u8>, usize)>,
}

impl<S> JsonErrors<S> {
    pub(crate) fn new(inner: S, answering: Answering) -> Self {
        Self {
            inner,
            answering,
            pending: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> JsonErrors<S> {
    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if self.answering.idle()
            && let Some(answer) = replacement(buf)
        {
            // hyper's answer is taken whole; ours goes out in its place.
            self.pending = Some((answer, 0));
            ready!(self.poll_pending(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored: hyper then writes a head in one buffer, which is what
    // `replacement` looks at.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_own_answers_get_a_json_body_and_others_are_left_alone() {
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 10:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(replacement(hyper_431).unwrap()).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{answer}"
        );
        let (_, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(answer.contains(&format!("content-length: {}\r\n", body.len())));
        let parsed: ErrorBody = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.error.code, "headers_too_large");
        assert!(parsed.error.request_id.starts_with("req_"));
        for status in [400, 414, 501, 505] {
            let head = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            assert!(replacement(head.as_bytes()).is_some(), "{status}");
        }
        // The router's own answers (they carry a request id), other statuses,
        // and bytes that are not a head are not touched.
        assert!(
            replacement(
                b"HTTP/1.1 400 Bad Request\r\nx-request-id: req_1\r\ncontent-length: 2\r\n\r\n{}"
            )
            .is_none()
        );
        assert!(replacement(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(replacement(b"HTTP/1.1 400 Bad").is_none());
        assert!(replacement(b"{\"stdout\": \"HTTP/1.1 400 x\r\n\r\n\"}").is_none());
    }
}
