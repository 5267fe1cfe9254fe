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

/// Replaces every known secret, and every run of [`MIN_SCRUBBED_RUN`] of its
/// characters, with `***`.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Arc<Vec<Secret>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = Secret>) -> Self {
        let secrets = secrets
            .into_iter()
            .filter(|s| !s.expose().is_empty())
            .collect();
        Self {
            secrets: Arc::new(secrets),
        }
    }

    /// `text` without any secret in it.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in self.secrets.iter() {
            let value = secret.expose();
            if out.contains(value) {
                out = out.replace(value, "***");
            }
            let chars: Vec<char> = value.chars().collect();
            if chars.len() > MIN_SCRUBBED_RUN {
                for window in chars.windows(MIN_SCRUBBED_RUN) {
                    let run: String = window.iter().collect();
                    if out.contains(&run) {
                        out = out.replace(&run, "***");
                    }
                }
            }
        }
        out
    }
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
}
