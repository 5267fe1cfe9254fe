//! Gateway integration tests: real HTTP mock upstreams (`mock::server`) on
//! loopback, the real provider clients, the router and the API front ends.

// Test helpers outside #[test] fns: a panic is the right failure here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod harness;
mod providers;
mod routing;
mod tools;
