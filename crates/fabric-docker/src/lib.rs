//! Docker for reactor-fabric: a thin client with clear errors, the labels every
//! resource carries, images built locally without a registry, and the namespaced
//! instance lifecycle of REQUIREMENTS §2.2 and §3 (`start`, `down`, `list`).
//!
//! bollard lives here alone, so its weight stays out of the crates that do not
//! talk to Docker; the container isolation level for agents builds on the same
//! [`DockerClient`], [`labels`] and [`image`] parts.
//!
//! # Layout
//!
//! - [`client`]: [`DockerClient`] (connect via `DOCKER_HOST` or the default
//!   socket, API version negotiated) with the container, network, volume, image,
//!   exec, log and archive calls, each returning [`DockerError`].
//! - [`error`]: [`DockerError`], bollard and daemon errors sorted by what to do
//!   (daemon unreachable, image missing, name conflict, port taken, out of resources).
//! - [`labels`]: `io.reactor-fabric.instance` / `.component` labels and the
//!   `reactor-fabric-NAME[-COMPONENT]` names.
//! - [`image`]: root filesystems from host programs plus their shared libraries
//!   (`ldd`), `docker import`ed: the orchestrator image from this binary, a Redis
//!   image from the host's `redis-server`, pull-or-explain for named images.
//! - [`config`]: [`InstanceConfig`], the typed `fabric.yml`.
//! - [`instance`]: [`instance::start`], [`instance::down`], [`instance::list`];
//!   its module docs explain how concurrent starts of one name settle.
//! - [`stats`]: CPU and memory of containers, from their cgroups when the daemon
//!   is local (fast), else from the daemon's stats; [`stats::ContainerCgroup`]
//!   for one container's counters and out-of-memory kills.
//! - [`agent`]: agent containers (isolation level `container`: limits,
//!   read-only root, nobody, no capabilities, no network) and their inference
//!   sidecars; [`image::ensure_agent_image`] builds the default agent image.

// Tests may unwrap: a panic there is a failed test, which is the point.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod agent;
pub mod client;
pub mod config;
pub mod error;
pub mod image;
pub mod instance;
pub mod labels;
pub mod stats;

pub use client::DockerClient;
pub use config::InstanceConfig;
pub use error::DockerError;
