//! Human text or JSON (`-o json`) on stdout; notes and errors go to stderr.
//!
//! Writes go through [`write_line`] rather than `println!`, so a closed pipe
//! (`reactor-fabric task list | head -1`) ends the command quietly instead of panicking.

use std::io::Write;

use serde::Serialize;

use crate::error::CliError;

/// `-o, --output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    // Variants carry no doc comments: clap would turn them into a long list in `--help`.
    #[default]
    Human,
    // One document, or one JSON object per line for streams.
    Json,
    // The JSON documents as YAML (streams: one document each, `---` first).
    Yaml,
    // Human, with more columns where a list has more to show.
    Wide,
}

impl OutputFormat {
    /// Whether the output is a document for programs (JSON or YAML), not text for people.
    pub fn is_json(self) -> bool {
        matches!(self, OutputFormat::Json | OutputFormat::Yaml)
    }

    pub fn is_wide(self) -> bool {
        self == OutputFormat::Wide
    }
}

/// The format and `-q` of this run, set once by [`configure`] before any output.
static FORMAT: std::sync::OnceLock<(OutputFormat, bool)> = std::sync::OnceLock::new();

/// Sets this run's output format and whether lists print only their ids (`-q`).
pub fn configure(format: OutputFormat, quiet: bool) {
    let _ = FORMAT.set((format, quiet));
}

fn format() -> OutputFormat {
    FORMAT
        .get()
        .map_or(OutputFormat::Human, |(format, _)| *format)
}

/// Whether lists print only their ids (`-q`).
pub fn is_quiet() -> bool {
    FORMAT.get().is_some_and(|(_, quiet)| *quiet)
}

/// Writes one line to stdout.
pub fn write_line(args: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(CliError::Stdout)
}

/// Writes `text` to stdout as is, adding a final newline when it lacks one.
pub fn write_text(text: &str) -> Result<(), CliError> {
    if text.is_empty() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    let newline: &[u8] = if text.ends_with('\n') { b"" } else { b"\n" };
    out.write_all(text.as_bytes())
        .and_then(|()| out.write_all(newline))
        .and_then(|()| out.flush())
        .map_err(CliError::Stdout)
}

/// `println!` that reports a closed stdout as an error instead of panicking.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

/// Prints `value` as one pretty JSON document (a YAML one with `-o yaml`).
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    if format() == OutputFormat::Yaml {
        return write_text(&yaml(value)?);
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Other(e.into()))?;
    write_line(format_args!("{text}"))
}

/// `value` as a YAML document.
fn yaml<T: Serialize + ?Sized>(value: &T) -> Result<String, CliError> {
    let value = serde_json::to_value(value).map_err(|e| CliError::Other(e.into()))?;
    Ok(to_yaml(&value))
}

/// Prints `value` as one compact JSON line (streams; with `-o yaml` one
/// YAML document each, after a `---`).
pub fn print_json_line<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text = if format() == OutputFormat::Yaml {
        format!("---\n{}", yaml(value)?.trim_end())
    } else {
        serde_json::to_string(value).map_err(|e| CliError::Other(e.into()))?
    };
    let mut out = std::io::stdout().lock();
    // Followers of a stream read line by line; do not let lines sit in a buffer.
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(CliError::Stdout)
}

/// `text` with every control character shown as an escape (`\u{1b}`), so
/// that a value from the server (a task's name, an agent's last error)
/// cannot move the cursor, recolour or rewrite an operator's terminal.
pub fn plain(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<String>()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// Lays out rows under a header, columns padded to their widest cell; the last column is not padded.
/// Control characters in cells are escaped ([`plain`]).
/// With `-q`, only the first column (the id or name), without the header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    if is_quiet() {
        return rows
            .iter()
            .filter_map(|row| row.first())
            .map(|id| format!("{}\n", plain(id)))
            .collect();
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| plain(cell).into_owned()).collect())
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut text = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let width = widths.get(i).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// A JSON value as YAML (block style; strings plain where YAML reads them
/// back as the same string, double-quoted with JSON's escapes otherwise,
/// which YAML reads the same way).
pub fn to_yaml(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_yaml(&mut out, value, 0);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn write_yaml(out: &mut String, value: &serde_json::Value, indent: usize) {
    use serde_json::Value;
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            // The caller has put the cursor where the first key goes; the
            // others start their own lines at `indent`.
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(&pad);
                }
                out.push_str(&yaml_scalar_string(key));
                out.push(':');
                write_yaml_child(out, item, indent);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&pad);
                }
                out.push_str("- ");
                match item {
                    Value::Object(map) if !map.is_empty() => write_yaml(out, item, indent + 2),
                    Value::Array(inner) if !inner.is_empty() => write_yaml(out, item, indent + 2),
                    _ => {
                        out.push_str(&yaml_scalar(item));
                        out.push('\n');
                    }
                }
            }
        }
        scalar => {
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
}

