//! fabric-store integration tests: one binary (see STYLE.md, rule 6).

// Test helpers outside `#[test]` functions: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;
mod fixtures;
mod leader;
mod redis;
mod sqlite;
