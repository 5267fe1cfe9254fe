//! Output capture: one byte-limited buffer per stream, plus the line splitter that feeds the live log.

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

use super::{LogLine, MAX_LOG_LINE, Stream};

/// Bytes read from a pipe per syscall: 50 MB of output is under a thousand reads.
const READ_CHUNK: usize = 64 * 1024;

/// Everything one stream (stdout or stderr) produced across all of a job's commands.
#[derive(Debug)]
pub(crate) struct Capture {
    stream: Stream,
    limit: usize,
    /// Raw bytes, at most `limit`. Kept raw until the end so a multi-byte
    /// character split across two reads (or two commands) decodes correctly.
    raw: Vec<u8>,
    /// The stream produced more than `limit` bytes.
    overflowed: bool,
    /// The line being assembled for the live log, at most [`MAX_LOG_LINE`] bytes.
    line: Vec<u8>,
    logs: Option<Sender<LogLine>>,
    dropped_lines: u64,
}

impl Capture {
    pub(crate) fn new(stream: Stream, limit: usize, logs: Option<Sender<LogLine>>) -> Self {
        Self {
            stream,
            limit,
            raw: Vec::new(),
            overflowed: false,
            line: Vec::new(),
            logs,
            dropped_lines: 0,
        }
    }

    /// Takes a chunk read from the pipe. Bytes past the limit are counted as
    /// overflow and dropped: the caller keeps reading so the child never blocks.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        if self.overflowed {
            return;
        }
        let room = self.limit - self.raw.len();
        let kept = &chunk[..chunk.len().min(room)];
        self.raw.extend_from_slice(kept);
        self.split_lines(kept);
        if chunk.len() > room {
            self.overflowed = true;
            // The log shows exactly what the capture holds; nothing after the cut.
            self.flush_partial_line();
        }
    }

    /// The current command's stream ended: its unterminated last line is still a line.
    pub(crate) fn end_of_stream(&mut self) {
        self.flush_partial_line();
    }

    /// Log lines that were not delivered because the consumer was full.
    pub(crate) fn dropped_lines(&self) -> u64 {
        self.dropped_lines
    }

    /// The captured text (lossy UTF-8, at most `limit` bytes, cut on a
    /// character boundary) and whether it is less than the whole output.
    pub(crate) fn finish(self) -> (String, bool) {
        let mut text = into_text(self.raw);
        // Lossy decoding can grow the text (one bad byte becomes a 3-byte U+FFFD),
        // so the limit is enforced on the text, not only on the raw bytes.
        let cut = truncate_on_char_boundary(&mut text, self.limit);
        (text, self.overflowed || cut)
    }

    fn split_lines(&mut self, mut bytes: &[u8]) {
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            self.append_to_line(&bytes[..newline]);
            let line = std::mem::take(&mut self.line);
            self.send(line);
            bytes = &bytes[newline + 1..];
        }
        self.append_to_line(bytes);
    }

    fn append_to_line(&mut self, bytes: &[u8]) {
        // Keep one byte past the cap so `send` can tell a cut line from one
        // that is exactly MAX_LOG_LINE long; the excess is discarded there.
        let room = (MAX_LOG_LINE + 1).saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn flush_partial_line(&mut self) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.send(line);
        }
    }

    fn send(&mut self, line: Vec<u8>) {
        let Some(logs) = &self.logs else { return };
        let mut line = into_text(line);
        truncate_on_char_boundary(&mut line, MAX_LOG_LINE);
        // Never wait for the consumer: waiting would stop us reading the pipe,
        // and a full pipe stalls the child. A slow consumer loses lines instead.
        match logs.try_send(LogLine {
            stream: self.stream,
            line,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped_lines += 1,
            Err(TrySendError::Closed(_)) => self.logs = None,
        }
    }
}

/// Reads `reader` to its end into `capture`, then marks the end of this command's stream.
pub(crate) async fn pump<R: AsyncRead + Unpin>(reader: Option<R>, capture: &mut Capture) {
    let Some(mut reader) = reader else { return };
    // On the heap: a buffer held across `.await` would otherwise bloat the future.
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => capture.push(&buf[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                // Closing our end makes the child's next write fail with EPIPE, so it
                // cannot hang on us; its exit status still tells the story.
                tracing::warn!(stream = capture.stream.as_str(), error = %err, "reading command output failed");
                break;
            }
        }
    }
    capture.end_of_stream();
}

