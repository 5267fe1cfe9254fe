//! Integration tests of fabric-runtime: real processes, no fakes.
//!
//! One test binary for the whole crate (link time); one module per runtime.

// Helpers outside `#[test]` functions are test code too; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod child;
mod confine;
#[cfg(feature = "docker")]
mod container;
mod net;
mod sandbox;
