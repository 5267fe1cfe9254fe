//! Provider credentials: a [`Secret`] never prints, and a [`Redactor`] scrubs
//! known secrets out of text that came back from upstream (error bodies can
//! echo a key) before it reaches a log, an error or a client (NFR-SEC-2).

use std::fmt;
use std::sync::Arc;

/// A credential. `Debug` shows `***`; there is no `Display` or `Serialize`,
/// so the only way to the value is [`Secret::expose`], at the one place that
/// puts it in a request header.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Arc::from(value.into()))
    }

    /// The value, for the request header that needs it; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Shortest run of a secret's characters that is scrubbed on its own: a
/// provider echoing part of a key (OpenAI shows `sk-ab...wxyz`) leaks less
/// than this, anything longer is treated as the key.
const MIN_SCRUBBED_RUN: usize = 12;

/// Replaces every known secret, every run of [`MIN_SCRUBBED_RUN`] of its
/// characters (whatever their ASCII case: an upstream may upper-case what it
/// echoes), and the secret base64-encoded (standard or URL-safe, at any
/// alignment inside a longer encoding, as in a Basic `Authorization`), with
/// `***`.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Arc<Vec<Secret>>,
    /// The base64 forms of the secrets: the part of the encoding that does
    /// not depend on the bytes around it.
    encoded: Arc<Vec<String>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = Secret>) -> Self {
        let secrets: Vec<Secret> = secrets
            .into_iter()
            .filter(|s| !s.expose().is_empty())
            .collect();
        let encoded = secrets
            .iter()
            .flat_map(|s| base64_cores(s.expose().as_bytes()))
            .collect();
        Self {
            secrets: Arc::new(secrets),
            encoded: Arc::new(encoded),
        }
    }

    /// `text` without any secret in it.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in self.secrets.iter() {
            let value = secret.expose();
            out = replace_ignoring_ascii_case(&out, value);
            let chars: Vec<char> = value.chars().collect();
            if chars.len() > MIN_SCRUBBED_RUN {
                for window in chars.windows(MIN_SCRUBBED_RUN) {
                    let run: String = window.iter().collect();
                    out = replace_ignoring_ascii_case(&out, &run);
                }
            }
        }
        for core in self.encoded.iter() {
            if out.contains(core.as_str()) {
                out = out.replace(core.as_str(), "***");
            }
        }
        out
    }
}

/// `haystack` with every ASCII-case-insensitive occurrence of `needle`
/// replaced by `***`.
fn replace_ignoring_ascii_case(haystack: &str, needle: &str) -> String {
    let (hay, pat) = (haystack.as_bytes(), needle.as_bytes());
    if pat.is_empty() || hay.len() < pat.len() {
        return haystack.to_owned();
    }
    let mut out = String::with_capacity(haystack.len());
    let (mut start, mut i) = (0, 0);
    while i + pat.len() <= hay.len() {
        // Matches start and end on char boundaries: the needle's bytes are
        // whole characters, and ASCII case folding keeps lengths.
        if hay[i..i + pat.len()].eq_ignore_ascii_case(pat) && haystack.is_char_boundary(i) {
            out.push_str(&haystack[start..i]);
            out.push_str("***");
            i += pat.len();
            start = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&haystack[start..]);
    out
}

/// The parts of `secret`'s base64 encodings (standard and URL-safe) that
/// stay the same whatever bytes surround it: for each of the three
/// alignments, the encoding minus the characters the neighbours share.
/// Short secrets give nothing (too little would stay to be sure).
fn base64_cores(secret: &[u8]) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut cores = Vec::new();
    for offset in 0..3usize {
        let mut framed = vec![0u8; offset];
        framed.extend_from_slice(secret);
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(&framed);
            // Leading characters mix the prefix's bits; the last two may mix
            // whatever follows.
            let skip = (offset * 4).div_ceil(3);
            let core = encoded
                .get(skip..encoded.len().saturating_sub(2))
                .unwrap_or("");
            if core.len() >= MIN_SCRUBBED_RUN && !cores.iter().any(|c: &String| c == core) {
                cores.push(core.to_owned());
            }
        }
    }
    cores
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_and_are_scrubbed_whole_or_in_part() {
        let key = Secret::new("sk-live-0123456789abcdefghij");
        assert_eq!(format!("{key:?}"), "Secret(***)");
        let r = Redactor::new([key, Secret::new("")]);
        assert_eq!(
            r.scrub("bad key sk-live-0123456789abcdefghij given"),
            "bad key *** given"
        );
        let partial = r.scrub("key ending 456789abcdefghij is wrong");
        assert!(!partial.contains("456789abcdef"), "{partial}");
        assert_eq!(r.scrub("nothing secret"), "nothing secret");
    }

    #[test]
    fn encoded_and_case_changed_secrets_are_scrubbed() {
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        let value = "sk-live-0123456789abcdefghij";
        let r = Redactor::new([Secret::new(value)]);
        let upper = r.scrub(&format!("invalid key {}", value.to_uppercase()));
        assert!(!upper.contains("0123456789ABCDEF"), "{upper}");
        for prefix in ["", "u", "us", "user:", "Bearer "] {
            for engine in [&STANDARD, &URL_SAFE] {
                let encoded = engine.encode(format!("{prefix}{value}"));
                let scrubbed = r.scrub(&format!("Authorization: Basic {encoded} refused"));
                assert!(scrubbed.contains("***"), "{prefix:?}: {scrubbed}");
                let rest = scrubbed.replace("***", "");
                assert!(
                    !rest.contains(&encoded[encoded.len() / 2 - 6..encoded.len() / 2 + 6]),
                    "{prefix:?}: {scrubbed}"
                );
            }
        }
        assert_eq!(r.scrub("Ünïcode stays"), "Ünïcode stays");
    }
}
