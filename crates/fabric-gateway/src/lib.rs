//! The inference gateway (REQUIREMENTS §6): every LLM call an agent or user makes
//! goes through [`Gateway`], which routes it local-first with cloud fallback,
//! never hands out a provider key, and meters every token.
//!
//! The crate is HTTP-framework free: front ends ([`api`]) take request bodies
//! and return framework-neutral [`api::Reply`]s, which `fabric-server` turns
//! into axum responses. Only the mock server (feature `mock-server`) serves
//! HTTP itself.
//!
//! # Layout
//!
//! - [`router`]: [`Gateway`]: routing plan (policy, override, model map, capped
//!   chain), attempts with timeouts, retries with backoff, fallback, streams,
//!   metering of each call; [`Caller`], [`CallOptions`], the [`CallGuard`] seam
//!   for policy, the [`Admission`] seam for budgets (reserve before routing,
//!   settle with the call's usage record).
//! - [`breaker`]: the per-provider circuit breaker (closed, open, half-open).
//! - [`providers`]: the [`providers::Provider`] trait and its clients: Ollama,
//!   OpenAI (and OpenAI-compatible), Anthropic, the in-process mock; SSE and
//!   NDJSON stream decoding (`providers/stream.rs`).
//! - [`api`]: the served APIs: OpenAI-compatible, Ollama-compatible (the
//!   agents' endpoint), `/v1/llm/infer`; the uniform error body.
//! - [`wire`]: serde types of the OpenAI, Ollama and Anthropic wire formats.
//! - [`types`]: the gateway's own request/response/stream types.
//! - [`error`]: [`ProviderError`] (one attempt) and [`GatewayError`] (the
//!   taxonomy callers see, with status, code and retryability).
//! - [`metering`]: usage records, token estimates, the price table, the
//!   [`metering::UsageSink`] port and in-memory metrics (`GatewayMetrics`, on
//!   `fabric-telemetry`'s `Histogram`; exported by [`Gateway::register_metrics`]).
//! - [`config`]: [`GatewayConfig`] from file and environment; keys as
//!   [`secret::Secret`]s, scrubbed from upstream text by [`secret::Redactor`].
//! - [`mock`]: the deterministic mock LLM; with `mock-server`, `mock::server`
//!   (`reactor-fabric mock-llm`) speaking Ollama, OpenAI and Anthropic.

pub mod api;
pub mod breaker;
pub mod config;
pub mod error;
pub mod metering;
pub mod mock;
pub mod providers;
pub mod router;
pub mod secret;
pub mod types;
pub mod wire;

pub use config::{GatewayConfig, Policy, ProviderConfig, ProviderKind, Tier};
pub use error::{GatewayError, ProviderError, ProviderErrorKind};
pub use metering::{MemorySink, NoopSink, StoreSink, UsageSink};
pub use router::{
    Admission, Admitted, Answer, CallGuard, CallOptions, Caller, Estimate, Gateway, GuardFuture,
    ProviderStatus,
};
