//! A small glob matcher for action strings: `*` (any run, `:` and `/`
//! included), `?` (one character), `[abc]` / `[a-z]` / `[!a-z]` classes and
//! `\` escapes. Hand-written instead of `globset`: actions are short flat
//! strings with no path semantics, and the rule index (see `index.rs`) needs
//! each pattern's literal prefix anyway.

use std::fmt;

/// Why a pattern is not a valid glob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("empty pattern: use `*` to match every action")]
    Empty,
    #[error(
        "pattern {pattern:?} has an unclosed `[` at character {at}: close the class with `]` or escape it as `\\[`"
    )]
    UnclosedClass { pattern: String, at: usize },
    #[error("pattern {pattern:?} ends with a lone `\\`: escape it as `\\\\`")]
    TrailingEscape { pattern: String },
    #[error("pattern {pattern:?} has an empty class `[]`: put at least one character in it")]
    EmptyClass { pattern: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    Any,
    Star,
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
}

/// A compiled glob.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    tokens: Vec<Token>,
    /// The literal characters before the first wildcard.
    prefix: String,
    /// How many tokens `prefix` took.
    prefix_tokens: usize,
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.source)
    }
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => {
                    // `**` is the same as `*`.
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                }
                '?' => tokens.push(Token::Any),
                '\\' => {
                    i += 1;
                    let Some(c) = chars.get(i) else {
                        return Err(GlobError::TrailingEscape {
                            pattern: pattern.to_owned(),
                        });
                    };
                    tokens.push(Token::Literal(*c));
                }
                '[' => {
                    let start = i;
                    i += 1;
                    let negated = matches!(chars.get(i), Some('!' | '^'));
                    if negated {
                        i += 1;
                    }
                    let mut items = Vec::new();
                    // A `]` right after `[` (or `[!`) is a literal member.
                    let mut first = true;
                    loop {
                        let Some(&c) = chars.get(i) else {
                            return Err(GlobError::UnclosedClass {
                                pattern: pattern.to_owned(),
                                at: start,
                            });
                        };
                        if c == ']' && !first {
                            break;
                        }
                        first = false;
                        let lo = if c == '\\' {
                            i += 1;
                            *chars.get(i).ok_or_else(|| GlobError::TrailingEscape {
                                pattern: pattern.to_owned(),
                            })?
                        } else {
                            c
                        };
                        if chars.get(i + 1) == Some(&'-')
                            && chars.get(i + 2).is_some_and(|c| *c != ']')
                        {
                            let hi = chars[i + 2];
                            items.push((lo.min(hi), lo.max(hi)));
                            i += 3;
                        } else {
                            items.push((lo, lo));
                            i += 1;
                        }
                    }
                    if items.is_empty() {
                        return Err(GlobError::EmptyClass {
                            pattern: pattern.to_owned(),
                        });
                    }
                    tokens.push(Token::Class { negated, items });
                }
                c => tokens.push(Token::Literal(c)),
            }
            i += 1;
        }
        let prefix: String = tokens
            .iter()
            .map_while(|t| match t {
                Token::Literal(c) => Some(*c),
                _ => None,
            })
            .collect();
        Ok(Glob {
            source: pattern.to_owned(),
            prefix_tokens: prefix.chars().count(),
            tokens,
            prefix,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The literal characters every match starts with.
    pub fn literal_prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether the whole of `text` matches.
    pub fn is_match(&self, text: &str) -> bool {
        // Fast path for patterns without wildcards, and for the common
        // `prefix*` shape.
        let rest_tokens = &self.tokens[self.prefix_tokens..];
        let Some(rest) = text.strip_prefix(self.prefix.as_str()) else {
            return false;
        };
        match rest_tokens {
            [] => rest.is_empty(),
            [Token::Star] => true,
            _ => {
                let rest: Vec<char> = rest.chars().collect();
                match_tokens(rest_tokens, &rest)
            }
        }
    }
}

/// Iterative wildcard matching with single backtracking point (linear in
/// practice, never exponential).
fn match_tokens(tokens: &[Token], text: &[char]) -> bool {
    let (mut t, mut s) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while s < text.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                star = Some((t, s));
                t += 1;
                continue;
            }
            Some(tok) if single(tok, text[s]) => {
                t += 1;
                s += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((st, ss)) => {
                t = st + 1;
                s = ss + 1;
                star = Some((st, ss + 1));
            }
            None => return false,
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::Star)
}

