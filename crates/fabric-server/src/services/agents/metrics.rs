//! The agent manager's metrics: spawn latency, and the agents' count, state
//! and resource usage read at scrape time.

use std::sync::Arc;

use fabric_core::agent::AgentState;
use fabric_telemetry::metrics::{Collected, HistogramVec, MAX_SERIES, Registry, Sample};

use super::AgentManager;

/// Buckets (seconds) of agent spawn latency.
const SPAWN_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Declares `agent_fabric_agent_spawn_seconds{isolation}`.
pub(super) fn spawn_latency(registry: &Registry) -> Arc<HistogramVec> {
    registry.histogram_vec(
        "agent_fabric_agent_spawn_seconds",
        "Time from an agent spawn request to its running session, by isolation level.",
        &["isolation"],
        SPAWN_BUCKETS,
    )
}

/// Registers the scrape-time families of `manager` (agents active, CPU,
/// memory, running tasks, idle pool). The collector holds the manager
/// weakly: the manager holds the registry (through its telemetry).
pub(super) fn register_collector(manager: &AgentManager) {
    let weak = Arc::downgrade(&manager.inner);
    manager.inner.config.telemetry.registry.collector(move || {
        let Some(inner) = weak.upgrade() else {
            return Vec::new();
        };
        families(&AgentManager { inner })
    });
}

fn families(agents: &AgentManager) -> Vec<Collected> {
    let list = agents.list();
    let active = list
        .iter()
        .filter(|a| {
            matches!(
                a.state,
                AgentState::Starting | AgentState::Running | AgentState::Draining
            )
        })
        .count();
    let mut cpu = Vec::new();
    let mut memory = Vec::new();
    let mut running_tasks = Vec::new();
    for a in list.iter().take(MAX_SERIES) {
        let id = a.config.id.as_str();
        cpu.push(Sample::new(a.usage.cpu_millis as f64 / 1000.0).with("agent_id", id));
        memory.push(Sample::new(a.usage.memory_bytes as f64).with("agent_id", id));
        running_tasks.push(Sample::new(f64::from(a.tasks_running)).with("agent_id", id));
    }
    vec![
        Collected {
            name: "agent_fabric_agents_active",
            help: "Agents starting, running or draining.",
            kind: "gauge",
            samples: vec![Sample::new(active as f64)],
        },
        Collected {
            name: "agent_fabric_agent_cpu_seconds_total",
            help: "CPU time used by an agent's current session (its cgroup or process tree); starts again at 0 with each session.",
            kind: "counter",
            samples: cpu,
        },
        Collected {
            name: "agent_fabric_agent_memory_bytes",
            help: "Memory used by an agent's current session.",
            kind: "gauge",
            samples: memory,
        },
        Collected {
            name: "agent_fabric_agent_tasks_running",
            help: "Tasks an agent is running now.",
            kind: "gauge",
            samples: running_tasks,
        },
        Collected {
            name: "agent_fabric_pool_idle",
            help: "Pre-started sandboxes and containers ready for the next spawn (pool.min_idle).",
            kind: "gauge",
            samples: vec![
                Sample::new(agents.pooled() as f64).with("isolation", "process"),
                Sample::new(agents.pooled_containers() as f64).with("isolation", "container"),
            ],
        },
    ]
}
