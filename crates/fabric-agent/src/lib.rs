//! SDK for writing reactor-fabric agents in Rust.
//!
//! An agent is a process that asks the fabric for tasks, works on them and
//! reports how they ended, over the agent protocol (HTTP + JSON under
//! `/v1/agent/...`, see `docs/AGENT_PROTOCOL.md`). This crate speaks that
//! protocol for you:
//!
//! - [`AgentClient`] is one method per endpoint: [`lease`](AgentClient::lease),
//!   [`heartbeat`](AgentClient::heartbeat), [`send_logs`](AgentClient::send_logs),
//!   [`complete`](AgentClient::complete), [`agent_heartbeat`](AgentClient::agent_heartbeat),
//!   [`renew_token`](AgentClient::renew_token). Errors are [`AgentError`]s; a
//!   lost lease is [`AgentError::StaleLease`].
//! - [`run`] is the whole agent loop around a handler you write: it leases up
//!   to `concurrency` tasks at once (long polling), heartbeats each at a third
//!   of the time left on its lease, batches the lines you [`log`](TaskContext::log)
//!   into task events, completes the task with your [`Outcome`], renews the
//!   token every 5 minutes, retries transient failures with backoff (100 ms
//!   doubling to 5 s), tells your handler through [`TaskContext::cancelled`]
//!   when the task was canceled or its lease lost (and then never completes
//!   it), and returns once the fabric drains the agent. [`run_until`] also
//!   stops when a future of yours resolves, for programs that embed an agent.
//!
//! # Example
//!
//! An agent that answers every prompt in upper case, and gives up when the
//! task is canceled:
//!
//! ```no_run
//! use fabric_agent::{AgentClient, Outcome, RunOptions, TaskContext};
//! use fabric_core::TaskResult;
//!
//! async fn shout(ctx: TaskContext) -> Outcome {
//!     let prompt = ctx.prompt().unwrap_or_default().to_owned();
//!     ctx.log("stdout", format!("shouting {} bytes", prompt.len()));
//!     tokio::select! {
//!         () = ctx.cancelled() => Outcome::failed("canceled"), // ignored: never sent
//!         () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {
//!             Outcome::completed(TaskResult {
//!                 stdout: prompt.to_uppercase(),
//!                 ..TaskResult::default()
//!             })
//!         }
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), fabric_agent::AgentError> {
//!     // FABRIC_URL, FABRIC_TOKEN and FABRIC_AGENT_ID, as the fabric sets them.
//!     let client = AgentClient::from_env()?;
//!     let options = RunOptions { concurrency: 4, ..RunOptions::default() };
//!     fabric_agent::run(client, options, shout).await
//! }
//! ```
//!
//! # Layout
//!
//! - [`client`]: [`AgentClient`] and [`LeaseOutcome`]; the `FABRIC_*` variable names.
//! - [`runner`]: [`run`], [`run_until`], [`RunOptions`], [`TaskContext`], [`Outcome`].
//! - [`error`]: [`AgentError`] and the protocol's error codes.
//! - `backoff`: the retry delays.

mod backoff;
pub mod client;
pub mod error;
pub mod runner;

pub use client::{AgentClient, ENV_AGENT_ID, ENV_TOKEN, ENV_URL, LeaseOutcome, MAX_LEASE_WAIT};
pub use error::AgentError;
pub use runner::{Outcome, RunOptions, TaskContext, run, run_until};