/// What follows `key:`: a scalar on the same line, a collection below it.
fn write_yaml_child(out: &mut String, item: &serde_json::Value, indent: usize) {
    use serde_json::Value;
    match item {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            out.push_str(&" ".repeat(indent + 2));
            write_yaml(out, item, indent + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            write_yaml(out, item, indent);
        }
        scalar => {
            out.push(' ');
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
}

fn yaml_scalar(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => yaml_scalar_string(s),
        Value::Array(_) => "[]".to_owned(),
        Value::Object(_) => "{}".to_owned(),
    }
}

/// A string plain when that is unambiguous, else JSON-quoted.
fn yaml_scalar_string(s: &str) -> String {
    let reserved = matches!(
        s.to_ascii_lowercase().as_str(),
        "null" | "~" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n"
    );
    let numeric = s.parse::<f64>().is_ok() || s.starts_with("0x") || s.starts_with("0o");
    let plain = !s.is_empty()
        && !reserved
        && !numeric
        // Not from a digit: YAML 1.1 readers take `2026-12-07T10:00:00Z` as
        // a timestamp, `12:30` as a number, ...
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '/' || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || " _./:@+-=,()".contains(c))
        && !s.ends_with(' ')
        && !s.ends_with(':')
        && !s.contains(": ")
        && !s.contains(" #");
    if plain {
        s.to_owned()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
    }
}

/// A timestamp to the second (`2024-05-01T12:00:00Z`), for tables.
pub fn short_time(ts: fabric_core::Timestamp) -> String {
    let full = ts.to_string();
    // RFC 3339 with milliseconds: drop the fraction, keep the zone.
    match (full.find('.'), full.ends_with('Z')) {
        (Some(dot), true) => format!("{}Z", &full[..dot]),
        _ => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["a".to_owned(), "running".to_owned(), "x".to_owned()],
            vec!["bbbb".to_owned(), "ok".to_owned(), String::new()],
        ];
        let text = table(&["ID", "STATUS", "NAME"], &rows);
        assert_eq!(text, "ID    STATUS   NAME\na     running  x\nbbbb  ok\n");
    }

    #[test]
    fn tables_escape_control_characters() {
        let rows = vec![vec!["\u{1b}[2Jwiped\r\n".to_owned(), "ok".to_owned()]];
        let text = table(&["NAME", "STATUS"], &rows);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("\\u{1b}[2Jwiped\\r\\n"), "{text}");
        assert_eq!(plain("fine"), "fine");
    }

    #[test]
    fn yaml_is_block_style_and_quotes_what_yaml_would_misread() {
        let value = serde_json::json!({
            "id": "0193a7c2-1f2e-7abc-9def-0123456789ab",
            "at": "2026-12-07T10:00:00.123Z",
            "name": "a7c2-task",
            "status": "completed",
            "attempt": 1,
            "ok": true,
            "none": null,
            "tricky": ["yes", "1.5", "", "a: b", "line\nbreak", "#hash", " lead", "plain text"],
            "result": {"exit_code": 0, "stdout": "hello\n", "nested": {"deep": []}},
            "rows": [{"a": 1, "b": [1, 2]}, [3, 4]],
            "empty": {}
        });
        let text = to_yaml(&value);
        // Keys sorted, as kubectl's YAML has them.
        assert_eq!(
            text,
            "at: \"2026-12-07T10:00:00.123Z\"\n\
             attempt: 1\n\
             empty: {}\n\
             id: \"0193a7c2-1f2e-7abc-9def-0123456789ab\"\n\
             name: a7c2-task\n\
             none: null\n\
             ok: true\n\
             result:\n  \
               exit_code: 0\n  \
               nested:\n    \
                 deep: []\n  \
               stdout: \"hello\\n\"\n\
             rows:\n\
             - a: 1\n  \
               b:\n  \
               - 1\n  \
               - 2\n\
             - - 3\n  \
               - 4\n\
             status: completed\n\
             tricky:\n\
             - \"yes\"\n\
             - \"1.5\"\n\
             - \"\"\n\
             - \"a: b\"\n\
             - \"line\\nbreak\"\n\
             - \"#hash\"\n\
             - \" lead\"\n\
             - plain text\n"
        );
    }

    #[test]
    fn short_time_drops_milliseconds() {
        let ts = fabric_core::Timestamp::from_millis(1_700_000_000_123);
        assert_eq!(short_time(ts), "2023-11-14T22:13:20Z");
    }
}
