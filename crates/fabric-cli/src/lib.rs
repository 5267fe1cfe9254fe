//! The `reactor-fabric` command line (REQUIREMENTS §11): every subcommand, the client for
//! the HTTP API it talks to, and its own small config file.
//!
//! The API client speaks only the wire types of `fabric-core`; the server crate is
//! linked in for `reactor-fabric serve` alone, so client code never reaches into it.
//!
//! # Layout
//!
//! - [`commands`]: the clap argument tree ([`Cli`]) and one module per command
//!   group (`version`, `status`, `serve`, `auth`, `task`, `agent`), each with its args and `run`.
//! - [`client`]: [`client::FabricClient`], the HTTP + WebSocket client of `/v1/...`,
//!   and [`client::ClientError`] (unreachable, API error with status, protocol).
//! - [`config`]: where the server is and which token to use: the config file
//!   (`config.toml`, written 0600), `FABRIC_*` environment and flags, in that order.
//! - [`output`]: human text vs `-o json`, and stdout writes that survive a closed pipe.
//! - [`error`]: [`CliError`], which knows the exit code of every failure (REQUIREMENTS §11).

// Tests may unwrap: a panic there is a failed test, which is the point.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod output;

pub use commands::serve::SANDBOX_HELPER_ARG;
pub use commands::{Cli, run};
pub use error::CliError;
