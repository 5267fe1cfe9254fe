//! Naming records by UUID the way docker and kubectl users expect: the full
//! id, a unique tail of it, or a name. UUIDv7 heads are timestamps, alike
//! for records made together, so tables show ids by their last 8
//! characters ([`short`]) and a tail is what people type.

use crate::client::ClientError;
use crate::error::CliError;

/// How many of the newest records a short id or a name is looked for among.
pub const SCAN: usize = 10_000;
/// The shortest id tail accepted: fewer characters would match too often.
pub const MIN_TAIL: usize = 6;

/// How tables show an id: its last 8 characters, the random part of a UUIDv7.
pub fn short(id: &impl std::fmt::Display) -> String {
    let full = id.to_string();
    full[full.len().saturating_sub(8)..].to_owned()
}

/// What a user typed for a record (`text`), matched against pages of candidates.
pub struct Lookup<'a> {
    /// The record's kind in messages: `task`, `approval`.
    kind: &'a str,
    text: &'a str,
    /// `text` in lower case when it can be an id's tail, else `None`.
    tail: Option<String>,
}

impl<'a> Lookup<'a> {
    pub fn new(kind: &'a str, text: &'a str) -> Self {
        let text = text.trim();
        let lower = text.to_ascii_lowercase();
        let tail = (lower.len() >= MIN_TAIL
            && lower.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
        .then_some(lower);
        Self { kind, text, tail }
    }

    /// Whether a record with this full id and name is one `text` names.
    pub fn matches(&self, id: &str, name: Option<&str>) -> bool {
        self.tail.as_deref().is_some_and(|tail| id.ends_with(tail)) || name == Some(self.text)
    }

    /// The one record among `matches` (each as its id and name), or the
    /// error: none is not-found (exit 4); several is a usage error (exit 2)
    /// listing them.
    pub fn one<T>(
        &self,
        mut matches: Vec<T>,
        describe: impl Fn(&T) -> (String, Option<String>),
    ) -> Result<T, CliError> {
        match matches.len() {
            1 => Ok(matches.remove(0)),
            0 => Err(CliError::Client(ClientError::Api {
                status: 404,
                code: "not_found".into(),
                message: format!(
                    "no {kind} has the id {text:?}, an id ending in it or that name (among the {SCAN} newest): give the full id ({kind} ls -o wide shows them)",
                    kind = self.kind,
                    text = self.text,
                ),
                request_id: None,
            })),
            n => Err(CliError::Usage(format!(
                "{:?} names {n} {}s: {}; give more of the id",
                self.text,
                self.kind,
                matches
                    .iter()
                    .map(|m| match describe(m) {
                        (id, Some(name)) => format!("{id} ({name})"),
                        (id, None) => id,
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_needs_six_hex_characters_and_a_name_matches_exactly() {
        let id = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        assert!(Lookup::new("task", "3F4A5B").matches(id, None));
        assert!(!Lookup::new("task", "4a5b").matches(id, None), "too short");
        assert!(Lookup::new("task", "build").matches(id, Some("build")));
        assert!(!Lookup::new("task", "build").matches(id, Some("build-2")));
        assert_eq!(short(&id), "2e3f4a5b");
    }

    #[test]
    fn several_matches_are_a_usage_error_listing_them() {
        let lookup = Lookup::new("approval", "abcdef");
        let err = lookup
            .one(vec!["x-abcdef", "y-abcdef"], |s| ((*s).to_owned(), None))
            .unwrap_err();
        assert!(
            matches!(&err, CliError::Usage(m) if m.contains("names 2 approvals: x-abcdef, y-abcdef")),
            "{err:?}"
        );
        let none: Vec<&str> = Vec::new();
        let err = lookup.one(none, |s| ((*s).to_owned(), None)).unwrap_err();
        assert!(
            matches!(&err, CliError::Client(ClientError::Api { status: 404, .. })),
            "{err:?}"
        );
    }
}
