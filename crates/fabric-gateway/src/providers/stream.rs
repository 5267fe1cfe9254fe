//! Streamed upstream bodies: bytes → lines → SSE events → [`StreamEvent`]s.
//! Ollama streams NDJSON (one JSON object a line), OpenAI and Anthropic
//! stream SSE; each provider supplies a [`Decode`] for its payloads.

use std::collections::VecDeque;

use futures_util::StreamExt as _;
use futures_util::stream::{self, BoxStream};

use crate::error::{ProviderError, ProviderErrorKind};
use crate::types::{ChatStream, StreamEvent};

/// Longest line accepted from upstream before the stream is refused.
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// A response body as lines, without their `\n` / `\r\n`.
pub(crate) fn lines(
    response: reqwest::Response,
) -> BoxStream<'static, Result<String, ProviderError>> {
    struct State {
        body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
        buf: Vec<u8>,
        ended: bool,
    }
    let state = State {
        body: response.bytes_stream().boxed(),
        buf: Vec::new(),
        ended: false,
    };
    stream::unfold(state, |mut s| async move {
        loop {
            if let Some(pos) = s.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = s.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Some((utf8(line), s));
            }
            if s.ended {
                if s.buf.is_empty() {
                    return None;
                }
                let line = std::mem::take(&mut s.buf);
                return Some((utf8(line), s));
            }
            if s.buf.len() > MAX_LINE_BYTES {
                s.ended = true;
                s.buf.clear();
                return Some((
                    Err(ProviderError::protocol(format!(
                        "a streamed line is longer than {MAX_LINE_BYTES} bytes"
                    ))),
                    s,
                ));
            }
            match s.body.next().await {
                Some(Ok(chunk)) => s.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    s.ended = true;
                    s.buf.clear();
                    return Some((
                        Err(ProviderError::new(
                            ProviderErrorKind::Network,
                            format!("the stream broke: {}", error_chain(&e)),
                        )),
                        s,
                    ));
                }
                None => s.ended = true,
            }
        }
    })
    .boxed()
}

fn utf8(line: Vec<u8>) -> Result<String, ProviderError> {
    String::from_utf8(line).map_err(|_| ProviderError::protocol("a streamed line is not UTF-8"))
}

/// The error and its causes ("error sending request: connection refused").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = cause_of(source);
    }
    text
}

