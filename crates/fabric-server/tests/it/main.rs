//! API integration tests: a real server on 127.0.0.1:0, real HTTP, real SQLite,
//! real child processes.

// Test helpers outside #[test] fns: a panic is the right failure here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access;
mod agents;
mod api;
mod budgets;
mod containers;
mod dashboard;
mod gateway;
mod harness;
mod mcp;
mod policy;
mod python;
mod redis;
