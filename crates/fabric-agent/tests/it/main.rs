//! Integration tests: the SDK and the Python example against a real in-process server.
#![allow(clippy::unwrap_used, clippy::expect_used)]