fn into_text(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    }
}

/// Cuts `text` to at most `max` bytes without splitting a character; true if it cut.
fn truncate_on_char_boundary(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut end = max;
    // Terminates: index 0 is always a boundary.
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    true
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    fn drain(rx: &mut mpsc::Receiver<LogLine>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|l| l.line)
            .collect()
    }

    #[test]
    fn output_within_the_limit_is_kept_whole() {
        let mut capture = Capture::new(Stream::Stdout, 10, None);
        capture.push(b"0123456789");
        assert_eq!(capture.finish(), ("0123456789".to_string(), false));
    }

    #[test]
    fn output_past_the_limit_is_cut_and_flagged() {
        let mut capture = Capture::new(Stream::Stdout, 4, None);
        capture.push(b"ab");
        capture.push(b"cdef");
        capture.push(b"more");
        assert_eq!(capture.finish(), ("abcd".to_string(), true));
    }

    #[test]
    fn cut_never_splits_a_character() {
        let mut capture = Capture::new(Stream::Stdout, 5, None);
        capture.push("abcdé".as_bytes()); // é is 2 bytes: the 5-byte cut falls inside it
        assert_eq!(capture.finish(), ("abcd".to_string(), true));
    }

    #[test]
    fn characters_split_across_reads_decode_whole() {
        let mut capture = Capture::new(Stream::Stdout, 100, None);
        let bytes = "é".as_bytes();
        capture.push(&bytes[..1]);
        capture.push(&bytes[1..]);
        assert_eq!(capture.finish(), ("é".to_string(), false));
    }

    #[test]
    fn invalid_utf8_is_replaced_and_the_limit_still_holds() {
        let mut capture = Capture::new(Stream::Stdout, 4, None);
        capture.push(b"a\xffb");
        assert_eq!(capture.finish(), ("a\u{FFFD}".to_string(), true));
        let mut capture = Capture::new(Stream::Stdout, 100, None);
        capture.push(b"a\xffb");
        assert_eq!(capture.finish(), ("a\u{FFFD}b".to_string(), false));
    }

    #[test]
    fn complete_lines_are_sent_as_they_arrive() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut capture = Capture::new(Stream::Stderr, 1000, Some(tx));
        capture.push(b"one\ntw");
        assert_eq!(drain(&mut rx), ["one"]);
        capture.push(b"o\n\nthr");
        assert_eq!(drain(&mut rx), ["two", ""]);
        capture.end_of_stream();
        assert_eq!(drain(&mut rx), ["thr"]);
    }

    #[test]
    fn long_lines_are_cut_for_the_log_but_kept_in_the_capture() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut capture = Capture::new(Stream::Stdout, 1 << 20, Some(tx));
        let long = vec![b'x'; MAX_LOG_LINE * 3];
        capture.push(&long[..1000]);
        capture.push(&long[1000..]);
        capture.push(b"\nnext\n");
        let lines = drain(&mut rx);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LOG_LINE);
        assert_eq!(lines[1], "next");
        assert_eq!(capture.finish().0.len(), MAX_LOG_LINE * 3 + 6);
    }

    #[test]
    fn no_lines_are_sent_past_the_output_limit() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut capture = Capture::new(Stream::Stdout, 6, Some(tx));
        capture.push(b"ab\ncdef\ngh\n");
        // "cde" is what the capture holds of the second line; it is flushed at the cut.
        assert_eq!(drain(&mut rx), ["ab", "cde"]);
        capture.push(b"later\n");
        capture.end_of_stream();
        assert!(drain(&mut rx).is_empty());
    }

    #[test]
    fn a_full_consumer_loses_lines_instead_of_blocking() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut capture = Capture::new(Stream::Stdout, 1000, Some(tx));
        capture.push(b"a\nb\nc\n");
        assert_eq!(capture.dropped_lines(), 2);
        assert_eq!(drain(&mut rx), ["a"]);
    }

    #[test]
    fn a_closed_consumer_is_forgotten() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut capture = Capture::new(Stream::Stdout, 1000, Some(tx));
        capture.push(b"a\nb\n");
        assert!(capture.logs.is_none());
        assert_eq!(capture.dropped_lines(), 0);
    }
}
