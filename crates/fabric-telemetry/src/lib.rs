//! Telemetry primitives of the fabric, below the gateway and the server:
//! Prometheus metric families and their registry, W3C trace context and the
//! OTLP/HTTP span exporter.
//!
//! This crate knows no HTTP framework and no domain: each part of the fabric
//! declares its own metrics on the [`metrics::Registry`] it is given at
//! construction and records its own spans on a [`trace::Tracer`]. Where they
//! are wired up (the registry behind `GET /metrics`, the HTTP middleware, the
//! log subscriber) is the server's business.
//!
//! # Layout
//!
//! - [`metrics`]: [`metrics::Registry`], counters, the one [`metrics::Histogram`]
//!   type (with its [`metrics::HistogramSnapshot`]), scrape-time collectors,
//!   the text exposition format.
//! - [`trace`]: [`trace::SpanContext`] (`traceparent`), [`trace::Span`], the
//!   [`trace::Tracer`] and its exporter, the current request's span context
//!   (a task-local).

pub mod metrics;
pub mod trace;
