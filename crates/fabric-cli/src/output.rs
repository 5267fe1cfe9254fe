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
}

impl OutputFormat {
    pub fn is_json(self) -> bool {
        self == OutputFormat::Json
    }
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

/// Prints `value` as one pretty JSON document.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Other(e.into()))?;
    write_line(format_args!("{text}"))
}

/// Prints `value` as one compact JSON line (streams).
pub fn print_json_line<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string(value).map_err(|e| CliError::Other(e.into()))?;
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
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
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
    fn short_time_drops_milliseconds() {
        let ts = fabric_core::Timestamp::from_millis(1_700_000_000_123);
        assert_eq!(short_time(ts), "2023-11-14T22:13:20Z");
    }
}
