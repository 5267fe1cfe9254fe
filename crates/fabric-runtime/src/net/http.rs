//! The little HTTP/1 the egress proxy speaks: reading and parsing a request head, rewriting it for the upstream, plain-text responses.

use std::fmt;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest request head (request line and headers) the proxy reads.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How a request asks to reach its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressMethod {
    /// `CONNECT host:port`: a tunnel; the proxy sees only bytes (HTTPS, SSH, ...).
    Connect,
    /// An absolute-form plain HTTP request (`GET http://host/path`), forwarded.
    Http,
}

impl fmt::Display for EgressMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::Http => "http",
        })
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) method: EgressMethod,
    /// Lowercase, without brackets for IPv6 literals, without a trailing dot.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// For [`EgressMethod::Http`]: the head to send upstream (origin-form
    /// target, `Host` set to the target, hop-by-hop headers replaced by
    /// `Connection: close`). Empty for `CONNECT`.
    pub(crate) upstream_head: Vec<u8>,
}

/// `host:port`, bracketing IPv6 literals.
pub(crate) fn authority(host: &str, port: u16) -> String {
    format!("{}:{port}", bracketed(host))
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Why a request head could not be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The client closed (or failed) before sending a whole head.
    Closed,
    /// No end of the head within [`MAX_HEAD_BYTES`].
    TooLarge,
}

/// Reads up to the end of the request head. Returns the head (through its
/// blank line) and whatever the client sent after it (a body's start, or a
/// TLS hello pipelined after `CONNECT`), which belongs to the upstream.
pub(crate) async fn read_head(
    client: &mut (impl AsyncRead + Unpin),
) -> Result<(Vec<u8>, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = client
            .read(&mut chunk)
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        // Search from a little before the new bytes: the terminator may straddle reads.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf, from) {
            if end > MAX_HEAD_BYTES {
                return Err(HeadError::TooLarge);
            }
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Index just past the blank line ending the head (`\r\n\r\n`, or a bare `\n\n`).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Hop-by-hop headers (and `Host`) that are not passed on; the proxy writes
/// its own `Host` and `Connection`.
const DROPPED_HEADERS: [&str; 6] = [
    "host",
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Parses a request head; the error is a short reason for the 400 response.
pub(crate) fn parse_head(head: &[u8]) -> Result<Request, String> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let request_line = lines.next().unwrap_or_default();
    let request_line = std::str::from_utf8(request_line)
        .ok()
        .filter(|l| l.is_ascii())
        .ok_or("the request line is not ASCII")?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("malformed request line {request_line:?}"));
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(format!("malformed method {method:?}"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(format!("unsupported version {version:?}: use HTTP/1.1"));
    }

    if method == "CONNECT" {
        let (host, port) = parse_authority(target, None)?;
        return Ok(Request {
            method: EgressMethod::Connect,
            host,
            port,
            upstream_head: Vec::new(),
        });
    }

    let lower = target.to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target["http://".len()..]
    } else if lower.starts_with("https://") {
        return Err("send https requests through a CONNECT tunnel".into());
    } else {
        return Err(format!(
            "{target:?} is not an absolute http:// URL: this is the agent's egress proxy, \
             send absolute-form requests or CONNECT"
        ));
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority_part, path) = rest.split_at(split);
    let (host, port) = parse_authority(authority_part, Some(80))?;
    let path = path.split('#').next().unwrap_or_default();
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };

    let mut upstream = format!("{method} {path} {version}\r\n").into_bytes();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            return Err("folded header lines are not accepted".into());
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or("a header line has no colon")?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().copied().all(is_token_byte) {
            return Err("malformed header name".into());
        }
        let dropped = DROPPED_HEADERS
            .iter()
            .any(|d| d.as_bytes().eq_ignore_ascii_case(name));
        if !dropped {
            upstream.extend_from_slice(line);
            upstream.extend_from_slice(b"\r\n");
        }
    }
    // The connection is spliced to this one upstream after the head, so the
    // exchange must end with it: a next request on the same connection
    // would reach this upstream whatever its target says.
    let host_header = if port == 80 {
        bracketed(&host)
    } else {
        authority(&host, port)
    };
    upstream
        .extend_from_slice(format!("Host: {host_header}\r\nConnection: close\r\n\r\n").as_bytes());
    Ok(Request {
        method: EgressMethod::Http,
        host,
        port,
        upstream_head: upstream,
    })
}

