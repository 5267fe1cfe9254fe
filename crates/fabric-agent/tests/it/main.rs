//! Integration tests: the SDK and the Python example agent against a real,
//! in-process fabric.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;
mod policy;
mod python;
mod sdk;
