//! Pure, deterministic decision logic over `fabric-core` types.
//!
//! Nothing here does IO, reads a clock or spawns a thread: every method takes
//! `now` and returns what changed, so the server decides *how* to persist and
//! notify, and tests drive time by hand.
//!
//! # Layout
//!
//! - [`scheduler`]: per-agent queues (priority with aging, round-robin across
//!   tenants, queue depth), dependencies, leases with fencing, retries,
//!   timeouts and cancellation.
//! - [`budget`]: budget accounting: limits per agent, user and tenant, daily
//!   or carryover periods, atomic check-and-reserve, settle, alerts,
//!   projections ([`budget::BudgetBook`], [`budget::SharedBudgets`]).
//! - [`policy`]: glob rules attached to tenants, workspaces and agents,
//!   compiled into a [`PolicySet`] (inheritance, precedence, default deny).

pub mod budget;
pub mod policy;
pub mod scheduler;

pub use policy::{PolicyError, PolicyRequest, PolicySet, Verdict};
pub use scheduler::{
    AgentQueueConfig, Changes, Completion, KillOrder, Lease, Reservation, Scheduler,
    SchedulerConfig, SchedulerError, SchedulerStats,
};