/// `host:port` or `[v6]:port`; `default_port` when the port is left out
/// (absolute URLs), required otherwise (`CONNECT`).
fn parse_authority(text: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let bad = || format!("malformed target {text:?}: expected host:port");
    if text.contains('@') {
        return Err(format!("target {text:?} has user info: leave it out"));
    }
    let v6_literal = text.starts_with('[');
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(bad());
        }
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        (host, port)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match (port, default_port) {
        (Some(port), _) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0 && port.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(bad)?,
        (None, Some(default)) => default,
        (None, None) => return Err(bad()),
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'.' | b'_')
                || (v6_literal && b == b':')
        });
    if !host_ok {
        return Err(format!("malformed host in target {text:?}"));
    }
    Ok((host, port))
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A complete response with a plain-text body; the proxy closes after it.
pub(crate) fn text_response(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What `CONNECT` is answered with once the tunnel is up.
pub(crate) const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(head: &str) -> String {
        String::from_utf8(parse_head(head.as_bytes()).unwrap().upstream_head).unwrap()
    }

    #[test]
    fn connect_targets_parse() {
        let request =
            parse_head(b"CONNECT API.GitHub.com.:443 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(request.method, EgressMethod::Connect);
        assert_eq!(
            (request.host.as_str(), request.port),
            ("api.github.com", 443)
        );
        assert!(request.upstream_head.is_empty());
        let v6 = parse_head(b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8443));
        assert_eq!(authority(&v6.host, v6.port), "[::1]:8443");
    }

    #[test]
    fn absolute_requests_are_rewritten_to_origin_form_with_connection_close() {
        let head = "GET http://Example.com:8080/a/b?c=d HTTP/1.1\r\nHost: evil.test\r\n\
                    User-Agent: t\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive\r\n\
                    Proxy-Authorization: secret\r\nAccept: */*\r\n\r\n";
        let request = parse_head(head.as_bytes()).unwrap();
        assert_eq!(request.method, EgressMethod::Http);
        assert_eq!((request.host.as_str(), request.port), ("example.com", 8080));
        assert_eq!(
            upstream(head),
            "GET /a/b?c=d HTTP/1.1\r\nUser-Agent: t\r\nAccept: */*\r\n\
             Host: example.com:8080\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            upstream("POST http://h?x=1#frag HTTP/1.0\nContent-Length: 3\n\n"),
            "POST /?x=1 HTTP/1.0\r\nContent-Length: 3\r\nHost: h\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn bad_heads_are_refused_with_a_reason() {
        for (head, expected) in [
            ("GET / HTTP/1.1\r\n\r\n", "absolute"),
            ("GET https://h/ HTTP/1.1\r\n\r\n", "CONNECT"),
            ("CONNECT h HTTP/1.1\r\n\r\n", "host:port"),
            ("CONNECT h:0 HTTP/1.1\r\n\r\n", "host:port"),
            ("CONNECT h:+80 HTTP/1.1\r\n\r\n", "host:port"),
            ("CONNECT ::1:80 HTTP/1.1\r\n\r\n", "malformed host"),
            ("CONNECT h:80 HTTP/2\r\n\r\n", "version"),
            ("CONNECT  h:80 HTTP/1.1\r\n\r\n", "request line"),
            (
                "GET http://allowed.test@evil.test/ HTTP/1.1\r\n\r\n",
                "user info",
            ),
            ("GET http://a%2eb/ HTTP/1.1\r\n\r\n", "malformed host"),
            (
                "GET http://h/ HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
                "folded",
            ),
            ("GET http://h/ HTTP/1.1\r\nno colon\r\n\r\n", "colon"),
            ("G(T http://h/ HTTP/1.1\r\n\r\n", "method"),
        ] {
            let err = parse_head(head.as_bytes()).unwrap_err();
            assert!(err.contains(expected), "{head:?}: {err}");
        }
    }

    #[tokio::test]
    async fn heads_are_read_up_to_the_blank_line_and_capped() {
        let mut input: &[u8] = b"CONNECT h:1 HTTP/1.1\r\nA: b\r\n\r\n\x16\x03tls";
        let (head, rest) = read_head(&mut input).await.unwrap();
        assert!(head.ends_with(b"\r\n\r\n"));
        assert_eq!(rest, b"\x16\x03tls");

        let big = format!(
            "GET http://h/ HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        let mut input = big.as_bytes();
        assert!(matches!(
            read_head(&mut input).await,
            Err(HeadError::TooLarge)
        ));
        let mut input: &[u8] = b"GET http://h/ HTTP/1.1\r\n";
        assert!(matches!(
            read_head(&mut input).await,
            Err(HeadError::Closed)
        ));
    }

    #[test]
    fn responses_say_why() {
        let response = String::from_utf8(text_response(403, "no\n")).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 403 Forbidden\r\n"),
            "{response}"
        );
        assert!(response.contains("Content-Length: 3\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\nno\n"), "{response}");
    }
}