fn single(token: &Token, c: char) -> bool {
    match token {
        Token::Literal(l) => *l == c,
        Token::Any => true,
        Token::Class { negated, items } => {
            items.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
        }
        Token::Star => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything:at/all", true),
            ("shell:*", "shell:rm -rf /", true),
            ("shell:*", "shell:", true),
            ("shell:*", "shel", false),
            ("shell:rm *", "shell:rm -rf /", true),
            ("shell:rm *", "shell:rmdir x", false),
            ("shell:rm*", "shell:rmdir x", true),
            ("llm:gpt-4o", "llm:gpt-4o", true),
            ("llm:gpt-4o", "llm:gpt-4o-mini", false),
            ("llm:gpt-4o*", "llm:gpt-4o-mini", true),
            ("net:connect:*:443", "net:connect:api.github.com:443", true),
            (
                "net:connect:*:443",
                "net:connect:api.github.com:4430",
                false,
            ),
            (
                "net:connect:*.github.com:*",
                "net:connect:api.github.com:443",
                true,
            ),
            (
                "net:connect:*.github.com:*",
                "net:connect:github.com:443",
                false,
            ),
            ("file:write:/tmp/*", "file:write:/tmp/a/b/c", true),
            ("file:write:/tmp/*", "file:write:/etc/passwd", false),
            ("file:?", "file:a", true),
            ("file:?", "file:ab", false),
            ("file:?", "file:", false),
            ("x[abc]", "xb", true),
            ("x[abc]", "xd", false),
            ("x[a-c]y", "xby", true),
            ("x[!a-c]y", "xby", false),
            ("x[!a-c]y", "xzy", true),
            ("x[]]", "x]", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("*a*b*c*", "xxaxxbxxcxx", true),
            ("*a*b*c*", "xxaxxcxxbxx", false),
            ("**", "abc", true),
            ("a*", "A", false), // case-sensitive
            ("é*", "éa", true), // unicode
            ("*:*:*", "a:b", false),
            ("*:*:*", "a:b:c", true),
        ];
        for (pattern, text, want) in cases {
            let glob = Glob::new(pattern).unwrap();
            assert_eq!(glob.is_match(text), *want, "{pattern:?} on {text:?}");
        }
    }

    #[test]
    fn bad_globs_say_what_is_wrong() {
        assert_eq!(Glob::new(""), Err(GlobError::Empty));
        assert!(matches!(
            Glob::new("shell:[abc"),
            Err(GlobError::UnclosedClass { at: 6, .. })
        ));
        assert!(matches!(
            Glob::new("x\\"),
            Err(GlobError::TrailingEscape { .. })
        ));
        let msg = Glob::new("a[").unwrap_err().to_string();
        assert!(msg.contains("unclosed `[`"), "{msg}");
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        assert_eq!(
            Glob::new("shell:rm *").unwrap().literal_prefix(),
            "shell:rm "
        );
        assert_eq!(Glob::new("*x").unwrap().literal_prefix(), "");
        assert_eq!(Glob::new("a\\*b*").unwrap().literal_prefix(), "a*b");
        assert_eq!(Glob::new("llm:x").unwrap().literal_prefix(), "llm:x");
    }

    #[test]
    fn long_inputs_do_not_blow_up() {
        let glob = Glob::new("*a*a*a*a*a*a*a*b").unwrap();
        let text = "a".repeat(10_000);
        assert!(!glob.is_match(&text));
    }
}