fn cause_of<'a>(
    e: Option<&'a (dyn std::error::Error + 'static)>,
) -> Option<&'a (dyn std::error::Error + 'static)> {
    e.and_then(std::error::Error::source)
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Lines grouped into server-sent events (`event:` and `data:` fields up to a
/// blank line; comments and other fields ignored).
pub(crate) fn sse(
    lines: BoxStream<'static, Result<String, ProviderError>>,
) -> BoxStream<'static, Result<SseEvent, ProviderError>> {
    struct State {
        lines: BoxStream<'static, Result<String, ProviderError>>,
        event: Option<String>,
        data: Option<String>,
        ended: bool,
    }
    let state = State {
        lines,
        event: None,
        data: None,
        ended: false,
    };
    stream::unfold(state, |mut s| async move {
        loop {
            if s.ended {
                return None;
            }
            match s.lines.next().await {
                Some(Ok(line)) => {
                    if line.is_empty() {
                        if let Some(data) = s.data.take() {
                            let event = SseEvent {
                                event: s.event.take(),
                                data,
                            };
                            return Some((Ok(event), s));
                        }
                        s.event = None;
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => s.event = Some(value.to_owned()),
                        "data" => match &mut s.data {
                            Some(d) => {
                                d.push('\n');
                                d.push_str(value);
                            }
                            None => s.data = Some(value.to_owned()),
                        },
                        _ => {}
                    }
                }
                Some(Err(e)) => {
                    s.ended = true;
                    return Some((Err(e), s));
                }
                None => {
                    s.ended = true;
                    if let Some(data) = s.data.take() {
                        let event = SseEvent {
                            event: s.event.take(),
                            data,
                        };
                        return Some((Ok(event), s));
                    }
                    return None;
                }
            }
        }
    })
    .boxed()
}

/// Turns one provider's stream payloads into [`StreamEvent`]s.
pub(crate) trait Decode: Send + 'static {
    type Item: Send + 'static;

    /// Handles one payload; may push events (a `Done` ends the stream).
    fn feed(
        &mut self,
        item: Self::Item,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<(), ProviderError>;

    /// The input ended: push the `Done` if the payloads allow, else fail.
    fn end(&mut self, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError>;
}

/// Decodes `input` with `decoder`; ends after the first `Done` or error.
pub(crate) fn decode<D: Decode>(
    input: BoxStream<'static, Result<D::Item, ProviderError>>,
    decoder: D,
) -> ChatStream {
    struct State<D: Decode> {
        input: BoxStream<'static, Result<D::Item, ProviderError>>,
        decoder: D,
        out: VecDeque<StreamEvent>,
        finished: bool,
    }
    let state = State {
        input,
        decoder,
        out: VecDeque::new(),
        finished: false,
    };
    stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.out.pop_front() {
                if matches!(event, StreamEvent::Done { .. }) {
                    s.finished = true;
                    s.out.clear();
                }
                return Some((Ok(event), s));
            }
            if s.finished {
                return None;
            }
            let step = match s.input.next().await {
                Some(Ok(item)) => s.decoder.feed(item, &mut s.out),
                Some(Err(e)) => Err(e),
                None => {
                    let ended = s.decoder.end(&mut s.out);
                    if ended.is_ok() && s.out.is_empty() {
                        Err(ProviderError::new(
                            ProviderErrorKind::Network,
                            "the stream ended before it was complete",
                        ))
                    } else {
                        ended
                    }
                }
            };
            if let Err(e) = step {
                s.finished = true;
                s.out.clear();
                return Some((Err(e), s));
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::FinishReason;

    fn text_lines(items: &[&str]) -> BoxStream<'static, Result<String, ProviderError>> {
        let owned: Vec<Result<String, ProviderError>> =
            items.iter().map(|s| Ok((*s).to_owned())).collect();
        stream::iter(owned).boxed()
    }

    #[tokio::test]
    async fn sse_groups_fields_until_a_blank_line() {
        let events: Vec<_> = sse(text_lines(&[
            ": comment",
            "event: delta",
            "data: a",
            "data: b",
            "",
            "",
            "data: last",
        ]))
        .collect()
        .await;
        assert_eq!(
            events,
            vec![
                Ok(SseEvent {
                    event: Some("delta".into()),
                    data: "a\nb".into()
                }),
                Ok(SseEvent {
                    event: None,
                    data: "last".into()
                }),
            ]
        );
    }

    struct Words;
    impl Decode for Words {
        type Item = String;
        fn feed(
            &mut self,
            item: String,
            out: &mut VecDeque<StreamEvent>,
        ) -> Result<(), ProviderError> {
            if item == "END" {
                out.push_back(StreamEvent::Done {
                    finish_reason: FinishReason::Stop,
                    usage: None,
                });
            } else if item == "BAD" {
                return Err(ProviderError::protocol("bad"));
            } else {
                out.push_back(StreamEvent::Delta(item));
            }
            Ok(())
        }
        fn end(&mut self, _: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn decoding_stops_at_done_or_the_first_error_and_flags_truncation() {
        let done: Vec<_> = decode(text_lines(&["a", "END", "ignored"]), Words)
            .collect()
            .await;
        assert_eq!(done.len(), 2);
        let bad: Vec<_> = decode(text_lines(&["a", "BAD", "b"]), Words)
            .collect()
            .await;
        assert!(matches!(bad.as_slice(), [Ok(_), Err(_)]));
        let cut: Vec<_> = decode(text_lines(&["a"]), Words).collect().await;
        assert!(
            matches!(cut.as_slice(), [Ok(_), Err(e)] if e.kind == ProviderErrorKind::Network),
            "{cut:?}"
        );
    }
}
